"""The values' ranges and how settings combine, one validator per section; each error is one
line naming the key and where it was set. Registry names are checked next to the stages
(``stages.check_names``)."""

from __future__ import annotations

from robustgen.config.sections import (ClassifierConfig, DDPMConfig, EvalConfig, LabelConfig, RunConfig, ThreatConfig,
                                       is_baseline, real_share)
from robustgen.runtime.errors import RobustgenError

def require(ok: bool, source: str, message: str) -> None:
    """Raise ``RobustgenError`` naming ``source`` unless ``ok`` (the config's one-line errors)."""
    if not ok:
        raise RobustgenError(f"{source}: {message}")


def validate(cfg: RunConfig, *, source: str) -> None:
    """Types are checked while building; here the values' ranges and how settings combine, one
    validator per section. Registry names (architectures, generators, attacks, datasets) are
    checked next to the stages that use them (``stages.check_names``)."""
    _validate_threat(cfg.threat, source)
    _validate_data(cfg, source)
    _validate_classifier(cfg.classifier, source)
    _validate_generator(cfg, source)
    _validate_label(cfg.label, "label", source)
    _validate_train(cfg, source)
    _validate_eval(cfg.eval, source)
    _validate_arms(cfg, source)


def _validate_threat(th: ThreatConfig, source: str) -> None:
    require(th.eps >= 0, source, f"threat.eps must be >= 0, got {th.eps}")
    require(th.norm != "linf" or th.eps <= 1, source, f"threat.eps {th.eps} > 1 is meaningless for images in [0,1]")


def _validate_data(cfg: RunConfig, source: str) -> None:
    d = cfg.data
    require(d.val_size >= 0, source, f"data.val_size must be >= 0, got {d.val_size}")
    require(d.crop_padding >= 0, source, f"data.crop_padding must be >= 0, got {d.crop_padding}")
    require(d.train_size is None or d.train_size > 0, source, "data.train_size must be > 0 or null")
    require(d.image_size is None or d.image_size > 0, source, "data.image_size must be > 0 or null")
    require(d.decode_workers >= 0 and d.in_memory_gib >= 0, source,
            "data.decode_workers and data.in_memory_gib must be >= 0")
    _validate_sources(cfg, source)


def _validate_classifier(c: ClassifierConfig, source: str) -> None:
    require(c.activation in ("silu", "relu"), source, f"classifier.activation must be silu or relu, got {c.activation!r}")
    require(c.batch_size > 0, source, f"classifier.batch_size must be > 0, got {c.batch_size}")
    require(c.epochs > 0, source, f"classifier.epochs must be > 0, got {c.epochs}")
    for key in ("warmup_epochs", "weight_decay"):
        require(getattr(c, key) >= 0, source, f"classifier.{key} must be >= 0, got {getattr(c, key)}")
    require(0.0 <= c.label_smoothing <= 1.0, source, f"classifier.label_smoothing must be in [0, 1], got {c.label_smoothing}")


def _validate_generator(cfg: RunConfig, source: str) -> None:
    g = cfg.generator
    require(g.num_samples >= 0, source, "generator.num_samples must be >= 0")
    require(g.pca_components > 0, source, "generator.pca_components must be > 0")
    _validate_ddpm(g.ddpm, source)
    require(g.name != "plugin" or (g.plugin.entry_point or "").count(":") == 1, source,
            f"generator.plugin.entry_point must be 'module:factory' or 'file.py:factory', got {g.plugin.entry_point!r}")
    require(g.plugin.batch_size > 0, source, "generator.plugin.batch_size must be > 0")


