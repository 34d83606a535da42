"""The generated-data store: memory-mappable uint8 ``.npy`` shards plus a JSON manifest (REFERENCE.md §4).

Released generated sets are one ``.npz`` (``image`` uint8 [N, H, W, C], ``label`` [N]) that
cannot be memory-mapped: 50M CIFAR images are 154 GB of RAM. A store keeps the same data as a
folder that is read with constant memory and written shard by shard, so long jobs resume:

    STORE/
      manifest.json            format, image shape, classes, shard list with sha256, provenance
      images-00000.npy         uint8 [n_0, H, W, C]   (shard k holds global rows offsets[k]..)
      labels-00000.npy         int64 [n_0]            the training label of each image
      conditions-00000.npy     int64 [n_0]            optional: the generator's conditioning class
      confidences-00000.npy    float32 [n_0]          optional: the labeller's confidence in the label
      selection.npy            int64 [M], optional: sorted rows kept by filtering (top-k, ...)
      generator_fit.npz        optional: the fitted generator (``robustgen store generate``)
      .lock                    the one writer's host and pid (``robustgen.locks``; a second writer is refused)

Labels, conditions and confidences are per-shard files, so labelling rewrites one shard at a
time and resumes like generation. Every file is written to a temporary name in the folder,
fsynced and renamed; the manifest (written the same way) is updated after each shard and is
the only record of what is complete: a file it does not list, or whose sha256 differs, is
redone. A store opened for reading (``Store``) presents the selected rows when there is a
selection; ``Store(path, use_selection=False)`` shows all of them.

Reading: ``Store.gather(indices)`` reads only the requested rows, grouped by shard, with one
``preadv`` per run of consecutive rows straight into the output buffer: resident memory is the
batch, however large the store (the OS page cache, not the process, holds hot shards).
Memory-mapping (``np.load(mmap_mode="r")``) is what ``shard_images`` uses for sequential scans
(labelling, export), released after each shard: for random rows a map is a poor fit on current
Linux kernels, whose page cache uses large folios, so one fault maps up to a few MB and a
process's RSS climbs towards the size of the store.

Bad input raises a one-line ``RobustgenError`` naming the file and the problem;
``verify_store`` checks every byte and lists every problem. This module holds the writer, the
reader and the verifier; the file-level format (names, checked .npy I/O, the manifest's
structure) is in ``store_format``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from robustgen.data.store_format import (DEFAULT_SHARD_SIZE, FIELDS, MANIFEST, SELECTION, _check_layout,
                                         _MappedShard, _new_manifest, _refresh_totals, _write_manifest,
                                         cached_sha256, code_version, file_sha256, is_store, npy_layout,
                                         read_manifest,
                                         read_small_npy,
                                         shard_file, write_npy)
from robustgen.errors import RobustgenError
from robustgen.locks import FolderLock

# The writer and reader here, the format helpers re-exported from store_format.
__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FIELDS",
    "MANIFEST",
    "SELECTION",
    "ShardFiles",
    "Store",
    "StoreWriter",
    "file_sha256",
    "is_store",
    "read_manifest",
    "shard_file",
    "verify_store",
    "write_npy",
]


# --------------------------------------------------------------------------- writer
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
            raise RobustgenError(f"{where}: images are {_fmt_shape(images.shape[1:])} but the store holds "
                                 f"{_fmt_shape(self.image_shape)}")
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
        writer = cls(path, _new_manifest(image_shape=image_shape, num_classes=num_classes,
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
        _refresh_totals(self.manifest)
        self.manifest["code_version"] = code_version()
        _write_manifest(self.path / MANIFEST, self.manifest)

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
                _check_layout(p, shape, dtype, want, FIELDS[field], offset, size)
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
        self._clear_selection()
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
        self._clear_selection()
        self.save()
        return e

    def truncate(self, num_shards: int) -> None:
        """Forget shards from ``num_shards`` on (their files are deleted)."""
        for e in self.shards[num_shards:]:
            for f in e["files"].values():
                (self.path / f["name"]).unlink(missing_ok=True)
        del self.shards[num_shards:]
        self._clear_selection()
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

    def _clear_selection(self) -> None:
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


# --------------------------------------------------------------------------- reader
class Store:
    """A store opened read-only: ``len``, ``labels``, ``gather(indices)`` and the manifest.

    ``num_classes`` / ``image_shape``: what the caller expects (e.g. the real data's); a store
    that differs is refused. ``use_selection``: present only the selected rows when the store
    has a selection (the default). ``allow_incomplete``: open a store whose generation has not
    finished (for inspection). Opening reads the manifest, every shard's .npy header and size
    (a truncated shard fails here) and the per-row arrays (sha256-checked); not the images.

    ``gather`` is thread-safe; the arrays ``labels``, ``conditions``, ``confidences`` are int64 /
    int64 / float32 in RAM (8-20 bytes per image) and refer to the presented rows.
    """

    def __init__(self, path, *, num_classes: int | None = None, image_shape: Sequence[int] | None = None,
                 use_selection: bool = True, allow_incomplete: bool = False, verify_images: bool = False):
        self.path = Path(path)
        self.manifest = m = read_manifest(self.path)
        mpath = self.path / MANIFEST
        self.num_classes = int(m["num_classes"])
        self.image_shape = tuple(int(v) for v in m["image_shape"])
        self.class_names = tuple(m["class_names"] or (str(c) for c in range(self.num_classes)))
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise RobustgenError(f"{mpath}: the store has {self.num_classes} classes but {num_classes} are "
                                 f"expected (a store made for another dataset?)")
        if image_shape is not None and tuple(image_shape) != self.image_shape:
            raise RobustgenError(f"{mpath}: the store holds {_fmt_shape(self.image_shape)} images but "
                                 f"{_fmt_shape(image_shape)} are expected")
        shards = m["shards"]
        if not shards:
            raise RobustgenError(f"{self.path}: the store is empty (no shards)")
        target = m.get("target_num_images")
        written = sum(int(e["count"]) for e in shards)
        if target is not None and written < int(target) and not allow_incomplete:
            raise RobustgenError(f"{self.path}: the store is incomplete ({written} of {target} images); "
                                 f"run the command that writes it again to resume")
        labellers = {e.get("labeller") for e in shards}
        if len(labellers) > 1 and not allow_incomplete:
            raise RobustgenError(f"{self.path}: shards are labelled by different labellers (an interrupted "
                                 f"'robustgen store label'?); run it again to finish")
        self.counts = np.asarray([int(e["count"]) for e in shards], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self._shards = shards
        self._data_offset = []
        for e in shards:
            # header and size of every images shard: a truncated file fails here, not mid-training
            f = self.path / e["files"]["images"]["name"]
            got_shape, dtype, offset, size = npy_layout(f)
            _check_layout(f, got_shape, dtype, (int(e["count"]), *self.image_shape), FIELDS["images"], offset, size)
            self._data_offset.append(offset)
        self.labels_all = self._read_field("labels", required=True)
        self.conditions_all = self._read_field("conditions")
        self.confidences_all = self._read_field("confidences")
        self.selection = None
        sel = m.get("selection")
        if use_selection and sel:
            self.selection = read_small_npy(self.path / SELECTION, (int(sel["count"]),), FIELDS["labels"],
                                            sel["sha256"]).copy()
            if self.selection.size and (self.selection[0] < 0 or self.selection[-1] >= self.total):
                raise RobustgenError(f"{self.path / SELECTION}: rows out of range for {self.total} images")
        pick = (lambda a: a) if self.selection is None else (lambda a: a[self.selection])
        self.labels = pick(self.labels_all)
        self.conditions = None if self.conditions_all is None else pick(self.conditions_all)
        self.confidences = None if self.confidences_all is None else pick(self.confidences_all)
        self._row_bytes = int(np.prod(self.image_shape))
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._maps: OrderedDict[int, _MappedShard] = OrderedDict()
        self._max_open = max(8, _fd_budget())
        self._lock = threading.Lock()
        self._verified: list[threading.Event] | None = None
        self._verify_errors: dict[int, str] = {}
        if verify_images:
            self.verify_images()

    # -- integrity
    def verify_images(self) -> None:
        """Hash every images shard against the manifest's sha256 in a background thread; reading
        shard k (``gather``, ``shard_images``) waits until shard k is verified and raises a
        ``RobustgenError`` naming the file if it is not intact, so corrupt images are never used.
        A full hash: any changed byte is found (the cost is one read of the store, overlapping
        with whatever the caller does meanwhile)."""
        if self._verified is not None:
            return
        self._verified = [threading.Event() for _ in self._shards]
        threading.Thread(target=self._verify_all, name="robustgen-store-verify", daemon=True).start()

    def _verify_all(self) -> None:
        for k, e in enumerate(self._shards):
            f = e["files"]["images"]
            path = self.path / f["name"]
            try:
                if cached_sha256(path) != f["sha256"]:
                    self._verify_errors[k] = (f"{path}: sha256 does not match the manifest (corrupt or modified "
                                              f"file); it was not used. Regenerate it ('robustgen run' or "
                                              f"'robustgen store generate' redoes bad shards) or check the disk")
            except OSError as err:
                self._verify_errors[k] = f"{path}: unreadable ({err.strerror or err})"
            self._verified[k].set()

    def _wait_verified(self, shards) -> None:
        if self._verified is None:
            return
        for k in shards:
            self._verified[k].wait()
            if k in self._verify_errors:
                raise RobustgenError(self._verify_errors[k])

    def _read_field(self, field: str, *, required: bool = False) -> np.ndarray | None:
        present = [field in e["files"] for e in self._shards]
        if not any(present) and not required:
            return None
        if not all(present):
            missing = self._shards[present.index(False)]["index"]
            raise RobustgenError(f"{self.path / shard_file(field, missing)}: missing (other shards have {field})")
        parts = []
        for e in self._shards:
            f = e["files"][field]
            arr = read_small_npy(self.path / f["name"], (int(e["count"]),), FIELDS[field], f["sha256"])
            if field in ("labels", "conditions") and arr.size and (arr.min() < 0 or arr.max() >= self.num_classes):
                bad = int(arr.max()) if arr.max() >= self.num_classes else int(arr.min())
                raise RobustgenError(f"{self.path / f['name']}: label {bad} out of range for {self.num_classes} classes")
            if field == "confidences" and not np.all(np.isfinite(arr)):
                raise RobustgenError(f"{self.path / f['name']}: NaN or inf confidences")
            parts.append(arr)
        return np.concatenate(parts)

    # -- sizes
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def name(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, n={len(self)}, total={self.total}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes}, shards={self.num_shards})")

    # -- images
    def _map(self, k: int) -> _MappedShard:
        shard = self._maps.get(k)
        if shard is None:
            shard = _MappedShard(self.path / shard_file("images", k), int(self.counts[k]), self.image_shape)
            self._maps[k] = shard
            if len(self._maps) > 2:
                self._maps.popitem(last=False)  # unmapped once no array refers to it
        else:
            self._maps.move_to_end(k)
        return shard

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            fd = os.open(self.path / shard_file("images", k), os.O_RDONLY)
            self._fds[k] = fd
            if len(self._fds) > self._max_open:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(k)
        return fd

    def shard_images(self, k: int) -> np.ndarray:
        """All images of shard ``k`` (global rows offsets[k]..offsets[k+1]), memory-mapped, read-only.

        For sequential scans; call ``release_pages()`` after each shard to keep memory flat."""
        self._wait_verified([k])
        with self._lock:
            return self._map(k).array

    def gather(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """Images at ``indices`` (into the presented rows) -> uint8 [B, H, W, C], in that order.

        Reads each shard's rows in ascending order, one ``preadv`` per run of consecutive rows
        (a repeated row is read once). ``out`` (uint8 [B, H, W, C], e.g. the numpy view of a
        pinned tensor) is filled in place when given. Thread-safe.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise IndexError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"{self.path}: index out of range for {n} images")
        rows = idx if self.selection is None else self.selection[idx]
        if out is None:
            out = np.empty((idx.size, *self.image_shape), np.uint8)
        elif out.shape != (idx.size, *self.image_shape) or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {(idx.size, *self.image_shape)}, got {out.dtype} {out.shape}")
        if not idx.size:
            return out
        rb = self._row_bytes
        flat = out.reshape(idx.size, rb)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        order = np.lexsort((rows, shard))
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        self._wait_verified(np.unique(shard).tolist())
        with self._lock:
            for group in np.split(order, cuts):
                k = int(shard[group[0]])
                local = rows[group] - self.offsets[k]  # ascending
                unique, first = np.unique(local, return_index=True)
                dest = group[first]  # output row receiving each unique row
                direct = bool(np.all(np.diff(dest) == 1)) if dest.size > 1 else True
                buf = flat[dest[0]:dest[0] + dest.size] if direct else np.empty((unique.size, rb), np.uint8)
                self._read_rows(k, unique, buf)
                if not direct:
                    flat[dest] = buf
                if unique.size < group.size:  # rows asked for more than once
                    flat[group] = flat[dest[np.searchsorted(unique, local)]]
        return out

    def _read_rows(self, k: int, rows: np.ndarray, buf: np.ndarray) -> None:
        """Read sorted unique ``rows`` of shard ``k`` into ``buf`` [len(rows), row_bytes]."""
        rb, fd, base = self._row_bytes, self._fd(k), self._data_offset[k]
        view = memoryview(buf).cast("B")
        starts = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.concatenate([[0], starts]).tolist(), np.concatenate([starts, [rows.size]]).tolist()):
            want, pos, offset = (hi - lo) * rb, lo * rb, base + int(rows[lo]) * rb
            while want:
                got = os.preadv(fd, [view[pos:pos + want]], offset)
                if got <= 0:
                    raise RobustgenError(f"{self.path / shard_file('images', k)}: truncated (read past the end "
                                         f"of the file at byte {offset})")
                want, pos, offset = want - got, pos + got, offset + got

    def release_pages(self) -> None:
        """Unmap the shards mapped by ``shard_images`` (their pages leave this process's RSS)."""
        with self._lock:
            for shard in self._maps.values():
                shard.release()
            self._maps.clear()

    def close(self) -> None:
        with self._lock:
            self._maps.clear()
            while self._fds:
                os.close(self._fds.popitem()[1])

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fmt_shape(shape) -> str:
    h, w, c = (int(v) for v in shape)
    return f"{h}x{w}x{c}"


def _fd_budget() -> int:
    """How many shards may be mapped at once (each map holds a file descriptor)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(4096, soft // 2))


# --------------------------------------------------------------------------- verify
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
                _check_layout(p, got_shape, dtype, want, FIELDS[field], offset, size)
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
