"""Real image datasets: the ``ImageDataset`` container, a name registry and the built-ins.

Images stay uint8 [N, H, W, C] in host memory (or decoded on demand from files, ``folder.py``);
they become float only on the device (see ``augment.py``). Built-ins: ``digits`` (scikit-learn's
bundled 8x8 digits, offline, for tests and smoke runs), ``cifar10`` / ``cifar100`` / ``svhn``
(torchvision), ``npz:PATH`` (the released-data layout), ``tinyimagenet`` / ``imagenet`` (local
copies) and ``folder:PATH`` (an ImageFolder tree of image files).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from robustgen.data import folder
from robustgen.data.npz import read_npz, validate_dataset, validate_images, validate_labels
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.registry import Registry

__all__ = [
    "CIFAR10_CLASSES",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
    "load_split",
    "register_dataset",
    "holdout_split",
    "train_val_split",
    "validate_dataset",
    "default_data_root",
    "stratified_rows",
]

SPLITS = ("train", "test")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images uint8 [N, H, W, C], labels int64 [N], class names, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not self.class_names:
            raise RobustgenError(f"{self.name}: dataset has no class names")
        if not self.decoded_on_demand:
            validate_images(self.images, source=self.name, allow_empty=True)
        validate_labels(self.labels, n=self.images.shape[0], num_classes=len(self.class_names),
                        source=self.name, allow_empty=True)
        object.__setattr__(self, "labels", self.labels.astype(np.int64, copy=False))

    @property
    def decoded_on_demand(self) -> bool:
        """Whether ``images`` is a ``FolderImages`` (decoded per access) rather than a numpy array."""
        from robustgen.data.folder import FolderImages

        return isinstance(self.images, FolderImages)

    def in_memory(self) -> "ImageDataset":
        """This dataset with its images as a numpy array (decoding them if needed)."""
        return self if not self.decoded_on_demand else ImageDataset(
            np.asarray(self.images), self.labels, self.class_names, self.name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")

    def subset(self, indices) -> "ImageDataset":
        """A copy holding the rows ``indices`` (int array or boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype != bool:
            idx = idx.astype(np.int64, copy=False)
        images = self.images.take(idx) if self.decoded_on_demand else self.images[idx]
        return ImageDataset(images, self.labels[idx], self.class_names, self.name)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and (population) std of images/255, for the model's normalisation;
        of a seeded sample of 10,000 images when they are decoded on demand (ImageNet)."""
        n = len(self)
        if n == 0:
            raise RobustgenError(f"{self.name}: cannot compute mean/std of an empty dataset")
        if self.decoded_on_demand and n > 10_000:
            rows = np.sort(np.random.default_rng(0).choice(n, 10_000, replace=False))
            return self.subset(rows).in_memory().mean_std()
        c = self.images.shape[3]
        total = np.zeros(c, np.float64)
        total_sq = np.zeros(c, np.float64)
        # Chunked so a 50K x 32x32x3 set never becomes one float64 copy (1.2 GB).
        for start in range(0, n, 4096):
            chunk = self.images[start:start + 4096].reshape(-1, c).astype(np.float64)
            total += chunk.sum(0)
            total_sq += np.square(chunk).sum(0)
        count = n * self.images.shape[1] * self.images.shape[2]
        mean = total / count
        var = np.maximum(total_sq / count - mean ** 2, 0.0)
        return tuple(float(m / 255.0) for m in mean), tuple(float(math.sqrt(v) / 255.0) for v in var)


# ---------------------------------------------------------------------------------------------
# Registry

LoaderFn = Callable[..., ImageDataset]
_REGISTRY = Registry("dataset")  # name -> LoaderFn
# Local copies kept as image files: name -> (root, split) -> FileList (robustgen.data.folder)
FILE_LAYOUTS = {"tinyimagenet": folder.tinyimagenet_files, "imagenet": folder.imagenet_files}


def register_dataset(name: str):
    """Decorator: register ``fn(split, *, data_root, download, seed) -> ImageDataset`` as ``name``."""
    if not name or ":" in name:
        raise ValueError(f"invalid dataset name {name!r}")
    return _REGISTRY.register(name)


def list_datasets() -> list[str]:
    """Registered dataset names, plus the ``npz:PATH`` and ``folder:PATH`` forms."""
    return sorted([*_REGISTRY, *FILE_LAYOUTS]) + ["npz:PATH", "folder:PATH"]


def load_dataset(spec: str, split: str, *, data_root: str | None = None, download: bool = True,
                 seed: int = 0, image_size: int | None = None, decode_workers: int = 0,
                 in_memory_gib: float = 8.0) -> ImageDataset:
    """Load split ``"train"`` or ``"test"`` of dataset ``spec`` (a registered name, ``npz:PATH`` or
    ``folder:PATH``). ``image_size``, ``decode_workers``, ``in_memory_gib``: how datasets of image
    files are decoded (``robustgen.data.folder``); the others ignore them."""
    if split not in SPLITS:
        raise RobustgenError(f"dataset split must be one of {list(SPLITS)}, got {split!r}")
    decoding = dict(image_size=image_size, decode_workers=decode_workers, in_memory_gib=in_memory_gib)
    if spec.startswith("npz:"):
        return _load_npz_dataset(spec[len("npz:"):], split, spec=spec)
    if spec.startswith("folder:"):
        if not spec[len("folder:"):]:
            raise RobustgenError("dataset 'folder:' needs a path, e.g. folder:data/my-images (with train/ and test/)")
        files = folder.folder_files(Path(spec[len("folder:"):]), split)
        return folder.load_file_dataset(files, name=spec, **decoding)
    if spec in FILE_LAYOUTS:
        files = FILE_LAYOUTS[spec](default_data_root(data_root), split)
        return folder.load_file_dataset(files, name=spec, **decoding)
    if spec not in _REGISTRY:
        raise RobustgenError(f"unknown dataset {spec!r}; choose from {list_datasets()}")
    return _REGISTRY[spec](split, data_root=data_root, download=download, seed=seed)


def load_split(data_config, split: str) -> ImageDataset:
    """Split ``split`` of the dataset a ``DataConfig`` (``data.*`` keys) names."""
    d = data_config
    return load_dataset(d.dataset, split, data_root=d.data_root, download=d.download, seed=d.split_seed,
                        image_size=d.image_size, decode_workers=d.decode_workers, in_memory_gib=d.in_memory_gib)


def train_val_split(ds: ImageDataset, val_size: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Hold out ``val_size`` random examples (seeded) as validation; the rest stay for training.

    Both parts keep the original order of their rows. ``val_size`` 0 gives an empty validation set.
    """
    n = len(ds)
    if val_size < 0 or val_size >= n:
        raise RobustgenError(
            f"{ds.name}: validation size {val_size} must be in [0, {n}) for a training set of {n} images")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.permutation(n)[:val_size]] = True
    return ds.subset(np.flatnonzero(~is_val)), ds.subset(np.flatnonzero(is_val))


