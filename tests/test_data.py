"""Tests for robustgen.data: datasets, the .npz layout, alpha-mixing indices, crop/flip."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustgen.data import (
    ImageDataset,
    crop_flip,
    list_datasets,
    load_dataset,
    read_npz,
    register_dataset,
    to_float_nchw,
    train_val_split,
    validate_dataset,
    write_npz,
)
from robustgen.data import datasets as datasets_mod
from robustgen.runtime.errors import RobustgenError
from robustgen.train.mixing.indices import WeightedIndices, source_counts

SHARED_CIFAR = Path("/work/shared/data/cifar10-jpeg")


def _images(n=6, h=5, w=7, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# mixing: a proportion alpha of real images per batch is WeightedIndices with weights (alpha, 1 - alpha)


def alpha_counts(batch_size, alpha):
    return source_counts(batch_size, [alpha, 1 - alpha])


def alpha_indices(n_real, n_generated, batch_size, alpha, seed, generated_sampling="with_replacement"):
    return WeightedIndices([n_real, n_generated], [alpha, 1 - alpha], batch_size=batch_size, seed=seed,
                           sampling=("permutation", generated_sampling))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 10, 64, 100, 128, 256, 511, 1024])
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.4, 0.45, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_batch_composition_exact(batch_size, alpha):
    n_real, n_gen = alpha_counts(batch_size, alpha)
    assert n_real + n_gen == batch_size
    assert n_real == math.floor(alpha * batch_size + 0.5)
    assert 0 <= n_real <= batch_size


def test_batch_composition_known_values():
    assert alpha_counts(1024, 0.3) == (307, 717)
    assert alpha_counts(10, 0.45) == (5, 5)  # half rounds up
    assert alpha_counts(512, 1.0) == (512, 0)
    assert alpha_counts(512, 0.0) == (0, 512)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf")])
def test_batch_composition_rejects_bad_alpha(alpha):
    with pytest.raises(RobustgenError, match="weights must be finite, >= 0"):
        alpha_counts(16, alpha)


def test_batch_composition_rejects_bad_batch_size():
    with pytest.raises(RobustgenError):
        alpha_counts(0, 0.5)


@pytest.mark.parametrize("sampling", ["with_replacement", "permutation"])
def test_mixed_indices_deterministic_and_pure(sampling):
    src = alpha_indices(1000, 5000, 64, 0.3, seed=7, generated_sampling=sampling)
    in_order = [src(t) for t in range(8)]
    fresh = alpha_indices(1000, 5000, 64, 0.3, seed=7, generated_sampling=sampling)
    # Out of order on a fresh object: step 5 before step 3, far steps in between.
    r5, g5 = fresh(5)
    fresh(1000)
    r3, g3 = fresh(3)
    np.testing.assert_array_equal(r5, in_order[5][0])
    np.testing.assert_array_equal(g5, in_order[5][1])
    np.testing.assert_array_equal(r3, in_order[3][0])
    np.testing.assert_array_equal(g3, in_order[3][1])
    n_r, n_g = alpha_counts(64, 0.3)
    for r, g in in_order:
        assert r.dtype == np.int64 and g.dtype == np.int64
        assert r.shape == (n_r,) and g.shape == (n_g,)
        assert r.min() >= 0 and r.max() < 1000 and g.min() >= 0 and g.max() < 5000
    # A different seed gives different batches.
    other = alpha_indices(1000, 5000, 64, 0.3, seed=8, generated_sampling=sampling)
    assert not np.array_equal(other(0)[0], in_order[0][0])


def test_real_indices_cover_epoch_exactly_once():
    n_real_total, batch_size, alpha = 400, 50, 0.4  # n_r = 20 divides 400
    src = alpha_indices(n_real_total, 100, batch_size, alpha, seed=3)
    n_r, _ = alpha_counts(batch_size, alpha)
    steps = n_real_total // n_r
    for epoch in range(3):
        real = np.concatenate([src(epoch * steps + t)[0] for t in range(steps)])
        np.testing.assert_array_equal(np.sort(real), np.arange(n_real_total))
    # Epochs are shuffled differently.
    e0 = np.concatenate([src(t)[0] for t in range(steps)])
    e1 = np.concatenate([src(steps + t)[0] for t in range(steps)])
    assert not np.array_equal(e0, e1)


def test_real_indices_cross_epoch_boundary():
    # n_r = 30 does not divide 100: batches straddle epochs; the walk is still a concatenation
    # of permutations.
    src = alpha_indices(100, 10, 60, 0.5, seed=11)
    flat = np.concatenate([src(t)[0] for t in range(10)])  # 300 positions = 3 epochs
    for e in range(3):
        np.testing.assert_array_equal(np.sort(flat[e * 100:(e + 1) * 100]), np.arange(100))


def test_real_batch_larger_than_real_set():
    src = alpha_indices(7, 10, 32, 0.75, seed=0)  # n_r = 24 > 7
    flat = np.concatenate([src(t)[0] for t in range(7)])  # 168 = 24 epochs of 7
    for e in range(24):
        np.testing.assert_array_equal(np.sort(flat[e * 7:(e + 1) * 7]), np.arange(7))


def test_generated_permutation_covers_each_once():
    src = alpha_indices(50, 90, 20, 0.5, seed=5, generated_sampling="permutation")
    gen = np.concatenate([src(t)[1] for t in range(9)])  # 90 positions
    np.testing.assert_array_equal(np.sort(gen), np.arange(90))


def test_mixed_indices_alpha_edges_and_errors():
    src = alpha_indices(100, 0, 16, 1.0, seed=0)
    r, g = src(4)
    assert r.shape == (16,) and g.shape == (0,) and g.dtype == np.int64
    src = alpha_indices(0, 100, 16, 0.0, seed=0)
    r, g = src(4)
    assert r.shape == (0,) and g.shape == (16,)
    with pytest.raises(RobustgenError, match="source 1 is empty but its weight gives it 8 rows"):
        alpha_indices(100, 0, 16, 0.5, seed=0)
    with pytest.raises(RobustgenError, match="sampling must be one of"):
        alpha_indices(100, 100, 16, 0.5, seed=0, generated_sampling="bogus")
    with pytest.raises(RobustgenError, match="weights must be finite, >= 0"):
        alpha_indices(100, 100, 16, 1.2, seed=0)
    with pytest.raises(ValueError):
        alpha_indices(100, 100, 16, 0.5, seed=0)(-1)


# ---------------------------------------------------------------------------------------------
# datasets

def test_registry_lists_builtins():
    names = list_datasets()
    for name in ("digits", "cifar10", "cifar100", "svhn", "npz:PATH"):
        assert name in names


def test_register_dataset_and_unknown_name():
    @register_dataset("_test_tiny")
    def _tiny(split, *, data_root=None, download=True, seed=0):
        return ImageDataset(_images(4), np.array([0, 1, 0, 1]), ("a", "b"), "_test_tiny")

    try:
        ds = load_dataset("_test_tiny", "train")
        assert ds.num_classes == 2 and len(ds) == 4
        with pytest.raises(ValueError, match="already registered"):  # a name registers once
            register_dataset("_test_tiny")(lambda split, **kw: _tiny(split, **kw))
    finally:
        datasets_mod._REGISTRY.pop("_test_tiny", None)
    with pytest.raises(RobustgenError, match="unknown dataset"):
        load_dataset("no-such-dataset", "train")
    with pytest.raises(RobustgenError, match="split"):
        load_dataset("digits", "validation")


def test_digits_shapes_split_and_reproducible():
    tr = load_dataset("digits", "train", seed=0)
    te = load_dataset("digits", "test", seed=0)
    assert len(tr) + len(te) == 1797
    assert len(te) == pytest.approx(0.3 * 1797, abs=1)
    for ds in (tr, te):
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (8, 8, 1)
        assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds),)
        assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
        assert ds.class_names == tuple(str(i) for i in range(10))
    assert tr.images.max() == 255 and tr.images.min() == 0
    # Stratified: every class present in both.
    assert set(np.unique(tr.labels)) == set(range(10)) == set(np.unique(te.labels))
    # Disjoint: compare whole images+labels as rows (duplicates in digits are rare but possible,
    # so check via the underlying sklearn indices instead).
    from sklearn.datasets import load_digits
    raw = load_digits()
    full = np.floor(raw.images * 255 / 16 + 0.5).astype(np.uint8)[..., None]
    key = {full[i].tobytes() + bytes([raw.target[i]]): i for i in range(len(full))}
    tr_idx = {key[tr.images[i].tobytes() + bytes([tr.labels[i]])] for i in range(len(tr))}
    te_idx = {key[te.images[i].tobytes() + bytes([te.labels[i]])] for i in range(len(te))}
    assert not (tr_idx & te_idx)
    # Reproducible for a seed, different for another.
    tr2 = load_dataset("digits", "train", seed=0)
    np.testing.assert_array_equal(tr.images, tr2.images)
    np.testing.assert_array_equal(tr.labels, tr2.labels)
    tr3 = load_dataset("digits", "train", seed=1)
    assert not np.array_equal(tr.labels, tr3.labels)


def test_image_dataset_subset_and_mean_std():
    imgs = _images(10, 4, 4, 3)
    labels = np.arange(10) % 3
    ds = ImageDataset(imgs, labels, ("a", "b", "c"), "toy")
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.images, imgs[[3, 1]])
    np.testing.assert_array_equal(sub.labels, labels[[3, 1]])
    assert sub.class_names == ds.class_names and sub.name == "toy"
    mean, std = ds.mean_std()
    x = imgs.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-8)
    with pytest.raises(RobustgenError):
        ImageDataset(imgs, np.full(10, 3), ("a", "b", "c"), "toy")  # label out of range


def test_train_val_split_disjoint_and_seeded():
    ds = load_dataset("digits", "train")
    n = len(ds)
    # Tag each row by its position so the split can be traced.
    tagged = ImageDataset(ds.images, ds.labels, ds.class_names, ds.name)
    tr, val = train_val_split(tagged, 100, seed=0)
    assert len(tr) == n - 100 and len(val) == 100
    tr_b, val_b = train_val_split(tagged, 100, seed=0)
    np.testing.assert_array_equal(val.images, val_b.images)
    np.testing.assert_array_equal(tr.labels, tr_b.labels)
    _, val_c = train_val_split(tagged, 100, seed=1)
    assert not np.array_equal(val.images, val_c.images)
    # Disjoint by position: use a dataset whose first pixel encodes the index.
    imgs = np.zeros((300, 2, 2, 1), np.uint8)
    imgs[:, 0, 0, 0] = np.arange(300) % 256
    imgs[:, 0, 1, 0] = np.arange(300) // 256
    pos = ImageDataset(imgs, np.zeros(300, np.int64), ("x",), "pos")
    t, v = train_val_split(pos, 50, seed=4)
    ids = lambda d: set((d.images[:, 0, 0, 0].astype(int) + 256 * d.images[:, 0, 1, 0].astype(int)).tolist())
    assert not (ids(t) & ids(v)) and len(ids(t) | ids(v)) == 300
    t0, v0 = train_val_split(pos, 0, seed=4)
    assert len(v0) == 0 and len(t0) == 300
    with pytest.raises(RobustgenError):
        train_val_split(pos, 300, seed=0)


def test_validate_dataset_errors():
    imgs, labels = _images(4), np.array([0, 1, 2, 3])
    validate_dataset(imgs, labels, num_classes=4, source="src.npz")
    cases = [
        (imgs.astype(np.float32), labels, "uint8"),
        (imgs[0], labels, "4-D"),
        (_images(4, c=4), labels, "channels"),
        (imgs, labels.astype(np.float64), "integer"),
        (imgs, labels[:3], "mismatch"),
        (imgs, np.array([0, 1, 2, 4]), "out of range"),
        (imgs, np.array([0, -1, 2, 3]), "negative"),
        (imgs[:0], labels[:0], "empty"),
    ]
    for im, lb, what in cases:
        with pytest.raises(RobustgenError, match=what) as info:
            validate_dataset(im, lb, num_classes=4, source="src.npz")
        assert "src.npz" in str(info.value) and "\n" not in str(info.value)


# torchvision datasets (no download)

def test_torchvision_offline_error(tmp_path):
    for name in ("cifar10", "cifar100", "svhn"):
        with pytest.raises(RobustgenError) as info:
            load_dataset(name, "train", data_root=str(tmp_path / "empty"), download=False)
        msg = str(info.value)
        assert name in msg and str(tmp_path / "empty") in msg and "--data-root" in msg
        assert "\n" not in msg


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTGEN_DATA", str(tmp_path / "env"))
    assert datasets_mod.default_data_root() == tmp_path / "env"
    assert datasets_mod.default_data_root(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("ROBUSTGEN_DATA")
    assert datasets_mod.default_data_root() == Path("~/.cache/robustgen/data").expanduser()


def _write_fake_cifar10(root: Path, n_per_batch: int = 4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(datasets_mod.CIFAR10_CLASSES)}, f)
    return batches


def test_fake_cifar10_conversion(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    batches = _write_fake_cifar10(tmp_path)
    # Bypass torchvision's md5 checks (md5=None means "exists").
    monkeypatch.setattr(CIFAR10, "train_list", [[n, None] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, None] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})
    tr = load_dataset("cifar10", "train", data_root=str(tmp_path), download=False)
    te = load_dataset("cifar10", "test", data_root=str(tmp_path), download=False)
    assert tr.images.shape == (20, 32, 32, 3) and te.images.shape == (4, 32, 32, 3)
    assert tr.images.dtype == np.uint8 and tr.labels.dtype == np.int64
    assert tr.class_names == datasets_mod.CIFAR10_CLASSES and tr.name == "cifar10"
    data, labels = batches["test_batch"]
    np.testing.assert_array_equal(te.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(te.labels, labels)


def test_torchvision_to_arrays_nchw():
    nchw = np.random.default_rng(0).integers(0, 256, size=(2, 3, 4, 5), dtype=np.uint8)
    images, labels = datasets_mod.torchvision_to_arrays(nchw, np.array([1, 2], np.uint8), layout="NCHW")
    assert images.shape == (2, 4, 5, 3) and images.flags.c_contiguous
    np.testing.assert_array_equal(images[1, 2, 3], nchw[1, :, 2, 3])
    assert labels.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# npz

def test_npz_round_trip(tmp_path):
    imgs = _images(5)
    labels = np.array([0, 1, 2, 1, 0])
    conf = np.linspace(0.1, 0.9, 5).astype(np.float32)
    path = tmp_path / "sub" / "set.npz"
    write_npz(path, image=imgs, label=labels, confidence=conf, class_names=np.array(["a", "b", "c"]))
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name != "set.npz"]
    out = read_npz(path)
    np.testing.assert_array_equal(out["image"], imgs)
    np.testing.assert_array_equal(out["label"], labels)
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["confidence"], conf)
    assert out["class_names"].tolist() == ["a", "b", "c"]
    # Overwrite is atomic and replaces the file.
    write_npz(path, image=imgs[:2], label=labels[:2])
    assert read_npz(path)["image"].shape[0] == 2
    # Only some keys.
    only = read_npz(path, keys_required=("label",), keys=("label",))
    assert set(only) == {"label"}


def test_write_npz_refuses_object_arrays(tmp_path):
    with pytest.raises(RobustgenError, match="object"):
        write_npz(tmp_path / "o.npz", label=np.array([{"a": 1}], dtype=object))
    assert not list(tmp_path.iterdir())


def _bad_npz_cases(tmp_path: Path):
    imgs, labels = _images(4), np.array([0, 1, 2, 3])
    good = tmp_path / "good.npz"
    write_npz(good, image=imgs, label=labels)
    cases = {}

    def save(name, **arrays):
        p = tmp_path / name
        np.savez(p, **arrays)
        cases[name] = p

    p = tmp_path / "corrupt.npz"
    p.write_bytes(b"this is not a zip file at all" * 10)
    cases["corrupt.npz"] = p
    p = tmp_path / "truncated.npz"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated.npz"] = p
    p = tmp_path / "bad_crc.npz"
    raw = bytearray(good.read_bytes())
    raw[300:340] = bytes(40)  # inside the image member's data: CRC mismatch on read
    p.write_bytes(bytes(raw))
    cases["bad_crc.npz"] = p
    p = tmp_path / "empty_file.npz"
    p.write_bytes(b"")
    cases["empty_file.npz"] = p
    save("wrong_dtype.npz", image=imgs.astype(np.float32), label=labels)
    save("wrong_ndim.npz", image=imgs[..., 0], label=labels)
    save("wrong_channels.npz", image=_images(4, c=2), label=labels)
    save("label_2d.npz", image=imgs, label=labels[:, None])
    save("label_float.npz", image=imgs, label=labels.astype(np.float32))
    save("label_range.npz", image=imgs, label=np.array([0, 1, 2, 10]))
    save("label_negative.npz", image=imgs, label=np.array([0, -1, 2, 3]))
    save("nan_confidence.npz", image=imgs, label=labels, confidence=np.array([0.5, np.nan, 0.2, 0.1]))
    save("length_mismatch.npz", image=imgs, label=labels[:3])
    save("missing_key.npz", image=imgs)
    save("empty_arrays.npz", image=imgs[:0], label=labels[:0])
    save("pickled.npz", image=imgs, label=labels, meta=np.array([{"x": 1}], dtype=object))
    p = tmp_path / "single.npz"
    with open(p, "wb") as f:
        np.save(f, imgs)
    cases["single.npz"] = p
    cases["missing.npz"] = tmp_path / "missing.npz"
    return cases


def test_npz_bad_inputs(tmp_path):
    cases = _bad_npz_cases(tmp_path)
    for name, path in cases.items():
        with pytest.raises(RobustgenError) as info:
            read_npz(path, num_classes=4)
        msg = str(info.value)
        assert name in msg, (name, msg)
        assert "\n" not in msg, (name, msg)


def test_npz_bad_inputs_messages(tmp_path):
    cases = _bad_npz_cases(tmp_path)
    expect = {
        "missing.npz": "not found",
        "corrupt.npz": "corrupt",
        "truncated.npz": "corrupt",
        "bad_crc.npz": "corrupt",
        "empty_file.npz": "empty",
        "wrong_dtype.npz": "uint8",
        "wrong_ndim.npz": "4-D",
        "label_range.npz": "out of range",
        "nan_confidence.npz": "NaN",
        "length_mismatch.npz": "mismatch",
        "missing_key.npz": "missing key",
        "pickled.npz": "pickle",
        "empty_arrays.npz": "empty",
    }
    for name, what in expect.items():
        with pytest.raises(RobustgenError, match=what):
            read_npz(cases[name], num_classes=4)


# npz:PATH datasets

def _write_split_pair(folder: Path, n_train=8, n_test=4, k=3, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    extra = {} if names is None else {"class_names": np.array(names)}
    write_npz(folder / "train.npz", image=_images(n_train, 4, 4, 3, seed=1),
              label=np.arange(n_train) % k, **extra)
    write_npz(folder / "test.npz", image=_images(n_test, 4, 4, 3, seed=2),
              label=np.zeros(n_test, np.int64), **extra)


def test_npz_dataset_folder_pattern_and_file(tmp_path):
    _write_split_pair(tmp_path / "d")
    for spec in (f"npz:{tmp_path / 'd'}", f"npz:{tmp_path / 'd'}/{{split}}.npz",
                 f"npz:{tmp_path / 'd' / 'train.npz'}"):
        tr = load_dataset(spec, "train")
        te = load_dataset(spec, "test")
        assert len(tr) == 8 and len(te) == 4 and tr.name == spec
        assert tr.class_names == ("0", "1", "2")
        # The test split (only label 0) takes its class count from the train split.
        assert te.num_classes == 3
    # A plain file whose sibling test.npz is missing.
    write_npz(tmp_path / "e" / "gen.npz", image=_images(3, 4, 4, 3), label=np.array([0, 1, 1]))
    assert len(load_dataset(f"npz:{tmp_path / 'e' / 'gen.npz'}", "train")) == 3
    with pytest.raises(RobustgenError, match="test.npz"):
        load_dataset(f"npz:{tmp_path / 'e' / 'gen.npz'}", "test")
    with pytest.raises(RobustgenError, match="missing"):
        load_dataset(f"npz:{tmp_path / 'missing'}/{{split}}.npz", "train")


def test_npz_dataset_class_names_and_test_range(tmp_path):
    _write_split_pair(tmp_path / "n", names=["cat", "dog", "emu"])
    te = load_dataset(f"npz:{tmp_path / 'n'}", "test")
    assert te.class_names == ("cat", "dog", "emu")
    # A test label beyond the train class count is an error naming the test file.
    folder = tmp_path / "bad"
    _write_split_pair(folder)
    write_npz(folder / "test.npz", image=_images(2, 4, 4, 3), label=np.array([0, 3]))
    with pytest.raises(RobustgenError, match="test.npz"):
        load_dataset(f"npz:{folder}", "test")


def test_npz_dataset_shared_cifar_test_split():
    if not (SHARED_CIFAR / "test.npz").exists():
        pytest.skip("shared cifar10-jpeg data not present")
    te = load_dataset(f"npz:{SHARED_CIFAR}", "test")
    assert te.images.shape == (10000, 32, 32, 3) and te.images.dtype == np.uint8
    assert te.num_classes == 10 and np.bincount(te.labels).tolist() == [1000] * 10


@pytest.mark.slow
def test_npz_dataset_shared_cifar_train_split():
    if not (SHARED_CIFAR / "train.npz").exists():
        pytest.skip("shared cifar10-jpeg data not present")
    tr = load_dataset(f"npz:{SHARED_CIFAR}", "train")
    assert tr.images.shape == (50000, 32, 32, 3) and tr.num_classes == 10
    assert np.bincount(tr.labels).tolist() == [5000] * 10


# ---------------------------------------------------------------------------------------------
# augmentation

def _batch(n=16, h=6, w=5, c=3, seed=0):
    return torch.from_numpy(_images(n, h, w, c, seed=seed))


def test_to_float_nchw():
    x = _batch()
    y = to_float_nchw(x)
    assert y.dtype == torch.float32 and y.shape == (16, 3, 6, 5)
    torch.testing.assert_close(y, x.permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize("padding,flip", [(0, False), (0, True), (2, False), (4, True)])
def test_crop_flip_shape_dtype_range(padding, flip):
    x = _batch()
    g = torch.Generator().manual_seed(0)
    y = crop_flip(x, padding=padding, flip=flip, generator=g)
    assert y.shape == (16, 3, 6, 5) and y.dtype == torch.float32 and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    y_cl = crop_flip(x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(0),
                     memory_format=torch.channels_last)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    y_again = crop_flip(x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, y_again, rtol=0, atol=0)
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0)


def test_crop_flip_identity():
    x = _batch()
    torch.testing.assert_close(crop_flip(x, padding=0, flip=False), to_float_nchw(x), rtol=0, atol=0)


def test_crop_flip_flip_only():
    x = _batch(n=64)
    ref = to_float_nchw(x)
    y = crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = torch.flip(ref, dims=[3])
    is_same = (y == ref).flatten(1).all(1)
    is_flip = (y == flipped).flatten(1).all(1)
    # Random images are not mirror-symmetric, so each output is exactly one of the two.
    assert bool((is_same ^ is_flip).all())
    assert 10 < int(is_flip.sum()) < 54
    torch.testing.assert_close(y[is_flip], flipped[is_flip], rtol=0, atol=0)


def test_crop_flip_crops_are_shifted_windows():
    p = 3
    x = _batch(n=32, h=8, w=7)
    ref = to_float_nchw(x)
    padded = torch.nn.functional.pad(ref, (p, p, p, p))
    for flip in (False, True):
        y = crop_flip(x, padding=p, flip=flip, generator=torch.Generator().manual_seed(2))
        offsets = set()
        for i in range(len(x)):
            found = None
            for dy in range(2 * p + 1):
                for dx in range(2 * p + 1):
                    win = padded[i, :, dy:dy + 8, dx:dx + 7]
                    cands = (win,) + ((torch.flip(win, dims=[2]),) if flip else ())
                    if any(torch.equal(y[i], c) for c in cands):
                        found = (dy, dx)
                        break
                if found:
                    break
            assert found is not None, f"image {i} is not a window of the padded image"
            offsets.add(found)
        assert len(offsets) > 5  # offsets vary across the batch


def test_crop_flip_bad_input():
    with pytest.raises(ValueError):
        crop_flip(_batch().float(), padding=2, flip=True)
    with pytest.raises(ValueError):
        crop_flip(_batch(), padding=-1, flip=True)
