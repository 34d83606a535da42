"""Stage 3: pseudo-label generated images with f_NR and keep the most confident per class
(paper Sec. 3.3; App. D for class balance; Wang et al. 2023 for ``mode="condition"``).

The labelled store shares the generated store's images (hard links, ``data.store.link``) and gets
f_NR's labels and confidences shard by shard (resumable, ``label.label_store.label_store``) and the
per-class selection of ``LabelConfig``; the generated store itself is never modified, so other
classifiers can label the same samples. Labelling a store into itself works in place. With
``mode="condition"`` and no selection (``labels_are_conditions``) no f_NR is needed: training
reads the generated store, whose labels are the conditioning classes.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from robustgen.checkpoint import load_external_model, load_model, model_info
from robustgen.config import LabelConfig, RunConfig
from robustgen.data.store import Store
from robustgen.data.store.format import read_manifest
from robustgen.data.store.link import link_store
from robustgen.label.label_store import label_store, select_store
from robustgen.metrics.diagnostics import near_copy_rows
from robustgen.models.inference import InferenceOptions, prepare_for_inference
from robustgen.runtime.distributed import DistContext, on_main
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import file_sha256, hash_parts
from robustgen.stages.common import stage_fingerprint

__all__ = ["conditions_fingerprint", "filter_rows", "fingerprint", "inference_options", "labels_are_conditions",
           "load_labeller", "run"]


def fingerprint(cfg: RunConfig, generate_fp: str, classifier_fp: str) -> str:
    return stage_fingerprint("label", "label-store", generate_fp, classifier_fp, asdict(cfg.label))


def labels_are_conditions(cfg: RunConfig) -> bool:
    """Labels are the generator's conditioning classes, unfiltered: no f_NR is needed (paper
    footnote 12: the class-conditional TinyImageNet generator needs no pseudo-labelling)."""
    lab = cfg.label
    return lab.mode == "condition" and not (lab.top_k_per_class or lab.top_fraction_per_class or lab.balanced
                                             or lab.per_class or lab.drop_near_copies)


def conditions_fingerprint(generate_fp: str) -> str:
    """What identifies training data labelled by the conditioning classes (``labels_are_conditions``)."""
    return hash_parts("label-conditions", generate_fp)


def load_labeller(checkpoint: Path, store_dir: Path, *, device: torch.device, arch: str | None = None) -> nn.Module:
    """The classifier at ``checkpoint``, checked against the store's classes and image shape.
    ``arch``: a plain state dict of that registered architecture instead of a robustgen checkpoint."""
    manifest = read_manifest(store_dir)
    h, w, c = manifest["image_shape"]
    num_classes = int(manifest["num_classes"])
    if arch is not None:
        return load_external_model(checkpoint, arch=arch, num_classes=num_classes, in_channels=c, device=device)
    spec = model_info(checkpoint)["spec"]
    if int(spec["num_classes"]) != num_classes:
        raise RobustgenError(f"{checkpoint}: the classifier has {spec['num_classes']} classes but {store_dir} "
                             f"has {num_classes}")
    if int(spec["in_channels"]) != c or (spec.get("image_size") not in (None, h)):
        raise RobustgenError(f"{checkpoint}: the classifier takes {spec.get('image_size')}px images with "
                             f"{spec['in_channels']} channels but {store_dir} holds {h}x{w}x{c}")
    return load_model(checkpoint, device=device)


def inference_options(settings: LabelConfig) -> InferenceOptions:
    """The labeller's device path from ``label.*`` (precision, channels_last, compile)."""
    return InferenceOptions(bf16=settings.precision == "bf16", channels_last=settings.channels_last,
                            compile=settings.compile)


def filter_rows(store_dir: Path, settings: LabelConfig, real=None,
                device: torch.device | str = "cpu") -> tuple[np.ndarray | None, dict]:
    """The rows of a labelled store that ``label.agree_with_condition`` / ``label.drop_near_copies``
    keep (None: no filter) and how many each filter drops. ``real``: the splits whose kept train
    images and validation images define near copies (``metrics.diagnostics``)."""
    if not (settings.agree_with_condition or settings.drop_near_copies):
        return None, {}
    store = Store(store_dir, use_selection=False)
    keep, dropped = np.ones(store.total, bool), {}
    if settings.agree_with_condition:
        if store.conditions_all is None:
            raise RobustgenError(f"{store_dir}: label.agree_with_condition needs conditioning classes "
                                 "(a class-conditional generator)")
        agree = store.labels_all == store.conditions_all
        dropped["disagree_with_condition"] = int((~agree).sum())
        keep &= agree
    if settings.drop_near_copies:
        if real is None or len(real.val) < 2:
            raise RobustgenError(f"{store_dir}: label.drop_near_copies needs the kept real images and a validation "
                                 "split (data.val_size >= 2)")
        copy = near_copy_rows(store, np.asarray(real.train.images), np.asarray(real.val.images), device=device)
        dropped["near_copies"] = int(copy.sum())
        keep &= ~copy
    return keep, dropped


def run(classifier_path: Path, generated_store: Path, store_dir: Path, *, settings: LabelConfig,
        device: torch.device, arch: str | None = None, progress: bool = True,
        ctx: DistContext = DistContext(), real=None) -> dict | None:
    """Label ``generated_store`` into ``store_dir`` (the same folder: in place), filter and select
    per class (``real``: the splits ``label.drop_near_copies`` compares with). Under torchrun
    (``ctx``) the ranks share every shard's rows; rank 0 returns the summary."""
    on_main(ctx, lambda: link_store(generated_store, store_dir))
    options = inference_options(settings)
    model = prepare_for_inference(load_labeller(classifier_path, generated_store, device=device, arch=arch), options)
    labelled = label_store(store_dir, model, labeller={"id": file_sha256(classifier_path), "path": str(classifier_path)},
                           mode=settings.mode, batch_size=settings.batch_size, device=device, progress=progress,
                           options=options, ctx=ctx)
    if not ctx.is_main:
        return None
    eligible, dropped = filter_rows(store_dir, settings, real, device)
    selected = select_store(store_dir, top_k=settings.top_k_per_class, top_fraction=settings.top_fraction_per_class,
                            balanced=settings.balanced, per_class=settings.per_class, order=settings.per_class_order,
                            eligible=eligible, filters=dropped)
    store = Store(store_dir)
    summary = {"mode": settings.mode, "num_generated": int(selected["of"]), "num_labeled": len(store),
               "mean_confidence": float(store.confidences.mean()) if len(store) else 0.0,
               "counts_per_class": selected["counts_per_class"], "path": str(store_dir),
               "counts_before": selected.get("counts_before", selected["counts_per_class"]),
               "images_per_s": labelled["images_per_s"]}
    if "agreement_with_condition" in labelled:
        summary["agreement_with_condition"] = labelled["agreement_with_condition"]
    if dropped:
        summary["dropped"] = dropped
    return summary
