"""The five stages of the method (paper Sec. 3.3, Fig. 2) as library functions over files.

    classifier: train f_NR on the real train split          -> model.safetensors
    generate:   fit the generator on the train split, sample -> samples.npz (image, label = condition)
    label:      pseudo-label samples with f_NR              -> labeled.npz (image, label, confidence, condition)
    train:      TRADES on alpha-mixed batches               -> best/last.safetensors, history.json
    evaluate:   clean + robust accuracy on the test split    -> eval.json

Each function reads its inputs from disk, writes its outputs atomically and returns a JSON-able
summary; the CLI verbs and ``pipeline`` call them. No math lives here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from robustgen.checkpoint import load_model, model_spec
from robustgen.config import RunConfig, config_to_dict
from robustgen.data import ImageDataset, holdout_split, load_split, read_npz, train_val_split, write_npz
from robustgen.data.store_format import DEFAULT_SHARD_SIZE, file_sha256
from robustgen.errors import RobustgenError
from robustgen.evaluate import evaluate_robustness
from robustgen.generate import generator_fit_kwargs, get_generator, runtime_kwargs
from robustgen.generate.runner import array_fingerprint
from robustgen.io import write_json
from robustgen.label import assign_labels, predict_probabilities
from robustgen.models import create_model
from robustgen.models.ghost_batchnorm import use_bn_groups
from robustgen.models.inference import InferenceOptions, prepare_for_inference
from robustgen.train.distributed import DistContext
from robustgen.train.loop import LoopSettings, steps_for, train_loop
from robustgen.train.schedule import scaled_lr
from robustgen.train.speed import choose_step_options
from robustgen.train.steps import TrainingAttack, pgd_at_step_loss, standard_step_loss, trades_step_loss


@dataclass(frozen=True)
class Splits:
    train: ImageDataset  # real training images, validation (and withheld) images removed
    val: ImageDataset  # held-out training images for model selection
    test: ImageDataset
    heldout: ImageDataset | None = None  # withheld by data.train_size; only the heldout generator reads them


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustgenError(f"device {name!r} requested but CUDA is not available")
    return device


def load_splits(cfg: RunConfig) -> Splits:
    d = cfg.data
    full = load_split(d, "train")
    test = load_split(d, "test")
    if test.image_shape != full.image_shape:
        raise RobustgenError(f"{d.dataset}: train images are {full.image_shape} but test images are {test.image_shape}")
    if test.num_classes > full.num_classes:
        raise RobustgenError(f"{d.dataset}: the test split has labels beyond the train split's {full.num_classes} classes")
    train, val = train_val_split(full, d.val_size, d.split_seed)
    heldout = None
    if d.train_size is not None:
        train, heldout = holdout_split(train, d.train_size, d.split_seed)
    # model selection attacks the validation split every few epochs: keep it decoded
    return Splits(train=train, val=val.in_memory(), test=test, heldout=heldout)


def generator_data(cfg: RunConfig, splits: Splits) -> ImageDataset:
    """The images the configured generator is fitted on: the real split, or for a generator that
    fits on withheld images (``heldout``) the images ``data.train_size`` withheld."""
    if getattr(get_generator(cfg.generator.name), "fits_on", "train") != "heldout":
        return splits.train
    if splits.heldout is None or len(splits.heldout) == 0:
        raise RobustgenError(f"generator {cfg.generator.name!r} serves withheld real images: set data.train_size "
                             f"below the {len(splits.train)} real training images")
    return splits.heldout


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


def robust_seed(cfg: RunConfig) -> int:
    """The seed of adversarial training: ``train.seed``, else the run's seed."""
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


def _selection_evaluator(cfg: RunConfig, val: ImageDataset, device: torch.device, *, robust: bool):
    """Model selection on the held-out split: PGD-40 robust accuracy (or clean accuracy)."""
    seed = robust_seed(cfg) if robust else cfg.seed

    def evaluate(variants: dict[str, nn.Module], step: int) -> dict[str, dict]:
        out = {}
        for name, model in variants.items():
            if len(val) == 0:
                continue
            if robust:
                m = evaluate_robustness(model, val.images, val.labels, attack="pgd40", norm=cfg.threat.norm,
                                        eps=cfg.threat.eps, batch_size=cfg.eval.batch_size, device=device,
                                        seed=seed + step)
                out[name] = {"score": m["robust_accuracy"], "val_clean_accuracy": m["clean_accuracy"],
                             "val_robust_accuracy": m["robust_accuracy"]}
            else:
                acc = clean_accuracy(model, val.images, val.labels, batch_size=cfg.eval.batch_size, device=device)
                out[name] = {"score": acc, "val_clean_accuracy": acc}
        return out

    return evaluate


