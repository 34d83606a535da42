"""Datasets kept as image files: ``folder:PATH`` (an ImageFolder-style tree of the user's own
images), ``tinyimagenet`` and ``imagenet`` (paper Sec. 6 and Table 2: TinyImageNet at 64x64 and
ImageNet, whose App. B recipe trains a ResNet-152).

Layouts (class index = position of the class folder / WordNet id in sorted order, as
torchvision's ImageFolder):

* ``folder:PATH``: ``PATH/train/<class>/**/*.jpg`` and ``PATH/test/<class>/...`` (``val/`` is
  accepted when there is no ``test/``); the test split uses the train split's classes.
* ``tinyimagenet`` (under ``data.data_root``, either the root or its ``tiny-imagenet-200/``):
  ``wnids.txt`` (the 200 WordNet ids), ``train/<wnid>/images/*.JPEG`` and, as the test split,
  ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (tab-separated file name, wnid, box).
* ``imagenet`` (``data_root`` or its ``imagenet/``): torchvision's prepared ImageNet /
  ImageFolder layout ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

Decoding: ``FolderImages`` is a uint8 [N, H, W, C] array decoded on demand. Every file is
decoded to RGB, then (``image_size`` S set) its shorter side resized to S (bilinear, with
antialiasing) and the centre S x S crop kept; with no ``image_size`` the files must all have one
size. JPEGs are decoded at reduced DCT scale when that still covers S (PIL's draft mode), and
rows are decoded by a pool of threads (PIL releases the GIL while decoding). A split whose
decoded size is at most ``in_memory_gib`` is decoded once and held as a numpy array (TinyImageNet:
1.2 GB); a larger one (ImageNet) stays a ``FolderImages``: the training loop then gathers its rows
per step in the prefetch thread, like the rows of a generated-data store, so host memory stays
flat. Unreadable files, empty class folders and missing annotations stop with one line naming the
file.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustgen.runtime.errors import RobustgenError, first_line
from robustgen.runtime.fingerprint import new_digest

__all__ = ["FileList", "FolderImages", "decode_image", "folder_files", "imagenet_files", "load_file_dataset",
           "tinyimagenet_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
_ROWS_PER_TASK = 16  # rows decoded by one pool task (amortises the task overhead)


@dataclass(frozen=True)
class FileList:
    """Image files, their int64 labels and the class names (index = label)."""

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]


# --------------------------------------------------------------------------- layouts
def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


def _class_tree(split_dir: Path, classes: tuple[str, ...] | None, *, what: str) -> FileList:
    """``split_dir/<class>/**/image`` files; ``classes`` (the train split's) fixes the label of each name."""
    if not split_dir.is_dir():
        raise RobustgenError(f"{split_dir}: folder not found (the {what})")
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise RobustgenError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image files>)")
    names = tuple(folders) if classes is None else classes
    index = {c: i for i, c in enumerate(names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise RobustgenError(f"{split_dir / unknown[0]}: class folder not among the train split's {len(names)} classes")
    paths, labels = [], []
    for name in folders:
        files = _image_files(split_dir / name)
        if not files:
            raise RobustgenError(f"{split_dir / name}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} files)")
        paths += files
        labels += [index[name]] * len(files)
    return FileList(tuple(paths), np.asarray(labels, np.int64), names)


def folder_files(root: Path, split: str) -> FileList:
    """``folder:PATH`` layout (module doc)."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        raise RobustgenError(f"{root}: expected an image folder tree with train/<class>/ and test/<class>/ folders")
    train = _class_tree(root / "train", None, what=f"train split of folder:{root}")
    if split == "train":
        return train
    test_dir = root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"
    return _class_tree(test_dir, train.class_names, what=f"test split of folder:{root}")


def _find_root(data_root: Path, marker: str, sub: str) -> Path:
    for candidate in (data_root, data_root / sub):
        if (candidate / marker).exists():
            return candidate
    raise RobustgenError(f"{data_root}: no {marker} here or in {sub}/ (set data.data_root to the folder that holds it)")


def tinyimagenet_files(data_root: Path, split: str) -> FileList:
    """TinyImageNet's train / val layout (module doc); the test split is the labelled val set."""
    root = _find_root(Path(data_root).expanduser(), "wnids.txt", "tiny-imagenet-200")
    wnids_file = root / "wnids.txt"
    wnids = tuple(sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()}))
    if not wnids:
        raise RobustgenError(f"{wnids_file}: no WordNet ids")
    if split == "train":
        train = _class_tree(root / "train", wnids, what="TinyImageNet train split")
        missing = sorted(set(wnids) - set(np.asarray(train.class_names)[np.unique(train.labels)]))
        if missing:
            raise RobustgenError(f"{root / 'train' / missing[0]}: class folder missing ({len(missing)} of "
                                 f"the {len(wnids)} wnids in {wnids_file} have none)")
        return train
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise RobustgenError(f"{annotations}: file not found (TinyImageNet val labels)")
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise RobustgenError(f"{annotations}:{number}: expected 'file<TAB>wnid' with a wnid of {wnids_file}, "
                                 f"got {line.strip()[:80]!r}")
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise RobustgenError(f"{path}: file not found (listed in {annotations}:{number})")
        paths.append(str(path))
        labels.append(index[fields[1]])
    if not paths:
        raise RobustgenError(f"{annotations}: no annotated images")
    return FileList(tuple(paths), np.asarray(labels, np.int64), wnids)


