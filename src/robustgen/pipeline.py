"""``robustgen run``: the stage graph and its caching (no math here).

Every stage writes into ``OUT/stages/<stage>-<fingerprint>/`` and finishes by writing
``manifest.json`` atomically. The fingerprint hashes the stage's own config, its inputs'
fingerprints and the code version, so a finished stage is reused by any later run that needs
the same thing (another alpha reuses the classifier and the samples), a changed config never
overwrites older results, and an interrupted stage resumes from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from robustgen import __version__
from robustgen.config import RunConfig, config_to_dict, replace
from robustgen.data.store_format import cached_sha256
from robustgen.generate import generator_fit_kwargs
from robustgen.generate.runner import array_fingerprint
from robustgen.io import read_json, write_json
from robustgen.locks import FolderLock
from robustgen.train.distributed import DistContext, barrier, context_from_env, main_first
from robustgen.stages import (Splits, evaluate_checkpoint, generate_into_store, generator_data, label_into_store,
                              load_splits, resolve_device, train_classifier, train_robust)


def fingerprint(*parts) -> str:
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def data_fingerprint(cfg: RunConfig, splits: Splits) -> str:
    """Content hash of the real splits, so a changed npz file or split invalidates every stage."""
    parts = [splits.train, splits.val, splits.test] + ([splits.heldout] if splits.heldout is not None else [])
    content = array_fingerprint(*(a for ds in parts for a in (ds.images, ds.labels)))
    return fingerprint(cfg.data.dataset, cfg.data.val_size, cfg.data.split_seed, content)


def log(message: str) -> None:
    print(f"[robustgen] {message}", file=sys.stderr, flush=True)


class Stage:
    """A cached stage folder: ``done`` when its manifest exists with the same fingerprint."""

    def __init__(self, out: Path, name: str, fp: str):
        self.name, self.fp = name, fp
        self.dir = out / "stages" / f"{name}-{fp}"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def cached(self) -> dict | None:
        """The finished stage's result, if its manifest matches and every output it lists still has
        its sha256; a stage whose outputs fail is recomputed (``_discard_corrupt``), never used."""
        if self.manifest_path.exists():
            manifest = read_json(self.manifest_path)
            if manifest.get("fingerprint") == self.fp:
                bad = [rel for rel, sha in (manifest.get("outputs") or {}).items()
                       if not _intact(self.dir / rel, sha)]
                if not bad:
                    return manifest["result"]
                self._discard_corrupt(bad)
        return None

    def _discard_corrupt(self, bad: list[str]) -> None:
        """Delete the failing files and the manifest, so the stage recomputes what they held and
        resumes from what is intact; weights cannot be rebuilt from a training state, so a failing
        checkpoint also drops ``state.pt`` (the training reruns, to the same result)."""
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        log(f"{self.name}: {shown} in {self.dir} missing or failing its sha256 (corrupt or modified); "
            f"recomputing the stage")
        drop = list(bad) + (["state.pt"] if any(rel.endswith(".safetensors") for rel in bad) else [])
        for rel in drop:
            (self.dir / rel).unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)

    def run(self, compute: Callable[[Path], dict], inputs: dict, *, ctx: DistContext = DistContext(),
            all_ranks: bool = False) -> dict:
        """The cached result, or compute it. Under torchrun a stage runs on rank 0 while the others
        wait, unless ``all_ranks`` (training, generation, labelling and evaluation share the work
        across ranks); rank 0 alone writes the manifest."""
        result = self.cached()
        if result is not None:
            if ctx.is_main:
                log(f"{self.name}: reusing {self.dir}")
            return result
        if ctx.is_main:
            log(f"{self.name}: running in {self.dir}")
            self.dir.mkdir(parents=True, exist_ok=True)
        barrier(ctx)
        if ctx.is_main or all_ranks:
            t0 = time.perf_counter()
            result = compute(self.dir)
            if ctx.is_main:
                write_json(self.manifest_path, {"stage": self.name, "fingerprint": self.fp, "version": __version__,
                                                "inputs": inputs, "wall_time_s": round(time.perf_counter() - t0, 2),
                                                "result": result, "outputs": _outputs(self.dir)})
        barrier(ctx)
        return result if result is not None else self.cached()


def _outputs(folder: Path) -> dict[str, str]:
    """sha256 of every file a finished stage left in ``folder`` (not the manifest, locks or temporaries)."""
    rels = (p.relative_to(folder) for p in sorted(folder.rglob("*")) if p.is_file())
    return {rel.as_posix(): cached_sha256(folder / rel) for rel in rels
            if rel.as_posix() != "manifest.json" and not any(part.startswith(".") for part in rel.parts)}


def _intact(path: Path, sha256: str) -> bool:
    try:
        return cached_sha256(path) == sha256
    except OSError:
        return False


def model_variants(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """The robust models a run trains: the configured mix, one per entry of ``arms``, plus an
    alpha = 1 baseline (real data only)."""
    if cfg.data.sources:
        main_name = "mix-" + "+".join(f"{Path(s.path).name}{s.weight:g}" for s in cfg.data.sources)
    else:
        main_name = "baseline" if cfg.train.alpha == 1.0 else f"{cfg.generator.name}-alpha{cfg.train.alpha:g}"
    variants = [(main_name, replace(cfg, arms=[]))]
    for arm in cfg.arms:  # the same run with another generator's data (and its own alpha)
        alpha = cfg.train.alpha if arm.alpha is None else arm.alpha
        variants.append((f"{arm.generator}-alpha{alpha:g}",
                         replace(cfg, **{"generator.name": arm.generator, "train.alpha": alpha, "arms": []})))
    if cfg.baseline and main_name != "baseline":
        variants.insert(0, ("baseline", replace(cfg, **{"train.alpha": 1.0, "data.sources": [], "arms": []})))
    return variants


def needs_generated(cfg: RunConfig) -> bool:
    """Does training this config read the run's generated data (or ``--generated``)?"""
    if cfg.data.sources:
        return any(s.path == "generated" and s.weight > 0 for s in cfg.data.sources)
    return cfg.train.alpha < 1