def holdout_split(ds: ImageDataset, keep: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Keep ``keep`` examples (seeded, stratified: each class keeps its share, largest remainders
    rounded up); hold out the rest. Both parts keep the original order of their rows."""
    n = len(ds)
    if not 0 < keep <= n:
        raise RobustgenError(f"{ds.name}: data.train_size {keep} must be in [1, {n}] (the real training "
                             f"images left after validation)")
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    quota = keep * counts / n
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")  # largest remainders first
    take[order[:keep - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, 0x4B33])
    kept = np.zeros(n, dtype=bool)
    for c in range(ds.num_classes):
        rows = np.flatnonzero(ds.labels == c)
        kept[rng.permutation(rows)[:take[c]]] = True
    return ds.subset(np.flatnonzero(kept)), ds.subset(np.flatnonzero(~kept))


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn, bundled: always offline)

@register_dataset("digits")
def _load_digits(split: str, *, data_root=None, download=True, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1797 8x8 digits as uint8 [N, 8, 8, 1]; seeded stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # 0..16 -> 0..255, round half up.
    images = np.floor(bunch.images * (255.0 / 16.0) + 0.5).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    # The split depends on the seed alone, so train and test never overlap for one seed.
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.3,
                                           stratify=labels, random_state=seed)
    idx = np.sort(train_idx if split == "train" else test_idx)
    return ImageDataset(images[idx], labels[idx], tuple(str(i) for i in range(10)), "digits")


# ---------------------------------------------------------------------------------------------
# torchvision datasets

def default_data_root(data_root: str | None = None) -> Path:
    """``data_root`` if given, else $ROBUSTGEN_DATA, else ~/.cache/robustgen/data."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("ROBUSTGEN_DATA")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/robustgen/data").expanduser()


