"""Classifiers of Gowal et al. 2021 (Sec. 5: WRN-28-10, WRN-70-16, PreAct ResNet-18; App. B:
torchvision's ResNet-50/152 for ImageNet, ``resnet-<depth>``) plus a
small CNN for the CPU demo and the kuangliu CIFAR ResNet-18 layout (to load external
checkpoints, ``robustgen.checkpoint.load_external_model``), behind one registry. Every model
takes [0, 1] NCHW input, normalises it inside ((x - mean) / std, buffers saved in the state
dict) and returns logits.

    model = create_model("wrn-28-10", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)

Names are exact ("small-cnn") or patterns whose <fields> match integers ("wrn-<depth>-<width>");
`list_models()` gives the registered names, `is_known_arch()` checks one without building it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from robustgen.models.common import ACTIVATIONS, NormalizedClassifier
from robustgen.models.kuangliu_resnet import KuangliuResNet
from robustgen.models.preact_resnet import PreActResNet
from robustgen.models.resnet import TorchvisionResNet, resnet_depth_error
from robustgen.models.small_cnn import SmallCNN
from robustgen.models.wide_resnet import WideResNet, wrn_depth_error
from robustgen.runtime.errors import RobustgenError

__all__ = [
    "create_model", "external_normalization", "list_models", "is_known_arch", "register_model", "example_arch",
    "NormalizedClassifier", "WideResNet", "PreActResNet", "SmallCNN", "KuangliuResNet", "TorchvisionResNet",
]

_FIELD = re.compile(r"<([a-z_]+)>")


@dataclass(frozen=True)
class _Entry:
    # builder(**fields, num_classes=, in_channels=, mean=, std=[, activation=]); mean/std None and
    # no activation mean the architecture's defaults
    builder: Callable[..., nn.Module]
    regex: re.Pattern[str]
    example: str  # a small concrete name, for tests and help text
    validate: Callable[..., str | None] | None  # validate(**fields) -> why it is invalid, or None


# name or pattern -> builder (with its parsed-name regex, example and validator)
_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, example: str | None = None,
                   validate: Callable[..., str | None] | None = None):
    """Decorator registering a builder under `name`; `<field>`s in it match integers that are
    passed to the builder (and to `validate`) as keyword arguments."""
    parts = _FIELD.split(name)  # literal, field, literal, field, ..., literal
    regex = re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[0-9]+)" for i, p in enumerate(parts)))
    example = name if example is None else example
    if not regex.fullmatch(example):
        raise ValueError(f"example {example!r} does not match {name!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, regex, example, validate)
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered names and patterns, sorted: e.g. ["preact-resnet-18", "small-cnn", "wrn-<depth>-<width>"]."""
    return sorted(_REGISTRY)


def example_arch(name: str) -> str:
    """A small concrete architecture for a registered name or pattern ("wrn-<depth>-<width>" -> "wrn-16-2")."""
    return _REGISTRY[name].example


def _known() -> str:
    return ", ".join(n if n == e.example else f"{n} (e.g. {e.example})" for n, e in sorted(_REGISTRY.items()))


def _resolve(arch: str) -> tuple[_Entry, dict[str, int]]:
    for entry in _REGISTRY.values():
        match = entry.regex.fullmatch(arch)
        if match is None:
            continue
        fields = {k: int(v) for k, v in match.groupdict().items()}
        error = entry.validate(**fields) if entry.validate is not None else None
        if error is not None:
            raise RobustgenError(f"invalid architecture {arch!r}: {error}; known architectures: {_known()}")
        return entry, fields
    raise RobustgenError(f"unknown architecture {arch!r}; known architectures: {_known()}")


def is_known_arch(arch: str) -> bool:
    """Whether `create_model(arch, ...)` would accept this name (checked without building)."""
    try:
        _resolve(arch)
    except RobustgenError:
        return False
    return True


def create_model(arch: str, *, num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, activation: str | None = None) -> nn.Module:
    """Build `arch` for [0, 1] input with `in_channels` channels. None means the architecture's
    default: mean/std 0.5 per channel and SiLU, except resnet-18-kuangliu (mean 0, std 1, ReLU)."""
    entry, fields = _resolve(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise RobustgenError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise RobustgenError(f"in_channels must be a positive integer, got {in_channels!r}")
    if activation is not None and activation not in ACTIVATIONS:
        raise RobustgenError(f"unknown activation {activation!r}; choose one of {', '.join(sorted(ACTIVATIONS))}")
    kwargs = {} if activation is None else {"activation": activation}
    return entry.builder(**fields, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **kwargs)


# The authors' model_zoo constants (google-deepmind/deepmind-research adversarial_robustness/pytorch):
# their files and RobustBench's DM models normalise with these, and do not store them.
CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
CIFAR100_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def external_normalization(arch: str, num_classes: int,
                           in_channels: int = 3) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """(mean, std) for a plain state dict of ``arch`` that does not hold them: the authors'
    CIFAR-100 constants for their architectures (wrn-*, preact-resnet-18) with 100 classes, their
    CIFAR-10 constants for other 3-channel inputs; (None, None), the architecture's defaults (0.5,
    as the authors' MNIST models), otherwise."""
    entry, _ = _resolve(arch)
    if entry.builder not in (_wide_resnet, _preact_resnet18) or in_channels != 3:
        return None, None
    return CIFAR100_MEAN_STD if num_classes == 100 else CIFAR10_MEAN_STD


@register_model("wrn-<depth>-<width>", example="wrn-16-2", validate=wrn_depth_error)
def _wide_resnet(*, depth: int, width: int, **kwargs) -> nn.Module:
    return WideResNet(depth, width, **kwargs)


@register_model("preact-resnet-18")
def _preact_resnet18(**kwargs) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), **kwargs)


@register_model("small-cnn")
def _small_cnn(**kwargs) -> nn.Module:
    return SmallCNN(**kwargs)


@register_model("small-cnn-<width>", example="small-cnn-16",
                validate=lambda width: None if width > 0 else "the width must be > 0")
def _small_cnn_width(*, width: int, **kwargs) -> nn.Module:
    """The demo CNN with ``width`` channels in its first block (small-cnn is small-cnn-32): capacity axis."""
    return SmallCNN(width=width, **kwargs)


@register_model("resnet-18-kuangliu")
def _kuangliu_resnet18(**kwargs) -> nn.Module:
    return KuangliuResNet((2, 2, 2, 2), **kwargs)


@register_model("resnet-<depth>", example="resnet-18", validate=resnet_depth_error)
def _torchvision_resnet(*, depth: int, **kwargs) -> nn.Module:
    return TorchvisionResNet(depth, **kwargs)
