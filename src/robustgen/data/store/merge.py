"""Merge stores made on different machines into one (paper scale: 20M-100M generated images are
sampled in parallel jobs; Sec. 4 trains on the union).

``merge_stores([A, B, ...], OUT)``: OUT's shards are A's shards, then B's, ... renumbered, each a
hard link to its source file (a copy only across file systems), so merging costs no image I/O.
Every file keeps its sha256 from its source manifest; each shard entry records where it came
from (``source``: store and shard index) and the manifest lists every input (``merged_from``:
path, size, generator, labeller, sha256 of its manifest). Selections carry over (rows shifted;
an input without a selection contributes all its rows when another has one).

The inputs must agree on image shape, number of classes, class names, the per-shard fields
(conditions, confidences) and the labeller, and be complete; otherwise a one-line error names the
input and the difference. OUT is written manifest last: a killed merge leaves no store, and
running the command again redoes it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from robustgen.data.store import FIELDS, MANIFEST, SELECTION, is_store, read_manifest, shard_file, write_npy
from robustgen.data.store.format import (check_layout, new_manifest, npy_layout, read_small_npy, refresh_totals,
                                         write_manifest)
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import bytes_sha256

__all__ = ["merge_stores"]

_LEFTOVER = re.compile(r"^(\..*\.tmp|(images|labels|conditions|confidences)-\d{5,}\.npy|selection\.npy)$")


def _fields(m: dict) -> set[str]:
    return {f for e in m["shards"] for f in e["files"]}


def _labeller(m: dict):
    ids = {e.get("labeller") for e in m["shards"]}
    return ids.pop() if len(ids) == 1 else ids


def _check_inputs(paths: list[Path], manifests: list[dict]) -> None:
    first, m0 = paths[0], manifests[0]
    for path, m in zip(paths, manifests):
        where = path / MANIFEST
        if not m["shards"]:
            raise RobustgenError(f"{where}: the store is empty")
        target = m.get("target_num_images")
        if target is not None and int(m["num_images"]) < int(target):
            raise RobustgenError(f"{where}: the store is incomplete ({m['num_images']} of {target} images)")
        if isinstance(_labeller(m), set):
            raise RobustgenError(f"{where}: shards are labelled by different labellers (interrupted labelling?)")
        for key, what in (("image_shape", "image shape"), ("num_classes", "number of classes")):
            if m[key] != m0[key]:
                raise RobustgenError(f"{where}: {what} {m[key]} differs from {first}'s {m0[key]}")
        if m["class_names"] and m0["class_names"] and m["class_names"] != m0["class_names"]:
            raise RobustgenError(f"{where}: class names differ from {first}'s")
        for field in ("conditions", "confidences"):
            if (field in _fields(m)) != (field in _fields(m0)):
                has, lacks = (path, first) if field in _fields(m) else (first, path)
                raise RobustgenError(f"{where}: {has} has {field} but {lacks} has none")
        if _labeller(m) != _labeller(m0):
            raise RobustgenError(f"{where}: labelled by {_labeller(m)!r}, {first} by {_labeller(m0)!r}; "
                                 f"label both with the same classifier first")
        for e in m["shards"]:
            for field, f in e["files"].items():
                p = path / f["name"]
                shape, dtype, offset, size = npy_layout(p)
                want = (int(e["count"]), *m["image_shape"]) if field == "images" else (int(e["count"]),)
                check_layout(p, shape, dtype, want, FIELDS[field], offset, size)


def _prepare_out(out: Path) -> None:
    if is_store(out):
        raise RobustgenError(f"{out}: a store already exists here (use another folder or delete it)")
    if out.exists():
        if not out.is_dir():
            raise RobustgenError(f"{out}: exists and is not a folder")
        others = [p.name for p in out.iterdir() if not _LEFTOVER.match(p.name) and p.name != ".lock"]
        if others:
            raise RobustgenError(f"{out}: the folder is not empty ({others[0]}, ...); merge into a new folder")
        for p in out.iterdir():  # what a killed merge left
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _link(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "link"
    except OSError:  # another file system, or no hard links there
        shutil.copy2(src, dst)
        return "copy"


def merge_stores(inputs: Sequence, out) -> dict:
    """Merge the stores ``inputs`` (in order) into the new store ``out``; see the module doc."""
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if not paths:
        raise RobustgenError("store merge needs at least one input store")
    if len({p.resolve() for p in paths}) != len(paths):
        raise RobustgenError("store merge: the same input store is given twice")
    if any(out.resolve() == p.resolve() for p in paths):
        raise RobustgenError(f"{out}: the output is one of the inputs")
    manifests = [read_manifest(p) for p in paths]
    _check_inputs(paths, manifests)
    _prepare_out(out)
    m0 = manifests[0]
    merged = new_manifest(image_shape=m0["image_shape"], num_classes=m0["num_classes"],
                           class_names=next((m["class_names"] for m in manifests if m["class_names"]), None),
                           shard_size=max(int(m["shard_size"]) for m in manifests), info=None)
    shards, selection, offset, how = [], [], 0, {"link": 0, "copy": 0}
    any_selection = any(m.get("selection") for m in manifests)
    for path, m in zip(paths, manifests):
        for e in m["shards"]:
            k = len(shards)
            files = {}
            for field, f in e["files"].items():
                name = shard_file(field, k)
                how[_link(path / f["name"], out / name)] += 1
                files[field] = {"name": name, "sha256": f["sha256"]}
            shards.append({**e, "index": k, "files": files, "source": {"store": str(path), "index": int(e["index"])}})
        n = sum(int(e["count"]) for e in m["shards"])
        if any_selection:
            sel = m.get("selection")
            rows = (np.arange(n, dtype=np.int64) if not sel else
                    read_small_npy(path / SELECTION, (int(sel["count"]),), FIELDS["labels"], sel["sha256"]))
            selection.append(rows + offset)
        offset += n
    merged.update(shards=shards, target_num_images=offset, labeller=m0.get("labeller"),
                  merged_from=[{"store": str(p), "num_images": int(m["num_images"]), "generator": m.get("generator"),
                                "labeller": m.get("labeller"), "source": m.get("source"),
                                "selection": m.get("selection"),
                                "manifest_sha256": bytes_sha256((p / MANIFEST).read_bytes())}
                               for p, m in zip(paths, manifests)])
    if any_selection:
        idx = np.concatenate(selection)
        kept = np.bincount(np.concatenate([_labels(out, e) for e in shards])[idx], minlength=int(m0["num_classes"]))
        merged["selection"] = {"rule": "merged", "counts_per_class": kept.tolist(), "file": SELECTION,
                               "sha256": write_npy(out / SELECTION, idx), "count": int(idx.size)}
    refresh_totals(merged)
    write_manifest(out / MANIFEST, merged)  # last: OUT is a store only once every file is in place
    return {"store": str(out), "inputs": len(paths), "shards": len(shards), "num_images": merged["num_images"],
            "selected": merged["selection"]["count"] if any_selection else None,
            "hard_links": how["link"], "copies": how["copy"], "counts_per_class": merged["counts_per_class"]}


def _labels(store: Path, entry: dict) -> np.ndarray:
    f = entry["files"]["labels"]
    return read_small_npy(store / f["name"], (int(entry["count"]),), FIELDS["labels"], f["sha256"])
