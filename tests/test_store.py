"""The generated-data store: write/read round trips, selection, npz import/export, bad input, verify, CLI."""

import json

import numpy as np
import pytest

from robustgen.cli import main
from robustgen.data.store import MANIFEST, Store
from robustgen.data.store.inspect import verify_store
from robustgen.data.store.npz import export_npz, import_npz
from robustgen.data.store.writer import StoreWriter
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import file_sha256
from robustgen.train.mixing.sources import ArraySource, check_sources_agree


def _data(n=35, shape=(8, 8, 3), k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, k, n).astype(np.int64)


@pytest.fixture
def store(tmp_path):
    images, labels = _data()
    path = tmp_path / "store"
    with StoreWriter.create(path, image_shape=(8, 8, 3), num_classes=4, shard_size=10) as w:
        w.append(images[:13], labels[:13])
        w.append(images[13:], labels[13:], confidences=None)
    return path, images, labels


def run_cli(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_round_trip_and_gather(store):
    path, images, labels = store
    s = Store(path)
    assert len(s) == 35 and s.num_shards == 4 and s.image_shape == (8, 8, 3) and s.num_classes == 4
    assert s.counts.tolist() == [10, 10, 10, 5]
    np.testing.assert_array_equal(s.labels, labels)
    assert s.labels.dtype == np.int64 and s.confidences is None and s.conditions is None
    idx = np.array([34, 0, 11, 11, 5, 29, 20])  # across shards, repeated, unordered
    np.testing.assert_array_equal(s.gather(idx), images[idx])
    out = np.zeros((3, 8, 8, 3), np.uint8)
    assert s.gather(np.array([1, 2, 3]), out=out) is out
    np.testing.assert_array_equal(out, images[1:4])
    assert s.gather(np.zeros(0, np.int64)).shape == (0, 8, 8, 3)
    np.testing.assert_array_equal(s.shard_images(3), images[30:])
    with pytest.raises(IndexError):
        s.gather(np.array([35]))
    s.release_pages()  # pages dropped, data still readable
    np.testing.assert_array_equal(s.gather(idx), images[idx])
    m = json.loads((path / MANIFEST).read_text())
    assert m["num_images"] == 35 and m["counts_per_class"] == np.bincount(labels, minlength=4).tolist()
    assert all(len(f["sha256"]) == 64 for e in m["shards"] for f in e["files"].values())
    assert verify_store(path) == []


def test_gather_runs_duplicates_and_truncation_after_open(store):
    path, images, _ = store
    s = Store(path)
    rng = np.random.default_rng(0)
    for idx in (np.arange(35), np.arange(3, 27)[::-1], np.array([5, 5, 5, 6, 4, 5]),
                rng.integers(0, 35, 100), rng.permutation(35)):
        np.testing.assert_array_equal(s.gather(idx), images[idx])
    (path / "images-00002.npy").write_bytes((path / "images-00002.npy").read_bytes()[:-200])
    with pytest.raises(RobustgenError, match="images-00002.npy: truncated"):
        s.gather(np.array([29]))


def test_writer_checks_rows_and_locks(tmp_path, store):
    path, images, labels = store
    with StoreWriter.open(path) as w:
        with pytest.raises(RobustgenError, match="another process"):
            StoreWriter.open(path)
        with pytest.raises(RobustgenError, match="out of range for 4 classes"):
            w.write_shard(4, images=images[:3], labels=np.array([0, 1, 7]))
        with pytest.raises(RobustgenError, match="8x8x1 but the store holds 8x8x3"):
            w.write_shard(4, images=np.zeros((2, 8, 8, 1), np.uint8), labels=np.zeros(2, np.int64))
        with pytest.raises(RobustgenError, match="only 4 shards"):
            w.write_shard(6, images=images[:3], labels=labels[:3])
    with pytest.raises(RobustgenError, match="already exists"):
        StoreWriter.create(path, image_shape=(8, 8, 3), num_classes=4)


def test_selection_and_incomplete(store):
    path, images, labels = store
    keep = np.array([1, 4, 12, 30, 34])
    with StoreWriter.open(path) as w:
        w.write_selection(keep, {"rule": "test"})
    s = Store(path)
    assert len(s) == 5 and s.total == 35
    np.testing.assert_array_equal(s.labels, labels[keep])
    np.testing.assert_array_equal(s.gather(np.array([4, 0])), images[keep[[4, 0]]])
    assert len(Store(path, use_selection=False)) == 35
    assert verify_store(path) == []
    # rewriting a shard invalidates the selection
    with StoreWriter.open(path) as w:
        w.write_shard(3, images=images[30:], labels=labels[30:])
        w.update(target_num_images=50)
    assert len(Store(path, allow_incomplete=True)) == 35
    with pytest.raises(RobustgenError, match="incomplete .35 of 50 images"):
        Store(path)
    assert any("incomplete" in p for p in verify_store(path))


@pytest.mark.parametrize("compressed", [False, True])
def test_import_export_released_layout_identical(tmp_path, compressed):
    images, labels = _data(n=23, shape=(4, 4, 3), k=10)
    src = tmp_path / "released.npz"
    (np.savez_compressed if compressed else np.savez)(src, image=images, label=labels.astype(np.int32))
    summary = import_npz(src, tmp_path / "s", shard_size=5)
    assert summary["images"] == 23 and summary["shards"] == 5 and summary["num_classes"] == 10
    export_npz(tmp_path / "s", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["image", "label"]
        assert f["image"].dtype == np.uint8 and f["label"].dtype == np.int32
        np.testing.assert_array_equal(f["image"], images)
        np.testing.assert_array_equal(f["label"], labels)
    # importing the same file again resumes (nothing to do); another file into the store is refused
    before = file_sha256(tmp_path / "s" / MANIFEST)
    import_npz(src, tmp_path / "s", shard_size=5)
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["num_images"] == 23
    assert before
    np.savez(tmp_path / "other.npz", image=images, label=labels)
    with pytest.raises(RobustgenError, match="already exists"):
        import_npz(tmp_path / "other.npz", tmp_path / "s")


def test_import_keeps_extra_keys_and_class_names(tmp_path):
    images, labels = _data(n=12, shape=(4, 4, 1), k=3)
    conf = np.linspace(0, 1, 12, dtype=np.float32)
    np.savez(tmp_path / "a.npz", image=images, label=labels, confidence=conf, condition=labels[::-1].copy(),
             class_names=np.array(["cat", "dog", "emu"]))
    import_npz(tmp_path / "a.npz", tmp_path / "s", shard_size=5)
    s = Store(tmp_path / "s")
    assert s.class_names == ("cat", "dog", "emu")
    np.testing.assert_array_equal(s.confidences, conf)
    export_npz(s, tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as f:
        assert f["class_names"].tolist() == ["cat", "dog", "emu"]
        np.testing.assert_array_equal(f["condition"], labels[::-1])
        np.testing.assert_array_equal(f["confidence"], conf)


def test_import_bad_input_names_the_file(tmp_path):
    images, labels = _data(n=20, shape=(4, 4, 3))
    good = tmp_path / "good.npz"
    np.savez(good, image=images, label=labels)
    cases = {}
    cases["missing"] = (tmp_path / "missing.npz", r"missing key\(s\) \['label'\]")
    np.savez(cases["missing"][0], image=images)
    cases["truncated"] = (tmp_path / "trunc.npz", "corrupt or truncated|truncated")
    cases["truncated"][0].write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    cases["range"] = (tmp_path / "range.npz", "label 3 out of range for 3 classes")
    np.savez(cases["range"][0], image=images, label=np.full(20, 3))
    cases["dtype"] = (tmp_path / "float.npz", "must be uint8")
    np.savez(cases["dtype"][0], image=images.astype(np.float32), label=labels)
    cases["length"] = (tmp_path / "length.npz", "length mismatch: 20 images but 19 labels")
    np.savez(cases["length"][0], image=images, label=labels[:19])
    cases["pickle"] = (tmp_path / "pickle.npz", "pickled")
    np.savez(cases["pickle"][0], image=images, label=np.array([object()] * 20, dtype=object))
    cases["notzip"] = (tmp_path / "text.npz", "not an .npz")
    cases["notzip"][0].write_text("hello")
    for name, (path, pattern) in cases.items():
        num_classes = 3 if name == "range" else None
        with pytest.raises(RobustgenError, match=pattern) as e:
            import_npz(path, tmp_path / f"s-{name}", num_classes=num_classes)
        assert str(path) in str(e.value) and "\n" not in str(e.value), name


def _rewrite(path, arr):
    """Replace a shard file's array and update the manifest's sha256 (only the content is wrong)."""
    from robustgen.data.store import write_npy

    sha = write_npy(path, arr)
    manifest = json.loads((path.parent / MANIFEST).read_text())
    for e in manifest["shards"]:
        for f in e["files"].values():
            if f["name"] == path.name:
                f["sha256"] = sha
    (path.parent / MANIFEST).write_text(json.dumps(manifest))


def test_bad_stores_give_one_line_errors_and_verify_lists_every_shard(store, tmp_path):
    path, images, labels = store
    # truncated images shard: open fails naming it
    shard1 = path / "images-00001.npy"
    data = shard1.read_bytes()
    shard1.write_bytes(data[:-7])
    with pytest.raises(RobustgenError, match="images-00001.npy: truncated"):
        Store(path)
    # a flipped byte in another images shard: only a checksum can see it
    shard2 = path / "images-00002.npy"
    raw = bytearray(shard2.read_bytes())
    raw[-1] ^= 0xFF
    shard2.write_bytes(bytes(raw))
    # labels out of range (with a matching checksum)
    _rewrite(path / "labels-00003.npy", np.full(5, 9, np.int64))
    problems = verify_store(path)
    assert any("images-00001.npy: truncated" in p for p in problems)
    assert any("images-00002.npy: sha256 does not match" in p for p in problems)
    assert any("labels-00003.npy: label 9 out of range for 4 classes" in p for p in problems)
    assert all("\n" not in p for p in problems)
    assert run_cli(["store", "verify", str(path)]) == 1
    shard1.write_bytes(data)
    with pytest.raises(RobustgenError, match="labels-00003.npy: label 9 out of range for 4 classes"):
        Store(path)
    # a labels file whose checksum does not match
    _rewrite(path / "labels-00003.npy", labels[30:])
    lab = path / "labels-00000.npy"
    raw = bytearray(lab.read_bytes())
    raw[-1] ^= 1
    lab.write_bytes(bytes(raw))
    with pytest.raises(RobustgenError, match="labels-00000.npy: sha256 does not match the manifest"):
        Store(path)


def test_manifest_and_expectation_errors(store, tmp_path, capsys):
    path, images, labels = store
    with pytest.raises(RobustgenError, match="store has 4 classes but 10 are expected"):
        Store(path, num_classes=10)
    with pytest.raises(RobustgenError, match="holds 8x8x3 images but 32x32x3 are expected"):
        Store(path, image_shape=(32, 32, 3))
    other = tmp_path / "gray"
    with StoreWriter.create(other, image_shape=(8, 8, 1), num_classes=4) as w:
        w.write_shard(0, images=np.zeros((3, 8, 8, 1), np.uint8), labels=np.zeros(3, np.int64))
    real = ArraySource(images, labels, num_classes=4, name="real")
    with pytest.raises(RobustgenError, match="different image sizes .real: 8x8x3, .*gray: 8x8x1"):
        check_sources_agree([real, Store(other)])
    with pytest.raises(RobustgenError, match="different class counts"):
        check_sources_agree([ArraySource(images, labels, num_classes=5), Store(path)])
    (path / MANIFEST).write_text("{ not json")
    with pytest.raises(RobustgenError, match="manifest.json: corrupt JSON"):
        Store(path)
    assert verify_store(path)[0].startswith(str(path / MANIFEST))
    assert run_cli(["store", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustgen: error: ") and "manifest.json" in err and "\n" not in err
    (path / MANIFEST).write_text(json.dumps({"format": "robustgen-store", "format_version": 1}))
    with pytest.raises(RobustgenError, match="malformed manifest"):
        Store(path)
    with pytest.raises(RobustgenError, match="no manifest.json"):
        Store(tmp_path)
    with pytest.raises(RobustgenError, match="store not found"):
        Store(tmp_path / "nope")


def test_cli_import_info_verify_export(tmp_path, capsys):
    images, labels = _data(n=30, shape=(4, 4, 3), k=10)
    np.savez(tmp_path / "r.npz", image=images, label=labels)
    main(["store", "import", str(tmp_path / "r.npz"), str(tmp_path / "s"), "--shard-size", "8", "--quiet"])
    main(["store", "info", str(tmp_path / "s")])
    out = capsys.readouterr().out
    info = json.loads(out[out.rindex("{\n  \"store\""):])
    assert info["images"] == 30 and info["shards"] == 4 and info["num_classes"] == 10
    main(["store", "verify", str(tmp_path / "s")])
    assert capsys.readouterr().out.strip().endswith(": ok")
    main(["store", "export", str(tmp_path / "s"), str(tmp_path / "o.npz"), "--quiet"])
    with np.load(tmp_path / "o.npz") as f:
        np.testing.assert_array_equal(f["image"], images)
        np.testing.assert_array_equal(f["label"], labels)
    main(["report", "samples", str(tmp_path / "s"), "--out", str(tmp_path / "g.png"), "--per-class", "2"])
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linked_store_relabels_without_touching_the_source(store, tmp_path):
    from robustgen.data.store.link import link_store

    path, images, labels = store
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != ".lock"}
    dst = link_store(path, tmp_path / "linked")
    relabelled = (labels + 1) % 4
    with StoreWriter.open(dst) as w:
        offsets = np.cumsum([0] + [int(e["count"]) for e in w.shards])
        for k, e in enumerate(w.shards):
            w.write_labels(k, labels=relabelled[offsets[k]:offsets[k + 1]],
                           confidences=np.full(int(e["count"]), 0.5, np.float32), labeller="other")
        w.write_selection(np.arange(0, len(labels), 2), {"rule": "every other row"})
    linked = Store(dst)
    assert np.array_equal(linked.gather(np.arange(len(linked))), images[::2])
    assert np.array_equal(linked.labels, relabelled[::2])
    after = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before and verify_store(path) == []
    original = Store(path)
    assert np.array_equal(original.labels, labels) and original.selection is None
    assert link_store(path, dst) == dst and len(Store(dst)) == len(linked)  # an existing link is kept (resume)
