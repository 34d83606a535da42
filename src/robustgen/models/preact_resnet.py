"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"),
the common CIFAR form that Gowal et al. 2021 (Sec. 5) use as their smaller model.

Stem conv3x3 (64), four stages of two pre-activation blocks (64, 128, 256, 512 channels,
strides 1, 2, 2, 2), final BN -> act, global average pool (adaptive, so 8x8 inputs work),
zero-initialised linear: 11,172,170 parameters for 10 classes.
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


class PreActResNet(NormalizedClassifier):
    """PreAct ResNet with `blocks` pre-activation blocks per stage; (2, 2, 2, 2) is ResNet-18."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), *, num_classes: int, in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "silu"):
        super().__init__(in_channels, mean, std)
        self.stem = conv3x3(in_channels, 64)
        widths = [64 * 2**i for i in range(len(blocks))]
        strides = [1] + [2] * (len(blocks) - 1)
        self.stages, channels = residual_stages(64, widths, strides, blocks, activation,
                                                bn_momentum=PAPER_BN_MOMENTUM)
        self.bn = nn.BatchNorm2d(channels, momentum=PAPER_BN_MOMENTUM)
        self.act = make_activation(activation)
        self.logits = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        x = self.stages(self.stem(self.normalize(x)))  # [B, 512, H/8, W/8]
        return head(x, self.bn, self.act, self.logits)
