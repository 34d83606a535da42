"""The diagnose stage: near copies, label agreement and complementarity of one generator's
labelled data against the kept real images and the validation split (``metrics.diagnostics``),
for report.md and the regime map. Seconds on the digits; cached like the other stages."""

from __future__ import annotations

from pathlib import Path

import torch

from robustgen.metrics.diagnostics import diagnose
from robustgen.metrics.measure import open_image_set
from robustgen.stages.common import Splits, stage_fingerprint

__all__ = ["SAMPLES", "fingerprint", "run"]

SAMPLES = 5000  # class-balanced samples diagnosed per generator


def fingerprint(labelled_fp: str, data_fp: str, classifier_fp: str | None) -> str:
    return stage_fingerprint("diagnose", "diagnose", labelled_fp, data_fp, classifier_fp, SAMPLES)


def run(store: Path, splits: Splits, classifier_path: Path | None, *, device: torch.device) -> dict:
    """Diagnostics of ``store`` (f_NR's penultimate features for complementarity / KID / FID when
    ``classifier_path`` is given; pixel and label diagnostics alone otherwise)."""
    from robustgen.metrics.features import get_extractor

    extractor = None if classifier_path is None else get_extractor(
        f"classifier:{classifier_path}", device=device, num_classes=splits.train.num_classes,
        in_channels=splits.train.image_shape[2])
    return diagnose(open_image_set(store, "generated"), splits.train, splits.val, extractor=extractor, n=SAMPLES,
                    device=device)