@torch.no_grad()
def clean_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                   device: torch.device) -> float:
    probs = predict_probabilities(model, np.asarray(images), batch_size=batch_size, device=device)
    return float((probs.argmax(1) == labels).mean())


# --------------------------------------------------------------------------- classifier
def train_classifier(cfg: RunConfig, splits: Splits, out_dir: Path, *, device: torch.device,
                     fingerprint: str, progress: bool = True) -> dict:
    """Standard (non-robust) training of f_NR; returns its test accuracy."""
    c = cfg.classifier
    model, spec = build_model(c.arch, c.activation, splits.train, seed=cfg.seed)
    model.to(device)
    n = len(splits.train)
    total = steps_for(epochs=c.epochs, epoch_size=n, batch_size=c.batch_size)
    settings = LoopSettings(
        batch_size=c.batch_size, total_steps=total,
        warmup_steps=steps_for(epochs=c.warmup_epochs, epoch_size=n, batch_size=c.batch_size) if c.warmup_epochs else 0,
        peak_lr=scaled_lr(c.batch_size, lr_per_256=c.lr_per_256), momentum=c.momentum, nesterov=True,
        weight_decay=c.weight_decay, alpha=1.0, label_smoothing_real=c.label_smoothing,
        checkpoint_every_steps=max(1, total // 10), log_every_steps=max(1, min(50, total // 20)),
        crop_padding=cfg.data.crop_padding, flip=cfg.data.flip, seed=cfg.seed)
    result = train_loop(model, settings=settings, real=splits.train, generated=[],
                        step_loss=standard_step_loss(), evaluate=_selection_evaluator(cfg, splits.val, device, robust=False),
                        out_dir=out_dir, device=device, spec=spec,
                        extra_meta={"role": "classifier", "config": config_to_dict(cfg)},
                        fingerprint=fingerprint, desc="classifier", progress=progress)
    best = load_model(out_dir / "best.safetensors", device=device)
    test_acc = clean_accuracy(best, splits.test.images, splits.test.labels, batch_size=cfg.eval.batch_size, device=device)
    summary = {"test_accuracy": test_acc, "steps": total, "wall_time_s": round(result.wall_time_s, 2),
               "checkpoint": str(out_dir / "best.safetensors")}
    write_json(out_dir / "metrics.json", summary)
    return summary


# --------------------------------------------------------------------------- generate
def generate_samples(cfg: RunConfig, train: ImageDataset, out_path: Path, *, fit_options: dict | None = None,
                     progress: bool = False) -> dict:
    """Fit the configured generator on the real train split and sample ``num_samples`` images.

    ``fit_options``: runtime options of the generator's fit (not part of the result's identity);
    by default the configured device, a resumable work folder next to ``out_path`` and ``progress``.
    """
    g = cfg.generator
    generator = get_generator(g.name)
    options = {"device": str(resolve_device(cfg.device)), "work_dir": Path(out_path).parent / f"{g.name}-work",
               "progress": progress, "class_names": train.class_names, **(fit_options or {})}
    t0 = time.perf_counter()
    fitted = generator.fit(train.images, train.labels, num_classes=train.num_classes, **generator_fit_kwargs(g),
                           **runtime_kwargs(generator, options))
    fit_s = time.perf_counter() - t0
    images, condition = generator.sample(fitted, g.num_samples, seed=g.seed)
    arrays = {"image": images, "class_names": np.asarray(train.class_names)}
    if condition is not None:  # None: an unconditional generator; f_NR labels the images later
        arrays["label"] = condition
    write_npz(out_path, **arrays)
    return {"generator": g.name, "num_samples": int(len(images)), "fit_time_s": round(fit_s, 2),
            "sample_time_s": round(time.perf_counter() - t0 - fit_s, 2), "path": str(out_path)}


def generate_into_store(cfg: RunConfig, train: ImageDataset, store_dir: Path, *, device: torch.device,
                        progress: bool = True, shard_size: int = DEFAULT_SHARD_SIZE,
                        verify_existing: bool = True, ctx: DistContext = DistContext()) -> dict:
    """``generate_samples`` at scale: fit once, then sample ``generator.num_samples`` images shard
    by shard into a store with per-sample seeds (``generate.runner.generate_store``); a killed job
    resumes at its first incomplete shard. The generator's training state (a DDPM's checkpoints)
    lives in ``store_dir/generator-work``. ``train``: the images it fits on (``generator_data``).
    Under torchrun (``ctx``) the ranks share the shards."""
    from robustgen.generate.runner import generate_store

    g = cfg.generator
    # a generator of withheld real images serves each of them at most once
    num_samples = g.num_samples if getattr(get_generator(g.name), "fits_on", "train") != "heldout" \
        else min(g.num_samples, len(train))
    return generate_store(store_dir, generator=g.name, train_images=train.images, train_labels=train.labels,
                          num_classes=train.num_classes, num_samples=num_samples, seed=g.seed,
                          fit_config=generator_fit_kwargs(g), class_names=train.class_names,
                          data_name=cfg.data.dataset, shard_size=shard_size, progress=progress,
                          verify_existing=verify_existing,
                          fit_options={"device": str(device), "work_dir": Path(store_dir) / "generator-work",
                                       "progress": progress, "class_names": train.class_names}, ctx=ctx)


# --------------------------------------------------------------------------- label
def label_samples(classifier_path: Path, samples_path: Path, out_path: Path, *, top_k: int | None,
                  batch_size: int, device: torch.device, progress: bool = True, mode: str = "argmax",
                  top_fraction: float | None = None, balanced: bool = False, per_class: int | None = None) -> dict:
    """Label generated images with f_NR and filter them per class.

    ``mode="argmax"``: label = f_NR's most likely class, confidence = its probability (paper Sec. 3.3);
    ``mode="condition"``: label = the sample's conditioning class, confidence = f_NR's probability
    of it (Wang et al.). Then keep the ``top_fraction`` / ``top_k`` most confident of each class,
    optionally the same number of every class, or exactly ``per_class`` of every class
    (``robustgen.label.select``)."""
    from robustgen.label import keep_counts, select_per_class

    model = load_model(classifier_path, device=device)
    num_classes = model_num_classes(classifier_path)
    arrays = read_npz(samples_path, num_classes=num_classes, keys_required=("image",))  # unconditional: no label
    images = arrays["image"]
    probs = predict_probabilities(model, images, batch_size=batch_size, device=device, progress=progress)
    labels, confidence = assign_labels(probs, mode=mode, conditions=arrays.get("label"), source=str(samples_path))
    keep = np.arange(len(labels))
    before = np.bincount(labels, minlength=num_classes)
    if top_k is not None or top_fraction is not None or balanced or per_class is not None:
        try:
            counts = keep_counts(before, top_k=top_k, top_fraction=top_fraction, balanced=balanced,
                                 per_class=per_class)
        except RobustgenError as e:
            raise RobustgenError(f"{samples_path}: {e}") from None
        keep = select_per_class(labels, confidence, counts)
    out = {"image": images[keep], "label": labels[keep], "confidence": confidence[keep]}
    if "label" in arrays:
        out["condition"] = arrays["label"][keep]
    if "class_names" in arrays:
        out["class_names"] = arrays["class_names"]
    write_npz(out_path, **out)
    summary = {"mode": mode, "num_generated": int(len(labels)), "num_labeled": int(len(keep)),
               "mean_confidence": float(confidence[keep].mean()) if len(keep) else 0.0,
               "counts_per_class": np.bincount(labels[keep], minlength=num_classes).tolist(),
               "counts_before": before.tolist(), "path": str(out_path)}
    if "label" in arrays:
        # how often f_NR's top class is the conditioning class, over all generated samples
        summary["agreement_with_condition"] = float((probs.argmax(1) == arrays["label"]).mean()) if len(labels) else 0.0
    return summary


def label_into_store(classifier_path: Path, generated_store: Path, store_dir: Path, *, cfg: RunConfig,
                     device: torch.device, progress: bool = True, ctx: DistContext = DistContext()) -> dict | None:
    """``label_samples`` at scale: ``store_dir`` shares the generated store's images (hard links),
    gets f_NR's labels and confidences shard by shard (resumable, ``label.runner.label_store``)
    and the per-class selection of ``cfg.label``; the generated store itself is never modified.
    Under torchrun (``ctx``) the ranks share every shard's rows; rank 0 returns the summary."""
    from robustgen.data.store import Store
    from robustgen.data.store_link import link_store
    from robustgen.label.runner import label_store, select_store
    from robustgen.train.distributed import on_main

    lab = cfg.label
    on_main(ctx, lambda: link_store(generated_store, store_dir))
    options = label_options(lab)
    model = prepare_for_inference(load_model(classifier_path, device=device), options)
    labelled = label_store(store_dir, model, labeller={"id": file_sha256(classifier_path), "path": str(classifier_path)},
                           mode=lab.mode, batch_size=lab.batch_size, device=device, progress=progress,
                           options=options, ctx=ctx)
    if not ctx.is_main:
        return None
    selected = select_store(store_dir, top_k=lab.top_k_per_class, top_fraction=lab.top_fraction_per_class,
                            balanced=lab.balanced, per_class=lab.per_class)
    store = Store(store_dir)
    summary = {"mode": lab.mode, "num_generated": int(selected["of"]), "num_labeled": len(store),
               "mean_confidence": float(store.confidences.mean()) if len(store) else 0.0,
               "counts_per_class": selected["counts_per_class"], "path": str(store_dir),
               "counts_before": selected.get("counts_before", selected["counts_per_class"]),
               "images_per_s": labelled["images_per_s"]}
    if "agreement_with_condition" in labelled:
        summary["agreement_with_condition"] = labelled["agreement_with_condition"]
    return summary


def label_options(lab) -> InferenceOptions:
    """The labeller's device path from ``label.*`` (precision, channels_last, compile)."""
    return InferenceOptions(bf16=lab.precision == "bf16", channels_last=lab.channels_last, compile=lab.compile)


def model_num_classes(path: Path) -> int:
    from robustgen.checkpoint import model_info

    return int(model_info(path)["spec"]["num_classes"])


# --------------------------------------------------------------------------- adversarial training
def training_attack(cfg: RunConfig) -> TrainingAttack:
    i = cfg.train.inner
    return TrainingAttack(norm=cfg.threat.norm, eps=cfg.threat.eps, steps=i.steps, step_rule=i.step_rule,
                          adam_lr=tuple(i.adam_lr), adam_lr_boundaries=tuple(int(b) for b in i.adam_lr_boundaries),
                          sign_step_size=i.sign_step_size, init=i.init)


def adversarial_settings(cfg: RunConfig, n_real: int) -> LoopSettings:
    t = cfg.train
    epoch = t.epoch_size or n_real
    total = steps_for(epochs=t.epochs, epoch_size=epoch, batch_size=t.batch_size)
    per_epoch = epoch / t.batch_size
    return LoopSettings(
        batch_size=t.batch_size, total_steps=total, warmup_steps=int(round(t.warmup_epochs * per_epoch)),
        peak_lr=scaled_lr(t.batch_size, lr_per_256=t.lr_per_256), momentum=t.momentum, nesterov=t.nesterov,
        weight_decay=t.weight_decay, alpha=t.alpha, label_smoothing_real=t.label_smoothing_real,
        label_smoothing_generated=t.label_smoothing_generated, generated_sampling=t.generated_sampling,
        ema_decay=t.ema_decay if t.ema_decay > 0 else None,
        eval_every_steps=max(1, int(round(t.eval_every_epochs * per_epoch))),
        checkpoint_every_steps=max(1, int(round(t.checkpoint_every_epochs * per_epoch))),
        log_every_steps=t.log_every_steps, crop_padding=cfg.data.crop_padding, flip=cfg.data.flip,
        micro_batches=t.micro_batches, bn_group_size=t.bn_group_size, seed=robust_seed(cfg))


def read_generated(path: Path, num_classes: int, image_shape: tuple):
    """A generated set as a batch source: a store folder (memory-mapped, constant memory) or an
    .npz in the released layout (read into RAM)."""
    from robustgen.data.sources import open_source

    path = Path(path)
    if not path.exists():
        raise RobustgenError(f"{path}: generated data not found")
    return open_source(path, num_classes=num_classes, image_shape=image_shape, verify_images=True)


def training_sources(cfg: RunConfig, splits: Splits, generated: Path | None) -> tuple[list, tuple[float, ...]]:
    """The generated sources of adversarial training and the weights of (real split, source 1, ...).

    Without ``data.sources``: the generated set ``generated`` at 1 - alpha (none when alpha = 1).
    With it: each listed source in order, ``generated`` standing for the run's labelled samples
    (or ``--generated``), ``classes`` keeping those classes only."""
    from robustgen.data.sources import ClassSubset

    t, real = cfg.train, splits.train
    if not cfg.data.sources:
        if t.alpha >= 1.0:
            return [], (1.0,)
        if generated is None:
            raise RobustgenError(f"train.alpha = {t.alpha} < 1 needs generated data")
        return [read_generated(generated, real.num_classes, real.image_shape)], (t.alpha, 1.0 - t.alpha)
    sources, weights = [], [sum(src.weight for src in cfg.data.sources if src.path == "train")]
    for src in cfg.data.sources:
        if src.path == "train":
            continue
        if src.path == "generated" and generated is None:
            raise RobustgenError("data.sources lists 'generated' but this run has no generated data (use --generated)")
        source = read_generated(generated if src.path == "generated" else Path(src.path), real.num_classes,
                                real.image_shape)
        sources.append(ClassSubset(source, src.classes) if src.classes is not None else source)
        weights.append(src.weight)
    return sources, tuple(weights)


def source_fingerprints(cfg: RunConfig) -> list:
    """What identifies the external sources listed in ``data.sources`` (a store's manifest, an
    .npz file's size and time), so a changed source invalidates a cached training."""
    out = []
    for src in cfg.data.sources:
        path = Path(src.path)
        if src.path in ("train", "generated"):
            out.append(src.path)
        elif (path / "manifest.json").is_file():
            out.append(file_sha256(path / "manifest.json"))
        else:
            out.append([str(path.resolve()), *((path.stat().st_size, path.stat().st_mtime) if path.exists() else ())])
    return out


def train_robust(cfg: RunConfig, splits: Splits, generated: Path | None,
                 out_dir: Path, *, device: torch.device, fingerprint: str, name: str = "model",
                 progress: bool = True, ctx: DistContext = DistContext()) -> dict:
    """TRADES (or PGD-AT) on batches with exact per-source row counts (round(alpha * B) real
    images); data-parallel over ``ctx.world_size`` processes when launched by torchrun.
    ``generated``: the labelled generated set (store folder or .npz), read with constant memory."""
    t = cfg.train
    sources, weights = training_sources(cfg, splits, generated)
    model, spec = build_model(t.arch, t.activation, splits.train, seed=robust_seed(cfg))
    use_bn_groups(model, t.bn_group_size)
    if t.sync_bn and ctx.enabled:
        if device.type != "cuda":
            raise RobustgenError("train.sync_bn needs CUDA devices: torch's SyncBatchNorm does not run on CPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    attack = training_attack(cfg)

    def make_step_loss(bf16: bool):
        return trades_step_loss(attack, beta=t.beta, bf16=bf16) if t.loss == "trades" else pgd_at_step_loss(attack, bf16=bf16)

    chunk = -(-t.batch_size // (ctx.world_size * t.micro_batches))
    options = choose_step_options(
        model, make_step_loss, precision=t.precision, channels_last=t.channels_last, compile=t.compile,
        batch_shape=(chunk, splits.train.images.shape[3], *splits.train.images.shape[1:3]), num_classes=spec["num_classes"],
        device=device, what=f"{t.arch} {t.loss}-{attack.steps}", out_dir=out_dir, fingerprint=fingerprint, ctx=ctx,
        log=print if progress else (lambda line: None))
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    settings = dataclasses.replace(adversarial_settings(cfg, len(splits.train)), source_weights=weights,
                                   channels_last=options.channels_last)
    step_loss = make_step_loss(options.bf16)
    result = train_loop(model, settings=settings, real=splits.train, generated=sources,
                        step_loss=step_loss, evaluate=_selection_evaluator(cfg, splits.val, device, robust=True),
                        out_dir=out_dir, device=device, spec=spec,
                        extra_meta={"role": "robust", "name": name, "config": config_to_dict(cfg)},
                        fingerprint=fingerprint, desc=f"train[{name}]", compile_model=options.compile,
                        ctx=ctx, progress=progress)
    summary = {"name": name, "alpha": t.alpha, "steps": settings.total_steps, "batch_size": t.batch_size,
               "generated_samples": int(sum(len(src) for src in sources)),
               "sources": [{"name": "real", "images": len(splits.train), "weight": weights[0]}]
               + [{"name": str(getattr(src, "name", "generated")), "images": len(src), "weight": w}
                  for src, w in zip(sources, weights[1:])],
               "step_options": dataclasses.asdict(options),
               "selection": result.best, "wall_time_s": round(result.wall_time_s, 2),
               "resumed_from_step": result.resumed_from, "checkpoint": str(out_dir / "best.safetensors")}
    if ctx.is_main:
        write_json(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- evaluate
def training_log_check(info: dict, clean_accuracy: float, n: int) -> dict | None:
    """Does the test clean accuracy agree with the validation clean accuracy logged at model
    selection? A gap beyond sampling noise points at a data, preprocessing or loading bug."""
    selection = info.get("selection") or {}
    logged = selection.get("val_clean_accuracy")
    if logged is None:
        return None
    val_n = int((info.get("config") or {}).get("data", {}).get("val_size", 1024)) or 1
    se = (logged * (1 - logged) / val_n + clean_accuracy * (1 - clean_accuracy) / max(n, 1)) ** 0.5
    tolerance = max(0.02, 4 * se)
    return {"val_clean_accuracy": logged, "test_clean_accuracy": clean_accuracy,
            "tolerance": round(tolerance, 4), "agrees": abs(logged - clean_accuracy) <= tolerance}


def evaluate_checkpoint(checkpoint: Path, test: ImageDataset, *, attack: str, norm: str, eps: float,
                        n: int | None, batch_size: int, seed: int, device: torch.device,
                        progress: bool = True, arch: str | None = None, state_path: Path | None = None,
                        ctx: DistContext = DistContext()) -> dict:
    """Clean and robust accuracy of a checkpoint on (the first ``n`` images of) a test split, with
    a sanity report. ``arch`` loads a plain state dict of a registered architecture instead of a
    robustgen checkpoint. ``state_path`` makes a long evaluation resumable; under torchrun (``ctx``)
    the ranks share the batches."""
    from robustgen.checkpoint import load_external_model, model_info

    if arch is None:
        model, info = load_model(checkpoint, device=device), model_info(checkpoint)
    else:
        model = load_external_model(checkpoint, arch=arch, num_classes=test.num_classes,
                                    in_channels=test.image_shape[2], device=device)
        info = {}
    with torch.no_grad():
        classes = int(model(torch.zeros(1, test.image_shape[2], *test.image_shape[:2], device=device)).shape[1])
    if test.num_classes > classes:
        raise RobustgenError(f"{checkpoint}: model has {classes} classes but the test data has {test.num_classes}")
    count = len(test) if n is None else min(n, len(test))
    images, labels = test.images[:count], test.labels[:count]
    key = f"{file_sha256(checkpoint)}|{test.name}|{count}|{array_fingerprint(images, labels)}"
    result = evaluate_robustness(model, images, labels, attack=attack, norm=norm, eps=eps, batch_size=batch_size,
                                 device=device, seed=seed, progress=progress, desc=f"eval[{attack}]",
                                 state_path=state_path, state_key=key, ctx=ctx)
    sanity = {"max_perturbation_within_eps": result["max_perturbation"] <= eps * (1 + 1e-5) + 1e-6,
              "finite_logits": True, "warnings": result.pop("warnings")}
    check = training_log_check(info, result["clean_accuracy"], count)
    if check is not None:
        sanity["clean_vs_training_log"] = check
        if not check["agrees"]:
            sanity["warnings"].append(
                f"test clean accuracy {check['test_clean_accuracy']:.4f} is far from the training log's validation "
                f"clean accuracy {check['val_clean_accuracy']:.4f}: check the data and preprocessing")
    return {"checkpoint": str(checkpoint), "dataset": test.name, **result, "sanity": sanity}
