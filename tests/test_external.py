"""External weights: the kuangliu ResNet-18 layout, load_external_model (plain PyTorch state dicts,
common containers, DataParallel prefixes, errors naming the file) (RobustBench-form export: test_zoo.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import randomize
from safetensors.torch import save_file
from torch import nn

from robustgen.checkpoint import load_external_model, load_model
from robustgen.models import create_model
from robustgen.runtime.errors import RobustgenError

ARCH = "resnet-18-kuangliu"
CIFAR_TEST = Path("/work/shared/data/cifar10-jpeg/test.npz")


def _pyautoattack_model() -> Path | None:
    try:
        import pyautoattack
    except ImportError:
        return None
    path = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    return path if path.is_file() else None


PYAUTOATTACK_MODEL = _pyautoattack_model()
needs_pyautoattack = pytest.mark.skipif(PYAUTOATTACK_MODEL is None, reason="pyautoattack's model_test.pt not installed")




def kuangliu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a kuangliu/pytorch-cifar training script saves: no mean/std buffers."""
    return {k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}


def assert_one_line_naming(info: pytest.ExceptionInfo, path: Path, *needles: str) -> None:
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message


# --- the architecture ------------------------------------------------------------------------------


def test_kuangliu_layout_names_and_parameter_count():
    with torch.device("meta"):
        model = create_model(ARCH, num_classes=10)
    # Measured: 11,173,962, the parameter count of kuangliu/pytorch-cifar's ResNet18() for 10
    # classes (and of pyautoattack's model_test.pt, excluding BN running statistics).
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    names = set(model.state_dict())
    assert {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
            "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.1.conv2.weight", "layer1.1.bn2.bias",
            "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var", "layer4.1.bn2.weight",
            "linear.weight", "linear.bias", "mean", "std"} <= names
    # Shortcuts only where the shape changes (first block of layers 2-4).
    assert sorted({k.split(".shortcut")[0] for k in names if ".shortcut." in k}) == ["layer2.0", "layer3.0", "layer4.0"]
    assert not any(k.startswith(("stem", "stages", "logits")) for k in names)
    assert len([k for k in names if k not in ("mean", "std")]) == 122


@needs_pyautoattack
def test_kuangliu_layout_matches_pyautoattack_file_exactly():
    state = torch.load(PYAUTOATTACK_MODEL, map_location="cpu", weights_only=True)
    model = create_model(ARCH, num_classes=10)
    expected = model.state_dict()
    assert set(expected) == set(state) | {"mean", "std"}
    assert all(expected[k].shape == v.shape for k, v in state.items())


def test_kuangliu_defaults_forward_and_activation():
    model = randomize(create_model(ARCH, num_classes=10)).eval()
    assert torch.equal(model.mean, torch.zeros(1, 3, 1, 1)) and torch.equal(model.std, torch.ones(1, 3, 1, 1))
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.SiLU, nn.ReLU))}
    assert kinds == {nn.ReLU}
    torch.manual_seed(0)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)  # adaptive pooling: any input size

    silu = create_model(ARCH, num_classes=4, in_channels=1, activation="silu", mean=[0.3], std=[0.2])
    assert {type(m) for m in silu.modules() if isinstance(m, (nn.SiLU, nn.ReLU))} == {nn.SiLU}
    assert torch.allclose(silu.mean, torch.full((1, 1, 1, 1), 0.3))
    assert silu(torch.rand(3, 1, 16, 16)).shape == (3, 4)


def test_other_archs_keep_their_defaults():
    model = create_model("small-cnn", num_classes=10)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    assert torch.equal(model.mean, torch.full((1, 3, 1, 1), 0.5))


# --- load_external_model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuangliu_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize(create_model(ARCH, num_classes=10)).eval()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "nested_prefix"])
def test_load_external_round_trip(kuangliu_model, tmp_path, wrap):
    state = kuangliu_state(kuangliu_model)
    obj = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 200, "acc": 95.1},
        "model": {"model": state, "optimizer": {"lr": 0.1}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        "nested_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = load_external_model(path, arch=ARCH)
    assert not loaded.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), kuangliu_model(x))
    assert torch.equal(loaded.mean, torch.zeros(1, 3, 1, 1))  # absent from the file: the identity default


