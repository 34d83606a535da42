"""Resumable jobs over stores: Gaussian range sampling, sharded generation and labelling killed with
SIGKILL and resumed (byte-identical shards), per-class selection, and the CLI verbs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustgen.checkpoint import model_spec, save_model
from robustgen.cli import main
from robustgen.data import load_dataset
from robustgen.data.store import MANIFEST, Store
from robustgen.data.store.inspect import verify_store
from robustgen.generate.gaussian import (
    NOISE_CHUNK,
    RANGE_BLOCK,
    GaussianRangeSampler,
    _noise_factor,
    _pca_directions,
    balanced_class_counts,
    fit_class_conditional_gaussian,
    sample_gaussian_range,
)
from robustgen.generate.sample_to_store import generate_store
from robustgen.label.label_store import label_store, select_store
from robustgen.label.select import keep_counts, select_per_class
from robustgen.models import create_model
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import file_sha256

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def digits_fit(digits):
    return fit_class_conditional_gaussian(digits.images, digits.labels, num_classes=10, num_components=20)


# --------------------------------------------------------------------------- Gaussian range sampler
def test_range_sampler_is_per_sample_deterministic(digits_fit):
    n = 2 * 10 * RANGE_BLOCK + 37  # crosses block boundaries of every class
    whole, classes = sample_gaussian_range(digits_fit, 0, n, seed=4)
    assert whole.shape == (n, 8, 8, 1) and classes.dtype == np.int64
    np.testing.assert_array_equal(classes, np.arange(n) % 10)
    assert np.bincount(classes[:23], minlength=10).tolist() == balanced_class_counts(23, 10)
    sampler = GaussianRangeSampler(digits_fit, seed=4)
    cuts = [0, 1, 999, 10 * RANGE_BLOCK + 3, 15000, n]
    parts = [sampler.sample(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    assert np.concatenate([p[0] for p in parts]).tobytes() == whole.tobytes()
    # a fresh sampler (no caches) on a range in the middle
    mid, _ = sample_gaussian_range(digits_fit, 12345, 12400, seed=4)
    assert mid.tobytes() == whole[12345:12400].tobytes()
    other, _ = sample_gaussian_range(digits_fit, 0, 50, seed=5)
    assert other.tobytes() != whole[:50].tobytes()
    # the documented math in float64 (noise rows of class c from default_rng([seed, c, m]), inverse
    # PCA, clip, quantise) gives the same images up to rare roundings of the float32 sampler
    c, fit = 3, digits_fit
    eps = np.random.default_rng([4, c, 0]).standard_normal((NOISE_CHUNK, fit.components[c].shape[1]))[:100]
    x = (fit.latent_mean[c] + eps @ _noise_factor(fit.latent_cov[c]).T) @ fit.components[c].T + fit.means_image[c]
    a = np.rint(np.clip(x, 0, 1) * 255).astype(int)
    b = whole[:1000][classes[:1000] == c].reshape(100, -1).astype(int)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.999
    with pytest.raises(RobustgenError, match="start <= stop"):
        sampler.sample(5, 2)


def test_subspace_pca_matches_exact_eigh():
    rng = np.random.default_rng(0)
    d, n, k = 768, 900, 40
    scales = np.exp(-np.arange(d) / 60.0)
    x = (rng.standard_normal((n, d)) * scales) @ np.linalg.qr(rng.standard_normal((d, d)))[0]
    x -= x.mean(0)
    v_exact = _pca_directions(x, k, method="exact")
    v_sub = _pca_directions(x, k, method="subspace")
    np.testing.assert_allclose(v_sub, v_exact, atol=1e-6)
    np.testing.assert_allclose(v_sub.T @ v_sub, np.eye(k), atol=1e-10)


# --------------------------------------------------------------------------- generation
GEN_SCRIPT = """
import sys, time
from robustgen.data import load_dataset
from robustgen.generate.sample_to_store import generate_store
d = load_dataset("digits", "train")
generate_store(sys.argv[1], generator="gaussian", train_images=d.images, train_labels=d.labels, num_classes=10,
               num_samples=int(sys.argv[2]), seed=0, fit_config={"num_components": 20}, shard_size=50,
               class_names=d.class_names, progress=False, on_shard=lambda k: time.sleep(float(sys.argv[3])))
