"""Preflight of a run: every input it will read exists and is readable, before any GPU-hour.

``preflight(cfg, out)`` checks, for the stages the run will execute (paper Sec. 3.3's pipeline):
the dataset's files (an ``npz:`` folder's zip directory and ``.npy`` headers: uint8 images
[N, H, W, C], integer labels [N]; a torchvision dataset's folder, or that download is allowed),
extra training sources (``data.sources``), the classifier checkpoint, the pretrained diffusion
model (a local diffusers folder, or a hub id: in the local cache or to be downloaded), and the
free disk space at the output folder against the estimated need. It returns problems (one line
each, naming the file) and notes; ``robustgen run --dry-run`` prints them and exits 2 on a problem.
Headers only: nothing large is read.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustgen.config import RunConfig
from robustgen.runtime.errors import RobustgenError

__all__ = ["DataShape", "Preflight", "data_shape", "npz_headers", "preflight", "preset_summaries"]

# Splits of the torchvision datasets: (train images, test images, (H, W, C), classes, expected file).
_TORCHVISION = {
    "cifar10": (50_000, 10_000, (32, 32, 3), 10, "cifar-10-batches-py"),
    "cifar100": (50_000, 10_000, (32, 32, 3), 100, "cifar-100-python"),
    "svhn": (73_257, 26_032, (32, 32, 3), 10, "train_32x32.mat"),
}


@dataclass(frozen=True)
class DataShape:
    n_train: int  # images in the train split (before the validation hold-out)
    n_test: int
    image_shape: tuple[int, int, int]  # H, W, C
    num_classes: int


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)  # each makes the run fail
    notes: list[str] = field(default_factory=list)  # worth knowing, not errors

    @property
    def ok(self) -> bool:
        return not self.problems


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, from its zip directory and .npy headers only."""
    from robustgen.data.store.format import read_npy_header

    path = Path(path)
    if not path.is_file():
        raise RobustgenError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as f:
                    out[name[:-4]] = read_npy_header(f, f"{path} (key {name[:-4]!r})", c_order=False)
            return out
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise RobustgenError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None


def _check_image_npz(path: Path) -> tuple[int, tuple[int, int, int]]:
    """(N, (H, W, C)) of a released-layout .npz (image uint8 [N, H, W, C], label int [N])."""
    headers = npz_headers(path)
    if "image" not in headers or "label" not in headers:
        raise RobustgenError(f"{path}: needs arrays 'image' and 'label', has {sorted(headers)}")
    (ishape, idtype), (lshape, ldtype) = headers["image"], headers["label"]
    if len(ishape) != 4 or idtype != np.uint8:
        raise RobustgenError(f"{path}: 'image' must be uint8 [N, H, W, C], is {idtype} {list(ishape)}")
    if len(lshape) != 1 or lshape[0] != ishape[0] or not np.issubdtype(ldtype, np.integer):
        raise RobustgenError(f"{path}: 'label' must be integers [{ishape[0]}], is {ldtype} {list(lshape)}")
    return ishape[0], tuple(ishape[1:])


def data_shape(cfg: RunConfig, report: Preflight | None = None) -> DataShape | None:
    """Sizes of the run's dataset from headers (npz) or the known torchvision splits; problems go
    to ``report`` (then None is returned) or raise."""
    from robustgen.data.datasets import default_data_root, npz_split_paths

    spec = cfg.data.dataset
    try:
        if spec.startswith("npz:"):
            paths = npz_split_paths(spec[4:])
            n_train, shape = _check_image_npz(paths["train"])
            n_test, test_shape = _check_image_npz(paths["test"])
            if test_shape != shape:
                raise RobustgenError(f"{paths['test']}: images are {test_shape}, the train split's {shape}")
            headers = npz_headers(paths["train"])
            classes = headers["class_names"][0][0] if "class_names" in headers else None
            if classes is None:  # the label maximum needs the labels: small (8 bytes per image)
                classes = int(np.load(paths["train"])["label"].max()) + 1
            return DataShape(n_train, n_test, shape, int(classes))
        if spec in _TORCHVISION:
            n_train, n_test, shape, classes, expected = _TORCHVISION[spec]
            root = default_data_root(cfg.data.data_root)
            if not (root / expected).exists():
                if not cfg.data.download:
                    raise RobustgenError(f"{root / expected}: dataset {spec} not found and data.download is false")
                if report is not None:
                    report.notes.append(f"dataset {spec}: not under {root}; torchvision will download it (network)")
            return DataShape(n_train, n_test, shape, classes)
        if spec in _IMAGE_FILES or spec.startswith("folder:"):
            return _file_data_shape(cfg, report)
        from robustgen.data import (
            load_dataset,  # small bundled datasets (digits): just load them
        )

        train = load_dataset(spec, "train", data_root=cfg.data.data_root, download=cfg.data.download,
                             seed=cfg.data.split_seed)
        test = load_dataset(spec, "test", data_root=cfg.data.data_root, download=cfg.data.download,
                            seed=cfg.data.split_seed)
        return DataShape(len(train), len(test), tuple(train.image_shape), train.num_classes)
    except RobustgenError as e:
        if report is None:
            raise
        report.problems.append(str(e))
        return None