def torchvision_to_arrays(data, targets, *, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Convert a torchvision dataset's ``data``/``targets`` to uint8 NHWC images and int64 labels."""
    images = np.asarray(data)
    if layout == "NCHW":
        images = images.transpose(0, 2, 3, 1)
    elif layout != "NHWC":
        raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    return images, labels


def _torchvision_dataset(name: str, split: str, data_root, download: bool, build, expected: str,
                         layout: str, class_names=None) -> ImageDataset:
    root = default_data_root(data_root)
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        tv = build(str(root), download)
    except Exception as e:  # torchvision raises RuntimeError (absent), URLError/OSError (offline), ...
        how = "download is disabled" if not download else f"download failed ({type(e).__name__})"
        raise RobustgenError(
            f"dataset '{name}' not found under {root} (expected {expected}) and {how}; "
            f"pass --data-root / data.data_root pointing at a folder that holds it") from None
    targets = tv.targets if hasattr(tv, "targets") else tv.labels  # SVHN calls them labels
    images, labels = torchvision_to_arrays(tv.data, targets, layout=layout)
    names = tuple(class_names) if class_names is not None else tuple(tv.classes)
    validate_dataset(images, labels, num_classes=len(names), source=f"{name} ({root})")
    return ImageDataset(images, labels, names, name)


@register_dataset("cifar10")
def _load_cifar10(split: str, *, data_root=None, download=True, seed: int = 0) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    return _torchvision_dataset(
        "cifar10", split, data_root, download,
        lambda root, dl: CIFAR10(root, train=(split == "train"), download=dl),
        expected="cifar-10-batches-py/", layout="NHWC")


@register_dataset("cifar100")
def _load_cifar100(split: str, *, data_root=None, download=True, seed: int = 0) -> ImageDataset:
    from torchvision.datasets import CIFAR100

    return _torchvision_dataset(
        "cifar100", split, data_root, download,
        lambda root, dl: CIFAR100(root, train=(split == "train"), download=dl),
        expected="cifar-100-python/", layout="NHWC")


@register_dataset("svhn")
def _load_svhn(split: str, *, data_root=None, download=True, seed: int = 0) -> ImageDataset:
    from torchvision.datasets import SVHN

    return _torchvision_dataset(
        "svhn", split, data_root, download,
        lambda root, dl: SVHN(root, split=split, download=dl),
        expected=f"{split}_32x32.mat", layout="NCHW",
        class_names=tuple(str(i) for i in range(10)))


# ---------------------------------------------------------------------------------------------
# npz:PATH (released-data layout)

def npz_split_paths(path: str) -> dict[str, Path]:
    """Where the train and test files of ``npz:PATH`` live (see ``load_dataset``)."""
    if "{split}" in path:
        return {s: Path(path.replace("{split}", s)).expanduser() for s in SPLITS}
    p = Path(path).expanduser()
    if p.is_dir():
        return {s: p / f"{s}.npz" for s in SPLITS}
    # A plain file is the train split; its test split is the sibling test.npz.
    return {"train": p, "test": p.parent / "test.npz"}


def _load_npz_dataset(path: str, split: str, *, spec: str) -> ImageDataset:
    if not path:
        raise RobustgenError("dataset 'npz:' needs a path, e.g. npz:data/cifar10 or npz:data/{split}.npz")
    paths = npz_split_paths(path)
    target = paths[split]
    if not target.exists():
        raise RobustgenError(f"{target}: file not found (the {split} split of dataset {spec!r})")

    # Class count: the file's class_names, else the train split's (so a test split that lacks
    # some class still gets the right count), else this file's max label + 1.
    num_classes = None
    train_names = None
    if split == "test" and paths["train"].exists() and paths["train"] != target:
        # Only the labels (and names) of the train file are read: cheap even for 50K images.
        info = read_npz(paths["train"], keys_required=("label",), keys=("label", "class_names"))
        if "class_names" in info:
            train_names = tuple(info["class_names"].tolist())
            num_classes = len(train_names)
        else:
            num_classes = int(info["label"].max()) + 1
    arrays = read_npz(target, num_classes=num_classes)
    names = tuple(arrays["class_names"].tolist()) if "class_names" in arrays else None
    if train_names is not None and names is not None and names != train_names:
        raise RobustgenError(f"{target}: class_names {list(names)} differ from the train split's "
                             f"{list(train_names)} in {paths['train']}")
    if names is None:
        names = train_names
    if names is None:
        k = num_classes if num_classes is not None else int(arrays["label"].max()) + 1
        names = tuple(str(i) for i in range(k))
    return ImageDataset(arrays["image"], arrays["label"], names, spec)

def stratified_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows of an evaluation subset of ``n`` images spread over every class: n // K of each class
    (the first n % K classes of a seeded order get one more), a seeded draw within each class, in
    ascending row order (a class with fewer images gives all it has). A pure function of (labels, n,
    seed), so a class-sorted folder (ImageNet val) is evaluated on every class, not on the first n / 50."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    quota = np.full(len(classes), n // len(classes))
    quota[np.random.default_rng([seed, 1]).permutation(len(classes))[: n % len(classes)]] += 1
    rows = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        rows.append(members[np.random.default_rng([seed, int(c)]).permutation(len(members))[:q]])
    return np.sort(np.concatenate(rows))
