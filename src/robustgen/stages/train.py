"""Stage 4: adversarial training (TRADES, or PGD-AT) on batches mixing real and generated images
(paper Sec. 3.3, Eq. 3: a proportion alpha of every batch is real).

Batches hold exact per-source row counts (round(alpha * B) real images); with ``data.sources``
any number of weighted sources. Data-parallel over ``ctx.world_size`` processes under torchrun.
Generated data is read from stores (or released-layout .npz files listed in ``data.sources``)
with constant memory. The step's precision, memory layout and compilation are chosen once by
``train.speed.choose_step_options``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from robustgen.config import RunConfig, config_to_dict, is_baseline
from robustgen.config import require
from robustgen.config import replace as replace_config
from robustgen.models.ghost_batchnorm import use_bn_groups
from robustgen.results import TrainingResult
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import write_json
from robustgen.stages.common import (Splits, build_model, robust_seed, section_loop_settings, selection_evaluator,
                                     source_identity, stage_fingerprint)
from robustgen.train.loop import LoopSettings, steps_for, train_loop
from robustgen.train.speed import choose_step_options
from robustgen.train.steps import TrainingAttack, pgd_at_step_loss, trades_step_loss

__all__ = ["RUN_SEED_STRIDE", "fingerprint", "training_loop_settings", "needs_generated", "read_generated", "run",
           "run_variants", "source_fingerprints", "training_attack", "training_sources"]


def check_names(cfg: RunConfig, source: str) -> None:
    """The threat model, the training attack's options, the architecture and the augmentation
    are ones the code has (before any work starts)."""
    from robustgen.attacks.pgd import INITS, NORMS, STEP_RULES
    from robustgen.data.augment import TRAIN_AUGMENTATIONS
    from robustgen.models import is_known_arch, list_models

    t = cfg.train
    require(cfg.threat.norm in NORMS, source, f"threat.norm must be one of {NORMS}, got {cfg.threat.norm!r}")
    require(is_known_arch(t.arch), source, f"train.arch: unknown architecture {t.arch!r} (known: {', '.join(list_models())})")
    require(t.inner.step_rule in STEP_RULES, source, f"train.inner.step_rule must be one of {STEP_RULES}")
    require(t.inner.init in INITS, source, f"train.inner.init must be one of {INITS}")
    require(t.augment in TRAIN_AUGMENTATIONS, source,
            f"train.augment must be one of {', '.join(TRAIN_AUGMENTATIONS)}, got {t.augment!r}")

def needs_generated(cfg: RunConfig) -> bool:
    """Does training this config read the run's generated data (or ``--generated``)?"""
    if cfg.data.sources:
        return any(s.path == "generated" and s.weight > 0 for s in cfg.data.sources)
    return not is_baseline(cfg.train.alpha)


def source_fingerprints(cfg: RunConfig) -> list:
    """What identifies the external sources listed in ``data.sources`` (a store's manifest, an
    .npz file's size and time), so a changed source invalidates a cached training."""
    return [src.path if src.path in ("train", "generated") else source_identity(src.path) for src in cfg.data.sources]


def fingerprint(cfg: RunConfig, data_fp: str, generated_fp: str | None) -> str:
    """``generated_fp`` identifies the labelled generated data (the label stage's fingerprint, or
    the ``--generated`` path); it counts only when this config reads generated data."""
    # one run's result: not how many run; generated_rows only when it is set and read, augment only when on
    # (so the caches from before them stay valid, and the baseline of every sample count is one training)
    reads_rows = cfg.train.generated_rows is not None and needs_generated(cfg)
    unset = {"runs"} | ({"generated_rows"} if not reads_rows else set()) | ({"augment"} if cfg.train.augment == "none"
                                                                           else set())
    train = {k: v for k, v in asdict(cfg.train).items() if k not in unset}
    return stage_fingerprint("train", "train", data_fp, generated_fp if needs_generated(cfg) else None,
                             train, asdict(cfg.threat), cfg.data.crop_padding, cfg.data.flip, cfg.seed,
                             cfg.eval.batch_size, *([source_fingerprints(cfg)] if cfg.data.sources else []))