# Local image-file datasets (robustgen.data.folder): (train images, test images, native side, classes).
_IMAGE_FILES = {"tinyimagenet": (100_000, 10_000, 64, 200), "imagenet": (1_281_167, 50_000, None, 1000)}


def _file_data_shape(cfg: RunConfig, report: Preflight | None) -> DataShape:
    """Sizes of a dataset of image files: from its file lists when present (the first image gives
    the size unless data.image_size is set); for tinyimagenet / imagenet not present, the published
    split sizes, with a problem naming the missing folder."""
    from robustgen.data.datasets import FILE_LAYOUTS, default_data_root
    from robustgen.data.folder import FolderImages, folder_files

    spec, d = cfg.data.dataset, cfg.data
    try:
        if spec.startswith("folder:"):
            train, test = (folder_files(Path(spec[7:]), split) for split in ("train", "test"))
        else:
            root = default_data_root(d.data_root)
            train, test = (FILE_LAYOUTS[spec](root, split) for split in ("train", "test"))
    except RobustgenError as e:
        if report is None or spec not in _IMAGE_FILES:
            raise
        report.problems.append(str(e))
        n_train, n_test, side, classes = _IMAGE_FILES[spec]
        side = d.image_size or side
        if side is None:
            report.problems.append(f"dataset {spec}: set data.image_size (its files have many sizes)")
            side = 224
        return DataShape(n_train, n_test, (side, side, 3), classes)
    shape = FolderImages(train.paths[:1], size=d.image_size).shape[1:]
    return DataShape(len(train.paths), len(test.paths), tuple(shape), len(train.class_names))


def _check_source(path: str, report: Preflight) -> None:
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            manifest = p / "manifest.json"
            json.loads(manifest.read_text())
        else:
            _check_image_npz(p)
    except (OSError, ValueError) as e:
        report.problems.append(f"{p}: not a readable store ({type(e).__name__}: {e})")
    except RobustgenError as e:
        report.problems.append(str(e))


def _check_plugin(plugin, report: Preflight) -> None:
    """The plug-in generator's code and checkpoint exist (its import runs only when the stage runs)."""
    import importlib.util

    module = (plugin.entry_point or "").partition(":")[0]
    if module.endswith(".py"):
        if not Path(module).expanduser().is_file():
            report.problems.append(f"{module}: file not found (generator.plugin.entry_point)")
    elif module and importlib.util.find_spec(module.split(".")[0]) is None:
        report.problems.append(f"{module}: no such module (generator.plugin.entry_point)")
    if plugin.checkpoint is not None and not Path(plugin.checkpoint).expanduser().is_file():
        report.problems.append(f"{plugin.checkpoint}: file not found (generator.plugin.checkpoint)")


def _check_pretrained(source: str, report: Preflight) -> None:
    p = Path(source).expanduser()
    if p.exists():
        markers = ("model_index.json", "config.json", "unet/config.json", "edm_network.json")
        if not p.is_dir() or not any((p / f).is_file() for f in markers):
            report.problems.append(f"{p}: not a diffusers model folder (no model_index.json, config.json or "
                                   f"unet/config.json) nor a converted EDM network (edm_network.json)")
        return
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        report.problems.append(f"{source}: generator.ddpm.pretrained is neither an existing folder nor a hub id (org/name)")
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = any(isinstance(try_to_load_from_cache(source, f), str) for f in ("model_index.json", "config.json"))
    except Exception:  # noqa: BLE001 - no hub library or a malformed cache: treat as not cached
        cached = False
    report.notes.append(f"generator.ddpm.pretrained {source}: " + (
        "in the local Hugging Face cache" if cached else "not cached; it will be downloaded from the hub (network)"))


