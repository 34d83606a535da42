"""Stage 5: clean and robust accuracy of a checkpoint on the test split (paper Sec. 4: AutoAttack,
AA+MT), with a sanity report.

``eval`` and ``threat`` of the config say what is measured; ``robustgen eval`` and the pipeline
both call ``run``. A long evaluation keeps its progress next to its output and resumes.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from robustgen.checkpoint import load_external_model, load_model, model_info
from robustgen.config import RunConfig
from robustgen.config import require
from robustgen.data import ImageDataset
from robustgen.data.datasets import stratified_rows
from robustgen.evaluate import evaluate_robustness
from robustgen.results import EvalResult
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import array_fingerprint, file_sha256
from robustgen.runtime.io import write_json
from robustgen.stages.common import source_identity, stage_fingerprint

__all__ = ["fingerprint", "load_for_eval", "run", "training_log_check"]


def check_names(cfg: RunConfig, source: str) -> None:
    """The evaluation's attack is registered (before any work starts)."""
    from robustgen.evaluate import list_attacks

    require(cfg.eval.attack in list_attacks(), source,
            f"eval.attack: unknown attack {cfg.eval.attack!r} (known: {', '.join(list_attacks())})")

def fingerprint(cfg: RunConfig, train_fp: str) -> str:
    """The trained model, ``eval.*``, the threat and, for ``eval.split: generated:PATH``, that file's identity."""
    split = cfg.eval.split
    points = [] if split == "test" else [source_identity(split.removeprefix("generated:"))]
    return stage_fingerprint("eval", "eval", train_fp, asdict(cfg.eval), asdict(cfg.threat), *points)


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


def load_for_eval(cfg: RunConfig, checkpoint, test: ImageDataset, *, device, arch: str | None = None,
                  model_dir: Path | None = None) -> tuple[torch.nn.Module, dict, Path]:
    """(model in eval mode, its stored metadata, the weights file) of a robustgen checkpoint, a
    plain state dict of ``arch``, or "robustbench:<Name>" (RobustBench's ``model_dir``)."""
    if str(checkpoint).startswith("robustbench:"):
        from robustgen.zoo import load_robustbench, robustbench_file

        model = load_robustbench(str(checkpoint), dataset=cfg.data.dataset, norm=cfg.threat.norm,
                                 model_dir=model_dir, device=device)
        return model, {}, robustbench_file(str(checkpoint), dataset=cfg.data.dataset, norm=cfg.threat.norm,
                                           model_dir=model_dir)
    if arch is None:
        return load_model(checkpoint, device=device), model_info(checkpoint), Path(checkpoint)
    model = load_external_model(checkpoint, arch=arch, num_classes=test.num_classes,
                                in_channels=test.image_shape[2], device=device)
    return model, {}, Path(checkpoint)


def run(cfg: RunConfig, checkpoint: Path | str, test: ImageDataset, *, device: torch.device, progress: bool = True,
        arch: str | None = None, out: Path | None = None, ctx: DistContext = DistContext(),
        model_dir: Path | None = None) -> EvalResult:
    """Clean and robust accuracy of ``checkpoint`` on ``eval.n`` test images (``eval.selection``) under
    ``eval.attack`` at ``threat.eps``. ``arch`` loads a plain state dict of a registered
    architecture instead of a robustgen checkpoint. ``out``: write the result there; progress
    is kept in ``OUT.partial.pt`` meanwhile, so a killed evaluation resumes. Under torchrun
    (``ctx``) the ranks share the batches; rank 0 writes ``out``."""
    e, threat = cfg.eval, cfg.threat
    model, info, weights = load_for_eval(cfg, checkpoint, test, device=device, arch=arch, model_dir=model_dir)
    with torch.no_grad():
        classes = int(model(torch.zeros(1, test.image_shape[2], *test.image_shape[:2], device=device)).shape[1])
    if test.num_classes > classes:
        raise RobustgenError(f"{checkpoint}: model has {classes} classes but the test data has {test.num_classes}")
    count = len(test) if e.n is None else min(e.n, len(test))
    if e.selection == "stratified" and count < len(test):
        chosen = test.subset(stratified_rows(test.labels, count, e.seed)).in_memory()
        images, labels, count = chosen.images, chosen.labels, len(chosen)
    else:
        images, labels = test.images[:count], test.labels[:count]
    key = f"{file_sha256(weights)}|{test.name}|{count}|{array_fingerprint(images, labels)}"
    partial = None if out is None else out.with_name(out.name + ".partial.pt")
    result = evaluate_robustness(model, images, labels, attack=e.attack, norm=threat.norm, eps=threat.eps,
                                 batch_size=e.batch_size, device=device, seed=e.seed, progress=progress,
                                 desc=f"eval[{e.attack}]", state_path=partial, state_key=key, ctx=ctx)
    # the cascade has checked every point against the eps-ball, [0, 1] and finite logits (an error otherwise)
    sanity = {"warnings": result.pop("warnings")}
    covered, classes = np.unique(labels).size, np.unique(test.labels).size
    if covered < classes:  # e.g. a test file sorted by class (released .npz files often are)
        sanity["warnings"].append(f"eval.n = {count} takes the first {count} test images, which hold {covered} of "
                                  f"the test split's {classes} classes: set eval.selection=stratified, shuffle the "
                                  f"test file or evaluate more images")
    check = training_log_check(info, result["clean_accuracy"], count)
    if check is not None:
        sanity["clean_vs_training_log"] = check
        if not check["agrees"]:
            sanity["warnings"].append(
                f"test clean accuracy {check['test_clean_accuracy']:.4f} is far from the training log's validation "
                f"clean accuracy {check['val_clean_accuracy']:.4f}: check the data and preprocessing")
    result = EvalResult(checkpoint=str(checkpoint), dataset=test.name, sanity=sanity, **result)
    if out is not None and ctx.is_main:
        write_json(out, result.to_dict())
        partial.unlink(missing_ok=True)
    return result
