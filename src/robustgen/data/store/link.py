"""A store that shares another store's files: relabel generated images without copying them.

The pipeline's label stage writes labels, confidences and a selection for one classifier; the
generate stage's store must stay as it was, since other classifiers (other seeds, other label
settings) label the same samples. ``link_store(src, dst)`` makes ``dst`` a store whose files
are hard links to ``src``'s (copies when the two folders are on different file systems). Every
store write is a new file renamed into place, so writing ``dst``'s labels replaces ``dst``'s
links and never touches ``src``'s bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from robustgen.data.store import MANIFEST, SELECTION, is_store, read_manifest
from robustgen.data.store.writer import StoreWriter
from robustgen.runtime.errors import RobustgenError

__all__ = ["link_store"]


def link_store(src, dst) -> Path:
    """``dst`` as a store sharing ``src``'s shards (no selection). An existing store at ``dst``
    is kept as it is (a resumed label stage); a half-linked folder is redone."""
    src, dst = Path(src), Path(dst)
    if is_store(dst):
        _relink_missing(src, dst)
        return dst
    manifest = read_manifest(src)  # also checks src is a readable store
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    listed = {f["name"] for e in manifest["shards"] for f in e["files"].values()}
    extra = [p.name for p in src.iterdir() if p.is_file() and p.name not in listed | {MANIFEST, SELECTION, ".lock"}
             and not p.name.startswith(".")]
    for name in sorted(listed) + sorted(extra):
        if not (src / name).is_file():
            raise RobustgenError(f"{src / name}: listed in the store's manifest but missing")
        try:
            os.link(src / name, dst / name)
        except OSError:  # another file system, or links not supported
            shutil.copy2(src / name, dst / name)
    # the manifest last: dst is a store only once every shard is in place
    shutil.copy2(src / MANIFEST, dst / MANIFEST)
    with StoreWriter.open(dst) as writer:
        writer.clear_selection()
        writer.save()
    return dst


def _relink_missing(src: Path, dst: Path) -> None:
    """Link again the files of ``dst`` that are gone (deleted as corrupt by a stage check) but
    that ``src`` holds with the same sha256; labels and confidences are redone by labelling."""
    listed = {(f["name"], f["sha256"]) for e in read_manifest(src)["shards"] for f in e["files"].values()}
    for e in read_manifest(dst)["shards"]:
        for f in e["files"].values():
            if not (dst / f["name"]).exists() and (f["name"], f["sha256"]) in listed:
                try:
                    os.link(src / f["name"], dst / f["name"])
                except OSError:
                    shutil.copy2(src / f["name"], dst / f["name"])
