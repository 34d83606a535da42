"""Resumable pseudo-labelling of a store, shard by shard (paper Sec. 3.3; App. D; Wang et al. 2023).

``label_store`` scores every shard's images with the classifier f_NR (batched, on the model's
device) and writes that shard's ``labels`` and ``confidences`` atomically; the manifest records
the labeller per shard, so a killed run resumes at the first shard not yet labelled by this
labeller, and the result is byte-identical to an uninterrupted run (same batch size, device
and library versions). Two modes:

* ``"argmax"``: label = the classifier's most likely class, confidence = its probability;
* ``"condition"`` (class-conditional generators, Wang et al.): label = the conditioning class,
  confidence = the classifier's probability of that class.

Under torchrun (``ctx``) every shard's batches of ``batch_size`` rows are dealt round-robin to
the ranks (rows, not shards: a store of few shards still keeps every GPU busy); rank 0 gathers
the rows' labels and confidences and writes the shard. A row's result depends only on its batch,
which is the same whatever the number of ranks, so the store is byte-identical to one process's.
Speed options (``InferenceOptions``: bf16 autocast on CUDA, channels_last, torch.compile) are the
caller's (``models.inference.prepare_for_inference``); bf16 is part of the labeller's id, since it
changes confidences.

``select_store`` then keeps rows by class (``robustgen.label.select``) by writing the store's
selection; with no rule it clears the selection. Images are never copied.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from robustgen.data.store import Store, read_manifest, shard_file
from robustgen.data.store.format import MappedShard
from robustgen.data.store.writer import StoreWriter
from robustgen.label.pseudo import assign_labels, predict_probabilities
from robustgen.label.select import keep_counts, select_per_class
from robustgen.models.inference import InferenceOptions, effective_bf16
from robustgen.runtime.distributed import DistContext, on_main
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.jobs import JobPlan, run_dealt_job

__all__ = ["LABEL_MODES", "label_store", "select_store"]

LABEL_MODES = ("argmax", "condition")


def label_store(store_dir, model: nn.Module, *, labeller: dict, mode: str = "argmax", batch_size: int = 1024,
                device: str | torch.device = "cpu", progress: bool = True,
                on_shard: Callable[[int], None] | None = None, options: InferenceOptions = InferenceOptions(),
                ctx: DistContext = DistContext()) -> dict:
    """Label every shard of ``store_dir`` not yet labelled by ``labeller`` (a JSON-able dict with
    an ``id`` that identifies the classifier, e.g. its file's sha256). Returns a summary (the
    same on every rank)."""
    if mode not in LABEL_MODES:
        raise RobustgenError(f"label mode must be one of {list(LABEL_MODES)}, got {mode!r}")
    if batch_size < 1:
        raise RobustgenError(f"batch size must be >= 1, got {batch_size}")
    store_dir = Path(store_dir)
    bf16 = effective_bf16(options, device)
    labeller_id = f"{labeller['id']}:{mode}" + (":bf16" if bf16 else "")
    writer = None

    def prepare() -> JobPlan:
        """Rank 0: hold the store's writer, record the labeller, list the shards to label."""
        nonlocal writer
        writer = stack.enter_context(StoreWriter.open(store_dir))
        _check_labellable(writer, store_dir, mode)
        writer.update(labeller={**labeller, "mode": mode, "batch_size": int(batch_size), "id": labeller_id,
                                "precision": "bf16" if bf16 else "fp32"})
        todo = [int(e["index"]) for e in writer.shards
                if not (e.get("labeller") == labeller_id and writer.shard_ok(int(e["index"]),
                                                                            fields=("labels", "confidences")))]
        left = sum(int(writer.shards[k]["count"]) for k in todo)
        return JobPlan(rounds=todo, total=int(writer.manifest["num_images"]),
                       done=int(writer.manifest["num_images"]) - left)

    def share(k: int):
        """This rank's batches of shard k's rows (rows, not shards, are dealt: few shards keep every GPU busy)."""
        n = int(shards[k]["count"])
        mine = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)][ctx.rank::ctx.world_size]
        return (k, mine) if mine else None

    def work(part) -> tuple:
        k, mine = part
        shard = MappedShard(store_dir / shard_file("images", k), int(shards[k]["count"]), image_shape)
        probs = predict_probabilities(model, shard.array, batch_size=batch_size, device=device, batches=mine,
                                      options=options)
        del shard  # unmapped: resident memory stays one shard's probabilities
        if probs.shape[1] != num_classes:
            raise RobustgenError(f"the classifier has {probs.shape[1]} classes but {store_dir} has {num_classes}")
        idx = np.concatenate([np.arange(lo, hi) for lo, hi in mine])
        conditions = _conditions(store_dir, shards[k])
        conditions = None if conditions is None else conditions[idx]
        labels, confidence = assign_labels(probs, mode=mode, source=str(store_dir), conditions=conditions)
        # how many of these rows f_NR's argmax gives the conditioning class (the shard's agreement)
        agree = None if conditions is None else int((probs.argmax(axis=1) == conditions).sum())
        return idx, labels, confidence, agree

    def record(k: int, rows: list) -> int:
        if ctx.is_main:
            _write_shard_labels(writer, k, [r for r in rows if r is not None], labeller_id)
        if on_shard is not None:
            on_shard(k)
        return int(shards[k]["count"])

    with ExitStack() as stack:  # rank 0's writer, closed (or its lock released on an error) at the end
        plan = on_main(ctx, prepare)
        manifest = writer.manifest if ctx.is_main else read_manifest(store_dir)
        shards = {int(e["index"]): e for e in manifest["shards"]}
        image_shape, num_classes = tuple(manifest["image_shape"]), int(manifest["num_classes"])
        t0 = time.perf_counter()
        run_dealt_job(ctx, plan, share=share, work=work, record=record, desc="label", progress=progress,
                      where=lambda r, k: f"while labelling {store_dir}, after shard {k}")
        wall = time.perf_counter() - t0
        return on_main(ctx, lambda: _label_summary(writer, store_dir, mode, plan, wall, bf16, ctx))