def _check_checkpoint(path: str, report: Preflight) -> None:
    from robustgen.checkpoint import model_info

    try:
        model_info(Path(path).expanduser())
    except RobustgenError as e:
        report.problems.append(f"{path}: classifier.checkpoint is not a readable robustgen checkpoint ({e})")
    except OSError as e:
        report.problems.append(f"{path}: classifier.checkpoint cannot be read ({e.strerror or e})")


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def preflight(cfg: RunConfig, out: Path, *, disk_bytes: int | None = None) -> tuple[Preflight, DataShape | None]:
    """Check the run's inputs and the output folder; ``disk_bytes``: the estimated need."""
    from robustgen.pipeline import model_variants
    from robustgen.stages.train import needs_generated

    report = Preflight()
    shape = data_shape(cfg, report)
    for src in cfg.data.sources:
        if src.path not in ("train", "generated"):
            _check_source(src.path, report)
    if cfg.eval.split != "test":  # generated:PATH, the evaluated points
        _check_source(cfg.eval.split.removeprefix("generated:"), report)
    if any(needs_generated(v) for _, v in model_variants(cfg)):
        if cfg.classifier.checkpoint is not None:
            _check_checkpoint(cfg.classifier.checkpoint, report)
        if cfg.generator.name == "ddpm" and cfg.generator.ddpm.pretrained is not None:
            _check_pretrained(cfg.generator.ddpm.pretrained, report)
        if cfg.generator.name == "plugin":
            _check_plugin(cfg.generator.plugin, report)
    if cfg.threat.norm == "l2" and cfg.train.inner.step_rule == "adam":
        report.notes.append("the Adam inner attack (the paper's) is weak under L2: on digits it left 86% accuracy where "
                            "APGD-CE left 36-40%, and normalised-gradient steps (train.inner.step_rule=sign) trained "
                            "+15.4 +- 1.1 points more robust models (docs/figures/l2_inner_attack.md)")
    where = _existing_parent(Path(out))
    if not os.access(where, os.W_OK):
        report.problems.append(f"{where}: the output folder is not writable")
    free = shutil.disk_usage(where).free
    if disk_bytes is not None and free < disk_bytes:
        report.problems.append(f"{where}: {free / 1e9:.1f} GB free, the run needs about {disk_bytes / 1e9:.1f} GB")
    else:
        report.notes.append(f"free disk at {where}: {free / 1e9:.1f} GB")
    return report, shape


def recipe_summary(cfg: RunConfig) -> list[str]:
    """The choices that make a run the paper's recipe (or not), one line each."""
    g, lab, t = cfg.generator, cfg.label, cfg.train
    if g.name == "ddpm":
        d = g.ddpm
        source = f"pretrained {d.pretrained}" if d.pretrained else f"trained here ({d.unet}, {d.train_steps:,} steps)"
        from robustgen.generate.diffusion.samplers import resolve_sampler

        steps = resolve_sampler(d.sampler, d.sampling_steps)[1]  # a named setting (wang2023) fixes its steps
        data = f"DDPM ({source}), {d.sampler} sampler, {steps} steps"
    else:
        data = g.name
    if lab.per_class is not None:
        balance = f"class-balanced: the {lab.per_class:,} most confident of every class"
    elif lab.top_k_per_class or lab.top_fraction_per_class or lab.balanced:
        balance = (f"per-class selection (top_k {lab.top_k_per_class}, top fraction {lab.top_fraction_per_class}, "
                   f"balanced {lab.balanced})")
    else:
        balance = "no per-class selection (not class-balanced)"
    if cfg.data.sources and not any(src.path == "generated" for src in cfg.data.sources):
        mix = ", ".join(f"{src.path} {src.weight:g}" for src in cfg.data.sources)
        head = [f"data: data.sources, shares of every batch: {mix} (no generation here)",
                "labels: as stored in each source"]
    else:
        head = [f"generated data: {data}; {g.num_samples:,} samples; alpha {t.alpha:g} real",
                f"labels: {lab.mode}; {balance}"]
    return [*head,
            f"training: {t.arch}, {t.loss}, batch {t.batch_size}, {t.epochs:g} epochs, "
            f"bn_group_size {t.bn_group_size if t.bn_group_size is not None else 'none (whole device batch)'}",
            f"evaluation: {cfg.eval.attack} on {cfg.eval.n or 'all'} test images; model selection: pgd40"]


def dry_run(cfg: RunConfig, out: Path) -> tuple[list[str], list[str]]:
    """(lines to print, problems) of ``robustgen run --dry-run``: the recipe, the cost estimate and
    the preflight of every input. Problems are one line each; any problem makes the dry run fail."""
    from robustgen.cost import estimate_cost

    lines = ["recipe:"] + [f"  {line}" for line in recipe_summary(cfg)]
    shape = data_shape(cfg, Preflight())
    estimate = None
    if shape is not None:
        estimate = estimate_cost(cfg, n_train=shape.n_train, n_test=shape.n_test, image_shape=shape.image_shape,
                                 num_classes=shape.num_classes)
        lines += estimate.lines()
    report, _ = preflight(cfg, out, disk_bytes=estimate.disk_bytes if estimate is not None else None)
    lines += ["preflight: " + ("ok" if report.ok else f"{len(report.problems)} problem(s)")]
    lines += [f"  note: {n}" for n in report.notes]
    return lines, report.problems


def preset_summaries() -> list[dict]:
    """Name, dataset, model, description and estimated GPU-hours (``estimate_cost``; None where the
    dataset's size cannot be read here) of every preset."""
    from robustgen.cost import estimate_cost
    from robustgen.presets import DEFAULT_PRESET, list_presets, load_config, preset_description

    rows = []
    for name in list_presets():
        cfg = load_config(name)
        try:
            shape = data_shape(cfg)
            hours = estimate_cost(cfg, n_train=shape.n_train, n_test=shape.n_test, image_shape=shape.image_shape,
                                  num_classes=shape.num_classes).gpu_hours
        except RobustgenError:
            hours = None
        rows.append({"name": name, "default": name == DEFAULT_PRESET, "dataset": cfg.data.dataset,
                     "model": cfg.train.arch, "gpu_hours": hours, "description": preset_description(name)})
    return rows