RUN_SEED_STRIDE = 100_003  # train.runs: run k trains with train.seed + k * stride (apart from swept seeds)


def run_variants(cfg: RunConfig) -> list[RunConfig]:
    """The configs of ``train.runs`` training runs of one model: run 0 is ``cfg`` itself."""
    base = robust_seed(cfg)
    return [cfg] + [replace_config(cfg, **{"train.seed": base + k * RUN_SEED_STRIDE}) for k in range(1, cfg.train.runs)]


def training_attack(cfg: RunConfig) -> TrainingAttack:
    i = cfg.train.inner
    return TrainingAttack(norm=cfg.threat.norm, eps=cfg.threat.eps, steps=i.steps, step_rule=i.step_rule,
                          adam_lr=tuple(i.adam_lr), adam_lr_boundaries=tuple(int(b) for b in i.adam_lr_boundaries),
                          sign_step_size=i.sign_step_size, init=i.init)


def training_loop_settings(cfg: RunConfig, n_real: int, source_weights: tuple[float, ...]) -> LoopSettings:
    t = cfg.train
    epoch = t.epoch_size or n_real
    total = steps_for(epochs=t.epochs, epoch_size=epoch, batch_size=t.batch_size)
    per_epoch = epoch / t.batch_size
    return section_loop_settings(
        t, cfg.data, total_steps=total, warmup_steps=int(round(t.warmup_epochs * per_epoch)), seed=robust_seed(cfg),
        nesterov=t.nesterov, source_weights=source_weights, label_smoothing_real=t.label_smoothing_real,
        label_smoothing_generated=t.label_smoothing_generated, generated_sampling=t.generated_sampling,
        mix_group_size=t.mix_group_size, augment=t.augment,
        ema_decay=t.ema_decay if t.ema_decay > 0 else None,
        eval_every_steps=max(1, int(round(t.eval_every_epochs * per_epoch))),
        checkpoint_every_steps=max(1, int(round(t.checkpoint_every_epochs * per_epoch))),
        log_every_steps=t.log_every_steps, micro_batches=t.micro_batches, bn_group_size=t.bn_group_size)


def read_generated(path: Path, num_classes: int, image_shape: tuple):
    """A generated set as a batch source: a store folder (memory-mapped, constant memory; its
    images shards are checked against their sha256 before they are read) or an .npz in the
    released layout (read into RAM)."""
    from robustgen.train.mixing.sources import open_source

    path = Path(path)
    if not path.exists():
        raise RobustgenError(f"{path}: generated data not found")
    return open_source(path, num_classes=num_classes, image_shape=image_shape, verify_images=True)


def training_sources(cfg: RunConfig, splits: Splits, generated: Path | None) -> tuple[list, tuple[float, ...]]:
    """The generated sources of adversarial training and the weights of (real split, source 1, ...).

    Without ``data.sources``: the generated set ``generated`` at 1 - alpha (none when alpha = 1).
    With it: each listed source in order, ``generated`` standing for the run's labelled samples
    (or ``--generated``), ``classes`` keeping those classes only."""
    from robustgen.train.mixing.sources import ClassSubset, FirstRows

    t, real = cfg.train, splits.train

    def run_generated():  # the run's labelled samples, the first train.generated_rows of them when set
        source = read_generated(generated, real.num_classes, real.image_shape)
        return source if t.generated_rows is None else FirstRows(source, t.generated_rows)

    if not cfg.data.sources:
        if is_baseline(t.alpha):
            return [], (1.0,)
        if generated is None:
            raise RobustgenError(f"train.alpha = {t.alpha} < 1 needs generated data")
        return [run_generated()], (t.alpha, 1.0 - t.alpha)
    sources, weights = [], [sum(src.weight for src in cfg.data.sources if src.path == "train")]
    for src in cfg.data.sources:
        if src.path == "train":
            continue
        if src.path == "generated" and generated is None:
            raise RobustgenError("data.sources lists 'generated' but this run has no generated data (use --generated)")
        source = run_generated() if src.path == "generated" else read_generated(Path(src.path), real.num_classes,
                                                                                 real.image_shape)
        sources.append(ClassSubset(source, src.classes) if src.classes is not None else source)
        weights.append(src.weight)
    return sources, tuple(weights)