def _check_labellable(writer: StoreWriter, store_dir: Path, mode: str) -> None:
    m = writer.manifest
    target = m.get("target_num_images")
    if target is not None and m["num_images"] < int(target):
        raise RobustgenError(f"{store_dir}: the store is incomplete ({m['num_images']} of {target} images); "
                             f"finish writing it first")
    if mode == "condition" and not all("conditions" in e["files"] for e in writer.shards):
        raise RobustgenError(f"{store_dir}: the store has no conditioning classes (not from a "
                             f"class-conditional generator); label with the classifier's argmax instead")


def _conditions(store_dir: Path, entry: dict) -> np.ndarray | None:
    """A shard's conditioning classes, when the generator was class-conditional."""
    if "conditions" not in entry["files"]:
        return None
    return np.load(store_dir / entry["files"]["conditions"]["name"], allow_pickle=False)


def _write_shard_labels(writer: StoreWriter, k: int, parts: list, labeller_id: str) -> None:
    """Rank 0: the ranks' (rows, labels, confidences, agreeing rows) of shard k, put in row order and written."""
    n = int(writer.shards[k]["count"])
    idx = np.concatenate([r[0] for r in parts])
    labels, confidence = np.empty(n, np.int64), np.empty(n, np.float32)
    for field, out in ((1, labels), (2, confidence)):
        out[idx] = np.concatenate([r[field] for r in parts])
    extra = {} if parts[0][3] is None else {"agreement": sum(r[3] for r in parts) / n}
    writer.write_labels(k, labels=labels, confidences=confidence, labeller=labeller_id, extra=extra)


def _label_summary(writer: StoreWriter, store_dir: Path, mode: str, plan: JobPlan, wall: float, bf16: bool,
                   ctx: DistContext) -> dict:
    shards, done = writer.shards, plan.total - plan.done
    out = {"store": str(store_dir), "mode": mode, "labelled": done, "skipped": plan.done,
           "images_per_s": round(done / wall, 1) if done and wall > 0 else None,
           "precision": "bf16" if bf16 else "fp32", "processes": ctx.world_size,
           "counts_per_class": writer.manifest["counts_per_class"]}
    if any("agreement" in e for e in shards):
        out["agreement_with_condition"] = round(
            sum(e.get("agreement", 0.0) * int(e["count"]) for e in shards) / writer.manifest["num_images"], 4)
    return out


def select_store(store_dir, *, top_k: int | None = None, top_fraction: float | None = None,
                 balanced: bool = False, per_class: int | None = None, eligible: np.ndarray | None = None,
                 filters: dict | None = None, order: str = "confidence") -> dict:
    """Write the store's selection by class and confidence (or clear it when no rule is given).
    ``eligible``: a bool mask over the store's rows (the filters', ``filters`` naming them with the
    rows each dropped); the rules then choose among those rows. The result has the counts per
    class before the filters and rules (``counts_before``) and after them. ``order``: confidence
    keeps the most confident of each class, first the first generated (lowest rows)."""
    store = Store(store_dir, use_selection=False)
    rule = {"top_k": top_k, "top_fraction": top_fraction, "balanced": bool(balanced), "per_class": per_class,
            **({"filters": filters} if filters else {}), **({"order": order} if order != "confidence" else {})}
    with StoreWriter.open(store_dir) as writer:
        if top_k is None and top_fraction is None and not balanced and per_class is None and eligible is None:
            writer.clear_selection()
            writer.save()
            return {"selected": store.total, "of": store.total, "rule": None,
                    "counts_per_class": writer.manifest["counts_per_class"]}
        if store.confidences_all is None:
            raise RobustgenError(f"{store_dir}: selection needs confidences; label the store first")
        counts = np.bincount(store.labels_all, minlength=store.num_classes)
        rows = np.arange(store.total) if eligible is None else np.flatnonzero(eligible)
        labels, confidences = store.labels_all[rows], store.confidences_all[rows]
        try:
            keep = keep_counts(np.bincount(labels, minlength=store.num_classes), top_k=top_k,
                               top_fraction=top_fraction, balanced=balanced, per_class=per_class)
        except RobustgenError as e:
            raise RobustgenError(f"{store_dir}: {e}") from None
        scores = confidences if order == "confidence" else np.zeros_like(confidences)  # ties: the lower row
        idx = rows[select_per_class(labels, scores, keep)]
        kept = np.bincount(store.labels_all[idx], minlength=store.num_classes).tolist()
        writer.write_selection(idx, {"rule": rule, "counts_per_class": kept,
                                     "mean_confidence": float(store.confidences_all[idx].mean()) if idx.size else 0.0})
        return {"selected": int(idx.size), "of": store.total, "rule": rule, "counts_per_class": kept,
                "counts_before": counts.tolist()}
