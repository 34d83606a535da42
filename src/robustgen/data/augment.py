"""Batched data augmentation on the device: random crop (zero padding) and horizontal flip, then
optionally a training augmentation (``train.augment``) with soft labels.

The paper's recipe (Sec. 4, "padding and cropping" + flips) applied to a whole uint8 batch at
once: pad once, then gather every image's window with per-image offsets by index arithmetic;
a flip is the same gather with the column index reversed. No Python loop over images, and all
randomness comes from ``generator`` on the batch's device, so a seeded generator reproduces
the batch exactly.

``mix_augment`` (Rebuffi et al. 2021, arXiv 2111.05328: CutMix with weight averaging improves
adversarial training) acts on the float batch and its soft targets, each image with its own draw
and a partner from a seeded permutation of the batch:
``mixup`` (Zhang et al. 2018, alpha 1): x = lam x_a + (1 - lam) x_b, lam ~ U(0, 1), targets alike;
``cutmix`` (Yun et al. 2019, alpha 1): the partner's pixels in a box of side sqrt(1 - lam) at a
uniform centre (clipped), targets weighted by the kept area; ``cutout`` (DeVries & Taylor 2017):
a box of half the side zeroed, targets unchanged; ``autoaugment`` (CIFAR-10 policy) and
``randaugment`` (2 ops, magnitude 9): torchvision's, image by image on the device (a Python loop:
slower than the others), targets unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["TRAIN_AUGMENTATIONS", "crop_flip", "mix_augment", "to_float_nchw"]

TRAIN_AUGMENTATIONS = ("none", "mixup", "cutmix", "cutout", "autoaugment", "randaugment")


def _check_uint8_nhwc(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                else type(images).__name__)
        raise ValueError(f"expected a uint8 [N, H, W, C] tensor, got {desc}")


def to_float_nchw(images: torch.Tensor, *,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [0, 1], on the same device."""
    _check_uint8_nhwc(images)
    x = images.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)  # [N, C, H, W]
    return x.to(torch.float32).div_(255.0)


def crop_flip(images: torch.Tensor, *, padding: int, flip: bool,
              generator: torch.Generator | None = None,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Random crop (``padding`` zero pixels each side, 0 = none) and random horizontal flip (p=0.5).

    ``images``: uint8 [N, H, W, C] already on the target device. Returns float32 [N, C, H, W]
    in [0, 1] on that device. Random draws, in order: row offsets [N] and column offsets [N]
    (only when padding > 0), then flip coins [N] (only when flip).
    """
    _check_uint8_nhwc(images)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return to_float_nchw(images, memory_format=memory_format)
    n, h, w, c = images.shape
    dev = images.device
    rows = torch.arange(h, device=dev).expand(n, h)  # [N, H]
    cols = torch.arange(w, device=dev).expand(n, w)  # [N, W]
    src = images
    if padding > 0:
        p = padding
        src = images.new_zeros((n, h + 2 * p, w + 2 * p, c))  # [N, H+2p, W+2p, C]
        src[:, p:p + h, p:p + w] = images
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=dev)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=dev)
        rows = rows + dy
        cols = cols + dx
    if flip:
        coin = torch.randint(0, 2, (n, 1), generator=generator, device=dev).bool()
        cols = torch.where(coin, cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    out = src[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return to_float_nchw(out, memory_format=memory_format)


def _boxes(n: int, h: int, w: int, side: torch.Tensor, generator, device) -> torch.Tensor:
    """Masks [N, 1, H, W] (True inside) of boxes of ``side`` (fraction of H and W, [N]) at uniform
    centres, clipped to the image."""
    cy = torch.randint(0, h, (n, 1, 1), generator=generator, device=device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator, device=device)
    bh, bw = (side * h).long().view(n, 1, 1), (side * w).long().view(n, 1, 1)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= cy - bh // 2) & (rows < cy + (bh + 1) // 2) & (cols >= cx - bw // 2) & (cols < cx + (bw + 1) // 2)
    return inside[:, None]


def mix_augment(x: torch.Tensor, targets: torch.Tensor, kind: str,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, soft targets) after ``kind`` (see the module doc); x float [N, C, H, W] in [0, 1],
    targets [N, K]. Random draws, in order: the partner permutation (mixup, cutmix), lam [N]
    (mixup, cutmix), box centres [N] and [N] (cutmix, cutout); autoaugment / randaugment: one seed."""
    if kind == "none":
        return x, targets
    if kind not in TRAIN_AUGMENTATIONS:
        raise ValueError(f"unknown training augmentation {kind!r} (known: {', '.join(TRAIN_AUGMENTATIONS)})")
    n, _, h, w = x.shape
    dev = x.device
    if kind in ("autoaugment", "randaugment"):
        from torchvision import transforms

        policy = (transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10) if kind == "autoaugment"
                  else transforms.RandAugment(num_ops=2, magnitude=9))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())
        images = x.mul(255).round_().to(torch.uint8)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # torchvision draws globally
            torch.manual_seed(seed)
            out = torch.stack([policy(img) for img in images])
        return out.to(x.dtype).div_(255).contiguous(memory_format=_format_of(x)), targets
    if kind == "cutout":
        inside = _boxes(n, h, w, torch.full((n,), 0.5, device=dev), generator, dev)
        return x.masked_fill(inside, 0.0), targets
    partner = torch.randperm(n, generator=generator, device=dev)
    lam = torch.rand(n, generator=generator, device=dev)
    if kind == "mixup":
        mixed = lam.view(n, 1, 1, 1) * x + (1 - lam.view(n, 1, 1, 1)) * x[partner]
        return mixed, lam.view(n, 1) * targets + (1 - lam.view(n, 1)) * targets[partner]
    inside = _boxes(n, h, w, (1 - lam).sqrt(), generator, dev)  # cutmix
    kept = 1 - inside.flatten(1).float().mean(1, keepdim=True)  # the share of x's own pixels, after clipping
    return torch.where(inside, x[partner], x), kept * targets + (1 - kept) * targets[partner]


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
