"""A small pre-activation CNN for the CPU demo on 8x8 grayscale scikit-learn digits (also runs
on 32x32x3). Not a model from Gowal et al. 2021; it shrinks their pre-activation design so that
TRADES (26 forward-equivalents per image per step) trains in minutes on two CPU cores.

conv3x3(32) -> pre-act block(32) -> pre-act block(64, stride 2) -> BN -> act -> pool -> linear:
77,162 parameters for 1 input channel and 10 classes; about 90 ms per TRADES step of batch 128
on 8x8 inputs with 2 CPU threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgen.models.common import NormalizedClassifier, PreActBlock, conv3x3, head, init_weights, make_activation


class SmallCNN(NormalizedClassifier):
    """Two pre-activation blocks on [0, 1] NCHW input of any size >= 2; logits [B, num_classes]."""

    def __init__(self, *, num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, activation: str = "silu", width: int = 32):
        super().__init__(in_channels, mean, std)
        self.stem = conv3x3(in_channels, width)
        # PyTorch's default BN momentum (0.1): short demo runs need running stats that settle fast.
        self.blocks = nn.Sequential(
            PreActBlock(width, width, 1, activation),
            PreActBlock(width, 2 * width, 2, activation),
        )
        self.bn = nn.BatchNorm2d(2 * width)
        self.act = make_activation(activation)
        self.logits = nn.Linear(2 * width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        x = self.blocks(self.stem(self.normalize(x)))  # [B, 2 * width, H/2, W/2]
        return head(x, self.bn, self.act, self.logits)
