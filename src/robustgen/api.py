"""The Python API for notebooks: float NCHW tensors in [0, 1] in, plain results out.

    run = robustgen.load_run("runs/demo")            # results, config, trained models by arm name
    model = run.models["baseline"]                   # or robustgen.load_model(path | "robustbench:<Name>")
    result = robustgen.evaluate(model, x, y, attack="autoattack", norm="linf", eps=8/255)
    x_adv = robustgen.attacks.MultiTargeted(model, norm="linf", eps=8/255)(x, y)
    gen = robustgen.load_generator("runs/demo/stages/generate-<fp>")
    images, classes = gen.sample(16, seed=0, classes=[3] * 16)
    loader = torch.utils.data.DataLoader(robustgen.open_store("store"), batch_size=128)

Every function calls the code the CLI runs (``robustgen eval`` and ``evaluate`` give the same
numbers on the same points: the same cascade, seed and batches). docs/api.md shows each in use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from robustgen.runtime.errors import RobustgenError
from robustgen.evaluate.tensors import Evaluation, evaluate, uint8_to_float

__all__ = ["Evaluation", "GeneratorHandle", "Run", "StoreDataset", "evaluate", "load_generator", "load_run",
           "open_store", "run"]


# --------------------------------------------------------------------------- finished runs
class _LazyModels(Mapping):
    """Arm name -> ``nn.Module``, each loaded from its checkpoint on first access (a WRN-70-16 is 1 GB)."""

    def __init__(self, checkpoints: dict[str, str], device):
        self._checkpoints, self._device, self._loaded = checkpoints, device, {}

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self._checkpoints:
            raise KeyError(f"no model {name!r} in this run (models: {', '.join(self._checkpoints)})")
        if name not in self._loaded:
            from robustgen.checkpoint import load_model

            self._loaded[name] = load_model(self._checkpoints[name], device=self._device)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._checkpoints)

    def __len__(self) -> int:
        return len(self._checkpoints)

    def __repr__(self) -> str:
        return f"models({', '.join(self._checkpoints)})"


@dataclass(frozen=True)
class Run:
    """A finished ``robustgen run``: ``results`` (``RunResults``: one ``ModelResult`` per model),
    the resolved ``config`` (``RunConfig``), ``models`` (arm name -> ``nn.Module``, loaded on first
    use) and ``checkpoints`` (arm name -> path)."""

    path: Path
    results: object
    config: object
    models: Mapping
    checkpoints: dict

    def test_data(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` (default all) images of the run's test split (``eval.split``) as float NCHW
        in [0, 1], and labels."""
        from robustgen.stages import load_test_split

        test = load_test_split(self.config)
        n = len(test.labels) if n is None else min(int(n), len(test.labels))
        return uint8_to_float(test.images[:n]), torch.from_numpy(np.asarray(test.labels[:n], dtype=np.int64))

    def table(self) -> list[dict]:
        """One row per model: name, alpha, generator, clean and robust accuracy, attack."""
        return [{"name": m.name, "alpha": m.alpha, "generator": m.generator, "clean_accuracy": m.clean_accuracy,
                 "robust_accuracy": m.robust_accuracy, "attack": m.attack} for m in self.results.models]


def run(config: str | None = None, out: str | Path = "runs/default", *, overrides=(), progress: bool = True,
        device: str | torch.device = "cpu") -> Run:
    """``robustgen run`` from Python: every stage of ``config`` (a preset name or YAML file, with
    ``key=value`` ``overrides``) into ``out``, cached and resumable as on the command line; returns
    ``load_run(out)``."""
    from robustgen.presets import load_config
    from robustgen.pipeline import run as pipeline_run

    pipeline_run(load_config(config, list(overrides)), Path(out), progress=progress,
                 command={"api": "robustgen.run", "config": config, "overrides": list(overrides)})
    return load_run(out, device=device)


def load_run(out: str | Path, *, device: str | torch.device = "cpu") -> Run:
    """The results, config and trained models of the run folder ``out`` (``results.json``)."""
    from robustgen.config import config_from_dict
    from robustgen.provenance import localize
    from robustgen.results import RunResults
    from robustgen.runtime.io import read_json

    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise RobustgenError(f"{path}: not found (is {out} the --out of a finished robustgen run?)")
    results = RunResults.from_dict(localize(read_json(path), out))
    if results is None:
        raise RobustgenError(f"{path}: not the results of a robustgen run (fields missing or of another version)")
    checkpoints = {m.name: m.checkpoint for m in results.models}
    return Run(path=out, results=results, config=config_from_dict(results.config, source=str(path)),
               models=_LazyModels(checkpoints, device), checkpoints=checkpoints)


# --------------------------------------------------------------------------- generators
def _store_folder(path: Path) -> Path | None:
    """The store folder at ``path``: the ``store`` of a generate stage folder (whose own
    manifest.json is the stage's), or ``path`` itself."""
    from robustgen.data.store.format import is_store

    for candidate in (path / "store", path):
        if candidate.is_dir() and is_store(candidate):
            return candidate
    return None