def test_load_external_safetensors_and_stats_from_file(tmp_path):
    model = randomize(create_model("small-cnn", num_classes=5, in_channels=1, mean=[0.3], std=[0.2])).eval()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # no robustgen metadata
    loaded = load_external_model(path, arch="small-cnn", num_classes=5, in_channels=1)
    assert torch.allclose(loaded.mean, torch.full((1, 1, 1, 1), 0.3))  # present in the file: taken from it
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class _NotWeights:
    pass


def _write_bad_file(kind: str, path: Path, kuangliu_model: nn.Module) -> tuple[list[str], dict]:
    """Write a bad file of `kind`; returns strings the error must contain and load kwargs."""
    state = kuangliu_state(kuangliu_model)
    if kind == "garbage":
        path.write_bytes(b"this is not a torch file")
        return ["weights_only"], {}
    if kind == "pickle":
        torch.save({"state_dict": state, "extra": _NotWeights()}, path)
        return ["weights_only"], {}
    if kind == "not_a_dict":
        torch.save([torch.zeros(3)], path)
        return ["not a state dict", "list"], {}
    if kind == "no_weights":
        torch.save({"epoch": 3, "note": "hello"}, path)
        return ["not a state dict", "'epoch'"], {}
    if kind == "missing":
        torch.save({k: v for k, v in state.items() if k != "layer3.1.bn1.bias"}, path)
        return ["missing key 'layer3.1.bn1.bias'"], {}
    if kind == "unexpected":
        torch.save({**state, "fc.weight": torch.zeros(10, 512)}, path)
        return ["unexpected key 'fc.weight'"], {}
    if kind == "shape":
        return ["'linear.weight'", "(10, 512)", "(100, 512)"], {"num_classes": 100}
    if kind == "arch":
        return ["unknown architecture 'vgg-1000'"], {"arch": "vgg-1000"}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_file", "garbage", "pickle", "not_a_dict", "no_weights",
                                  "missing", "unexpected", "shape", "arch"])
def test_load_external_errors_name_the_file(kuangliu_model, tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "missing_file":
        needles, kwargs = ["not found"], {}
    else:
        if kind in ("shape", "arch"):
            torch.save(kuangliu_state(kuangliu_model), path)
        needles, kwargs = _write_bad_file(kind, path, kuangliu_model)
    with pytest.raises(RobustgenError) as info:
        load_external_model(path, **{"arch": ARCH, **kwargs})
    assert_one_line_naming(info, path, *needles)


def test_load_model_on_a_plain_state_dict_says_to_pass_arch(kuangliu_model, tmp_path):
    pt, st = tmp_path / "plain.pt", tmp_path / "plain.safetensors"
    torch.save(kuangliu_state(kuangliu_model), pt)
    save_file(kuangliu_state(kuangliu_model), str(st))
    for path in (pt, st):
        with pytest.raises(RobustgenError) as info:
            load_model(path)
        assert_one_line_naming(info, path, "--arch")
    with pytest.raises(RobustgenError) as info:
        load_model(tmp_path / "nothing.safetensors")
    assert_one_line_naming(info, tmp_path / "nothing.safetensors", "not found")


@needs_pyautoattack
def test_pyautoattack_model_loads_and_predicts():
    model = load_external_model(PYAUTOATTACK_MODEL, arch=ARCH)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (16, 10) and torch.isfinite(out).all()
    assert not torch.allclose(out, out[:1].expand_as(out))  # depends on the input


@pytest.mark.slow
@needs_pyautoattack
@pytest.mark.skipif(not CIFAR_TEST.is_file(), reason=f"{CIFAR_TEST} not present")
def test_pyautoattack_model_clean_accuracy_on_cifar10_jpeg():
    with np.load(CIFAR_TEST) as data:
        images, labels = data["image"], data["label"]
    # The file is ordered by class: a seeded random subset of 1000 covers all classes.
    idx = np.random.default_rng(0).choice(len(labels), 1000, replace=False)
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255  # [N, 3, 32, 32] in [0, 1]
    y = torch.from_numpy(labels[idx])
    model = load_external_model(PYAUTOATTACK_MODEL, arch=ARCH)
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in x.split(250)])
    accuracy = (pred == y).float().mean().item()
    print(f"pyautoattack model_test.pt clean accuracy on 1000 cifar10-jpeg test images: {accuracy:.3f}")
    assert accuracy > 0.80