def _validate_train(cfg: RunConfig, source: str) -> None:
    t = cfg.train
    require(0.0 <= t.alpha <= 1.0, source, f"train.alpha must be in [0, 1], got {t.alpha}")
    require(is_baseline(t.alpha) or cfg.generator.num_samples > 0, source,
            "train.alpha < 1 needs generated data: generator.num_samples must be > 0")
    require(t.seed is None or t.seed >= 0, source, f"train.seed must be >= 0 or null, got {t.seed}")
    require(t.runs >= 1, source, f"train.runs must be >= 1, got {t.runs}")
    require(t.monitor_train_images >= 0, source, f"train.monitor_train_images must be >= 0, got {t.monitor_train_images}")
    require(t.activation in ("silu", "relu"), source, f"train.activation must be silu or relu, got {t.activation!r}")
    require(t.loss in ("trades", "pgd_at"), source, f"train.loss must be trades or pgd_at, got {t.loss!r}")
    require(len(t.inner.adam_lr) == len(t.inner.adam_lr_boundaries) + 1, source,
            "train.inner.adam_lr needs exactly one more value than train.inner.adam_lr_boundaries")
    require(t.generated_rows is None or t.generated_rows > 0, source, "train.generated_rows must be > 0 or null")
    require(t.generated_sampling in ("with_replacement", "permutation"), source,
            "train.generated_sampling must be with_replacement or permutation")
    require(t.mix_group_size is None or (t.mix_group_size >= 1 and t.batch_size % t.mix_group_size == 0), source,
            f"train.mix_group_size must divide train.batch_size {t.batch_size}, got {t.mix_group_size}")
    require(t.precision in ("fp32", "bf16"), source, f"train.precision must be fp32 or bf16, got {t.precision!r}")
    for key in ("batch_size", "log_every_steps", "micro_batches", "epochs", "eval_every_epochs", "checkpoint_every_epochs"):
        require(getattr(t, key) > 0, source, f"train.{key} must be > 0, got {getattr(t, key)}")
    for key in ("warmup_epochs", "beta", "weight_decay"):
        require(getattr(t, key) >= 0, source, f"train.{key} must be >= 0, got {getattr(t, key)}")
    require(t.inner.steps >= 0, source, f"train.inner.steps must be >= 0, got {t.inner.steps}")
    for key in ("label_smoothing_generated", "label_smoothing_real", "ema_decay"):
        require(0.0 <= getattr(t, key) <= 1.0, source, f"train.{key} must be in [0, 1], got {getattr(t, key)}")
    require(t.epoch_size is None or t.epoch_size > 0, source, "train.epoch_size must be > 0 or null")
    require(t.bn_group_size is None or t.bn_group_size >= 2, source, "train.bn_group_size must be >= 2 or null")
    require(t.bn_group_size is None or not t.sync_bn, source, "train.bn_group_size and train.sync_bn exclude each other")
    require(t.bn_group_size is None or t.batch_size % t.bn_group_size == 0, source,
            f"train.bn_group_size {t.bn_group_size} must divide train.batch_size {t.batch_size}")


def _validate_eval(e: EvalConfig, source: str) -> None:
    require(e.split == "test" or (e.split.startswith("generated:") and len(e.split) > 10),
            source, f"eval.split must be test or generated:PATH (a store or .npz), got {e.split!r}")
    require(e.batch_size > 0, source, f"eval.batch_size must be > 0, got {e.batch_size}")
    require(e.n is None or e.n > 0, source, "eval.n must be > 0 or null")
    require(e.selection in ("first", "stratified"), source, f"eval.selection must be first or stratified, got {e.selection!r}")


def _validate_arms(cfg: RunConfig, source: str) -> None:
    for i, arm in enumerate(cfg.arms):
        if arm.label is not None:
            _validate_label(arm.label, f"arms[{i}].label", source)
        arm_alpha = cfg.train.alpha if arm.alpha is None else arm.alpha
        require(0.0 <= arm_alpha < 1.0, source, f"arms[{i}]: its alpha (arms[{i}].alpha, else train.alpha) must be in "
                                                f"[0, 1), got {arm_alpha:g}")
    require(not (cfg.arms and cfg.data.sources), source, "arms and data.sources cannot be combined")


def _validate_label(lab: LabelConfig, key: str, source: str) -> None:
    require(lab.batch_size > 0, source, f"{key}.batch_size must be > 0, got {lab.batch_size}")
    require(lab.precision in ("fp32", "bf16"), source, f"{key}.precision must be fp32 or bf16, got {lab.precision!r}")
    require(lab.per_class_order in ("confidence", "first"), source,
            f"{key}.per_class_order must be confidence or first, got {lab.per_class_order!r}")
    require(lab.top_k_per_class is None or lab.top_k_per_class > 0, source, f"{key}.top_k_per_class must be > 0 or null")
    require(lab.per_class is None or lab.per_class > 0, source, f"{key}.per_class must be > 0 or null")
    require(lab.per_class is None or (lab.top_k_per_class is None and lab.top_fraction_per_class is None
                                     and not lab.balanced), source,
            f"{key}.per_class excludes {key}.top_k_per_class, {key}.top_fraction_per_class and {key}.balanced")
    require(lab.mode in ("argmax", "condition"), source, f"{key}.mode must be argmax or condition, got {lab.mode!r}")
    f = lab.top_fraction_per_class
    require(f is None or 0 < f <= 1, source, f"{key}.top_fraction_per_class must be in (0, 1] or null, got {f}")
    require(not (lab.agree_with_condition and lab.mode != "argmax"), source,
            f"{key}.agree_with_condition compares f_NR's argmax with the conditioning class: it needs {key}.mode argmax")


