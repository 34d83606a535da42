"""Stage 1: the non-robust classifier f_NR that pseudo-labels generated images (paper Sec. 3.3).

Standard training on the real train split; the best validation checkpoint is kept.
``robustgen classifier`` and ``robustgen run`` both go through ``fingerprint`` and ``run``, so the
verb and the pipeline identify (and resume) the same training the same way.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from robustgen.checkpoint import load_model
from robustgen.config import RunConfig, config_to_dict
from robustgen.config import require
from robustgen.results import ClassifierResult
from robustgen.runtime.fingerprint import hash_parts
from robustgen.runtime.io import write_json
from robustgen.stages.common import (Splits, build_model, clean_accuracy, section_loop_settings, selection_evaluator,
                                     stage_fingerprint)
from robustgen.train.loop import LoopSettings, steps_for, train_loop
from robustgen.train.steps import standard_step_loss

__all__ = ["classifier_loop_settings", "external_fingerprint", "fingerprint", "run"]


def check_names(cfg: RunConfig, source: str) -> None:
    """The classifier's architecture is a registered model (before any work starts)."""
    from robustgen.models import is_known_arch, list_models

    c = cfg.classifier
    require(is_known_arch(c.arch), source, f"classifier.arch: unknown architecture {c.arch!r} (known: {', '.join(list_models())})")

def fingerprint(cfg: RunConfig, data_fp: str) -> str:
    """Everything the classifier depends on: the data, ``classifier.*``, augmentation and the seed."""
    return stage_fingerprint("classifier", "classifier", data_fp, asdict(cfg.classifier), cfg.data.crop_padding,
                             cfg.data.flip, cfg.seed)


def external_fingerprint(path: Path) -> str:
    """A classifier given as a file (``classifier.checkpoint``): its path and modification time."""
    return hash_parts("external-classifier", str(path.resolve()), path.stat().st_mtime if path.exists() else None)


def classifier_loop_settings(cfg: RunConfig, n_train: int) -> LoopSettings:
    c = cfg.classifier
    total = steps_for(epochs=c.epochs, epoch_size=n_train, batch_size=c.batch_size)
    warmup = steps_for(epochs=c.warmup_epochs, epoch_size=n_train, batch_size=c.batch_size) if c.warmup_epochs else 0
    return section_loop_settings(c, cfg.data, total_steps=total, warmup_steps=warmup, seed=cfg.seed, nesterov=True,
                                label_smoothing_real=c.label_smoothing, checkpoint_every_steps=max(1, total // 10),
                                log_every_steps=max(1, min(50, total // 20)))


def run(cfg: RunConfig, splits: Splits, out_dir: Path, *, device: torch.device, data_fp: str,
        progress: bool = True) -> ClassifierResult:
    """Train f_NR into ``out_dir`` (resumable); returns its test accuracy."""
    c = cfg.classifier
    model, spec = build_model(c.arch, c.activation, splits.train, seed=cfg.seed)
    model.to(device)
    settings = classifier_loop_settings(cfg, len(splits.train))
    result = train_loop(model, settings=settings, real=splits.train, generated=[],
                        step_loss=standard_step_loss(),
                        evaluate=selection_evaluator(cfg, splits.val, device, robust=False),
                        out_dir=out_dir, device=device, spec=spec,
                        extra_meta={"role": "classifier", "config": config_to_dict(cfg)},
                        fingerprint=fingerprint(cfg, data_fp), desc="classifier", progress=progress,
                        logging=cfg.logging)
    best = load_model(out_dir / "best.safetensors", device=device)
    test_acc = clean_accuracy(best, splits.test.images, splits.test.labels, batch_size=cfg.eval.batch_size,
                              device=device)
    summary = ClassifierResult(test_accuracy=test_acc, steps=settings.total_steps,
                               wall_time_s=round(result.wall_time_s, 2), checkpoint=str(out_dir / "best.safetensors"))
    write_json(out_dir / "metrics.json", summary.to_dict())
    return summary
