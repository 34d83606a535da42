"""The CIFAR ResNet-18 of kuangliu/pytorch-cifar ("ResNet18": post-activation BasicBlocks), with
exactly its parameter names, so the many checkpoints published in that layout (e.g. the
non-robust CIFAR-10 model shipped with pyautoattack, a handy external pseudo-labeller for
Gowal et al. 2021, Sec. 3) load as they are: ``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ``layer2.0.shortcut.0.weight``, ``linear.weight``, ...

Stem conv3x3 (64) + BN + act, four stages of two BasicBlocks (64, 128, 256, 512 channels,
strides 1, 2, 2, 2), global average pooling (adaptive: kuangliu's ``avg_pool2d(4)`` on 32x32
input, and any other input size works), linear: 11,173,962 parameters for 10 classes.

Unlike robustgen's own networks the original takes raw [0, 1] input and uses ReLU, so this
architecture's defaults are mean 0, std 1 (the ``mean``/``std`` buffers are the identity) and
ReLU; ``create_model`` can still set other statistics or SiLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgen.models.common import NormalizedClassifier, conv3x3, init_weights, make_activation


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> act -> conv3x3 -> BN, plus the input (through a 1x1 conv + BN
    ``shortcut`` when the shape changes), then act."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        # Empty Sequential (identity) when the shape is kept, as in kuangliu: same parameter names.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class KuangliuResNet(NormalizedClassifier):
    """kuangliu's ``ResNet(BasicBlock, blocks)``; (2, 2, 2, 2) is ResNet18."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), *, num_classes: int, in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "relu"):
        # Identity normalisation unless told otherwise: the original has none.
        super().__init__(in_channels, (0.0,) if mean is None else mean, (1.0,) if std is None else std)
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.act = make_activation(activation)
        channels = 64
        for i, count in enumerate(blocks):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(count):
                stage.append(BasicBlock(channels, width, stride if j == 0 else 1, activation))
                channels = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.linear = nn.Linear(channels, num_classes)
        init_weights(self)  # robustgen convention: zero-initialised logits when trained from scratch

    @property
    def logits(self) -> nn.Linear:
        """The logits layer under robustgen's usual name (kuangliu calls it ``linear``)."""
        return self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        out = self.act(self.bn1(self.conv1(self.normalize(x))))  # [B, 64, H, W]
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)  # ... -> [B, 512, H/8, W/8]
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)  # [B, 512]
        return self.linear(out)
