"""The store's on-disk format (see ``robustgen.data.store``): file names, checked and atomic
``.npy`` reads and writes, read-only shard maps, and the manifest's structure."""

from __future__ import annotations

import io
import json
import mmap
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import HASH_BLOCK, bytes_sha256, new_digest
from robustgen.runtime.io import atomic_write, read_json

MANIFEST = "manifest.json"
FORMAT = "robustgen-store"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 100_000
SELECTION = "selection.npy"
# Per-shard arrays and their dtypes; "images" and "labels" are required.
FIELDS = {"images": np.dtype(np.uint8), "labels": np.dtype(np.int64),
          "conditions": np.dtype(np.int64), "confidences": np.dtype(np.float32)}


def _file_mode() -> int:
    # what open() would give (mkstemp makes 0600 files, unreadable to the other users of a store)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def shard_file(field: str, index: int) -> str:
    return f"{field}-{index:05d}.npy"


def is_store(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def code_version() -> str:
    from robustgen.runtime.version import __version__

    return __version__


# --------------------------------------------------------------------------- .npy files
def npy_bytes_header(shape: tuple, dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def write_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically (temp + fsync + rename); returns the file's sha256."""
    array = np.ascontiguousarray(array)
    digest = new_digest()

    def write(tmp):
        with open(tmp, "wb") as f:
            header = npy_bytes_header(array.shape, array.dtype)
            f.write(header)
            digest.update(header)
            flat = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
            for start in range(0, len(flat), HASH_BLOCK):
                block = flat[start:start + HASH_BLOCK]
                f.write(block)
                digest.update(block)
        os.chmod(tmp, _FILE_MODE)

    header_bytes = len(npy_bytes_header(array.shape, array.dtype))
    atomic_write(path, write, size=header_bytes + array.nbytes)  # fsynced there
    return digest.hexdigest()


def write_manifest(path: Path, manifest: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        os.chmod(tmp, _FILE_MODE)

    atomic_write(path, write)


def read_npy_header(f, where: str, *, c_order: bool = True) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from the header of the .npy at the start of the binary file object ``f``
    (left just after the header); ``c_order``: a Fortran-ordered array is an error. Errors name
    ``where``."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, KeyError, zlib.error, zipfile.BadZipFile) as e:
        raise RobustgenError(f"{where}: not a readable .npy array (corrupt or truncated header: "
                             f"{' '.join(str(e).split())[:120] or type(e).__name__})") from None
    if fortran and c_order:
        raise RobustgenError(f"{where}: Fortran-ordered array; expected C order")
    return tuple(shape), dtype


def npy_layout(path: Path) -> tuple[tuple, np.dtype, int, int]:
    """(shape, dtype, header bytes, file bytes) of a C-ordered .npy; errors name the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            shape, dtype = read_npy_header(f, str(path))
            offset = f.tell()
    except FileNotFoundError:
        raise RobustgenError(f"{path}: file not found") from None
    except OSError as e:
        raise RobustgenError(f"{path}: unreadable ({e.strerror})") from None
    return shape, dtype, offset, size


def check_layout(path: Path, shape: tuple, dtype: np.dtype, expected_shape: tuple,
                  expected_dtype: np.dtype, offset: int, size: int) -> None:
    if dtype != expected_dtype:
        raise RobustgenError(f"{path}: dtype {dtype}, expected {expected_dtype}")
    if tuple(shape) != tuple(expected_shape):
        raise RobustgenError(f"{path}: shape {tuple(shape)}, expected {tuple(expected_shape)} "
                             f"(per the manifest)")
    want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < want:
        raise RobustgenError(f"{path}: truncated: {size} bytes, expected {want}")
    if size > want:
        raise RobustgenError(f"{path}: {size - want} unexpected trailing bytes (expected {want} bytes)")


def read_small_npy(path: Path, expected_shape: tuple, dtype: np.dtype, sha256: str | None) -> np.ndarray:
    """Read a (small) per-shard array fully, checking layout and, when given, its sha256."""
    shape, got_dtype, offset, size = npy_layout(path)
    check_layout(path, shape, got_dtype, expected_shape, dtype, offset, size)
    data = path.read_bytes()
    if sha256 is not None and bytes_sha256(data) != sha256:
        raise RobustgenError(f"{path}: sha256 does not match the manifest (corrupt or modified file)")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


class MappedShard:
    """A read-only memory map of one images shard, [n, H, W, C] uint8."""

    def __init__(self, path: Path, count: int, image_shape: tuple):
        shape, dtype, offset, size = npy_layout(path)
        check_layout(path, shape, dtype, (count, *image_shape), FIELDS["images"], offset, size)
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.array = np.frombuffer(self.mm, np.uint8, count * int(np.prod(image_shape)),
                                   offset).reshape(count, *image_shape)

    def release(self) -> None:
        # drop the mapping's pages from this process (they stay in the page cache)
        self.mm.madvise(mmap.MADV_DONTNEED)


# --------------------------------------------------------------------------- manifest
def read_manifest(path) -> dict:
    """The manifest of store folder ``path``, structurally checked; errors name the file."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.exists():
        raise RobustgenError(f"{path}: store not found")
    if not path.is_dir():
        hint = " (an .npz file: import it with 'robustgen store import')" if path.suffix == ".npz" else ""
        raise RobustgenError(f"{path}: not a store folder{hint}")
    if not mpath.is_file():
        raise RobustgenError(f"{path}: not a robustgen store (no {MANIFEST})")
    m = read_json(mpath)

    def bad(msg):
        return RobustgenError(f"{mpath}: {msg}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad(f"not a robustgen store manifest (format is not {FORMAT!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {m.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    try:
        shape = tuple(int(v) for v in m["image_shape"])
        num_classes = int(m["num_classes"])
        shard_size = int(m["shard_size"])
        shards = m["shards"]
        if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
            raise bad(f"image_shape {list(shape)} must be [H, W, C] with C in (1, 3)")
        if num_classes < 1 or shard_size < 1:
            raise bad("num_classes and shard_size must be >= 1")
        names = m.get("class_names")
        if names is not None and len(names) != num_classes:
            raise bad(f"{len(names)} class_names for {num_classes} classes")
        for i, e in enumerate(shards):
            if int(e["index"]) != i:
                raise bad(f"shard entries must be listed in order 0, 1, ...; entry {i} has index {e['index']}")
            if int(e["count"]) < 1:
                raise bad(f"shard {i} has count {e['count']}")
            for field in ("images", "labels"):
                if field not in e["files"]:
                    raise bad(f"shard {i} has no {field} file")
            for field, f in e["files"].items():
                if field not in FIELDS or f["name"] != shard_file(field, i) or len(f["sha256"]) != 64:
                    raise bad(f"shard {i}: bad file entry {field!r}")
    except RobustgenError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"malformed manifest ({type(e).__name__}: {e})") from None
    return m


def new_manifest(*, image_shape, num_classes, class_names, shard_size, info: dict | None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "code_version": code_version(),
            "image_shape": [int(v) for v in image_shape], "num_classes": int(num_classes),
            "class_names": None if class_names is None else [str(c) for c in class_names],
            "shard_size": int(shard_size), "num_images": 0, "counts_per_class": [0] * int(num_classes),
            "target_num_images": None, "source": None, "generator": None, "labeller": None,
            "selection": None, **(info or {}), "shards": []}


def refresh_totals(m: dict) -> None:
    m["num_images"] = sum(int(e["count"]) for e in m["shards"])
    counts = np.zeros(m["num_classes"], np.int64)
    for e in m["shards"]:
        counts += np.asarray(e["counts_per_class"], np.int64)
    m["counts_per_class"] = counts.tolist()


def fmt_shape(shape) -> str:
    h, w, c = (int(v) for v in shape)
    return f"{h}x{w}x{c}"
