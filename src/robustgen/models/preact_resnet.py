"""Pre-activation ResNet-18 exactly as the authors' released PyTorch definition (Gowal et al.
2021, Sec. 5; google-deepmind/deepmind-research, adversarial_robustness/pytorch/model_zoo.py),
with their module names, so their released checkpoints and RobustBench's ``DMPreActResNet`` state
dicts load as they are.

``conv_2d`` (3x3, 64), ``layer_0`` .. ``layer_3`` of two blocks (64, 128, 256, 512 channels,
strides 1, 2, 2, 2), ``batchnorm`` -> ``relu`` -> global average pool -> ``logits``: 12,548,426
parameters for 10 classes. Unlike He et al.'s block, the projection shortcut is a 3x3
convolution (stride s, TensorFlow "SAME" padding) of the block's raw input, not a 1x1 of the
pre-activated one; the first 3x3 convolution of a block pads "SAME" too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgen.models.common import PAPER_BN_MOMENTUM, NormalizedClassifier, head, init_weights, make_activation
from robustgen.models.wide_resnet import same_pad


class PreActResNetBlock(nn.Module):
    """The authors' ``_PreActBlock``: BN -> act -> conv3x3(stride, SAME) -> BN -> act -> conv3x3,
    plus the input (or, when the shape changes, a 3x3 SAME conv of the raw input)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_channels, momentum=PAPER_BN_MOMENTUM)
        self.relu_0 = make_activation(activation)
        self.conv_2d_1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_channels, momentum=PAPER_BN_MOMENTUM)
        self.relu_1 = make_activation(activation)
        self.conv_2d_2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=0, bias=False)
                         if stride != 1 or in_channels != out_channels else None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
        out = self.relu_0(self.batchnorm_0(x))
        residual = x if self.shortcut is None else self.shortcut(same_pad(x, self.stride))
        out = self.conv_2d_1(same_pad(out, self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return out + residual


class PreActResNet(NormalizedClassifier):
    """PreAct ResNet with `blocks` pre-activation blocks per stage; (2, 2, 2, 2) is ResNet-18."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), *, num_classes: int, in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "silu"):
        super().__init__(in_channels, mean, std)
        if len(blocks) != 4:
            raise ValueError(f"the authors' PreAct ResNet has four stages, got {len(blocks)}")
        self.conv_2d = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        widths, channels = (64, 128, 256, 512), 64
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stage = [PreActResNetBlock(channels if j == 0 else width, width, (1 if i == 0 else 2) if j == 0 else 1,
                                       activation) for j in range(count)]
            setattr(self, f"layer_{i}", nn.Sequential(*stage))
            channels = width
        self.batchnorm = nn.BatchNorm2d(channels, momentum=PAPER_BN_MOMENTUM)
        self.relu = make_activation(activation)
        self.logits = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        x = self.conv_2d(self.normalize(x))
        x = self.layer_3(self.layer_2(self.layer_1(self.layer_0(x))))  # [B, 512, H/8, W/8]
        return head(x, self.batchnorm, self.relu, self.logits)
