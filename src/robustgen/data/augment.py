"""Batched data augmentation on the device: random crop (zero padding) and horizontal flip.

The paper's recipe (Sec. 4, "padding and cropping" + flips) applied to a whole uint8 batch at
once: pad once, then gather every image's window with per-image offsets by index arithmetic;
a flip is the same gather with the column index reversed. No Python loop over images, and all
randomness comes from ``generator`` on the batch's device, so a seeded generator reproduces
the batch exactly.
"""

from __future__ import annotations

import torch

__all__ = ["crop_flip", "to_float_nchw"]


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
