"""RobustBench both ways: zoo models by name from RobustBench's file layout (offline), the
robustbench evaluation protocol, and exports that load into RobustBench's own classes."""

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import randomize

import robustgen
from robustgen.checkpoint import model_spec, save_model
from robustgen.cli import main
from robustgen.models import CIFAR10_MEAN_STD, create_model
from robustgen.runtime.errors import RobustgenError
from robustgen.zoo import export_robustbench

R18 = "Gowal2021Improving_R18_ddpm_100m"


def _robustbench_classes():
    """RobustBench's DMWideResNet / DMPreActResNet from the installed package's own file (its
    package __init__ imports download helpers that need more than a test does)."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None:
        pytest.fail("the test extra installs robustbench: pip install -e '.[test]'")
    path = Path(spec.submodule_search_locations[0]) / "model_zoo" / "architectures" / "dm_wide_resnet.py"
    module_spec = importlib.util.spec_from_file_location("rb_dm_wide_resnet", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.DMWideResNet, module.DMPreActResNet


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A model in RobustBench's layout: models/cifar10/Linf/<Name>.pt holding {"state_dict": ...}
    with DataParallel's "module." prefix and no mean / std (RobustBench keeps them in the class)."""
    root = tmp_path_factory.mktemp("rb")
    torch.manual_seed(0)
    model = randomize(create_model("preact-resnet-18", num_classes=10, mean=CIFAR10_MEAN_STD[0],
                                   std=CIFAR10_MEAN_STD[1])).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items() if k not in ("mean", "std")}
    path = root / "models" / "cifar10" / "Linf" / f"{R18}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, path)
    return root, model


def test_a_robustbench_model_loads_by_name_from_its_layout(zoo):
    root, reference = zoo
    x = torch.rand(3, 3, 32, 32)
    for spec in (f"robustbench:{R18}", f"robustbench:cifar10/Linf/{R18}"):
        model = robustgen.load_model(spec, model_dir=root / "models")
        with torch.no_grad():
            assert torch.equal(model(x), reference(x))


def test_missing_robustbench_models_are_one_line_errors(zoo, monkeypatch, tmp_path):
    root, _ = zoo
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)  # no download in tests
    for spec, needle in ((f"robustbench:{R18}", f"{R18}.pt does not exist"),
                         ("robustbench:Carmon2019Unlabeled", "not among the cifar10/Linf models")):
        with pytest.raises(RobustgenError, match="robustbench") as e:
            robustgen.load_model(spec, model_dir=tmp_path)
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RobustgenError, match="expected robustbench:<Name>"):
        robustgen.load_model("robustbench:cifar10/Linf", model_dir=root / "models")