def train_fingerprint(variant: RunConfig, data_fp: str, label_fp: str | None) -> str:
    from robustgen.stages import source_fingerprints

    return fingerprint("train", data_fp, label_fp if needs_generated(variant) else None,
                       asdict(variant.train), asdict(variant.threat), variant.data.crop_padding,
                       variant.data.flip, variant.seed, variant.eval.batch_size,
                       *([source_fingerprints(variant)] if variant.data.sources else []))


def labels_are_conditions(cfg: RunConfig) -> bool:
    """Labels are the generator's conditioning classes, unfiltered: no f_NR is needed (paper
    footnote 12: the class-conditional TinyImageNet generator needs no pseudo-labelling), so
    training reads the generated store directly."""
    lab = cfg.label
    return lab.mode == "condition" and not (lab.top_k_per_class or lab.top_fraction_per_class or lab.balanced
                                             or lab.per_class)


def plan(cfg: RunConfig) -> dict:
    """What ``run`` would do, without loading data or computing anything."""
    stages = []
    generators = list(dict.fromkeys(v.generator.name for _, v in model_variants(cfg) if needs_generated(v)))
    if generators and not labels_are_conditions(cfg):
        stages.append({"stage": "classifier", "arch": cfg.classifier.arch, "epochs": cfg.classifier.epochs,
                       "checkpoint": cfg.classifier.checkpoint})
    for name in generators:
        stages.append({"stage": "generate", "generator": name, "num_samples": cfg.generator.num_samples})
        stages.append({"stage": "label", "mode": cfg.label.mode, "top_k_per_class": cfg.label.top_k_per_class,
                       "top_fraction_per_class": cfg.label.top_fraction_per_class, "balanced": cfg.label.balanced,
                       "per_class": cfg.label.per_class,
                       **({"classifier": "none (labels = conditioning classes)"} if labels_are_conditions(cfg) else {})})
    for name, v in model_variants(cfg):
        t = v.train
        epoch = t.epoch_size or "train split size"
        stages.append({"stage": f"train[{name}]", "arch": t.arch, "loss": t.loss, "alpha": t.alpha,
                       "batch_size": t.batch_size, "epochs": t.epochs, "epoch_size": epoch,
                       "threat": f"{v.threat.norm} eps={v.threat.eps:.6g}"})
        stages.append({"stage": f"eval[{name}]", "attack": v.eval.attack, "n": v.eval.n or "all test images"})
    return {"device": cfg.device, "dataset": cfg.data.dataset, "stages": stages}


