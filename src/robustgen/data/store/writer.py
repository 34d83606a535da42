"""Writing a store (see ``robustgen.data.store``): ``ShardFiles`` writes one shard's files,
checked and atomic; ``StoreWriter`` owns the store (its ``.lock``) and its manifest, and records
each finished shard, so a killed job resumes at the first shard the manifest does not list."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from robustgen.data.store.format import (DEFAULT_SHARD_SIZE, FIELDS, MANIFEST, SELECTION, check_layout, code_version,
                                         fmt_shape, is_store, new_manifest, npy_layout, read_manifest, refresh_totals,
                                         shard_file, write_manifest, write_npy)
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import file_sha256
from robustgen.runtime.locks import FolderLock

__all__ = ["ShardFiles", "StoreWriter"]


class ShardFiles:
    """Writes the files of one shard (checked, atomic) without touching the manifest or taking the
    lock: each rank of a parallel job writes its own shards this way, and rank 0's ``StoreWriter``
    records them (``record_shard``) in the manifest."""

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    @property
    def image_shape(self) -> tuple:
        return tuple(self.manifest["image_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    def _check_rows(self, index: int, images, labels, conditions, confidences) -> int:
        where = f"{self.path / shard_file('images', index)}"
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise RobustgenError(f"{where}: images must be uint8 [N, H, W, C], got "
                                 f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
        if tuple(images.shape[1:]) != self.image_shape:
            raise RobustgenError(f"{where}: images are {fmt_shape(images.shape[1:])} but the store holds "
                                 f"{fmt_shape(self.image_shape)}")
        n = len(images)
        if n == 0:
            raise RobustgenError(f"{where}: a shard needs at least one image")
        self._check_per_row(index, n, labels, conditions, confidences)
        return n

    def _check_per_row(self, index: int, n: int, labels, conditions, confidences) -> None:
        for name, arr in (("labels", labels), ("conditions", conditions)):
            if arr is None:
                continue
            where = self.path / shard_file(name, index)
            arr = np.asarray(arr)
            if arr.shape != (n,) or arr.dtype.kind not in "iu":
                raise RobustgenError(f"{where}: {name} must be integers [{n}], got {arr.dtype} {arr.shape}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.num_classes:
                raise RobustgenError(f"{where}: label {hi if hi >= self.num_classes else lo} out of range "
                                     f"for {self.num_classes} classes")
        if confidences is not None:
            c = np.asarray(confidences)
            if c.shape != (n,) or c.dtype.kind != "f" or not np.all(np.isfinite(c)):
                raise RobustgenError(f"{self.path / shard_file('confidences', index)}: confidences must be "
                                     f"finite floats [{n}]")

    def write_files(self, index: int, *, images: np.ndarray, labels, conditions=None, confidences=None,
                    labeller: str | None = None) -> dict:
        """Write shard ``index``'s files; returns its manifest entry (not yet recorded)."""
        n = self._check_rows(index, images, labels, conditions, confidences)
        arrays = {"images": images, "labels": labels, "conditions": conditions, "confidences": confidences}
        files = {}
        for field, arr in arrays.items():
            if arr is None:
                continue
            name = shard_file(field, index)
            files[field] = {"name": name, "sha256": write_npy(self.path / name,
                                                             np.asarray(arr).astype(FIELDS[field], copy=False))}
        return {"index": index, "count": n, "files": files, "labeller": labeller,
                "counts_per_class": np.bincount(np.asarray(labels), minlength=self.num_classes).tolist()}