def _fake_cifar10(root: Path, images: np.ndarray, labels: list[int], monkeypatch):
    """CIFAR-10 in torchvision's python layout with these test images (a few train images too)."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": flat, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    monkeypatch.setattr(CIFAR10, "train_list", [[n, None] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, None] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})


def test_eval_by_name_and_the_robustbench_protocol(zoo, tmp_path, monkeypatch, capsys):
    root, model = zoo
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():  # labelled by the model: every point is clean-correct, so the attacks run
        labels = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).tolist()
    _fake_cifar10(tmp_path / "data", images, labels, monkeypatch)
    common = ["--checkpoint", f"robustbench:{R18}", "--model-dir", str(root / "models"), "--set",
              f"data.data_root={tmp_path / 'data'}", "--set", "device=cpu", "--n", "4", "--quiet"]
    main(["eval", *common, "--attack", "pgd40", "--out", str(tmp_path / "e.json")])
    ours = json.loads((tmp_path / "e.json").read_text())
    assert ours["dataset"] == "cifar10" and ours["eps"] == pytest.approx(8 / 255) and ours["clean_accuracy"] == 1.0
    assert ours["robust_accuracy"] <= 1.0 and ours["norm"] == "linf"
    capsys.readouterr()
    main(["eval", *common, "--protocol", "robustbench", "--batch-size", "4", "--out", str(tmp_path / "rb.json")])
    rb = json.loads((tmp_path / "rb.json").read_text())
    assert rb["protocol"] == "robustbench" and rb["autoattack_version"] == "standard" and rb["n"] == 4
    assert rb["clean_accuracy"] == 1.0 and 0 <= rb["robust_accuracy"] <= ours["robust_accuracy"] + 1e-9
    assert rb["comparable_to_leaderboard"] is False  # 4 points, not the leaderboard's 10,000
    assert "the first 4 cifar10 test images" in rb["points"]


def _checkpoint(path, arch, *, num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
    torch.manual_seed(1)
    model = randomize(create_model(arch, num_classes=num_classes, mean=mean, std=std)).eval()
    config = {"threat": {"norm": "linf", "eps": 8 / 255}, "data": {"dataset": "cifar10"},
              "generator": {"name": "ddpm", "num_samples": 1000}, "train": {"arch": arch, "alpha": 0.3}}
    save_model(path, model, spec=model_spec(arch=arch, num_classes=num_classes, in_channels=3, activation="silu",
                                            image_size=32), extra={"config": config})
    return model


@pytest.mark.parametrize("arch", ["wrn-16-2", "preact-resnet-18"])
def test_exports_load_into_robustbench_classes_with_identical_logits(arch, tmp_path):
    DMWideResNet, DMPreActResNet = _robustbench_classes()
    model = _checkpoint(tmp_path / "m.safetensors", arch, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    evaluation = {"attack": "worst-of-aa-and-aa+mt", "n": 100, "clean_accuracy": 0.9, "robust_accuracy": 0.6,
                  "robust_accuracy_after": {"autoattack": 0.62, "aa+mt": 0.61}}
    (tmp_path / "aa.json").write_text(json.dumps(evaluation))
    main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "model.pt"),
          "--eval-json", str(tmp_path / "aa.json")])
    side = json.loads((tmp_path / "model.pt.json").read_text())
    cls = {"DMWideResNet": DMWideResNet, "DMPreActResNet": DMPreActResNet}[side["robustbench_class"]]
    theirs = cls(**side["robustbench_kwargs"], activation_fn=torch.nn.SiLU, mean=tuple(side["mean"]),
                 std=tuple(side["std"])).eval()
    theirs.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs(x), model(x), atol=1e-5, rtol=1e-5)
        assert torch.equal(robustgen.load_model(tmp_path / "model.pt")(x), model(x))  # and back, via the sidecar
    card = (tmp_path / "model.pt.md").read_text()
    assert "| autoattack (within worst-of-aa-and-aa+mt) | 100 | 90.00% | 62.00% |" in card
    assert "| aa+mt (within worst-of-aa-and-aa+mt) | 100 | 90.00% | 61.00% |" in card
    assert "| worst-of-aa-and-aa+mt | 100 | 90.00% | 60.00% |" in card
    assert "1000 images from the ddpm generator, 30% real images per batch" in card and side["dataset"] == "cifar10"
    assert f"{side['robustbench_class']}(num_classes=10" in side["how_to_load"]


def test_a_robustgen_only_architecture_exports_with_its_normalisation(tmp_path):
    torch.manual_seed(0)
    model = randomize(create_model("small-cnn", num_classes=10, in_channels=1, mean=[0.4], std=[0.3])).eval()
    save_model(tmp_path / "m.safetensors", model, spec=model_spec(arch="small-cnn", num_classes=10, in_channels=1,
                                                                  activation="silu", image_size=8))
    side = export_robustbench(tmp_path / "m.safetensors", tmp_path / "m.pt")
    assert side["robustbench_class"] is None and side["threat_model"] is None
    assert "create_model('small-cnn'" in side["how_to_load"] and "Not evaluated" in (tmp_path / "m.pt.md").read_text()
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert torch.allclose(state["mean"], torch.full((1, 1, 1, 1), 0.4))  # kept: no RobustBench class holds it
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(robustgen.load_model(tmp_path / "m.pt")(x), model(x))
    with pytest.raises(RobustgenError) as e:
        export_robustbench(tmp_path / "missing.safetensors", tmp_path / "x.pt")
    assert "missing.safetensors" in str(e.value) and not (tmp_path / "x.pt").exists()
