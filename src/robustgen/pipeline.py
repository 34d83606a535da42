"""``robustgen run``: the stage graph and its caching (no math here).

Every stage writes into ``OUT/stages/<stage>-<fingerprint>/`` and finishes by writing
``manifest.json`` atomically. The fingerprint (each stage module's ``fingerprint``, in
``robustgen.stages``) hashes the stage's own config, its inputs' fingerprints and its code
(``stages.code``: a changed algorithm recomputes the stage and those after it, with a notice),
so a finished stage is reused by any later run that needs the same thing (another alpha reuses
the classifier and the samples), a changed config never overwrites older results, and an
interrupted stage resumes from its own checkpoint. The stages' typed results
(``robustgen.results``) make ``results.json``.

A run starts by writing ``config.yaml``, ``command.json`` and ``environment.json``
(``robustgen.provenance``) and appends every line it logs to ``log.txt``. Paths in the JSON it
writes (manifests, ``results.json``) are relative to the run folder, so the folder can move.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from dataclasses import replace as replace_dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from robustgen.config import RunConfig, config_to_dict, is_baseline, replace
from robustgen.provenance import environment, localize, portable, write_run_records
from robustgen.results import ClassifierResult, EvalResult, ModelResult, RunResults, TrainingResult
from robustgen.runtime.distributed import DistContext, barrier, context_from_env, main_first
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import cached_sha256
from robustgen.runtime.io import read_json, write_json
from robustgen.runtime.locks import FolderLock
from robustgen.runtime.version import __version__
from robustgen.stages import (Splits, classifier, data_fingerprint, diagnose, evaluate, generate, label,
                              load_splits, resolve_device, robust_seed, train)
from robustgen.stages.code import changed_modules, module_digests
from robustgen.stages.common import eval_points, fingerprint_key

_LOG_FILES: list[Path] = []  # the log.txt of the run in progress (innermost last)


def log(message: str) -> None:
    """A line on stderr and in the run's ``log.txt``."""
    print(f"[robustgen] {message}", file=sys.stderr, flush=True)
    if _LOG_FILES:
        with open(_LOG_FILES[-1], "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


@contextlib.contextmanager
def run_log(out: Path):
    """Append ``log``'s lines to ``OUT/log.txt`` while the block runs."""
    out.mkdir(parents=True, exist_ok=True)
    _LOG_FILES.append(out / "log.txt")
    try:
        yield
    finally:
        _LOG_FILES.pop()


class Stage:
    """A cached stage folder: ``done`` when its manifest exists with the same fingerprint.
    ``result_type`` (a ``robustgen.results`` type): the stage's result, kept as JSON in the
    manifest; a cached result of another shape (an older version's) is recomputed."""

    def __init__(self, out: Path, name: str, fp: str, result_type=None):
        self.name, self.fp, self.result_type = name, fp, result_type
        self.dir = out / "stages" / f"{name}-{fp}"
        self.run_folder = out

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def cached(self) -> Any:
        """The finished stage's result, if its manifest matches and every output it lists still has
        its sha256; a stage whose outputs fail is recomputed (``_discard_corrupt``), never used."""
        if self.manifest_path.exists():
            manifest = read_json(self.manifest_path)
            if manifest.get("fingerprint") == self.fp:
                bad = [rel for rel, sha in (manifest.get("outputs") or {}).items()
                       if not _intact(self.dir / rel, sha)]
                if not bad:
                    result = localize(manifest["result"], self.run_folder)
                    return result if self.result_type is None else self.result_type.from_dict(result)
                self._discard_corrupt(bad)
        return None

    def made_by_other_code(self) -> tuple[Path, list[str]] | None:
        """A finished folder of this stage with the same settings and inputs (``fingerprint_key``)
        but other code, and the modules that differ; None if there is none."""
        known = fingerprint_key(self.fp)
        if known is None:
            return None
        key, code = known
        for manifest_path in sorted(self.dir.parent.glob(f"{self.name}-*/manifest.json")):
            try:
                manifest = read_json(manifest_path)
            except RobustgenError:  # a half-written or damaged folder is not evidence of anything
                continue
            if manifest.get("key") == key and manifest.get("fingerprint") != self.fp:
                return manifest_path.parent, changed_modules(manifest.get("code") or {}, module_digests(code))
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

    def run(self, compute: Callable[[Path], Any], inputs: dict, *, ctx: DistContext = DistContext(),
            all_ranks: bool = False) -> Any:
        """The cached result, or compute it. Under torchrun a stage runs on rank 0 while the others
        wait, unless ``all_ranks`` (training, generation, labelling and evaluation share the work
        across ranks); rank 0 alone writes the manifest."""
        result = self.cached()
        if result is not None:
            if ctx.is_main:
                log(f"{self.name}: reusing {self.dir}")
            return result
        if ctx.is_main:
            stale = self.made_by_other_code()
            if stale:
                folder, modules = stale
                shown = ", ".join(modules[:4]) + (f" and {len(modules) - 4} more" if len(modules) > 4 else "")
                log(f"{self.name}: recomputing: {folder} has the same settings and inputs, but its code changed "
                    f"since ({shown})")
            log(f"{self.name}: running in {self.dir}")
            self.dir.mkdir(parents=True, exist_ok=True)
        barrier(ctx)
        if ctx.is_main or all_ranks:
            t0 = time.perf_counter()
            result = compute(self.dir)
            if ctx.is_main:
                _make_portable(self.dir, self.run_folder)
                known = fingerprint_key(self.fp)
                code = {"key": known[0], "code": module_digests(known[1])} if known else {}
                as_dict = result if self.result_type is None else result.to_dict()
                write_json(self.manifest_path, {"stage": self.name, "fingerprint": self.fp, "version": __version__,
                                                **code, "environment": environment(device=None), "inputs": inputs,
                                                "wall_time_s": round(time.perf_counter() - t0, 2),
                                                "result": portable(as_dict, self.run_folder),
                                                "outputs": _outputs(self.dir)})
        barrier(ctx)
        return result if result is not None else self.cached()


def _make_portable(folder: Path, run: Path) -> None:
    """Rewrite the stage's JSON files (summary, eval, metrics, store manifests) with run-relative paths."""
    for path in sorted(folder.rglob("*.json")):
        if path != folder / "manifest.json" and not any(p.startswith(".") for p in path.relative_to(folder).parts):
            data = read_json(path)
            relative = portable(data, run)
            if relative != data:
                write_json(path, relative)


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
        main_name = "baseline" if is_baseline(cfg.train.alpha) else f"{cfg.generator.name}-alpha{cfg.train.alpha:g}"
    variants = [(main_name, replace(cfg, arms=[]))]
    for arm in cfg.arms:  # the same run with another generator's data (its own alpha and label settings)
        alpha = cfg.train.alpha if arm.alpha is None else arm.alpha
        variant = replace(cfg, **{"generator.name": arm.generator, "train.alpha": alpha, "arms": [],
                                  **({} if arm.label is None else {"label": asdict(arm.label)})})
        variants.append((f"{data_name(variant, cfg)}-alpha{alpha:g}", variant))
    if cfg.baseline and main_name != "baseline":
        variants.insert(0, ("baseline", replace(cfg, **{"train.alpha": 1.0, "data.sources": [], "arms": []})))
    return variants


def data_name(variant: RunConfig, cfg: RunConfig) -> str:
    """The name of a variant's generated data: its generator, plus the label settings in which
    the variant differs from the run's (an arm's own ``label``), e.g. ``ddpm[agree_with_condition=True]``."""
    changed = [f"{k}={v}" for k, v in asdict(variant.label).items() if getattr(cfg.label, k) != v]
    return variant.generator.name + (f"[{','.join(changed)}]" if changed else "")


def plan(cfg: RunConfig) -> dict:
    """What ``run`` would do, without loading data or computing anything."""
    stages = []
    data = {data_name(v, cfg): v for _, v in model_variants(cfg) if train.needs_generated(v)}
    if any(not label.labels_are_conditions(v) for v in data.values()):
        stages.append({"stage": "classifier", "arch": cfg.classifier.arch, "epochs": cfg.classifier.epochs,
                       "checkpoint": cfg.classifier.checkpoint})
    for v in dict((v.generator.name, v) for v in data.values()).values():
        stages.append({"stage": "generate", "generator": v.generator.name, "num_samples": cfg.generator.num_samples})
    for name, v in data.items():
        lab = v.label
        stages.append({"stage": f"label[{name}]", "mode": lab.mode, "top_k_per_class": lab.top_k_per_class,
                       "top_fraction_per_class": lab.top_fraction_per_class, "balanced": lab.balanced,
                       "per_class": lab.per_class, "agree_with_condition": lab.agree_with_condition,
                       "drop_near_copies": lab.drop_near_copies,
                       **({"classifier": "none (labels = conditioning classes)"} if label.labels_are_conditions(v) else {})})
    for name, v in model_variants(cfg):
        t = v.train
        epoch = t.epoch_size or "train split size"
        stages.append({"stage": f"train[{name}]", "arch": t.arch, "loss": t.loss, "alpha": t.alpha,
                       "batch_size": t.batch_size, "epochs": t.epochs, "epoch_size": epoch,
                       "threat": f"{v.threat.norm} eps={v.threat.eps:.6g}"})
        stages.append({"stage": f"eval[{name}]", "attack": v.eval.attack, "n": v.eval.n or "all test images"})
    return {"device": cfg.device, "dataset": cfg.data.dataset, "stages": stages}


def run(cfg: RunConfig, out: Path, *, progress: bool = True, wait: bool = False,
        command: dict | None = None) -> RunResults:
    """classifier -> generate -> label -> train (each variant) -> eval, then results + report.

    The run folder is owned by one process at a time (``robustgen.runtime.locks``): another owner is an
    error, or with ``wait`` waited for. Under torchrun rank 0 holds the lock. ``command``: what
    the CLI parsed (preset, overrides), recorded in ``command.json``."""
    out = Path(out)
    ctx, device = context_from_env(resolve_device(cfg.device))
    with FolderLock(out, wait=wait, what="run folder", log=log) if ctx.is_main else contextlib.nullcontext(), \
            run_log(out) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            write_run_records(out, config_to_dict(cfg), command=command, device=device)
        return _run(cfg, out, ctx, device, progress)


def generated_data(cfg: RunConfig, out: Path, *, progress: bool = True, wait: bool = False) -> dict[str, dict]:
    """The classifier, generate, label and diagnose stages of ``run`` alone (no adversarial
    training), into the same run folder and stage cache: {generator: {"store", "labeling",
    "diagnostics"}} for every generator the run's models train on."""
    out = Path(out)
    ctx, device = context_from_env(resolve_device(cfg.device))
    with FolderLock(out, wait=wait, what="run folder", log=log) if ctx.is_main else contextlib.nullcontext():
        splits = main_first(ctx, lambda: load_splits(cfg))
        labelled, diagnostics = _generated_data(cfg, model_variants(cfg), splits, out, data_fingerprint(cfg, splits),
                                                device, ctx, progress)
    return {name: {"store": str(data.store), "labeling": data.summary, "diagnostics": diagnostics.get(name)}
            for name, data in labelled.items()}


def _run(cfg: RunConfig, out: Path, ctx: DistContext, device: torch.device, progress: bool) -> RunResults:
    from robustgen.report import write_report

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    splits = main_first(ctx, lambda: load_splits(cfg))  # the first rank downloads, the others wait and read
    if ctx.is_main:
        ranks = f" x {ctx.world_size} processes" if ctx.enabled else ""
        log(f"{cfg.data.dataset} on {device}{ranks}: train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} images, "
            f"{splits.train.num_classes} classes, shape {splits.train.image_shape}")
    data_fp = data_fingerprint(cfg, splits)
    variants = model_variants(cfg)
    labelled, diagnostics = _generated_data(cfg, variants, splits, out, data_fp, device, ctx, progress)
    models = []
    for name, variant in variants:
        data = labelled.get(data_name(variant, cfg), LabelledData(None, None, None))
        models.append(_train_and_evaluate(name, variant, splits, out, data_fp, data.fingerprint, data.store, device, ctx,
                                          progress))
    results = RunResults(
        version=__version__, dataset=cfg.data.dataset, device=str(device),
        threat={"norm": cfg.threat.norm, "eps": cfg.threat.eps}, models=models,
        labeling=labelled[cfg.generator.name].summary if cfg.generator.name in labelled else None,
        labeling_by_generator={name: data.summary for name, data in labelled.items()},
        diagnostics_by_generator=diagnostics,
        wall_time_s=round(time.perf_counter() - started, 2), config=config_to_dict(cfg))
    if ctx.is_main:
        from robustgen.report.figures import model_figures

        # the configured generator's labelled images, as training sees them
        samples = labelled[cfg.generator.name].store if cfg.generator.name in labelled else None
        figures = [fig for m in models
                   for fig in model_figures(out, m.name, Path(m.checkpoint), splits.test,
                                            norm=cfg.threat.norm, eps=cfg.threat.eps, device=device)]
        write_report(out, results, samples_path=samples, figures=figures)
        write_json(out / "results.json", portable(results.to_dict(), out))
    return results


@dataclass(frozen=True)
class LabelledData:
    """Generated data ready for training: the label (or generate) stage's fingerprint, the store
    training reads and the labelling summary (None when the labels are the conditioning classes)."""

    fingerprint: str | None
    store: Path | None
    summary: dict | None


def _classifier(cfg: RunConfig, splits: Splits, out: Path, data_fp: str, device, ctx: DistContext,
                progress: bool) -> tuple[str, Path]:
    """f_NR (trained by the classifier stage, or ``classifier.checkpoint``): (fingerprint, path)."""
    if cfg.classifier.checkpoint:
        path = Path(cfg.classifier.checkpoint)
        return classifier.external_fingerprint(path), path
    fp = classifier.fingerprint(cfg, data_fp)
    stage = Stage(out, "classifier", fp, ClassifierResult)
    result = stage.run(lambda d: classifier.run(cfg, splits, d, device=device, data_fp=data_fp, progress=progress),
                       {"data": data_fp}, ctx=ctx)
    if ctx.is_main:
        log(f"classifier: test accuracy {result.test_accuracy:.4f}")
    return fp, stage.dir / "best.safetensors"


def _generated_data(cfg: RunConfig, variants: list[tuple[str, RunConfig]], splits: Splits, out: Path, data_fp: str,
                    device, ctx: DistContext, progress: bool):
    """The classifier, generate, label and diagnose stages of every generated data set a variant
    trains on (``data_name``: a generator, with an arm's own label settings):
    ({data name: its ``LabelledData``}, {data name: its diagnostics against the kept and validation images})."""
    labelled: dict[str, LabelledData] = {}
    diagnostics: dict[str, dict] = {}
    if not any(train.needs_generated(v) for _, v in variants):
        return labelled, diagnostics
    classifier_fp, classifier_path = (None, None) if all(
        label.labels_are_conditions(v) for _, v in variants if train.needs_generated(v)) else \
        _classifier(cfg, splits, out, data_fp, device, ctx, progress)
    for _, variant in variants:
        name = data_name(variant, cfg)
        if not train.needs_generated(variant) or name in labelled:
            continue
        generate_fp = generate.fingerprint(variant, data_fp)
        gen_stage = Stage(out, "generate", generate_fp)  # shared by the data sets of one generator
        gen_stage.run(lambda d: generate.run(variant, generate.fit_data(variant, splits), d / "store", device=device,
                                             progress=progress, ctx=ctx), {"data": data_fp}, ctx=ctx, all_ranks=True)
        if label.labels_are_conditions(variant):  # the generated store's labels are its conditioning classes
            labelled[name] = LabelledData(label.conditions_fingerprint(generate_fp), gen_stage.dir / "store", None)
            fnr_fp, fnr_path = None, None
        else:
            fnr_fp, fnr_path = classifier_fp, classifier_path
            label_fp = label.fingerprint(variant, generate_fp, classifier_fp)
            label_stage = Stage(out, "label", label_fp)
            label_result = label_stage.run(
                lambda d: label.run(classifier_path, gen_stage.dir / "store", d / "store", settings=variant.label,
                                    device=device, progress=progress, ctx=ctx, real=splits),
                {"generate": generate_fp, "classifier": classifier_fp}, ctx=ctx, all_ranks=True)
            labelled[name] = LabelledData(label_fp, label_stage.dir / "store", label_result)
        labelled_fp, store = labelled[name].fingerprint, labelled[name].store
        # the diagnostics' scale comes from the validation images; a kept split decoded on demand
        # (ImageNet-size folders) is too large to hold for the pixel distances
        if len(splits.val) >= 2 and not splits.train.decoded_on_demand:
            diagnostics[name] = Stage(out, "diagnose", diagnose.fingerprint(labelled_fp, data_fp, fnr_fp)).run(
                lambda d: diagnose.run(store, splits, fnr_path, device=device),
                {"labelled": labelled_fp, "data": data_fp}, ctx=ctx)
    return labelled, diagnostics


def _train_and_evaluate(name: str, variant: RunConfig, splits: Splits, out: Path, data_fp: str, label_fp: str | None,
                  generated: Path | None, device, ctx: DistContext, progress: bool) -> ModelResult:
    """The adversarial training stage(s) of one model (``train.runs``: the best on validation is
    kept, the paper's protocol) and the evaluation of the kept one."""
    runs = []
    for k, run_cfg in enumerate(train.run_variants(variant)):
        stage_name = f"train-{name}" + (f"-run{k}" if k else "")
        fp = train.fingerprint(run_cfg, data_fp, label_fp)
        stage = Stage(out, stage_name, fp, TrainingResult)
        trained = stage.run(lambda d: train.run(run_cfg, splits, generated, d, device=device, data_fp=data_fp,
                                                      generated_fp=label_fp, name=name, progress=progress, ctx=ctx),
                            {"data": data_fp, "label": label_fp if train.needs_generated(run_cfg) else None},
                            ctx=ctx, all_ranks=True)
        runs.append((run_cfg, fp, stage, trained))
    score = [(t.selection or {}).get("score", float("-inf")) for _, _, _, t in runs]
    best = max(range(len(runs)), key=lambda k: (score[k], -k))  # ties: the earlier run
    run_cfg, train_fp, stage, trained = runs[best]
    if ctx.is_main and len(runs) > 1:
        log(f"{name}: run {best} of {len(runs)} kept (validation robust accuracy "
            + ", ".join(f"{v:.4f}" for v in score) + ")")
    eval_stage = Stage(out, f"eval-{name}", evaluate.fingerprint(run_cfg, train_fp), EvalResult)
    metrics = eval_stage.run(
        lambda d: evaluate.run(run_cfg, stage.dir / "best.safetensors", eval_points(run_cfg, splits), device=device,
                               progress=progress, out=d / "eval.json", ctx=ctx),
        {"train": train_fp}, ctx=ctx, all_ranks=True)
    if ctx.is_main:
        log(f"{name}: clean {metrics.clean_accuracy:.4f}, robust {metrics.robust_accuracy:.4f} "
            f"({metrics.attack}, n={metrics.n})")
        for warning in metrics.sanity["warnings"]:
            log(f"{name}: warning: {warning}")
    generator = variant.generator.name if train.needs_generated(variant) else None
    result = ModelResult.from_stages(trained, metrics, generator=generator)
    if len(runs) > 1:
        result = replace_dataclass(result, runs=[{"seed": robust_seed(c), "val_score": v, "kept": k == best}
                                                 for k, ((c, _, _, _), v) in enumerate(zip(runs, score))])
    return result


def describe_plan(cfg: RunConfig) -> str:
    p = plan(cfg)
    lines = [f"dataset {p['dataset']} on device {p['device']}"]
    for s in p["stages"]:
        rest = ", ".join(f"{k}={v}" for k, v in s.items() if k != "stage")
        lines.append(f"  {s['stage']}: {rest}")
    return "\n".join(lines)