def _validate_ddpm(d: DDPMConfig, source: str) -> None:
    require(d.precision in ("fp32", "bf16"), source, f"generator.ddpm.precision must be fp32 or bf16, got {d.precision!r}")
    require(d.pretrained is None or d.pretrained.strip() != "", source, "generator.ddpm.pretrained must be a path, a hub id or null")
    for key in ("train_steps", "batch_size", "sampling_steps", "checkpoint_every_steps"):
        require(getattr(d, key) > 0, source, f"generator.ddpm.{key} must be > 0, got {getattr(d, key)}")
    require(d.sample_batch_size >= 0, source,
            f"generator.ddpm.sample_batch_size must be > 0, or 0 (by memory), got {d.sample_batch_size}")
    require(d.lr > 0, source, f"generator.ddpm.lr must be > 0, got {d.lr}")
    require(d.warmup_steps >= 0 and d.grad_clip >= 0, source, "generator.ddpm.warmup_steps and grad_clip must be >= 0")
    require(0.0 <= d.ema_decay < 1.0, source, f"generator.ddpm.ema_decay must be in [0, 1), got {d.ema_decay}")
    require(d.dropout is None or 0.0 <= d.dropout < 1.0, source, "generator.ddpm.dropout must be in [0, 1) or null")
    require(d.class_map in ("same", "by-name"), source, f"generator.ddpm.class_map must be same or by-name, got {d.class_map!r}")
    require(d.augment_shift >= 0 and 0.0 <= d.augment_p <= 1.0, source,
            "generator.ddpm.augment_shift must be >= 0 and generator.ddpm.augment_p in [0, 1]")
    require(not d.augment_shift or (d.class_conditional and d.pretrained is None), source,
            "generator.ddpm.augment_shift trains a class-conditional UNet here (class_conditional: true, no pretrained): "
            "the shift reaches it through the class embedding")
    require(d.objective in ("eps", "edm"), source, f"generator.ddpm.objective must be eps or edm, got {d.objective!r}")
    require(0.0 <= d.label_dropout < 1.0 and d.guidance >= 0, source,
            "generator.ddpm.label_dropout must be in [0, 1) and generator.ddpm.guidance >= 0")
    require(not d.label_dropout or (d.class_conditional and d.pretrained is None), source,
            "generator.ddpm.label_dropout trains a null class of a class-conditional UNet here "
            "(class_conditional: true, no pretrained)")
    require(not d.guidance or d.label_dropout, source,
            "generator.ddpm.guidance needs generator.ddpm.label_dropout > 0 (the null class it guides against)")
    require(d.objective == "eps" or d.pretrained is None, source,
            "generator.ddpm.objective: edm trains a UNet here; a pretrained DDPM predicts eps")


def _validate_sources(cfg: RunConfig, source: str) -> None:
    sources = cfg.data.sources
    if not sources:
        return
    for i, src in enumerate(sources):
        key = f"data.sources[{i}]"
        require(src.weight >= 0, source, f"{key}.weight must be >= 0, got {src.weight}")
        require(src.path.strip() != "", source, f"{key}.path must name train, generated, a store folder or an .npz")
        require(src.classes is None or (len(src.classes) > 0 and all(float(c).is_integer() and c >= 0 for c in src.classes)),
                source, f"{key}.classes must be a non-empty list of class indices or null")
        require(src.path != "train" or src.classes is None, source, f"{key}: class filters apply to generated sources only")
    require(sum(src.weight for src in sources) > 0, source, "data.sources: the weights must not all be 0")
    require(sum(src.path == "train" for src in sources) <= 1, source, "data.sources: list the real split (train) once")
    share = real_share(sources)
    require(abs(share - cfg.train.alpha) <= 1e-9, source,
            f"data.sources gives the real split a share of {share:.6g} but train.alpha is {cfg.train.alpha:g}; "
            f"set train.alpha={share:.6g} (or null: data.sources alone states it)")
