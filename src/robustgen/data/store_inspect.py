"""Looking at a store without changing it: ``describe_store`` (sizes, classes, provenance; reads
no images); ``robustgen.data.store.verify_store`` checks every byte against the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustgen.data.store import Store

__all__ = ["describe_store"]


def describe_store(store_dir) -> dict:
    """Summary of a store as JSON-able values; reads labels and the manifest, no images."""
    s = Store(store_dir, allow_incomplete=True)
    m = s.manifest
    disk = sum(p.stat().st_size for p in Path(store_dir).iterdir() if p.is_file())
    gen = m.get("generator")
    return {
        "store": str(store_dir), "images": len(s), "total_images": s.total,
        "target_images": m.get("target_num_images"), "shards": s.num_shards, "shard_size": m["shard_size"],
        "image_shape": list(s.image_shape), "num_classes": s.num_classes, "class_names": list(s.class_names),
        "counts_per_class": np.bincount(s.labels, minlength=s.num_classes).tolist(),
        "has_conditions": s.conditions is not None, "has_confidences": s.confidences is not None,
        "selection": m.get("selection"), "source": m.get("source"),
        "generator": None if gen is None else {k: gen.get(k) for k in ("name", "seed", "fit_config", "train_data")},
        "labeller": m.get("labeller"), "code_version": m.get("code_version"), "disk_bytes": disk,
    }
