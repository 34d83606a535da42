"""The released-data ``.npz`` layout: read with validation, write atomically (the released sets, paper Sec. 7).

Every generated set released with the paper (and the CIFAR-10 copy in shared/data) is one
uncompressed ``.npz`` holding ``image`` uint8 [N, H, W, C] and ``label`` integer [N]; extra
keys (``confidence``, ``condition``, ``class_names``) may ride along. Bad files fail with one
``RobustgenError`` line that names the file and the problem. Nothing is ever unpickled.

The array checks (``validate_dataset``) live here, the lowest layer, so both the file reader
and the in-memory datasets share one copy of them.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import atomic_write

__all__ = ["read_npz", "write_npz", "validate_dataset", "validate_images", "validate_labels"]

# Errors numpy / zipfile raise on a file that is not a (complete) .npz archive.
_LOAD_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, KeyError)


def validate_images(images, *, source: str, allow_empty: bool = False) -> None:
    """``images`` must be a uint8 [N, H, W, C] array with C in (1, 3)."""
    if not isinstance(images, np.ndarray):
        raise RobustgenError(f"{source}: images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        hint = " (scale [0,1] floats with (x*255).round().astype(uint8))" if images.dtype.kind == "f" else ""
        raise RobustgenError(f"{source}: 'image' must be uint8, got {images.dtype}{hint}")
    if images.ndim != 4:
        raise RobustgenError(
            f"{source}: 'image' must be 4-D [N, H, W, C], got shape {tuple(images.shape)}")
    if images.shape[3] not in (1, 3):
        raise RobustgenError(
            f"{source}: 'image' must be channels-last with 1 or 3 channels, got shape "
            f"{tuple(images.shape)} (NCHW data must be transposed to NHWC)")
    if not allow_empty and images.shape[0] == 0:
        raise RobustgenError(f"{source}: 'image' is empty (0 images)")
    if min(images.shape[1:3]) == 0:
        raise RobustgenError(f"{source}: 'image' has an empty spatial size {tuple(images.shape)}")


def validate_labels(labels, *, n: int | None, num_classes: int | None, source: str,
                    allow_empty: bool = False) -> None:
    """``labels`` must be an integer [n] array with values in [0, num_classes)."""
    if not isinstance(labels, np.ndarray):
        raise RobustgenError(f"{source}: labels must be a numpy array, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise RobustgenError(f"{source}: 'label' must be an integer array, got {labels.dtype}")
    if labels.ndim != 1:
        raise RobustgenError(f"{source}: 'label' must be 1-D [N], got shape {tuple(labels.shape)}")
    if n is not None and labels.shape[0] != n:
        raise RobustgenError(
            f"{source}: length mismatch: {n} images but {labels.shape[0]} labels")
    if labels.size == 0:
        if not allow_empty:
            raise RobustgenError(f"{source}: 'label' is empty (0 labels)")
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise RobustgenError(f"{source}: negative label {lo}")
    if num_classes is not None and hi >= num_classes:
        raise RobustgenError(
            f"{source}: label {hi} out of range for {num_classes} classes (expected 0..{num_classes - 1})")


def validate_dataset(images, labels, *, num_classes: int | None, source: str,
                     allow_empty: bool = False) -> None:
    """Check an (images, labels) pair: dtype, shape, length, label range; one-line error naming ``source``."""
    validate_images(images, source=source, allow_empty=allow_empty)
    validate_labels(labels, n=images.shape[0], num_classes=num_classes, source=source,
                    allow_empty=allow_empty)


def _load_arrays(path: Path, keys: tuple[str, ...] | None) -> dict[str, np.ndarray]:
    """Load ``keys`` (all when None) from an .npz without unpickling; errors name the file."""
    if not path.exists():
        raise RobustgenError(f"{path}: file not found")
    if path.is_dir():
        raise RobustgenError(f"{path}: is a folder, expected an .npz file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic:
        raise RobustgenError(f"{path}: file is empty, expected an .npz archive")
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
        raise RobustgenError(f"{path}: not an .npz (zip) archive (corrupt file?)")
    try:
        archive = np.load(path, allow_pickle=False)
    except _LOAD_ERRORS as e:
        raise RobustgenError(f"{path}: not a readable .npz archive (corrupt or truncated?): "
                             f"{_one_line(e)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise RobustgenError(f"{path}: is a single .npy array, expected an .npz archive with "
                             f"'image' and 'label'")
    with archive:
        names = list(archive.files)
        wanted = names if keys is None else [k for k in keys if k in names]
        out = {}
        for key in wanted:
            try:
                out[key] = archive[key]
            except ValueError as e:
                if "pickle" in str(e).lower():
                    raise RobustgenError(f"{path}: key '{key}' holds pickled Python objects, "
                                         f"which are refused (store plain arrays)") from None
                raise RobustgenError(f"{path}: key '{key}' is unreadable (corrupt or truncated?): "
                                     f"{_one_line(e)}") from None
            except _LOAD_ERRORS as e:
                raise RobustgenError(f"{path}: key '{key}' is unreadable (corrupt or truncated?): "
                                     f"{_one_line(e)}") from None
    return out


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


def read_npz(path, *, keys_required=("image", "label"), num_classes: int | None = None,
             keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Read and validate an .npz in the released layout.

    Returns every key (or only ``keys`` when given; required keys are always read). ``label``
    comes back as int64, ``class_names`` (when present) as a unicode array; other keys as
    stored. Raises RobustgenError (naming the file) on a missing, corrupt or truncated file,
    a missing key, a malformed ``image``/``label``, labels outside [0, num_classes), a length
    mismatch, empty arrays, or NaN/inf in any float array.
    """
    path = Path(path)
    load_keys = None if keys is None else tuple(dict.fromkeys((*keys_required, *keys)))
    arrays = _load_arrays(path, load_keys)
    missing = [k for k in keys_required if k not in arrays]
    if missing:
        raise RobustgenError(f"{path}: missing key(s) {missing}; found {sorted(arrays)}")

    if "class_names" in arrays:
        arrays["class_names"] = _check_class_names(arrays["class_names"], path)
        if num_classes is None:
            num_classes = len(arrays["class_names"])
    n = None
    if "image" in arrays:
        validate_images(arrays["image"], source=str(path))
        n = arrays["image"].shape[0]
    if "label" in arrays:
        validate_labels(arrays["label"], n=n, num_classes=num_classes, source=str(path))
        arrays["label"] = arrays["label"].astype(np.int64, copy=False)
    for key, arr in arrays.items():
        if key in ("image", "label", "class_names"):
            continue
        if arr.size == 0 and n:
            raise RobustgenError(f"{path}: key '{key}' is empty")
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise RobustgenError(f"{path}: key '{key}' contains NaN or inf values")
        if n is not None and arr.ndim >= 1 and key in ("confidence", "condition") and arr.shape[0] != n:
            raise RobustgenError(
                f"{path}: length mismatch: {n} images but '{key}' has {arr.shape[0]} entries")
    return arrays


def _check_class_names(names: np.ndarray, path: Path) -> np.ndarray:
    if names.dtype.kind == "S":
        names = np.char.decode(names, "utf-8")
    if names.dtype.kind != "U" or names.ndim != 1 or names.size == 0:
        raise RobustgenError(f"{path}: 'class_names' must be a non-empty 1-D string array, "
                             f"got {names.dtype} {tuple(names.shape)}")
    return names


def write_npz(path, **arrays) -> None:
    """Write ``arrays`` as an uncompressed .npz, atomically (``atomic_write``)."""
    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for key, arr in arrays.items():
        if arr.dtype.hasobject:
            raise RobustgenError(f"{path}: key '{key}' is an object array, which would need "
                                 f"pickling (store a plain numeric or string array)")

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object keeps np.savez from appending ".npz" to the temp name
            np.savez(f, **arrays)

    atomic_write(path, write, size=sum(a.nbytes for a in arrays.values()))
