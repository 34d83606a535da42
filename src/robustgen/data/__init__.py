"""Data: real datasets, the released .npz layout, alpha-mixed batch indices, device-side augmentation."""

from robustgen.data.augment import crop_flip, to_float_nchw
from robustgen.data.datasets import (
    CIFAR10_CLASSES,
    ImageDataset,
    default_data_root,
    holdout_split,
    list_datasets,
    load_dataset,
    load_split,
    register_dataset,
    train_val_split,
    validate_dataset,
)
from robustgen.data.npz import read_npz, write_npz

__all__ = [
    "CIFAR10_CLASSES",
    "ImageDataset",
    "crop_flip",
    "default_data_root",
    "holdout_split",
    "list_datasets",
    "load_dataset",
    "load_split",
    "read_npz",
    "register_dataset",
    "to_float_nchw",
    "train_val_split",
    "validate_dataset",
    "write_npz",
]
