"""Tests for robustgen.models: registry, parameter counts, shapes, normalisation, init, state dicts."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomize
from torch import nn

from robustgen.models import create_model, example_arch, is_known_arch, list_models, register_model
from robustgen.runtime.errors import RobustgenError

# One small concrete architecture per registered name or pattern (wrn-<depth>-<width> -> wrn-16-2).
ARCHS = [example_arch(name) for name in list_models()]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())




def test_registry_lists_paper_models():
    names = list_models()
    assert names == sorted(names)
    assert {"preact-resnet-18", "small-cnn", "wrn-<depth>-<width>"} <= set(names)
    assert all(is_known_arch(a) for a in ARCHS)


@pytest.mark.parametrize("arch", ["wrn-28-10", "wrn-70-16", "wrn-16-4", "wrn-10-1", "wrn-34-20"])
def test_known_wrn_names(arch):
    assert is_known_arch(arch)


@pytest.mark.parametrize("arch", ["wrn-27-10", "wrn-4-1", "wrn-28-0", "wrn-28", "WRN-28-10", "resnet-51", "resnet", ""])
def test_unknown_or_invalid_arch_raises(arch):
    assert not is_known_arch(arch)
    with pytest.raises(RobustgenError) as info:
        create_model(arch, num_classes=10)
    message = str(info.value)
    assert repr(arch) in message and "\n" not in message
    assert all(name in message for name in list_models())


@pytest.mark.parametrize(
    "arch, expected",
    [("wrn-28-10", 36_479_194), ("wrn-70-16", 266_796_506), ("preact-resnet-18", 12_548_426)],  # 3x3 shortcuts (authors)
)
def test_parameter_counts(arch, expected):
    # Built on the meta device: no memory, no init cost.
    with torch.device("meta"):
        model = create_model(arch, num_classes=10)
    assert n_params(model) == pytest.approx(expected, rel=0.005)


def test_small_cnn_is_small_and_has_batchnorm():
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    assert 50_000 <= n_params(model) <= 150_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_wrn_depth_sets_block_count():
    with torch.device("meta"):
        model = create_model("wrn-40-2", num_classes=10)
    assert [len(group.block) for group in model.layer] == [6, 6, 6]
    assert model.logits.in_features == 128


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_output_shape_and_zero_logits_at_init(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=7, in_channels=shape[0])
    assert all(isinstance(m, nn.BatchNorm2d) for m in model.modules() if "Norm" in type(m).__name__)
    assert torch.count_nonzero(model.logits.weight) == 0 and torch.count_nonzero(model.logits.bias) == 0
    for mode in (model.train, model.eval):
        mode()
        logits = model(torch.rand(4, *shape))
        assert logits.shape == (4, 7)
        assert torch.equal(logits, torch.zeros_like(logits))


@pytest.mark.parametrize("arch", ARCHS)
def test_normalisation_buffers_saved_and_applied(arch):
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    model = randomize(create_model(arch, num_classes=10, mean=mean, std=std)).eval()
    state = model.state_dict()
    assert torch.allclose(state["mean"], torch.tensor(mean).view(1, 3, 1, 1))
    assert torch.allclose(state["std"], torch.tensor(std).view(1, 3, 1, 1))

    default = create_model(arch, num_classes=10).eval()
    # Default stats are 0.5 / 0.5, except the kuangliu layout, whose original has no normalisation.
    m0, s0 = (0.0, 1.0) if arch == "resnet-18-kuangliu" else (0.5, 0.5)
    assert torch.equal(default.mean, torch.full((1, 3, 1, 1), m0))
    assert torch.equal(default.std, torch.full((1, 3, 1, 1), s0))
    default.load_state_dict({k: v for k, v in state.items() if k not in ("mean", "std")}, strict=False)

    # (x - m) / s == (x' - m0) / s0 for x' = m0 + s0 * (x - m) / s.
    x = torch.rand(2, 3, 16, 16)
    x_default = m0 + s0 * (x - model.mean) / model.std
    out = model(x)
    assert out.abs().max() > 1e-3
    assert torch.allclose(out, default(x_default), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, default(x), atol=1e-4)


def test_scalar_stats_broadcast_and_bad_stats_raise():
    model = create_model("small-cnn", num_classes=10, in_channels=3, mean=[0.1], std=[0.2])
    assert torch.allclose(model.mean, torch.full((1, 3, 1, 1), 0.1))
    with pytest.raises(RobustgenError, match="input channels"):
        create_model("small-cnn", num_classes=10, in_channels=1, mean=(0.5, 0.5, 0.5))
    with pytest.raises(RobustgenError, match="positive"):
        create_model("small-cnn", num_classes=10, std=(0.5, 0.0, 0.5))


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": 10, "in_channels": 0},
                                    {"num_classes": 10, "activation": "gelu"}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(RobustgenError):
        create_model("small-cnn", **kwargs)


@pytest.mark.parametrize("activation, module", [("silu", nn.SiLU), ("relu", nn.ReLU)])
def test_activation_is_configurable(activation, module):
    model = create_model("wrn-10-1", num_classes=10, activation=activation)
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.SiLU, nn.ReLU))}
    assert kinds == {module}


def test_default_activation_is_silu():
    assert any(isinstance(m, nn.SiLU) for m in create_model("small-cnn", num_classes=10).modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip(arch):
    kwargs = dict(num_classes=10, in_channels=1, mean=[0.3], std=[0.25])
    model = randomize(create_model(arch, **kwargs)).eval()
    fresh = create_model(arch, **kwargs)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), fresh(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_input_gradient_channels_last_and_bf16_autocast(arch):
    model = randomize(create_model(arch, num_classes=10)).eval()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    reference = model(x)
    reference.sum().backward()  # attacks differentiate with respect to the input
    assert x.grad is not None and x.grad.abs().sum() > 0

    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(x.detach().contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out_cl, reference, atol=1e-4, rtol=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = model(x.detach())
    assert out_bf16.shape == (2, 10) and torch.isfinite(out_bf16).all()
    assert torch.allclose(out_bf16.float(), reference, atol=0.1 * reference.abs().max().item() + 1e-3)


def test_register_model_pattern_parses_fields():
    @register_model("test-net-<size>", example="test-net-3")
    def _build(*, size, **kwargs):
        return nn.Linear(size, kwargs["num_classes"])

    try:
        assert is_known_arch("test-net-5") and not is_known_arch("test-net-x")
        assert create_model("test-net-5", num_classes=2).in_features == 5
        with pytest.raises(ValueError, match="already registered"):
            register_model("test-net-<size>", example="test-net-3")(_build)
    finally:
        from robustgen import models
        del models._REGISTRY["test-net-<size>"]


@pytest.mark.parametrize("arch, expected", [("resnet-50", 25_557_032), ("resnet-152", 60_192_808)])
def test_torchvision_resnet_parameter_counts_match_torchvision(arch, expected):
    with torch.device("meta"):
        model = create_model(arch, num_classes=1000)
    assert n_params(model) == expected  # torchvision's resnet50() / resnet152() (ImageNet, 1000 classes)


def test_torchvision_resnet_loads_torchvision_weights_and_normalises_inside():
    """The network proper is torchvision's: its weights load under net. (fc as logits), and with ReLU the model
    on [0, 1] input equals torchvision's resnet50 on the normalised input; SiLU replaces every ReLU."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    reference = resnet50(num_classes=7).eval()
    randomize(reference)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = create_model("resnet-50", num_classes=7, mean=mean, std=std, activation="relu").eval()
    state = reference.state_dict()
    model.logits.load_state_dict({"weight": state.pop("fc.weight"), "bias": state.pop("fc.bias")})
    model.net.load_state_dict(state)
    x = torch.rand(2, 3, 64, 64)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), reference(normalised))
    silu = create_model("resnet-50", num_classes=7)
    assert not any(isinstance(m, nn.ReLU) for m in silu.modules())
    assert sum(isinstance(m, nn.SiLU) for m in silu.modules()) == 17  # the stem + 16 bottlenecks


def test_wrn_takes_64x64_tinyimagenet_input():
    """WRN-28-10 on TinyImageNet is the CIFAR network (stride 1, 2, 2, global average pool) on
    64x64 input, as the PyTorch ports' ti_wideresnetwithswish."""
    model = create_model("wrn-16-2", num_classes=200).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 200)
