"""BatchNorm statistics per group of G images ("ghost" BatchNorm), the authors' setting.

Gowal et al. 2021 train with a batch of 1024 split over 32 accelerator cores without
cross-replica BatchNorm (their ``jax/experiment.py``): in the attack, the clean and the
adversarial passes, every BatchNorm statistic comes from the 32 images of one core. On one
device, ``use_bn_groups(model, G)`` reproduces that: in training mode each consecutive group of
G images of the batch is normalised with its own mean and (biased) variance. Eval mode is
untouched (running statistics). The running averages are updated once per training forward
with the mean over groups of each group's mean and unbiased variance (each core of the authors
kept its own; with ``micro_batches`` emulation they are updated once per chunk instead).

The training loop orders each batch so that every group holds the batch's mix of real and
generated images (``train.mixing.batches.TrainingBatches``).
"""

from __future__ import annotations

import torch
from torch import nn

from robustgen.runtime.errors import RobustgenError

__all__ = ["GroupBatchNorm2d", "use_bn_groups"]


class GroupBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and state dict) whose training-mode statistics
    come from groups of ``group_size`` images; ``group_size`` None is plain BatchNorm."""

    group_size: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group_size
        if g is None or not self.training:
            return super().forward(x)
        b, c, h, w = x.shape
        if b % g:
            raise RobustgenError(f"BatchNorm groups of {g} images need a batch that is a multiple of {g}, got {b}")
        # Statistics in float32 whatever the autocast dtype, as native BatchNorm under autocast.
        xg = x.float().reshape(b // g, g, c, h, w)  # [groups, G, C, H, W]
        var, mean = torch.var_mean(xg, dim=(1, 3, 4), keepdim=True, correction=0)  # [groups, 1, C, 1, 1]
        y = (xg - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, 1, c, 1, 1) + self.bias.view(1, 1, c, 1, 1)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = g * h * w
                self.running_mean.lerp_(mean.mean(0).flatten(), m)
                self.running_var.lerp_((var * (n / max(n - 1, 1))).mean(0).flatten(), m)
        return y.reshape(b, c, h, w)


def use_bn_groups(model: nn.Module, group_size: int | None) -> nn.Module:
    """Make every BatchNorm2d of ``model`` normalise per group of ``group_size`` images in training
    mode (in place; None restores plain BatchNorm). Parameters, buffers and the state dict are
    unchanged, so checkpoints and the optimiser are unaffected."""
    if group_size is not None and group_size < 2:
        raise RobustgenError(f"BatchNorm group size must be >= 2 (a variance needs two images), got {group_size}")
    for m in model.modules():
        if type(m) in (nn.BatchNorm2d, GroupBatchNorm2d):
            m.__class__ = GroupBatchNorm2d
            m.group_size = group_size
    return model
