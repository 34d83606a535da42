"""What every stage shares: the device, the real splits, fresh models, fingerprints, model selection.

A stage's fingerprint (``stage_fingerprint``) hashes what determines its result: its settings,
its inputs' fingerprints and its code (``stages.code``). The pipeline names a stage's folder after it and
training checkpoints record it, so a changed setting never resumes or reuses an older result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from robustgen.checkpoint import model_spec
from robustgen.config import DataConfig, RunConfig, require
from robustgen.data import ImageDataset, holdout_split, load_split, train_val_split
from robustgen.evaluate import evaluate_robustness
from robustgen.label import predict_probabilities
from robustgen.models import create_model
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import array_fingerprint, file_sha256, hash_parts
from robustgen.train.loop import LoopSettings
from robustgen.train.schedule import scaled_lr

__all__ = ["Splits", "build_model", "clean_accuracy", "data_fingerprint", "fingerprint_key",
           "load_splits", "section_loop_settings", "resolve_device", "robust_seed", "selection_evaluator", "stage_fingerprint"]


@dataclass(frozen=True)
class Splits:
    train: ImageDataset  # real training images, validation (and held-out) images removed
    val: ImageDataset  # the validation split: training images set aside for model selection
    test: ImageDataset
    heldout: ImageDataset | None = None  # held out by data.train_size; only the heldout generator reads them


# fingerprint -> (hash of the settings and inputs alone, the stage whose code it includes), for the
# notice that a stage recomputes because its code changed (``pipeline.Stage``)
_KEYS: dict[str, tuple[str, str]] = {}


def stage_fingerprint(code: str, *parts) -> str:
    """``hash_parts(*parts)`` plus the digest of the code of stage ``code`` (``stages.code.STAGE_CODE``)."""
    from robustgen.stages.code import code_digest

    fp = hash_parts(*parts, {"code": code_digest(code)})
    _KEYS[fp] = (hash_parts(*parts), code)
    return fp


def fingerprint_key(fp: str) -> tuple[str, str] | None:
    """(settings-and-inputs key, code stage) of a fingerprint made by ``stage_fingerprint`` here."""
    return _KEYS.get(fp)


def data_fingerprint(cfg: RunConfig, splits: Splits) -> str:
    """Content hash of the real splits, so a changed npz file or split invalidates every stage."""
    parts = [splits.train, splits.val, splits.test] + ([splits.heldout] if splits.heldout is not None else [])
    content = array_fingerprint(*(a for ds in parts for a in (ds.images, ds.labels)))
    return hash_parts(cfg.data.dataset, cfg.data.val_size, cfg.data.split_seed, content)


def check_dataset(cfg: RunConfig, source: str) -> None:
    """``data.dataset`` names a registered dataset, an .npz or an image folder (before any work starts)."""
    from robustgen.data import list_datasets

    known = [d for d in list_datasets() if ":" not in d]
    require(cfg.data.dataset.startswith(("npz:", "folder:")) or cfg.data.dataset in known, source,
            f"data.dataset: unknown dataset {cfg.data.dataset!r} (known: {', '.join(known)}, npz:PATH, folder:PATH)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustgenError(f"device {name!r} requested but CUDA is not available")
    return device


def load_test_split(cfg: RunConfig) -> ImageDataset:
    """The evaluated points: the dataset's test split, or with ``eval.split: generated:PATH`` the
    images and labels of a store or .npz of generated data (held in RAM)."""
    if cfg.eval.split == "test":
        return load_split(cfg.data, "test")
    from robustgen.train.mixing.sources import open_source

    path = cfg.eval.split.removeprefix("generated:")
    source = open_source(path)
    names = getattr(source, "class_names", None) or tuple(str(c) for c in range(source.num_classes))
    images = source.gather(np.arange(len(source), dtype=np.int64))
    return ImageDataset(images, np.asarray(source.labels, dtype=np.int64), names, name=f"generated:{path}")


def _check_points(test: ImageDataset, train: ImageDataset, where: str) -> ImageDataset:
    if test.image_shape != train.image_shape:
        raise RobustgenError(f"{where}: train images are {train.image_shape} but test images are {test.image_shape}")
    if test.num_classes > train.num_classes:
        raise RobustgenError(f"{where}: the test split has labels beyond the train split's {train.num_classes} classes")
    return test


def source_identity(path: str):
    """What identifies a store or .npz given as a path (a store's manifest hash, a file's size and
    time), so that a changed source invalidates the stages that read it."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return file_sha256(p / "manifest.json")
    return [str(p.resolve()), *((p.stat().st_size, p.stat().st_mtime) if p.exists() else ())]


