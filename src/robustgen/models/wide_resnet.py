"""WideResNet-D-W exactly as the authors' released PyTorch definition (Gowal et al. 2021, Sec. 5:
WRN-28-10 and WRN-70-16 with Swish; google-deepmind/deepmind-research,
adversarial_robustness/pytorch/model_zoo.py), with their module names, so their released
checkpoints and RobustBench's ``DMWideResNet`` state dicts load as they are.

``init_conv`` (3x3, 16 channels), ``layer``: three groups of n = (D - 4) / 6 pre-activation
blocks of widths 16W, 32W, 64W with strides 1, 2, 2, then ``batchnorm`` -> ``relu`` (the
activation, SiLU by default) -> global average pool -> ``logits``. In a block the first 3x3
convolution pads "SAME" as TensorFlow: 1 pixel on every side at stride 1, 0 before and 1 after at
stride 2. When the width changes, the 1x1 projection shortcut reads the pre-activated input.
WRN-28-10 has 36,479,194 parameters and WRN-70-16 266.8M for 10 classes. The input is normalised
inside ((x - mean) / std buffers, which the authors' files do not hold: see
``robustgen.checkpoint.load_external_model``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustgen.models.common import PAPER_BN_MOMENTUM, NormalizedClassifier, head, init_weights, make_activation


def wrn_depth_error(depth: int, width: int) -> str | None:
    """Why (depth, width) is not a WideResNet, or None when it is one."""
    if depth < 10 or (depth - 4) % 6 != 0:
        return f"depth {depth} is invalid: depth - 4 must be a positive multiple of 6 (10, 16, 22, 28, 34, 40, 70, ...)"
    if width < 1:
        return f"width {width} is invalid: it must be at least 1"
    return None


def same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding of a 3x3 convolution: (1, 1) per side at stride 1, (0, 1) at stride 2."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    if stride == 2:
        return F.pad(x, (0, 1, 0, 1))
    raise ValueError(f"unsupported stride {stride}")


class WideResNetBlock(nn.Module):
    """The authors' ``_Block``: BN -> act -> conv3x3(stride, SAME) -> BN -> act -> conv3x3, plus the
    input (or, when the width changes, a 1x1 conv of the pre-activated input)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_channels, momentum=PAPER_BN_MOMENTUM)
        self.relu_0 = make_activation(activation)
        self.conv_0 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_channels, momentum=PAPER_BN_MOMENTUM)
        self.relu_1 = make_activation(activation)
        self.conv_1 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
                         if in_channels != out_channels else None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
        out = self.relu_0(self.batchnorm_0(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv_0(same_pad(out, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return residual + out


class WideResNetGroup(nn.Module):
    """The authors' ``_BlockGroup``: ``block``, a sequence of blocks; the first changes width and stride."""

    def __init__(self, blocks: int, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.block = nn.Sequential(*[
            WideResNetBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, activation)
            for i in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNet(NormalizedClassifier):
    """WRN-depth-width on [0, 1] NCHW input of any even size >= 8; returns logits [B, num_classes]."""

    def __init__(self, depth: int, width: int, *, num_classes: int, in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "silu"):
        super().__init__(in_channels, mean, std)
        error = wrn_depth_error(depth, width)
        if error is not None:
            raise ValueError(error)
        n = (depth - 4) // 6
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.init_conv = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(*[WideResNetGroup(n, channels[i], channels[i + 1], stride, activation)
                                     for i, stride in enumerate((1, 2, 2))])
        self.batchnorm = nn.BatchNorm2d(channels[3], momentum=PAPER_BN_MOMENTUM)
        self.relu = make_activation(activation)
        self.logits = nn.Linear(channels[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        x = self.layer(self.init_conv(self.normalize(x)))  # [B, 64W, H/4, W/4]
        return head(x, self.batchnorm, self.relu, self.logits)
