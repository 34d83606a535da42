"""The ``heldout`` generator: real training images held-out from the real split, served as if
generated (the paper's "perfect generator" reference: its 80M-Tiny-Images rows, Sec. 4 and
Fig. 4, measure how far a generator is from real data of the same distribution).

``data.train_size: K`` keeps K images of the train split (after validation is removed) as the
real split; the rest are held out (``datasets.holdout_split``) and are the only images this
generator can fit on (``fits_on = "heldout"``: the stages pass it the held-out split instead of
the real one). It then goes through the same path as any generator: the generate stage writes
the held-out images into a store (a seeded permutation, each image at most once; ``num_samples``
is capped at their number), the label stage pseudo-labels them with f_NR (trained on the reduced
real split only) and training mixes them at ``1 - alpha``. The true labels are kept as the
samples' conditioning classes, so ``label.mode: condition`` trains on true labels instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustgen.generate import register_generator
from robustgen.runtime.errors import RobustgenError

__all__ = ["HeldoutGenerator", "load_images_fit", "save_images_fit"]


def save_images_fit(fitted: dict, path) -> None:
    """A fit that is real images ({"image", "label"}) as an .npz (held-out images, augmentations)."""
    from robustgen.data.npz import write_npz

    write_npz(path, **fitted)


def load_images_fit(path) -> dict:
    from robustgen.data.npz import read_npz

    return read_npz(Path(path), keys_required=("image", "label"))


class _PermutedRows:
    """Rows start..stop-1 of a seeded permutation of the held-out images (a pure function of
    the fit, the seed and the index)."""

    def __init__(self, fitted: dict, seed: int):
        self.images, self.labels = fitted["image"], fitted["label"]
        self.order = np.random.default_rng([int(seed), 0x4E1D]).permutation(len(self.labels))

    def sample(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if stop > len(self.order):
            raise RobustgenError(f"the heldout generator holds {len(self.order)} images; asked for rows up to {stop}")
        rows = self.order[start:stop]
        return self.images[rows], self.labels[rows]


@register_generator("heldout")
class HeldoutGenerator:
    """Registry adapter: ``fit`` keeps the held-out images, ``range_sampler`` serves them."""

    fits_on = "heldout"  # the stages fit it on the held-out real images, not the real split

    @staticmethod
    def fit(images: np.ndarray, labels: np.ndarray, *, num_classes: int) -> dict:
        if len(labels) == 0:
            raise RobustgenError("generator 'heldout' has no images to serve: set data.train_size below the "
                                 "number of real training images, so that the rest are held out")
        return {"image": np.ascontiguousarray(images), "label": np.asarray(labels, np.int64)}

    @staticmethod
    def sample(fitted: dict, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return _PermutedRows(fitted, seed).sample(0, min(n, len(fitted["label"])))

    @staticmethod
    def range_sampler(fitted: dict, *, seed: int) -> _PermutedRows:
        return _PermutedRows(fitted, seed)

    save_fit = staticmethod(save_images_fit)
    load_fit = staticmethod(load_images_fit)