def eval_points(cfg: RunConfig, splits: Splits) -> ImageDataset:
    """The points the evaluation stage attacks: the real test split, or ``eval.split: generated:PATH``
    (read only here, so the stages before evaluation do not depend on it and are shared)."""
    if cfg.eval.split == "test":
        return splits.test
    return _check_points(load_test_split(cfg), splits.train, cfg.eval.split)


def load_splits(cfg: RunConfig) -> Splits:
    """The real splits; ``splits.test`` is the dataset's test split whatever ``eval.split`` says (f_NR's
    reported accuracy, figures); the evaluation reads its points through ``eval_points``."""
    d = cfg.data
    full = load_split(d, "train")
    test = _check_points(load_split(d, "test"), full, d.dataset)
    train, val = train_val_split(full, d.val_size, d.split_seed)
    heldout = None
    if d.train_size is not None:
        train, heldout = holdout_split(train, d.train_size, d.split_seed)
    # model selection attacks the validation split every few epochs: keep it decoded
    return Splits(train=train, val=val.in_memory(), test=test, heldout=heldout)


def build_model(arch: str, activation: str, data: ImageDataset, *, seed: int) -> tuple[nn.Module, dict]:
    """A freshly initialised model whose weights depend on ``seed`` alone (not on which stages
    happened to run before in this process)."""
    mean, std = data.mean_std()
    h, _, c = data.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=data.num_classes, in_channels=c, mean=mean, std=std,
                             activation=activation)
    return model, model_spec(arch=arch, num_classes=data.num_classes, in_channels=c,
                             activation=activation, image_size=h)


def section_loop_settings(section, data: DataConfig, *, total_steps: int, warmup_steps: int, seed: int,
                          **specific) -> LoopSettings:
    """The training loop's settings from a config section with ``batch_size``, ``lr_per_256``,
    ``momentum`` and ``weight_decay`` (``classifier`` or ``train``), the data's augmentation and
    what is specific to the stage (``specific``: the other ``LoopSettings`` fields)."""
    return LoopSettings(batch_size=section.batch_size, total_steps=total_steps, warmup_steps=warmup_steps,
                        peak_lr=scaled_lr(section.batch_size, lr_per_256=section.lr_per_256),
                        momentum=section.momentum, weight_decay=section.weight_decay,
                        crop_padding=data.crop_padding, flip=data.flip, seed=seed, **specific)


def robust_seed(cfg: RunConfig) -> int:
    """The seed of adversarial training: ``train.seed``, else the run's seed."""
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


@torch.no_grad()
def clean_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                   device: torch.device) -> float:
    probs = predict_probabilities(model, np.asarray(images), batch_size=batch_size, device=device)
    return float((probs.argmax(1) == labels).mean())


def selection_evaluator(cfg: RunConfig, val: ImageDataset, device: torch.device, *, robust: bool,
                        train: ImageDataset | None = None):
    """Model selection on the validation split: PGD-40 robust accuracy (or clean accuracy). ``train``
    (robust only): real training images measured the same way, for the robust generalisation gap;
    they do not enter the score."""
    seed = robust_seed(cfg) if robust else cfg.seed

    def pgd40(model, data: ImageDataset, step: int) -> dict:
        return evaluate_robustness(model, data.images, data.labels, attack="pgd40", norm=cfg.threat.norm,
                                   eps=cfg.threat.eps, batch_size=cfg.eval.batch_size, device=device, seed=seed + step)

    def evaluate(variants: dict[str, nn.Module], step: int) -> dict[str, dict]:
        out = {}
        for name, model in variants.items():
            if len(val) == 0:
                continue
            if robust:
                m = pgd40(model, val, step)
                out[name] = {"score": m["robust_accuracy"], "val_clean_accuracy": m["clean_accuracy"],
                             "val_robust_accuracy": m["robust_accuracy"]}
                if train is not None and len(train):
                    t = pgd40(model, train, step)
                    out[name].update(train_clean_accuracy=t["clean_accuracy"],
                                     train_robust_accuracy=t["robust_accuracy"])
            else:
                acc = clean_accuracy(model, val.images, val.labels, batch_size=cfg.eval.batch_size, device=device)
                out[name] = {"score": acc, "val_clean_accuracy": acc}
        return out

    return evaluate
