"""WideResNet-D-W in the pre-activation form used by Gowal et al. 2021 (Sec. 5: WRN-28-10 and
WRN-70-16 with Swish) and Rebuffi et al. 2021, following DeepMind's reference implementation.

Stem conv3x3 (16 channels), three groups of n = (D - 4) / 6 pre-activation blocks of widths
16W, 32W, 64W with strides 1, 2, 2, final BN -> act, global average pool, zero-initialised
linear. WRN-28-10 has 36,479,194 parameters and WRN-70-16 266.8M for 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgen.models.common import (
    PAPER_BN_MOMENTUM,
    NormalizedClassifier,
    conv3x3,
    head,
    init_weights,
    make_activation,
    residual_stages,
)


def wrn_depth_error(depth: int, width: int) -> str | None:
    """Why (depth, width) is not a WideResNet, or None when it is one."""
    if depth < 10 or (depth - 4) % 6 != 0:
        return f"depth {depth} is invalid: depth - 4 must be a positive multiple of 6 (10, 16, 22, 28, 34, 40, 70, ...)"
    if width < 1:
        return f"width {width} is invalid: it must be at least 1"
    return None


class WideResNet(NormalizedClassifier):
    """WRN-depth-width on [0, 1] NCHW input of any size >= 8; returns logits [B, num_classes]."""

    def __init__(self, depth: int, width: int, *, num_classes: int, in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "silu"):
        super().__init__(in_channels, mean, std)
        error = wrn_depth_error(depth, width)
        if error is not None:
            raise ValueError(error)
        blocks_per_group = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = conv3x3(in_channels, 16)
        self.groups, channels = residual_stages(16, widths, (1, 2, 2), [blocks_per_group] * 3, activation,
                                                bn_momentum=PAPER_BN_MOMENTUM)
        self.bn = nn.BatchNorm2d(channels, momentum=PAPER_BN_MOMENTUM)
        self.act = make_activation(activation)
        self.logits = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        x = self.groups(self.stem(self.normalize(x)))  # [B, 64W, H/4, W/4]
        return head(x, self.bn, self.act, self.logits)