class StoreWriter(ShardFiles):
    """Create a store or open one to add / rewrite shards; one writer per store (file lock).

    ``StoreWriter.create(path, image_shape=..., num_classes=...)`` makes a new store (the folder
    may exist but must not hold a store); ``StoreWriter.open(path)`` opens an existing one.
    ``write_shard(k, images=..., labels=...)`` writes shard k (k <= number of shards: rewrite
    or append); ``append(images, labels)`` buffers rows into full shards (``close`` writes the
    rest). Stale temporary files of a killed writer are removed on open.
    """

    def __init__(self, path, manifest: dict):
        super().__init__(path, manifest)
        self._lock = FolderLock(self.path, what="store").acquire()  # one writer, named in .lock
        for stale in self.path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self._pending: list[tuple[np.ndarray, ...]] = []

    @classmethod
    def create(cls, path, *, image_shape: Sequence[int], num_classes: int, class_names=None,
               shard_size: int = DEFAULT_SHARD_SIZE, info: dict | None = None) -> "StoreWriter":
        path = Path(path)
        if is_store(path):
            raise RobustgenError(f"{path}: a store already exists here (use another folder or delete it)")
        if path.exists() and not path.is_dir():
            raise RobustgenError(f"{path}: exists and is not a folder")
        if int(shard_size) < 1:
            raise RobustgenError(f"shard size must be >= 1, got {shard_size}")
        image_shape = tuple(int(v) for v in image_shape)
        if len(image_shape) != 3 or image_shape[2] not in (1, 3):
            raise RobustgenError(f"{path}: image shape must be (H, W, C) with C in (1, 3), got {image_shape}")
        path.mkdir(parents=True, exist_ok=True)
        writer = cls(path, new_manifest(image_shape=image_shape, num_classes=num_classes,
                                         class_names=class_names, shard_size=shard_size, info=info))
        writer.save()
        return writer

    @classmethod
    def open(cls, path) -> "StoreWriter":
        return cls(path, read_manifest(path))

    # -- manifest
    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def save(self) -> None:
        refresh_totals(self.manifest)
        self.manifest["code_version"] = code_version()
        write_manifest(self.path / MANIFEST, self.manifest)

    def update(self, **fields) -> None:
        """Set top-level manifest fields (provenance: ``generator``, ``labeller``, ...) and save."""
        self.manifest.update(fields)
        self.save()

    def shard_ok(self, index: int, *, count: int | None = None, fields: Sequence[str] = ("images", "labels"),
                 check_sha: bool = True) -> bool:
        """Is shard ``index`` listed with ``fields`` (and ``count`` rows), its files intact?"""
        if index >= len(self.shards):
            return False
        e = self.shards[index]
        if (count is not None and int(e["count"]) != count) or any(f not in e["files"] for f in fields):
            return False
        for field in fields:
            f = e["files"][field]
            p = self.path / f["name"]
            try:
                shape, dtype, offset, size = npy_layout(p)
                want = (int(e["count"]), *self.image_shape) if field == "images" else (int(e["count"]),)
                check_layout(p, shape, dtype, want, FIELDS[field], offset, size)
            except RobustgenError:
                return False
            if check_sha and file_sha256(p) != f["sha256"]:
                return False
        return True

    # -- writing
    def write_shard(self, index: int, *, images: np.ndarray, labels, conditions=None, confidences=None,
                    labeller: str | None = None) -> dict:
        """Write shard ``index`` (rewrite, or append when it is the next one) and record it."""
        self._check_index(index)
        return self.record_shard(self.write_files(index, images=images, labels=labels, conditions=conditions,
                                                  confidences=confidences, labeller=labeller))

    def _check_index(self, index: int) -> None:
        if not 0 <= index <= len(self.shards):
            raise RobustgenError(f"{self.path}: cannot write shard {index}: only {len(self.shards)} shards exist")

    def record_shard(self, entry: dict) -> dict:
        """List a shard whose files are written (``write_files``, by any process) in the manifest."""
        index = int(entry["index"])
        self._check_index(index)
        if index == len(self.shards):
            self.shards.append(entry)
        else:
            self.shards[index] = entry
        self.clear_selection()
        self.save()
        return entry

    def write_labels(self, index: int, *, labels, confidences=None, labeller: str | None = None,
                     extra: dict | None = None) -> dict:
        """Replace the labels (and confidences) of shard ``index``; images are untouched."""
        e = self.shards[index]
        self._check_per_row(index, int(e["count"]), labels, None, confidences)
        for field, arr in (("labels", labels), ("confidences", confidences)):
            if arr is None:
                e["files"].pop(field, None)
                continue
            name = shard_file(field, index)
            e["files"][field] = {"name": name, "sha256": write_npy(
                self.path / name, np.asarray(arr).astype(FIELDS[field], copy=False))}
        e["labeller"] = labeller
        e["counts_per_class"] = np.bincount(np.asarray(labels), minlength=self.num_classes).tolist()
        e.update(extra or {})
        self.clear_selection()
        self.save()
        return e

    def truncate(self, num_shards: int) -> None:
        """Forget shards from ``num_shards`` on (their files are deleted)."""
        for e in self.shards[num_shards:]:
            for f in e["files"].values():
                (self.path / f["name"]).unlink(missing_ok=True)
        del self.shards[num_shards:]
        self.clear_selection()
        self.save()

    def write_selection(self, indices: np.ndarray, info: dict) -> None:
        """Keep only rows ``indices`` (sorted, unique, global) when the store is read."""
        idx = np.asarray(indices, dtype=np.int64)
        total = sum(int(e["count"]) for e in self.shards)
        if idx.ndim != 1 or (idx.size and (idx[0] < 0 or idx[-1] >= total or np.any(np.diff(idx) <= 0))):
            raise RobustgenError(f"{self.path / SELECTION}: selection must be sorted unique rows in [0, {total})")
        sha = write_npy(self.path / SELECTION, idx)
        self.manifest["selection"] = {**info, "file": SELECTION, "sha256": sha, "count": int(idx.size)}
        self.save()

    def clear_selection(self) -> None:
        if self.manifest.get("selection"):
            self.manifest["selection"] = None
            (self.path / SELECTION).unlink(missing_ok=True)

    def append(self, images: np.ndarray, labels, *, conditions=None, confidences=None) -> None:
        """Buffer rows; every full ``shard_size`` rows become the next shard."""
        self._pending.append(tuple(None if a is None else np.asarray(a)
                                   for a in (images, labels, conditions, confidences)))
        size = int(self.manifest["shard_size"])
        while sum(len(p[0]) for p in self._pending) >= size:
            self._flush(size)

    def _flush(self, count: int) -> None:
        parts = self._pending
        cat = [None if parts[0][i] is None else np.concatenate([p[i] for p in parts]) for i in range(4)]
        head = [None if a is None else a[:count] for a in cat]
        rest = [None if a is None else a[count:] for a in cat]
        self._pending = [tuple(rest)] if len(rest[0]) else []
        self.write_shard(len(self.shards), images=head[0], labels=head[1], conditions=head[2], confidences=head[3])

    def close(self) -> None:
        """Write any buffered rows as a last (short) shard and release the lock."""
        if self._pending:
            self._flush(sum(len(p[0]) for p in self._pending))
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self._lock.release()