def run(cfg: RunConfig, out: Path, *, progress: bool = True, wait: bool = False) -> dict:
    """classifier -> generate -> label -> train (each variant) -> eval, then results + report.

    The run folder is owned by one process at a time (``robustgen.locks``): another owner is an
    error, or with ``wait`` waited for. Under torchrun rank 0 holds the lock."""
    ctx, device = context_from_env(resolve_device(cfg.device))
    with FolderLock(out, wait=wait, what="run folder", log=log) if ctx.is_main else contextlib.nullcontext():
        return _run(cfg, out, ctx, device, progress)


def _run(cfg: RunConfig, out: Path, ctx: DistContext, device: torch.device, progress: bool) -> dict:
    from robustgen.report import write_report

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    splits = main_first(ctx, lambda: load_splits(cfg))  # the first rank downloads, the others wait and read
    ranks = f" x {ctx.world_size} processes" if ctx.enabled else ""
    if ctx.is_main:
        log(f"{cfg.data.dataset} on {device}{ranks}: train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} images, "
        f"{splits.train.num_classes} classes, shape {splits.train.image_shape}")
    data_fp = data_fingerprint(cfg, splits)
    variants = model_variants(cfg)
    classifier_fp = classifier_path = None
    labelled: dict[str, tuple[str, Path, dict]] = {}  # generator -> (label fingerprint, store, label summary)

    if any(needs_generated(v) for _, v in variants):
        if labels_are_conditions(cfg):
            pass  # no f_NR: the labels are the conditioning classes
        elif cfg.classifier.checkpoint:
            classifier_path = Path(cfg.classifier.checkpoint)
            classifier_fp = fingerprint("external-classifier", str(classifier_path.resolve()),
                                        classifier_path.stat().st_mtime if classifier_path.exists() else None)
        else:
            classifier_fp = fingerprint("classifier", data_fp, asdict(cfg.classifier), cfg.data.crop_padding,
                                        cfg.data.flip, cfg.seed)
            stage = Stage(out, "classifier", classifier_fp)
            result = stage.run(lambda d: train_classifier(cfg, splits, d, device=device, fingerprint=classifier_fp,
                                                          progress=progress), {"data": data_fp}, ctx=ctx)
            classifier_path = stage.dir / "best.safetensors"
            if ctx.is_main:
                log(f"classifier: test accuracy {result['test_accuracy']:.4f}")
    for _, variant in variants:
        if not needs_generated(variant) or variant.generator.name in labelled:
            continue
        g = variant.generator  # only what this generator reads, so another generator's settings change nothing
        generate_fp = fingerprint("generate-store", data_fp, g.name, g.num_samples, g.seed, generator_fit_kwargs(g))
        gen_stage = Stage(out, "generate", generate_fp)
        gen_stage.run(lambda d: generate_into_store(variant, generator_data(variant, splits), d / "store", device=device,
                                                    progress=progress, ctx=ctx),
                      {"data": data_fp}, ctx=ctx, all_ranks=True)
        if labels_are_conditions(cfg):  # the generated store's labels are its conditioning classes
            labelled[g.name] = (fingerprint("label-conditions", generate_fp), gen_stage.dir / "store", None)
            continue
        label_fp = fingerprint("label-store", generate_fp, classifier_fp, asdict(cfg.label))
        label_stage = Stage(out, "label", label_fp)
        label_result = label_stage.run(
            lambda d: label_into_store(classifier_path, gen_stage.dir / "store", d / "store", cfg=cfg, device=device,
                                       progress=progress, ctx=ctx),
            {"generate": generate_fp, "classifier": classifier_fp}, ctx=ctx, all_ranks=True)
        labelled[g.name] = (label_fp, label_stage.dir / "store", label_result)  # the store training reads

    models = []
    for name, variant in variants:
        label_fp, generated, _ = labelled.get(variant.generator.name, (None, None, None))
        train_fp = train_fingerprint(variant, data_fp, label_fp)
        stage = Stage(out, f"train-{name}", train_fp)
        summary = stage.run(lambda d: train_robust(variant, splits, generated, d, device=device, fingerprint=train_fp,
                                                   name=name, progress=progress, ctx=ctx),
                            {"data": data_fp, "label": label_fp if needs_generated(variant) else None},
                            ctx=ctx, all_ranks=True)
        e = variant.eval
        eval_fp = fingerprint("eval", train_fp, asdict(e), asdict(variant.threat))
        eval_stage = Stage(out, f"eval-{name}", eval_fp)
        metrics = eval_stage.run(
            lambda d: _evaluate_into(d, stage.dir / "best.safetensors", variant, splits, device, progress, ctx),
            {"train": train_fp}, ctx=ctx, all_ranks=True)
        models.append({
            "name": name, "alpha": variant.train.alpha,
            "generator": variant.generator.name if needs_generated(variant) else None,
            "generated_samples": summary["generated_samples"],
            "clean_accuracy": metrics["clean_accuracy"], "robust_accuracy": metrics["robust_accuracy"],
            "attack": metrics["attack"], "norm": metrics["norm"], "eps": metrics["eps"], "n_eval": metrics["n"],
            "max_perturbation": metrics["max_perturbation"], "steps": summary["steps"],
            "batch_size": summary["batch_size"], "selected": summary["selection"],
            "train_time_s": summary["wall_time_s"], "eval_time_s": metrics["time_s"],
            "wall_time_s": round(summary["wall_time_s"] + metrics["time_s"], 2),
            "checkpoint": summary["checkpoint"], "robust_points": metrics.get("robust_points"),
        })
        if ctx.is_main:
            log(f"{name}: clean {metrics['clean_accuracy']:.4f}, robust {metrics['robust_accuracy']:.4f} "
                f"({metrics['attack']}, n={metrics['n']})")

    results = {
        "version": __version__, "dataset": cfg.data.dataset, "device": str(device),
        "threat": {"norm": cfg.threat.norm, "eps": cfg.threat.eps},
        "models": models, "labeling": labelled[cfg.generator.name][2] if cfg.generator.name in labelled else None,
        "labeling_by_generator": {name: entry[2] for name, entry in labelled.items()},
        "wall_time_s": round(time.perf_counter() - started, 2), "config": config_to_dict(cfg),
    }
    if ctx.is_main:
        from robustgen.report.figures import model_figures

        # the configured generator's labelled images, as training sees them
        samples = labelled[cfg.generator.name][1] if cfg.generator.name in labelled else None
        figures = [fig for m in models
                   for fig in model_figures(out, m["name"], Path(m["checkpoint"]), splits.test,
                                            norm=cfg.threat.norm, eps=cfg.threat.eps, device=device)]
        write_report(out, results, samples_path=samples, figures=figures)
        write_json(out / "results.json", results)
    return results


def _evaluate_into(stage_dir: Path, checkpoint: Path, cfg: RunConfig, splits: Splits, device, progress,
                   ctx: DistContext = DistContext()) -> dict:
    e = cfg.eval
    partial = stage_dir / "eval.partial.pt"  # resumable progress of a long evaluation
    metrics = evaluate_checkpoint(checkpoint, splits.test, attack=e.attack, norm=cfg.threat.norm, eps=cfg.threat.eps,
                                  n=e.n, batch_size=e.batch_size, seed=e.seed, device=device, progress=progress,
                                  state_path=partial, ctx=ctx)
    if ctx.is_main:
        write_json(stage_dir / "eval.json", metrics)
        partial.unlink(missing_ok=True)
    return metrics


def describe_plan(cfg: RunConfig) -> str:
    p = plan(cfg)
    lines = [f"dataset {p['dataset']} on device {p['device']}"]
    for s in p["stages"]:
        rest = ", ".join(f"{k}={v}" for k, v in s.items() if k != "stage")
        lines.append(f"  {s['stage']}: {rest}")
    return "\n".join(lines)

