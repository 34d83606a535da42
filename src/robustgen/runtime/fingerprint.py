"""Every hash the project computes, in one place: sha256 of bytes, files, arrays and JSON-able
settings, and the short stage fingerprints that name cached folders.

* ``file_sha256`` / ``cached_sha256`` / ``bytes_sha256``: the content hashes a store's manifest
  lists and checks (``data.store``), and that identify a classifier or a generator's weights.
* ``array_fingerprint``: sha256 over arrays' dtypes, shapes and bytes (the training data a fit
  or a stage saw); lazily decoded image folders contribute their own file fingerprint.
* ``hash_parts``: 12 hex digits over the package version and JSON-able parts (keys sorted), the
  building block of every stage's fingerprint (``stages.common.stage_fingerprint``).
* ``new_digest`` / ``update_arrays``: the incremental form, for data hashed while it streams.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from robustgen.runtime.version import __version__

__all__ = ["HASH_BLOCK", "array_fingerprint", "bytes_sha256", "cached_sha256", "file_sha256", "hash_parts",
           "json_sha256", "new_digest", "short_digest", "update_arrays"]

HASH_BLOCK = 16 << 20  # bytes read or hashed at a time


def new_digest(data: bytes = b""):
    """A sha256 object (``update`` / ``hexdigest``), for data hashed as it streams."""
    return hashlib.sha256(data)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def short_digest(text: str) -> str:
    """12 hex digits of sha256 over ``text`` (names, not integrity checks)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def json_sha256(obj) -> str:
    """sha256 over ``obj`` as JSON with sorted keys (non-JSON values by ``str``)."""
    return bytes_sha256(json.dumps(obj, sort_keys=True, default=str).encode())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHED: dict[tuple, str] = {}  # (device, inode, size, mtime) -> sha256, for this process


def cached_sha256(path: Path) -> str:
    """``file_sha256``, remembered for this process while the file's inode, size and mtime stay
    the same (any write changes the mtime; a hard link changes only the ctime): the pipeline
    checks a reused stage's files, then training checks the same shards (hard-linked into the
    label stage's store), and each file is read once."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _HASHED.get(key)
    if digest is None:
        digest = _HASHED[key] = file_sha256(path)
    return digest


def update_arrays(digest, *arrays) -> None:
    """Add each array's dtype, shape and bytes to ``digest`` (None skipped); images decoded on
    demand from files (``data.folder.FolderImages``) add their file fingerprint instead."""
    for a in arrays:
        if a is None:
            continue
        if hasattr(a, "fingerprint") and not isinstance(a, np.ndarray):
            digest.update(f"files{a.shape}{a.fingerprint()}".encode())
            continue
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a.reshape(-1).view(np.uint8)))


def array_fingerprint(*arrays) -> str:
    """sha256 over the arrays' shapes, dtypes and bytes (identifies the training data)."""
    digest = hashlib.sha256()
    update_arrays(digest, *arrays)
    return digest.hexdigest()


def hash_parts(*parts) -> str:
    """12 hex digits of sha256 over the package version and ``parts`` (JSON, keys sorted)."""
    return json_sha256([__version__, *parts])[:12]