def _fresh_robust_model(cfg: RunConfig, splits: Splits, device: torch.device, ctx: DistContext) -> tuple[nn.Module, dict]:
    """The freshly initialised model, with ghost BatchNorm groups and (under torchrun, when asked)
    synchronised BatchNorm, on ``device``."""
    t = cfg.train
    model, spec = build_model(t.arch, t.activation, splits.train, seed=robust_seed(cfg))
    use_bn_groups(model, t.bn_group_size)
    if t.sync_bn and ctx.enabled:
        if device.type != "cuda":
            raise RobustgenError("train.sync_bn needs CUDA devices: torch's SyncBatchNorm does not run on CPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device), spec


def run(cfg: RunConfig, splits: Splits, generated: Path | None, out_dir: Path, *, device: torch.device,
        data_fp: str, generated_fp: str | None, name: str = "model", progress: bool = True,
        ctx: DistContext = DistContext()) -> TrainingResult:
    """Train a robust model into ``out_dir`` (resumable). ``generated``: the labelled generated set
    (store folder or .npz), identified by ``generated_fp`` (see ``fingerprint``)."""
    t = cfg.train
    fp = fingerprint(cfg, data_fp, generated_fp)
    sources, weights = training_sources(cfg, splits, generated)
    model, spec = _fresh_robust_model(cfg, splits, device, ctx)
    attack = training_attack(cfg)

    def make_step_loss(bf16: bool):
        return trades_step_loss(attack, beta=t.beta, bf16=bf16) if t.loss == "trades" else pgd_at_step_loss(attack, bf16=bf16)

    chunk = -(-t.batch_size // (ctx.world_size * t.micro_batches))
    options = choose_step_options(
        model, make_step_loss, precision=t.precision, channels_last=t.channels_last, compile=t.compile,
        batch_shape=(chunk, splits.train.images.shape[3], *splits.train.images.shape[1:3]), num_classes=spec["num_classes"],
        device=device, what=f"{t.arch} {t.loss}-{attack.steps}", out_dir=out_dir, fingerprint=fp, ctx=ctx,
        log=print if progress else (lambda line: None))
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    settings = dataclasses.replace(training_loop_settings(cfg, len(splits.train), weights), channels_last=options.channels_last)
    n_monitor = min(t.monitor_train_images, len(splits.train))
    monitored = splits.train.subset(range(n_monitor)).in_memory() if n_monitor else None
    result = train_loop(model, settings=settings, real=splits.train, generated=sources,
                        step_loss=make_step_loss(options.bf16),
                        evaluate=selection_evaluator(cfg, splits.val, device, robust=True, train=monitored),
                        out_dir=out_dir, device=device, spec=spec,
                        extra_meta={"role": "robust", "name": name, "config": config_to_dict(cfg)},
                        fingerprint=fp, desc=f"train[{name}]", compile_model=options.compile, ctx=ctx,
                        progress=progress, logging=cfg.logging)
    summary = TrainingResult(
        name=name, alpha=t.alpha, steps=settings.total_steps, batch_size=t.batch_size,
        generated_samples=int(sum(len(src) for src in sources)),
        sources=[{"name": "real", "images": len(splits.train), "weight": weights[0]}]
        + [{"name": str(getattr(src, "name", "generated")), "images": len(src), "weight": w}
           for src, w in zip(sources, weights[1:])],
        step_options=dataclasses.asdict(options), selection=result.best, wall_time_s=round(result.wall_time_s, 2),
        resumed_from_step=result.resumed_from, checkpoint=str(out_dir / "best.safetensors"))
    if ctx.is_main:
        write_json(out_dir / "summary.json", summary.to_dict())
    return summary
