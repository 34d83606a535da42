"""Pieces shared by every classifier: input normalisation, activation lookup, the
pre-activation residual block and the weight initialisation.

Gowal et al. 2021 (Sec. 5, App. B) train pre-activation networks with Swish/SiLU, normalise
inside the model (RobustBench convention: the model takes [0, 1] input) and zero-initialise
the logits layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgen.runtime.errors import RobustgenError

# The authors' BatchNorm decay of 0.99 is PyTorch momentum 0.01.
PAPER_BN_MOMENTUM = 0.01

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name ("silu", the paper's Swish, or "relu")."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise RobustgenError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def _channel_stats(values: Sequence[float] | None, channels: int, default: float, what: str) -> torch.Tensor:
    """Per-channel statistics as a float32 [1, C, 1, 1] tensor; one value is broadcast to C."""
    if values is None:
        values = [default] * channels
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise RobustgenError(f"{what} has {len(values)} values but the model has {channels} input channels")
    if what == "std" and any(v <= 0 for v in values):
        raise RobustgenError(f"std must be positive, got {values}")
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


class NormalizedClassifier(nn.Module):
    """Base class: holds `mean`/`std` buffers ([1, C, 1, 1], saved in the state dict) and
    normalises the [0, 1] input as (x - mean) / std before the network proper."""

    def __init__(self, in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.register_buffer("mean", _channel_stats(mean, in_channels, 0.5, "mean"), persistent=True)
        self.register_buffer("std", _channel_stats(std, in_channels, 0.5, "std"), persistent=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] -> [B, C, H, W]; broadcasting keeps x's memory format (channels_last too).
        return (x - self.mean) / self.std


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): BN -> act -> conv3x3(stride) -> BN -> act
    -> conv3x3, plus a 1x1 conv shortcut on the pre-activated input when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.bn_0 = nn.BatchNorm2d(in_channels, momentum=bn_momentum)
        self.act_0 = make_activation(activation)
        self.conv_0 = conv3x3(in_channels, out_channels, stride)
        self.bn_1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.act_1 = make_activation(activation)
        self.conv_1 = conv3x3(out_channels, out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
        out = self.act_0(self.bn_0(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv_0(out)
        out = self.conv_1(self.act_1(self.bn_1(out)))
        return out + residual


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out), BN weight 1 / bias 0, and linear layers zero-initialised
    (weight and bias) as the authors do for the logits, so an untrained model outputs zeros."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)


def head(x: torch.Tensor, norm: nn.Module, act: nn.Module, logits: nn.Linear) -> torch.Tensor:
    """Final BN -> act -> global average pool -> linear: [B, C, H, W] -> [B, num_classes]."""
    x = act(norm(x))
    x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # [B, C]
    return logits(x)
