"""Looking at a store without changing it: ``describe_store`` (sizes, classes, provenance; reads
no images) and ``verify_store`` (every byte against the manifest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustgen.data.store import Store
from robustgen.data.store.format import (FIELDS, MANIFEST, SELECTION, check_layout, npy_layout, read_manifest,
                                         read_small_npy)
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import file_sha256

__all__ = ["describe_store", "verify_store"]


def describe_store(store_dir) -> dict:
    """Summary of a store as JSON-able values; reads labels and the manifest, no images."""
    s = Store(store_dir, allow_incomplete=True)
    m = s.manifest
    disk = sum(p.stat().st_size for p in Path(store_dir).iterdir() if p.is_file())
    gen = m.get("generator")
    return {
        "store": str(store_dir), "images": len(s), "total_images": s.total,
        "target_images": m.get("target_num_images"), "shards": s.num_shards, "shard_size": m["shard_size"],
        "image_shape": list(s.image_shape), "num_classes": s.num_classes, "class_names": list(s.class_names),
        "counts_per_class": np.bincount(s.labels, minlength=s.num_classes).tolist(),
        "has_conditions": s.conditions is not None, "has_confidences": s.confidences is not None,
        "selection": m.get("selection"), "source": m.get("source"),
        "generator": None if gen is None else {k: gen.get(k) for k in ("name", "seed", "fit_config", "train_data")},
        "labeller": m.get("labeller"), "code_version": m.get("code_version"), "disk_bytes": disk,
    }


def verify_store(path) -> list[str]:
    """Check every file of a store against its manifest: layout, sha256, label range, counts.

    Returns one line per problem ("FILE: problem"), empty when the store is intact. Reads every
    byte (about the speed of the disk).
    """
    path = Path(path)
    try:
        m = read_manifest(path)
    except RobustgenError as e:
        return [str(e)]
    problems: list[str] = []
    shape = tuple(m["image_shape"])
    num_classes = int(m["num_classes"])
    counts = np.zeros(num_classes, np.int64)
    for e in m["shards"]:
        n = int(e["count"])
        for field, f in e["files"].items():
            p = path / f["name"]
            want = (n, *shape) if field == "images" else (n,)
            try:
                got_shape, dtype, offset, size = npy_layout(p)
                check_layout(p, got_shape, dtype, want, FIELDS[field], offset, size)
            except RobustgenError as err:
                problems.append(str(err))
                continue
            if file_sha256(p) != f["sha256"]:
                problems.append(f"{p}: sha256 does not match the manifest (corrupt or modified file)")
                continue
            if field == "images":
                continue
            arr = np.load(p, allow_pickle=False)
            if field in ("labels", "conditions") and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
                bad = int(arr.max()) if arr.max() >= num_classes else int(arr.min())
                problems.append(f"{p}: label {bad} out of range for {num_classes} classes")
            elif field == "labels":
                got = np.bincount(arr, minlength=num_classes)
                counts += got
                if got.tolist() != list(e["counts_per_class"]):
                    problems.append(f"{p}: per-class counts differ from the manifest's")
            elif field == "confidences" and not np.all(np.isfinite(arr)):
                problems.append(f"{p}: NaN or inf confidences")
    total = sum(int(e["count"]) for e in m["shards"])
    target = m.get("target_num_images")
    if target is not None and total < int(target):
        problems.append(f"{path}: incomplete: {total} of {target} images written")
    if total != int(m.get("num_images", -1)):
        problems.append(f"{path / MANIFEST}: num_images {m.get('num_images')} but the shards hold {total}")
    labellers = {e.get("labeller") for e in m["shards"]}
    if len(labellers) > 1:
        problems.append(f"{path}: shards are labelled by different labellers (interrupted labelling?)")
    sel = m.get("selection")
    if sel:
        try:
            idx = read_small_npy(path / SELECTION, (int(sel["count"]),), FIELDS["labels"], sel["sha256"])
            if idx.size and (idx[0] < 0 or idx[-1] >= total or np.any(np.diff(idx) <= 0)):
                problems.append(f"{path / SELECTION}: rows must be sorted, unique and in [0, {total})")
        except RobustgenError as err:
            problems.append(str(err))
    listed = {f["name"] for e in m["shards"] for f in e["files"].values()}
    for p in sorted(path.glob("*-[0-9][0-9][0-9][0-9][0-9]*.npy")):
        if p.name not in listed:
            problems.append(f"{p}: not listed in the manifest (left by an interrupted write?)")
    return problems
