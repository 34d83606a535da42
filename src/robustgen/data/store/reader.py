"""The store's reader, ``Store``: the presented rows' labels in RAM and ``gather`` of any rows with
one ``preadv`` per run of consecutive rows (see the package doc for the layout)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from robustgen.data.store.format import (FIELDS, MANIFEST, SELECTION, MappedShard, check_layout, fmt_shape, npy_layout,
                                         read_manifest, read_small_npy, shard_file)
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import cached_sha256

__all__ = ["Store"]


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
            raise RobustgenError(f"{mpath}: the store holds {fmt_shape(self.image_shape)} images but "
                                 f"{fmt_shape(image_shape)} are expected")
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
            check_layout(f, got_shape, dtype, (int(e["count"]), *self.image_shape), FIELDS["images"], offset, size)
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
        self._maps: OrderedDict[int, MappedShard] = OrderedDict()
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
    def _map(self, k: int) -> MappedShard:
        shard = self._maps.get(k)
        if shard is None:
            shard = MappedShard(self.path / shard_file("images", k), int(self.counts[k]), self.image_shape)
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


def _fd_budget() -> int:
    """How many shards may be mapped at once (each map holds a file descriptor)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(4096, soft // 2))
