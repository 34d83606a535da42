"""Resumable pseudo-labelling of a store, shard by shard (paper Sec. 3.3; App. D; Wang et al. 2023).

``label_store`` scores every shard's images with the classifier f_NR (batched, on the model's
device) and writes that shard's ``labels`` and ``confidences`` atomically; the manifest records
the labeller per shard, so a killed run resumes at the first shard not yet labelled by this
labeller, and the result is byte-identical to an uninterrupted run (same batch size, device
and library versions). Two modes:

* ``"argmax"``: label = the classifier's most likely class, confidence = its probability;
* ``"condition"`` (class-conditional generators, Wang et al.): label = the conditioning class,
  confidence = the classifier's probability of that class.

``select_store`` then keeps rows by class (``robustgen.label.select``) by writing the store's
selection; with no rule it clears the selection. Images are never copied.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robustgen import preempt
from robustgen.data.store import Store, StoreWriter, _MappedShard, shard_file
from robustgen.errors import RobustgenError
from robustgen.label.pseudo import assign_labels, predict_probabilities
from robustgen.label.select import keep_counts, select_per_class

__all__ = ["LABEL_MODES", "label_store", "select_store"]

LABEL_MODES = ("argmax", "condition")


def label_store(store_dir, model: nn.Module, *, labeller: dict, mode: str = "argmax", batch_size: int = 1024,
                device: str | torch.device = "cpu", progress: bool = True,
                on_shard: Callable[[int], None] | None = None) -> dict:
    """Label every shard of ``store_dir`` not yet labelled by ``labeller`` (a JSON-able dict with
    an ``id`` that identifies the classifier, e.g. its file's sha256). Returns a summary."""
    if mode not in LABEL_MODES:
        raise RobustgenError(f"label mode must be one of {list(LABEL_MODES)}, got {mode!r}")
    if batch_size < 1:
        raise RobustgenError(f"batch size must be >= 1, got {batch_size}")
    store_dir = Path(store_dir)
    labeller_id = f"{labeller['id']}:{mode}"
    with StoreWriter.open(store_dir) as writer:
        m = writer.manifest
        target = m.get("target_num_images")
        if target is not None and m["num_images"] < int(target):
            raise RobustgenError(f"{store_dir}: the store is incomplete ({m['num_images']} of {target} images); "
                                 f"finish writing it first")
        if mode == "condition" and not all("conditions" in e["files"] for e in writer.shards):
            raise RobustgenError(f"{store_dir}: the store has no conditioning classes (not from a "
                                 f"class-conditional generator); label with the classifier's argmax instead")
        writer.update(labeller={**labeller, "mode": mode, "batch_size": int(batch_size), "id": labeller_id})
        t0 = time.perf_counter()
        done = skipped = 0
        agree = 0
        with tqdm(total=m["num_images"], unit="img", unit_scale=True, desc="label", disable=not progress) as bar, \
                preempt.resumable():
            for e in writer.shards:
                k, n = int(e["index"]), int(e["count"])
                if e.get("labeller") == labeller_id and writer.shard_ok(k, fields=("labels", "confidences")):
                    skipped += n
                    bar.update(n)
                    continue
                shard = _MappedShard(store_dir / shard_file("images", k), n, writer.image_shape)
                probs = predict_probabilities(model, shard.array, batch_size=batch_size, device=device)
                del shard  # unmapped: resident memory stays one shard's probabilities
                if probs.shape[1] != writer.num_classes:
                    raise RobustgenError(f"the classifier has {probs.shape[1]} classes but {store_dir} has "
                                         f"{writer.num_classes}")
                extra, conditions = {}, None
                if "conditions" in e["files"]:
                    conditions = np.load(store_dir / e["files"]["conditions"]["name"], allow_pickle=False)
                    predicted = probs.argmax(axis=1)
                    extra["agreement"] = float((predicted == conditions).mean())
                    agree += int((predicted == conditions).sum())
                labels, confidence = assign_labels(probs, mode=mode, conditions=conditions, source=str(store_dir))
                writer.write_labels(k, labels=labels, confidences=confidence, labeller=labeller_id, extra=extra)
                done += n
                bar.update(n)
                if on_shard is not None:
                    on_shard(k)
                if k + 1 < len(writer.shards):
                    preempt.stop_if_requested(f"while labelling {store_dir}, after shard {k}")
        wall = time.perf_counter() - t0
        summary = {"store": str(store_dir), "mode": mode, "labelled": done, "skipped": skipped,
                   "images_per_s": round(done / wall, 1) if done and wall > 0 else None,
                   "counts_per_class": writer.manifest["counts_per_class"]}
        if agree or any("agreement" in e for e in writer.shards):
            summary["agreement_with_condition"] = round(
                sum(e.get("agreement", 0.0) * int(e["count"]) for e in writer.shards) / writer.manifest["num_images"], 4)
        return summary


def select_store(store_dir, *, top_k: int | None = None, top_fraction: float | None = None,
                 balanced: bool = False, per_class: int | None = None) -> dict:
    """Write the store's selection by class and confidence (or clear it when no rule is given).
    The result has the counts per class before (``counts_before``) and after the selection."""
    store = Store(store_dir, use_selection=False)
    rule = {"top_k": top_k, "top_fraction": top_fraction, "balanced": bool(balanced), "per_class": per_class}
    with StoreWriter.open(store_dir) as writer:
        if top_k is None and top_fraction is None and not balanced and per_class is None:
            writer._clear_selection()
            writer.save()
            return {"selected": store.total, "of": store.total, "rule": None,
                    "counts_per_class": writer.manifest["counts_per_class"]}
        if store.confidences_all is None:
            raise RobustgenError(f"{store_dir}: selection needs confidences; label the store first")
        counts = np.bincount(store.labels_all, minlength=store.num_classes)
        try:
            keep = keep_counts(counts, top_k=top_k, top_fraction=top_fraction, balanced=balanced,
                               per_class=per_class)
        except RobustgenError as e:
            raise RobustgenError(f"{store_dir}: {e}") from None
        idx = select_per_class(store.labels_all, store.confidences_all, keep)
        kept = np.bincount(store.labels_all[idx], minlength=store.num_classes).tolist()
        writer.write_selection(idx, {"rule": rule, "counts_per_class": kept,
                                     "mean_confidence": float(store.confidences_all[idx].mean()) if idx.size else 0.0})
        return {"selected": int(idx.size), "of": store.total, "rule": rule, "counts_per_class": kept,
                "counts_before": counts.tolist()}