def imagenet_files(data_root: Path, split: str) -> FileList:
    """ImageNet in torchvision's prepared ImageFolder layout (train/<wnid>/, val/<wnid>/)."""
    root = _find_root(Path(data_root).expanduser(), "train", "imagenet")
    train = _class_tree(root / "train", None, what="ImageNet train split")
    return train if split == "train" else _class_tree(root / "val", train.class_names, what="ImageNet val split")


# --------------------------------------------------------------------------- decoding
def decode_image(path: str, size: int | None) -> np.ndarray:
    """uint8 [H, W, 3] RGB of the file at ``path``; ``size`` S: shorter side resized to S, centre S x S crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                # DCT-domain downscaling to the smallest scale whose shorter side is still >= S
                w, h = im.size
                im.draft("RGB", (max(1, -(-w * size // min(w, h))), max(1, -(-h * size // min(w, h)))))
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                if (w, h) != (size, size):
                    scale = size / min(w, h)
                    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                    left, top = (nw - size) // 2, (nh - size) // 2
                    im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None).crop(
                        (left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RobustgenError(f"{path}: cannot decode image ({type(e).__name__}: {first_line(e, limit=120)})") from None


class FolderImages:
    """uint8 [N, H, W, 3] images decoded from ``paths`` on demand (module doc). Indexing with an
    int, slice or index array returns decoded numpy arrays; ``gather`` decodes rows in parallel
    into ``out``; ``take`` gives a lazy subset; ``np.asarray`` decodes everything."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, *, size: int | None, workers: int = 0, name: str = "images",
                 shape: tuple[int, int] | None = None):
        self.paths = tuple(str(p) for p in paths)
        self.size, self.name = size, name
        self.workers = int(workers) or (os.cpu_count() or 1)
        if size is not None:
            hw = (int(size), int(size))
        elif shape is not None:
            hw = tuple(shape)
        elif self.paths:
            hw = decode_image(self.paths[0], None).shape[:2]
        else:
            hw = (1, 1)
        self.shape = (len(self.paths), int(hw[0]), int(hw[1]), 3)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"FolderImages({self.name!r}, shape={self.shape})"

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}

    def _decode_into(self, rows: np.ndarray, out: np.ndarray, start: int) -> None:
        for k, i in enumerate(rows):
            img = decode_image(self.paths[i], self.size)
            if img.shape != self.shape[1:]:
                raise RobustgenError(f"{self.paths[i]}: image is {img.shape[1]}x{img.shape[0]} but the first one is "
                                     f"{self.shape[2]}x{self.shape[1]}; set data.image_size to resize them all")
            out[start + k] = img

    def gather(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``indices`` decoded into ``out`` (uint8 [n, H, W, 3]), by the thread pool."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.name}: index out of range for {len(self)} images")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.empty((idx.size, *self.shape[1:]), np.uint8) if out is None else out
        if idx.size <= _ROWS_PER_TASK or self.workers == 1:
            self._decode_into(idx, out, 0)
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="robustgen-decode")
        tasks = [self._pool.submit(self._decode_into, idx[s:s + _ROWS_PER_TASK], out, s)
                 for s in range(0, idx.size, _ROWS_PER_TASK)]
        for t in tasks:
            t.result()  # re-raises a decoding error
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.gather([key])[0]
        if isinstance(key, slice):
            return self.gather(np.arange(len(self))[key])
        idx = np.asarray(key)
        return self.gather(np.flatnonzero(idx) if idx.dtype == bool else idx)

    def __array__(self, dtype=None, copy=None):
        out = self.gather(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def take(self, indices) -> "FolderImages":
        """The rows ``indices`` (int array or boolean mask) as a lazy ``FolderImages``."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        return FolderImages([self.paths[i] for i in idx], size=self.size, workers=self.workers, name=self.name,
                            shape=self.shape[1:3])

    def fingerprint(self) -> str:
        """sha256 over the paths, file sizes and modification times and the decoding settings."""
        h = new_digest(f"{self.shape}|{self.size}".encode())
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def load_file_dataset(files: FileList, *, name: str, image_size: int | None, decode_workers: int = 0,
                      in_memory_gib: float = 8.0):
    """An ``ImageDataset`` of ``files``: decoded into RAM when it fits ``in_memory_gib``, else lazy."""
    from robustgen.data.datasets import ImageDataset

    images = FolderImages(files.paths, size=image_size, workers=decode_workers, name=name)
    if images.nbytes <= in_memory_gib * 2**30:
        images = images.gather(np.arange(len(images)))
    return ImageDataset(images, files.labels, files.class_names, name)