class GeneratorHandle:
    """A fitted generator: ``sample(n, seed=0, classes=None) -> (images, classes)`` with images
    float [n, C, H, W] in [0, 1] (CPU) and the conditioning classes int64 [n] (None for an
    unconditional one). Without ``classes`` the first ``n`` samples are those a store generated
    with ``seed`` holds (class ``i % K``); ``classes`` (one class, or one per sample) draws the next
    samples of each class from the same sequence."""

    def __init__(self, name: str, adapter, fitted, num_classes: int, conditional: bool, source: Path):
        self.name, self._adapter, self._fitted = name, adapter, fitted
        self.num_classes, self.conditional, self.source = num_classes, conditional, source

    def sample(self, n: int, seed: int = 0, classes=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if n < 0:
            raise RobustgenError(f"n must be non-negative, got {n}")
        sampler = self._adapter.range_sampler(self._fitted, seed=seed)
        if classes is None:
            images, conditions = sampler.sample(0, n)
        else:
            if not self.conditional:
                raise RobustgenError(f"{self.source}: an unconditional generator cannot sample given classes")
            wanted = np.broadcast_to(np.asarray(classes, dtype=np.int64), (n,))
            if wanted.size and (wanted.min() < 0 or wanted.max() >= self.num_classes):
                raise RobustgenError(f"classes must lie in 0..{self.num_classes - 1}")
            # the j-th request of class c is global sample c + K j (the sequence cycles through the classes)
            seen = np.zeros(self.num_classes, dtype=np.int64)
            indices = np.empty(n, dtype=np.int64)
            for k, c in enumerate(wanted):
                indices[k] = c + self.num_classes * seen[c]
                seen[c] += 1
            images, conditions = sampler.sample_indices(indices)
        return uint8_to_float(images), None if conditions is None else torch.from_numpy(np.asarray(conditions, dtype=np.int64))

    def __repr__(self) -> str:
        return f"GeneratorHandle({self.name!r}, classes={self.num_classes}, from {self.source})"


def load_generator(path: str | Path, *, name: str | None = None, device: str | torch.device = "cpu") -> GeneratorHandle:
    """A fitted generator from a store that ``robustgen store generate`` or a run's generate stage
    wrote (the store folder, or the stage folder holding it), or from a fit file with ``name``
    ("gaussian" or "ddpm")."""
    from robustgen.data.store.format import read_manifest
    from robustgen.generate import get_generator, runtime_kwargs
    from robustgen.generate.sample_to_store import FIT_FILE

    path = Path(path)
    store = _store_folder(path)
    num_classes = None
    if store is not None:
        manifest = read_manifest(store)
        generator, num_classes = manifest.get("generator") or {}, int(manifest["num_classes"])
        name = name or generator.get("name")
        adapter = get_generator(name) if name else None
        fit_file = store / (generator.get("fit_file") or getattr(adapter, "fit_file", FIT_FILE))
        if adapter is None or not fit_file.is_file():
            raise RobustgenError(f"{store}: the store holds no fitted generator (made by import or 'store generate "
                                 f"--no-save-fit'?)")
    elif path.is_file():
        if name is None:
            raise RobustgenError(f"{path}: a fit file needs the generator's name (load_generator(path, name='ddpm'))")
        adapter, fit_file = get_generator(name), path
    else:
        raise RobustgenError(f"{path}: neither a store, a generate stage folder nor a fit file")
    if not hasattr(adapter, "load_fit") or not hasattr(adapter, "range_sampler"):
        raise RobustgenError(f"generator {name!r} cannot be loaded from a file (it has no saved fit)")
    fitted = adapter.load_fit(fit_file, **runtime_kwargs(adapter, {"device": str(device)}))
    if num_classes is None:  # a bare fit file: its own count (a dict fit of real images: their labels')
        num_classes = int(fitted["label"].max()) + 1 if isinstance(fitted, dict) else int(fitted.num_classes)
    conditional = bool(getattr(fitted, "class_conditional", True))
    return GeneratorHandle(name, adapter, fitted, num_classes, conditional, fit_file)


# --------------------------------------------------------------------------- stores
class StoreDataset(torch.utils.data.Dataset):
    """A store as a map-style ``Dataset``: item i -> (float [C, H, W] in [0, 1], int label). Each
    DataLoader worker opens its own reader (file handles are per process). ``labels``: int64 [N]."""

    def __init__(self, path: str | Path, *, use_selection: bool = True):
        from robustgen.data.store import Store

        self.path, self._use_selection = Path(path), use_selection
        self._store, self._pid = Store(self.path, use_selection=use_selection), os.getpid()
        self.labels = self._store.labels
        self.num_classes, self.image_shape = self._store.num_classes, self._store.image_shape

    def _reader(self):
        if self._pid != os.getpid():  # a forked DataLoader worker
            from robustgen.data.store import Store

            self._store, self._pid = Store(self.path, use_selection=self._use_selection), os.getpid()
        return self._store

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        image = self._reader().gather([i % len(self)])[0]
        return uint8_to_float(image[None])[0], int(self.labels[i])

    def __getstate__(self) -> dict:  # spawned workers reopen the store
        return {"path": self.path, "_use_selection": self._use_selection, "labels": self.labels,
                "num_classes": self.num_classes, "image_shape": self.image_shape, "_store": None, "_pid": None}

    def __repr__(self) -> str:
        return f"StoreDataset({str(self.path)!r}, n={len(self)}, classes={self.num_classes})"


def open_store(path: str | Path, *, use_selection: bool = True) -> StoreDataset:
    """A generated-data store (or a generate stage folder holding one) as a ``torch`` Dataset."""
    path = Path(path)
    return StoreDataset(_store_folder(path) or path, use_selection=use_selection)
