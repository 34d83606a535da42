"""Paper presets are the paper's recipe, and `run --dry-run` proves it before any GPU-hour: the
recipe, the cost estimate and a preflight of every input (a missing or corrupt one fails, exit 2)."""

import shutil
from collections import namedtuple

import numpy as np
import pytest

from robustgen.cli import main
from robustgen.presets import list_presets, load_config
from robustgen.preflight import npz_headers, preflight

PAPER_ROWS = ["cifar10_linf_wrn-28-10", "cifar10_linf_wrn-70-16", "cifar10_l2_wrn-70-16", "cifar100_linf_wrn-70-16",
              "svhn_linf_wrn-28-10", "cifar10_linf_preact-resnet-18"]
PAPER_PRESETS = PAPER_ROWS + [p for p in list_presets() if p.endswith("_gaussian")]


@pytest.fixture
def plenty_of_disk(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**15, 0, 10**15))


def test_every_paper_row_is_the_papers_recipe():
    assert set(PAPER_ROWS) <= set(list_presets()) and len(PAPER_PRESETS) == 11
    for name in PAPER_PRESETS:
        cfg = load_config(name)
        gaussian = name.endswith("_gaussian")
        assert cfg.generator.name == ("gaussian" if gaussian else "ddpm"), name
        assert cfg.train.alpha == (0.8 if gaussian else 0.3), name
        assert cfg.train.bn_group_size == 32 and cfg.eval.attack == "worst-of-aa-and-aa+mt", name
        assert cfg.classifier.arch == "wrn-28-10" and cfg.train.batch_size == 1024, name
        per_class = cfg.label.per_class
        classes = 100 if "cifar100" in name else 10
        assert per_class * classes in (1_000_000, 100_000_000) and cfg.generator.num_samples > per_class * classes
        # App. D for DDPM / Gaussian samples: the first N of each class, no confidence filter; the authors'
        # input pipeline walks the generated set without replacement
        assert cfg.label.per_class_order == "first" and cfg.train.generated_sampling == "permutation", name
    assert load_config("cifar10_linf_preact-resnet-18").train.epochs == 2000
    assert load_config("cifar100_linf_wrn-70-16").label.per_class == 10_000  # App. D footnote 13


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_dry_run_prints_the_recipe_and_the_cost(name, capsys, tmp_path, plenty_of_disk):
    main(["run", name, "--dry-run", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    generator = "gaussian" if name.endswith("_gaussian") else "DDPM ("
    assert f"generated data: {generator}" in out and "class-balanced: the" in out
    assert "evaluation: worst-of-aa-and-aa+mt" in out and "bn_group_size 32" in out
    assert "GPU-hours at" in out and "NVIDIA H200 GPU-hours" in out and "preflight: ok" in out
    if not name.endswith("_gaussian"):  # DDPM sampling and f_NR labelling priced by their own H200 rows
        assert "(measured: sampling ho-cifar10" in out and "(measured: labelling wrn-28-10" in out
    assert not (tmp_path / "run").exists()


WANG_PRESETS = ["cifar10_linf_wrn-28-10_wang2023", "cifar10_linf_wrn-70-16_wang2023"]


def test_the_wang2023_presets_are_their_released_command():
    # github.com/wzekai99/DM-Improves-AT README: train-wa.py --batch-size 512 --lr 0.2 --beta 5.0
    # --unsup-fraction 0.7 --ls 0.1 --num-adv-epochs 400, linf-pgd inner attack (10 x 2/255), --tau 0.995
    from robustgen.train.mixing.indices import source_counts

    for name, arch in zip(WANG_PRESETS, ("wrn-28-10", "wrn-70-16")):
        cfg = load_config(name)
        t = cfg.train
        assert (t.arch, t.loss, t.beta, t.batch_size, t.epochs, t.epoch_size) == (arch, "trades", 5, 512, 400, 50000)
        assert t.lr_per_256 * t.batch_size / 256 == pytest.approx(0.2) and t.ema_decay == 0.995
        assert t.label_smoothing_real == t.label_smoothing_generated == 0.1
        assert (t.inner.step_rule, t.inner.steps, t.inner.init) == ("sign", 10, "uniform")
        assert t.inner.sign_step_size == pytest.approx(2 / 255)
        weights = [src.weight for src in cfg.data.sources]
        assert source_counts(t.batch_size, weights) == (154, 358)  # their 512 - int(512 * 0.7) real images
        assert cfg.eval.attack == "autoattack" and cfg.eval.n is None and not cfg.baseline


@pytest.mark.parametrize("name", WANG_PRESETS)
def test_wang2023_dry_run_prices_training_on_the_imported_set(name, capsys, tmp_path, plenty_of_disk, monkeypatch):
    # their released 1m.npz layout (image uint8 NHWC, label = the conditioning class), imported as the README says
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "1m.npz", image=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8),
             label=np.arange(50) % 10)
    monkeypatch.chdir(tmp_path)
    main(["store", "import", "1m.npz", "edm_data/cifar10/1m"])
    capsys.readouterr()
    main(["run", name, "--dry-run", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "data: data.sources, shares of every batch: train 0.3, edm_data/cifar10/1m 0.7" in out
    assert "39,063 steps x 512 images x 26 (TRADES-10)" in out and "NVIDIA H200 GPU-hours" in out
    assert "evaluation: autoattack on all test images" in out and "preflight: ok" in out


def _npz_dataset(folder, n=20):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 label=np.arange(n) % 10)
    return folder


def test_dry_run_fails_on_a_corrupt_or_missing_input(tmp_path, capsys, plenty_of_disk):
    data = _npz_dataset(tmp_path / "data")
    args = ["run", "cifar10_linf_wrn-28-10", "--dry-run", "--out", str(tmp_path / "run"),
            "--set", f"data.dataset=npz:{data}"]
    main(args)
    assert "preflight: ok" in capsys.readouterr().out
    raw = (data / "train.npz").read_bytes()
    (data / "train.npz").write_bytes(raw[: len(raw) // 2])  # truncated: the zip directory is gone
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{data / 'train.npz'}: not a readable .npz" in err and err.count("\n") == 1
    (data / "train.npz").write_bytes(raw)
    bad = ["--set", "generator.ddpm.pretrained=/nowhere/ddpm", "--set", "classifier.checkpoint=/nowhere/f.safetensors"]
    with pytest.raises(SystemExit) as e:
        main(args + bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("robustgen: error:") == 2
    assert "/nowhere/ddpm" in err and "/nowhere/f.safetensors" in err


def test_preflight_checks_headers_types_and_disk(tmp_path, monkeypatch):
    data = _npz_dataset(tmp_path / "data")
    assert npz_headers(data / "train.npz")["image"] == ((20, 32, 32, 3), np.dtype(np.uint8))
    np.savez(data / "test.npz", image=np.zeros((5, 32, 32, 3), np.float32), label=np.zeros(5, np.int64))
    cfg = load_config("cifar10_linf_wrn-28-10", [f"data.dataset=npz:{data}"])
    report, _ = preflight(cfg, tmp_path / "run")
    assert any("'image' must be uint8" in p for p in report.problems)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    np.savez(data / "test.npz", image=np.zeros((5, 32, 32, 3), np.uint8), label=np.zeros(5, np.int64))
    report, _ = preflight(cfg, tmp_path / "run", disk_bytes=5 * 10**9)
    assert report.problems == [f"{tmp_path}: 1.0 GB free, the run needs about 5.0 GB"]


def test_an_l2_dry_run_with_the_adam_inner_attack_says_it_is_weak(capsys, tmp_path, plenty_of_disk):
    main(["run", "cifar10_l2_wrn-70-16", "--dry-run", "--out", str(tmp_path / "a")])
    assert "the Adam inner attack (the paper's) is weak under L2" in capsys.readouterr().out
    main(["run", "cifar10_l2_wrn-70-16", "--dry-run", "--out", str(tmp_path / "b"), "--set", "train.inner.step_rule=sign"])
    assert "inner attack" not in capsys.readouterr().out.split("preflight:")[1]
