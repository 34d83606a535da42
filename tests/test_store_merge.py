"""`robustgen store merge A B ... OUT`: the merged store reads as the inputs' rows in order, its files
are hard links with the inputs' checksums, provenance and selections carry over, mismatches are
one-line errors, and a killed merge is redone."""

import json
import os

import numpy as np
import pytest

from robustgen.cli import main
from robustgen.data.store import MANIFEST, Store
from robustgen.data.store.inspect import verify_store
from robustgen.data.store.merge import merge_stores
from robustgen.data.store.writer import StoreWriter
from robustgen.runtime.errors import RobustgenError


def _store(path, n, *, seed, shard_size=7, shape=(4, 4, 3), classes=3, confidences=True, labeller="clf:argmax"):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    conf = rng.random(n).astype(np.float32) if confidences else None
    with StoreWriter.create(path, image_shape=shape, num_classes=classes, shard_size=shard_size,
                            info={"source": {"seed": seed}}) as w:
        for k, lo in enumerate(range(0, n, shard_size)):
            hi = min(n, lo + shard_size)
            w.write_shard(k, images=images[lo:hi], labels=labels[lo:hi],
                          confidences=None if conf is None else conf[lo:hi], labeller=labeller)
    return images, labels


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err.strip()


def test_merge_reads_as_the_inputs_in_order_with_links_and_provenance(tmp_path, capsys):
    ia, la = _store(tmp_path / "a", 17, seed=1)
    ib, lb = _store(tmp_path / "b", 5, seed=2)
    with StoreWriter.open(tmp_path / "a") as w:
        w.write_selection(np.array([0, 3, 16]), {"rule": "test"})
    main(["store", "merge", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "m")])
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 22 and summary["shards"] == 4 and summary["hard_links"] == 12
    assert summary["copies"] == 0 and summary["selected"] == 3 + 5
    assert verify_store(tmp_path / "m") == []
    full = Store(tmp_path / "m", use_selection=False)
    assert full.gather(np.arange(22)).tobytes() == np.concatenate([ia, ib]).tobytes()
    np.testing.assert_array_equal(full.labels, np.concatenate([la, lb]))
    picked = Store(tmp_path / "m")  # a's selection, then all of b
    np.testing.assert_array_equal(picked.selection, [0, 3, 16, 17, 18, 19, 20, 21])
    m = json.loads((tmp_path / "m" / MANIFEST).read_text())
    a = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert [e["source"] for e in m["shards"]][-2:] == [{"store": str(tmp_path / "a"), "index": 2},
                                                      {"store": str(tmp_path / "b"), "index": 0}]
    assert m["shards"][1]["files"]["images"]["sha256"] == a["shards"][1]["files"]["images"]["sha256"]
    assert [s["store"] for s in m["merged_from"]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert m["merged_from"][0]["source"] == {"seed": 1} and m["merged_from"][0]["selection"]["count"] == 3
    same = os.stat(tmp_path / "m" / "images-00003.npy").st_ino == os.stat(tmp_path / "b" / "images-00000.npy").st_ino
    assert same  # a hard link, not a copy
    # a killed merge (files, no manifest) is redone
    (tmp_path / "m" / MANIFEST).unlink()
    merge_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert verify_store(tmp_path / "m") == []


def test_merge_refuses_mismatches_with_one_line_errors(tmp_path, capsys):
    _store(tmp_path / "a", 9, seed=1)
    _store(tmp_path / "shape", 9, seed=1, shape=(4, 4, 1))
    _store(tmp_path / "classes", 9, seed=1, classes=4)
    _store(tmp_path / "noconf", 9, seed=1, confidences=False)
    _store(tmp_path / "other", 9, seed=1, labeller="other:argmax")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases = [("shape", "image shape [4, 4, 1] differs"), ("classes", "number of classes 4 differs"),
             ("noconf", "has confidences but"), ("other", "labelled by 'other:argmax'")]
    for name, message in cases:
        code, err = _cli(["store", "merge", str(tmp_path / "a"), str(tmp_path / name), str(tmp_path / "out")], capsys)
        assert code == 2 and message in err and err.count("\n") == 0, err
        assert not (tmp_path / "out" / MANIFEST).exists()
    code, err = _cli(["store", "merge", str(tmp_path / "a"), str(tmp_path / "a"), str(tmp_path / "out")], capsys)
    assert code == 2 and "given twice" in err
    code, err = _cli(["store", "merge", str(tmp_path / "a"), str(tmp_path / "busy")], capsys)
    assert code == 2 and "not empty" in err
    code, err = _cli(["store", "merge", str(tmp_path / "a"), str(tmp_path / "shape")], capsys)
    assert code == 2 and "a store already exists" in err
    with pytest.raises(RobustgenError, match="at least one input"):
        merge_stores([], tmp_path / "x")