"""


def _generate(path, digits, n, **kw):
    return generate_store(path, generator="gaussian", train_images=digits.images, train_labels=digits.labels,
                          num_classes=10, num_samples=n, seed=0, fit_config={"num_components": 20}, shard_size=50,
                          class_names=digits.class_names, progress=False, **kw)


def _shard_hashes(path):
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    names = sorted(f["name"] for e in manifest["shards"] for f in e["files"].values())
    return {name: file_sha256(Path(path) / name) for name in names}


def _run_and_kill(args, manifest_path, ready):
    """Start ``python -c`` and SIGKILL it once ``ready(manifest)`` holds; returns that manifest."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"job ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            try:
                manifest = json.loads(manifest_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                manifest = None
            if manifest is not None and ready(manifest):
                time.sleep(0.05)  # land somewhere inside the next shard
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return manifest
            time.sleep(0.02)
        raise AssertionError("job never got far enough")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_generation_killed_and_resumed_is_byte_identical(tmp_path, digits):
    ref = _generate(tmp_path / "ref", digits, 520)
    assert ref["shards"] == 11 and ref["written"] == 520 and ref["refit"]
    killed = tmp_path / "killed"
    seen = _run_and_kill([GEN_SCRIPT, str(killed), "520", "0.3"], killed / MANIFEST,
                         lambda m: len(m["shards"]) >= 2)
    assert len(seen["shards"]) < 11
    with pytest.raises(RobustgenError, match="incomplete"):
        Store(killed)
    resumed = _generate(killed, digits, 520)
    assert not resumed["refit"] and resumed["skipped"] >= 100 and resumed["written"] < 520
    assert _shard_hashes(killed) == _shard_hashes(tmp_path / "ref")
    assert verify_store(killed) == [] and not list(killed.glob(".*.tmp"))
    # a second run has nothing to do
    assert _generate(killed, digits, 520)["written"] == 0


def test_generation_extends_and_refuses_other_settings(tmp_path, digits):
    _generate(tmp_path / "a", digits, 120)
    out = _generate(tmp_path / "a", digits, 230)  # the short last shard is rewritten whole
    assert out["skipped"] == 100 and out["written"] == 130
    _generate(tmp_path / "b", digits, 230)
    assert _shard_hashes(tmp_path / "a") == _shard_hashes(tmp_path / "b")
    s = Store(tmp_path / "a")
    np.testing.assert_array_equal(s.labels, np.arange(230) % 10)
    np.testing.assert_array_equal(s.conditions, np.arange(230) % 10)
    with pytest.raises(RobustgenError, match="seed 0, not 1"):
        generate_store(tmp_path / "a", generator="gaussian", train_images=digits.images, train_labels=digits.labels,
                       num_classes=10, num_samples=230, seed=1, fit_config={"num_components": 20}, shard_size=50,
                       progress=False)
    with pytest.raises(RobustgenError, match="more than the 100 asked for"):
        _generate(tmp_path / "a", digits, 100)
    with pytest.raises(RobustgenError, match="different training data"):
        generate_store(tmp_path / "a", generator="gaussian", train_images=digits.images[1:],
                       train_labels=digits.labels[1:], num_classes=10, num_samples=230, seed=0,
                       fit_config={"num_components": 20}, shard_size=50, progress=False)


# --------------------------------------------------------------------------- labelling
LABEL_SCRIPT = """
import sys, time, torch
from robustgen.checkpoint import load_model
from robustgen.label.label_store import label_store
torch.set_num_threads(2)
model = load_model(sys.argv[2])
label_store(sys.argv[1], model, labeller={"id": "test"}, mode=sys.argv[3], batch_size=32, progress=False,
            on_shard=lambda k: time.sleep(0.3))
"""


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "model.safetensors"
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    save_model(path, model, spec=model_spec(arch="small-cnn", num_classes=10, in_channels=1, activation="silu",
                                            image_size=8))
    return path


def test_labelling_killed_and_resumed_is_byte_identical(tmp_path, digits, classifier):
    import shutil

    from robustgen.checkpoint import load_model

    _generate(tmp_path / "gen", digits, 300)
    shutil.copytree(tmp_path / "gen", tmp_path / "ref")
    shutil.copytree(tmp_path / "gen", tmp_path / "killed")
    torch.set_num_threads(2)
    model = load_model(classifier)
    ref = label_store(tmp_path / "ref", model, labeller={"id": "test"}, mode="argmax", batch_size=32, progress=False)
    assert ref["labelled"] == 300 and 0 <= ref["agreement_with_condition"] <= 1
    seen = _run_and_kill([LABEL_SCRIPT, str(tmp_path / "killed"), str(classifier), "argmax"],
                         tmp_path / "killed" / MANIFEST,
                         lambda m: sum(e.get("labeller") == "test:argmax" for e in m["shards"]) >= 2)
    assert sum(e.get("labeller") == "test:argmax" for e in seen["shards"]) < 6
    with pytest.raises(RobustgenError, match="different labellers"):
        Store(tmp_path / "killed")
    resumed = label_store(tmp_path / "killed", model, labeller={"id": "test"}, mode="argmax", batch_size=32,
                          progress=False)
    assert resumed["skipped"] >= 100 and resumed["labelled"] < 300
    assert _shard_hashes(tmp_path / "killed") == _shard_hashes(tmp_path / "ref")
    s = Store(tmp_path / "ref")
    assert s.confidences.dtype == np.float32 and np.all((s.confidences > 0) & (s.confidences <= 1))
    # condition mode: label = the generator's class, confidence = p(class)
    cond = label_store(tmp_path / "ref", model, labeller={"id": "test"}, mode="condition", batch_size=32,
                       progress=False)
    assert cond["labelled"] == 300
    s = Store(tmp_path / "ref")
    np.testing.assert_array_equal(s.labels, s.conditions)


def test_select_per_class_rules():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    conf = np.array([0.9, 0.1, 0.5, 0.7, 0.7, 0.2, 0.9, 0.4, 0.3, 0.5])
    assert keep_counts([4, 2, 4], top_k=3).tolist() == [3, 2, 3]
    assert keep_counts([4, 2, 4], top_fraction=0.5).tolist() == [2, 1, 2]
    assert keep_counts([4, 2, 4], balanced=True).tolist() == [2, 2, 2]
    assert keep_counts([4, 2, 5], top_fraction=0.3, balanced=True).tolist() == [1, 1, 1]
    # class 0: 0.9 (0), then 0.5 tie between 2 and 9 -> lower index 2
    assert select_per_class(labels, conf, np.array([2, 1, 2])).tolist() == [0, 2, 3, 6, 7]
    with pytest.raises(RobustgenError, match="class 2 has no samples"):
        keep_counts([3, 1, 0], balanced=True)
    with pytest.raises(RobustgenError, match="fraction"):
        keep_counts([3], top_fraction=1.5)
    rng = np.random.default_rng(0)
    lab, cf = rng.integers(0, 5, 400), rng.random(400).astype(np.float32)
    from robustgen.label import top_k_per_class

    np.testing.assert_array_equal(select_per_class(lab, cf, np.full(5, 17)),
                                  top_k_per_class(lab, cf, k=17, num_classes=5))


def test_select_store_and_cli(tmp_path, digits, classifier, capsys):
    _generate(tmp_path / "s", digits, 300)
    with pytest.raises(RobustgenError, match="label the store first"):
        select_store(tmp_path / "s", top_k=5)
    main(["store", "label", str(tmp_path / "s"), "--checkpoint", str(classifier), "--top-k", "7", "--device", "cpu",
          "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert out["num_generated"] == 300 and out["num_labeled"] <= 70
    s = Store(tmp_path / "s")
    assert len(s) == out["num_labeled"] and np.bincount(s.labels, minlength=10).max() <= 7
    main(["store", "label", str(tmp_path / "s"), "--checkpoint", str(classifier), "--condition-top-fraction", "0.2",
          "--balanced", "--device", "cpu", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "condition" and out["counts_per_class"] == [6] * 10
    # --out: a new store sharing the images; the labelled one is left as it was
    main(["store", "label", str(tmp_path / "s"), "--out", str(tmp_path / "l"), "--checkpoint", str(classifier),
          "--top-k", "3", "--device", "cpu", "--quiet"])
    assert json.loads(capsys.readouterr().out)["path"] == str(tmp_path / "l")
    assert len(Store(tmp_path / "l")) <= 30 and len(Store(tmp_path / "s")) == 60
    main(["store", "label", str(tmp_path / "s"), "--checkpoint", str(classifier), "--device", "cpu", "--quiet"])
    assert len(Store(tmp_path / "s")) == 300  # no rule: the selection is cleared
    wrong = tmp_path / "wrong.safetensors"
    save_model(wrong, create_model("small-cnn", num_classes=3, in_channels=1),
               spec=model_spec(arch="small-cnn", num_classes=3, in_channels=1, activation="silu", image_size=8))
    with pytest.raises(SystemExit) as e:
        main(["store", "label", str(tmp_path / "s"), "--checkpoint", str(wrong)])
    assert e.value.code == 2 and "3 classes" in capsys.readouterr().err


def test_cli_store_generate_and_samples(tmp_path, capsys):
    # the Gaussian generator (the default preset's is a DDPM trained for 1000 steps: 80 s on a CPU)
    args = ["store", "generate", str(tmp_path / "g"), "--num-samples", "120", "--shard-size", "50", "--quiet",
            "--set", "generator.name=gaussian", "--set", "generator.pca_components=10"]
    main(args)
    out = json.loads(capsys.readouterr().out)
    assert out["num_samples"] == 120 and out["shards"] == 3
    main(args)
    assert json.loads(capsys.readouterr().out)["written"] == 0
    main(["report", "samples", str(tmp_path / "g"), "--out", str(tmp_path / "grid.png")])
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(SystemExit) as e:
        main(["store", "generate", str(tmp_path / "g"), "--num-samples", "120", "--shard-size", "60", "--quiet",
              "--set", "generator.name=gaussian", "--set", "generator.pca_components=10"])
    assert e.value.code == 2 and "shard size 50, not 60" in capsys.readouterr().err


def test_class_balance_keeps_exactly_n_per_class_or_says_how_much_to_oversample():
    # paper App. D: 1M = the 100K most confident of every class; the samples must oversample
    assert keep_counts([120, 100, 131], per_class=100).tolist() == [100, 100, 100]
    with pytest.raises(RobustgenError, match=r"class 1 has only 80 of 330 generated .* at least 1\.25x"):
        keep_counts([120, 80, 130], per_class=100)
    with pytest.raises(RobustgenError, match="excludes"):
        keep_counts([5, 5], per_class=2, top_k=3)
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    conf = np.array([0.2, 0.9, 0.5, 0.1, 0.8, 0.3, 0.7])
    assert select_per_class(labels, conf, keep_counts(np.bincount(labels), per_class=2)).tolist() == [1, 2, 4, 6]


def test_class_balanced_store_reports_counts_before_and_after(tmp_path, digits, classifier, capsys):
    _generate(tmp_path / "s", digits, 300)
    main(["store", "label", str(tmp_path / "s"), "--checkpoint", str(classifier), "--condition-top-fraction", "1",
          "--device", "cpu", "--quiet"])
    capsys.readouterr()
    before = np.bincount(Store(tmp_path / "s").labels, minlength=10)
    n = int(before.min())
    result = select_store(tmp_path / "s", per_class=n)
    assert result["counts_before"] == before.tolist() and result["counts_per_class"] == [n] * 10
    s = Store(tmp_path / "s")
    assert np.bincount(s.labels, minlength=10).tolist() == [n] * 10
    with pytest.raises(RobustgenError, match=f"{tmp_path / 's'}: class-balanced labels need {n + 1}"):
        select_store(tmp_path / "s", per_class=n + 1)
