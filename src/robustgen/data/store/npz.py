"""Import and export the released ``.npz`` layout to and from a store, streaming (the released sets, paper Sec. 7).

DeepMind's ``cifar10_ddpm.npz`` and Wang et al.'s files hold ``image`` uint8 [N, H, W, C] and
``label`` [N] (optionally ``confidence``, ``condition``, ``class_names``). An .npz is a zip of
.npy members; the ``image`` member is read through the zip's file object in shard-sized chunks
(``np.lib.format`` parses its header), so importing 100M images never holds more than one
shard in memory. Export writes the same layout, again chunk by chunk, as an uncompressed zip
(what ``np.savez`` writes; ZIP64 where needed), atomically. ``import`` of an interrupted
import of the same file resumes at the first incomplete shard.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from robustgen.data.npz import validate_labels
from robustgen.data.store import DEFAULT_SHARD_SIZE, FIELDS, Store, is_store
from robustgen.data.store.format import npy_bytes_header, read_npy_header
from robustgen.data.store.writer import StoreWriter
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import atomic_write
from robustgen.runtime.progress import progress_bar

__all__ = ["export_npz", "import_npz"]

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)
_OPTIONAL = {"confidence": "confidences", "condition": "conditions"}


def _read_member(zf: zipfile.ZipFile, key: str, path: Path) -> np.ndarray:
    try:
        with zf.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise RobustgenError(f"{path}: key '{key}' holds pickled Python objects, which are refused") from None
        raise RobustgenError(f"{path}: key '{key}' is unreadable (corrupt or truncated?)") from None
    except _ZIP_ERRORS as e:
        raise RobustgenError(f"{path}: key '{key}' is unreadable (corrupt or truncated?): {type(e).__name__}") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise RobustgenError(f"{path}: file not found")
    if path.is_dir():
        raise RobustgenError(f"{path}: is a folder, expected an .npz file")
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS:
        raise RobustgenError(f"{path}: not an .npz (zip) archive (corrupt or truncated?)") from None


def _per_image_arrays(zf: zipfile.ZipFile, keys: list[str], path: Path, num_classes: int | None):
    """Everything of a released .npz but the images, checked: (labels, class names or None, the
    number of classes, {store field: array} of the optional confidences / conditions)."""
    labels = _read_member(zf, "label", path)
    class_names = None
    if "class_names" in keys:
        names = _read_member(zf, "class_names", path)
        names = np.char.decode(names, "utf-8") if names.dtype.kind == "S" else names
        if names.dtype.kind != "U" or names.ndim != 1 or not names.size:
            raise RobustgenError(f"{path}: 'class_names' must be a non-empty 1-D string array")
        class_names = [str(c) for c in names]
    if num_classes is None:
        num_classes = len(class_names) if class_names else (int(labels.max()) + 1 if labels.size else 0)
    if class_names is not None and len(class_names) != num_classes:
        raise RobustgenError(f"{path}: {len(class_names)} class_names but {num_classes} classes")
    validate_labels(labels, n=None, num_classes=num_classes, source=str(path))
    n = int(labels.shape[0])
    extra = {}
    for key, field in _OPTIONAL.items():
        if key in keys:
            arr = _read_member(zf, key, path)
            if arr.shape != (n,):
                raise RobustgenError(f"{path}: length mismatch: {n} labels but '{key}' has shape {arr.shape}")
            if key == "condition":
                validate_labels(arr, n=n, num_classes=num_classes, source=f"{path} ('condition')")
            elif arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                raise RobustgenError(f"{path}: 'confidence' must hold finite floats")
            extra[field] = arr
    return labels, class_names, num_classes, extra


def import_npz(npz_path, store_dir, *, shard_size: int = DEFAULT_SHARD_SIZE, num_classes: int | None = None,
               progress: bool = False) -> dict:
    """Stream an .npz in the released layout into a new store (or resume that same import).

    ``num_classes``: default len(class_names) when the file has them, else max label + 1.
    Returns a summary (images, shards, counts per class).
    """
    path = Path(npz_path)
    store_dir = Path(store_dir)
    with _open_zip(path) as zf:
        keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        missing = [k for k in ("image", "label") if k not in keys]
        if missing:
            raise RobustgenError(f"{path}: missing key(s) {missing}; found {keys}")
        labels, class_names, num_classes, extra = _per_image_arrays(zf, keys, path, num_classes)
        n = int(labels.shape[0])
        try:
            member = zf.open("image.npy")
        except _ZIP_ERRORS:
            raise RobustgenError(f"{path}: key 'image' is unreadable (corrupt or truncated?)") from None
        with member as f:
            shape, dtype = read_npy_header(f, f"{path} (key 'image')")
            if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
                raise RobustgenError(f"{path}: 'image' must be uint8 [N, H, W, C] with C in (1, 3), "
                                     f"got {dtype} {shape}")
            if shape[0] != n:
                raise RobustgenError(f"{path}: length mismatch: {shape[0]} images but {n} labels")
            stat = path.stat()
            source = {"kind": "npz", "path": str(path.resolve()), "bytes": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns, "label_dtype": str(labels.dtype),
                      "keys": keys}
            writer = _writer_for_import(store_dir, path, source, image_shape=shape[1:], num_classes=num_classes,
                                        class_names=class_names, shard_size=shard_size, n=n)
            with writer, progress_bar(total=n, unit="img", unit_scale=True, desc="import", disable=not progress) as bar:
                row_bytes = int(np.prod(shape[1:]))
                size = int(writer.manifest["shard_size"])
                for k, start in enumerate(range(0, n, size)):
                    stop = min(n, start + size)
                    count = stop - start
                    fields = ("images", "labels", *extra)
                    if writer.shard_ok(k, count=count, fields=fields):
                        f.seek(count * row_bytes, 1)
                    else:
                        try:
                            data = f.read(count * row_bytes)
                        except _ZIP_ERRORS as e:
                            raise RobustgenError(f"{path}: key 'image' is unreadable at image {start} "
                                                 f"(corrupt or truncated?): {type(e).__name__}") from None
                        if len(data) != count * row_bytes:
                            raise RobustgenError(f"{path}: key 'image' is truncated: {start + len(data) // row_bytes} "
                                                 f"of {n} images")
                        images = np.frombuffer(data, np.uint8).reshape(count, *shape[1:])
                        writer.write_shard(k, images=images, labels=labels[start:stop],
                                           **{field: arr[start:stop] for field, arr in extra.items()})
                    bar.update(count)
                summary = {"store": str(store_dir), "images": n, "shards": len(writer.shards),
                           "image_shape": list(shape[1:]), "num_classes": num_classes,
                           "counts_per_class": writer.manifest["counts_per_class"]}
    return summary


def _writer_for_import(store_dir: Path, path: Path, source: dict, *, image_shape, num_classes, class_names,
                       shard_size, n) -> StoreWriter:
    if is_store(store_dir):
        writer = StoreWriter.open(store_dir)
        old = writer.manifest.get("source") or {}
        same = ({k: old.get(k) for k in ("path", "bytes", "mtime_ns")}
                == {k: source[k] for k in ("path", "bytes", "mtime_ns")})
        if not same or writer.manifest.get("target_num_images") != n:
            writer.close()
            raise RobustgenError(f"{store_dir}: a store already exists here (not an import of {path}); "
                                 f"use another folder")
        return writer
    return StoreWriter.create(store_dir, image_shape=image_shape, num_classes=num_classes, class_names=class_names,
                              shard_size=shard_size, info={"source": source, "target_num_images": n})


def export_npz(store, out_path, *, use_selection: bool = True, progress: bool = False,
               chunk_rows: int = 32768) -> dict:
    """Write a store (its selected rows, unless ``use_selection=False``) as a released-layout .npz.

    Keys: ``image`` uint8 [N, H, W, C], ``label`` (the dtype it was imported with, else int64),
    plus ``confidence``, ``condition`` and ``class_names`` when the store has them.
    """
    if not isinstance(store, Store):
        store = Store(store, use_selection=use_selection)
    out_path = Path(out_path)
    n = len(store)
    src = store.manifest.get("source") or {}
    arrays = {"label": store.labels.astype(src.get("label_dtype", "int64"))}
    if store.confidences is not None:
        arrays["confidence"] = store.confidences
    if store.conditions is not None:
        arrays["condition"] = store.conditions
    if store.manifest.get("class_names"):
        arrays["class_names"] = np.asarray(store.manifest["class_names"])

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("image.npy", "w", force_zip64=True) as f, \
                    progress_bar(total=n, unit="img", unit_scale=True, desc="export", disable=not progress) as bar:
                f.write(npy_bytes_header((n, *store.image_shape), FIELDS["images"]))
                for start in range(0, n, chunk_rows):
                    rows = store.gather(np.arange(start, min(n, start + chunk_rows)))
                    f.write(memoryview(rows.reshape(-1)))
                    bar.update(len(rows))
            for key, arr in arrays.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        store.release_pages()

    atomic_write(out_path, write)
    return {"path": str(out_path), "images": n, "keys": ["image", *arrays]}
