"""Data augmentations served as generators: ``mixup``, ``cutout``, ``cutmix``, ``autoaugment`` and
``randaugment`` produce augmented copies of the real training images (paper Sec. 3.2 and Table
5: how far augmented samples are from being new data, measured with complementarity and coverage;
footnote 5: mixup does not improve robust accuracy beyond random crops and flips).

Each one fits on the real split (it keeps the images, as ``heldout`` keeps the held-out ones) and
goes through the same path as any generator: ``store generate`` / the generate stage writes the
augmented images into a store, ``robustgen measure`` scores them (Table 5), the label stage labels
them and training mixes them at ``1 - alpha`` (``arms: [{generator: cutmix}]`` puts an augmentation
beside a generator at equal steps). Sample ``i`` is a pure function of (fit, seed, i): its source
image(s) and parameters come from ``numpy.random.default_rng([seed, i])``. Its conditioning class
is its source image's label (for mixup and CutMix, the label of the image with the larger share).

    mixup        lambda x_a + (1 - lambda) x_b, lambda ~ Beta(1, 1) (Zhang et al. 2018)
    cutout       a square of half the image side at a uniform centre set to 0, clipped at the border
                 (DeVries & Taylor 2017: 16 px on 32x32 CIFAR)
    cutmix       a box of x_b pasted into x_a, area share 1 - lambda, lambda ~ Beta(1, 1) (Yun et al. 2019)
    autoaugment  torchvision's AutoAugment with the CIFAR-10 policy (Cubuk et al. 2019)
    randaugment  torchvision's RandAugment (2 ops, magnitude 9; Cubuk et al. 2020)
"""

from __future__ import annotations

import numpy as np
import torch

from robustgen.generate import register_generator
from robustgen.generate.heldout import load_images_fit, save_images_fit
from robustgen.runtime.errors import RobustgenError

__all__ = ["AUGMENTATIONS"]

AUGMENTATIONS = ("mixup", "cutout", "cutmix", "autoaugment", "randaugment")


def _mixup(rng, a, b):
    lam = rng.beta(1.0, 1.0)
    mixed = lam * a[0].astype(np.float64) + (1 - lam) * b[0].astype(np.float64)
    return np.rint(mixed).astype(np.uint8), a[1] if lam >= 0.5 else b[1]


def _box(rng, h: int, w: int, side_h: int, side_w: int) -> tuple[int, int, int, int]:
    """A box of at most side_h x side_w at a uniform centre, clipped to the image."""
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (max(cy - side_h // 2, 0), min(cy + (side_h + 1) // 2, h),
            max(cx - side_w // 2, 0), min(cx + (side_w + 1) // 2, w))


def _cutout(rng, a, _b):
    image = a[0].copy()
    h, w = image.shape[:2]
    y0, y1, x0, x1 = _box(rng, h, w, h // 2, w // 2)
    image[y0:y1, x0:x1] = 0
    return image, a[1]


def _cutmix(rng, a, b):
    image = a[0].copy()
    h, w = image.shape[:2]
    ratio = np.sqrt(1.0 - rng.beta(1.0, 1.0))
    y0, y1, x0, x1 = _box(rng, h, w, int(h * ratio), int(w * ratio))
    image[y0:y1, x0:x1] = b[0][y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # a's share after clipping
    return image, a[1] if kept >= 0.5 else b[1]


def _torchvision(policy: str):
    from torchvision import transforms

    transform = (transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10) if policy == "autoaugment"
                 else transforms.RandAugment(num_ops=2, magnitude=9))

    def apply(rng, a, _b):
        x = torch.from_numpy(np.ascontiguousarray(a[0])).permute(2, 0, 1)  # uint8 [C, H, W]
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
            torch.manual_seed(int(rng.integers(2**63)))
            out = transform(x)
        return out.permute(1, 2, 0).numpy(), a[1]

    return apply


class _AugmentedRows:
    """Augmented samples start..stop-1 (a pure function of the fit, the seed and the index)."""

    def __init__(self, fitted: dict, seed: int, kind: str):
        self.images, self.labels = fitted["image"], fitted["label"]
        self.seed, self.kind = int(seed), kind
        self.apply = {"mixup": _mixup, "cutout": _cutout, "cutmix": _cutmix}.get(kind) or _torchvision(kind)

    def _one(self, i: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, int(i)])
        ia, ib = (int(v) for v in rng.integers(len(self.labels), size=2))
        return self.apply(rng, (self.images[ia], int(self.labels[ia])), (self.images[ib], int(self.labels[ib])))

    def sample(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sample_indices(range(int(start), int(stop)))

    def sample_indices(self, indices) -> tuple[np.ndarray, np.ndarray]:
        rows = [self._one(i) for i in indices]
        images = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        for k, (image, _) in enumerate(rows):
            images[k] = image
        return images, np.asarray([label for _, label in rows], dtype=np.int64)


def _adapter(kind: str):
    class AugmentationGenerator:
        """Registry adapter: ``fit`` keeps the real images, ``range_sampler`` augments them."""

        @staticmethod
        def fit(images: np.ndarray, labels: np.ndarray, *, num_classes: int) -> dict:
            if len(labels) == 0:
                raise RobustgenError(f"generator {kind!r} has no real images to augment")
            return {"image": np.ascontiguousarray(images), "label": np.asarray(labels, np.int64)}

        @staticmethod
        def sample(fitted: dict, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
            return _AugmentedRows(fitted, seed, kind).sample(0, n)

        @staticmethod
        def range_sampler(fitted: dict, *, seed: int) -> _AugmentedRows:
            return _AugmentedRows(fitted, seed, kind)

        save_fit = staticmethod(save_images_fit)
        load_fit = staticmethod(load_images_fit)

    AugmentationGenerator.__name__ = f"{kind.capitalize()}Generator"
    return AugmentationGenerator


for _kind in AUGMENTATIONS:
    register_generator(_kind)(_adapter(_kind))
