"""Per-class filtering of pseudo-labelled samples (paper App. D; Wang et al. 2023), pure functions.

* top-k per class: keep the ``k`` most confident samples of each class (App. D: top 100K of 5M);
* top fraction per class: keep round(F * n_c) of each class (Wang et al.: label = conditioning
  class, confidence = the classifier's probability of it, F = 20%);
* class-balanced: the same count for every class, the smallest class's (after the rules above);
* exactly N per class (App. D: "100K per class for 1M"): the N most confident of every class;
  the samples must hold at least N of each class (generate more than K x N: oversample).

Within a class, higher confidence wins and ties go to the lower index. Runs class by class,
so 100M labels need about 1 GB, not a global sort.
"""

from __future__ import annotations

import math

import numpy as np

from robustgen.runtime.errors import RobustgenError

__all__ = ["keep_counts", "select_per_class"]


def keep_counts(counts_per_class, *, top_k: int | None = None, top_fraction: float | None = None,
                balanced: bool = False, per_class: int | None = None) -> np.ndarray:
    """How many samples of each class to keep, given how many each class has."""
    counts = np.asarray(counts_per_class, dtype=np.int64)
    if per_class is not None:
        if top_k is not None or top_fraction is not None or balanced:
            raise RobustgenError("an exact count per class excludes top-k, top fraction and balanced")
        if isinstance(per_class, bool) or int(per_class) != per_class or per_class < 1:
            raise RobustgenError(f"the count per class must be a positive integer, got {per_class!r}")
        short = np.flatnonzero(counts < per_class)
        if short.size:
            c = int(short[np.argmin(counts[short])])
            factor = per_class / max(int(counts[c]), 1)
            raise RobustgenError(
                f"class-balanced labels need {per_class:,} images of every class but class {c} has only "
                f"{int(counts[c]):,} of {int(counts.sum()):,} generated ({short.size} classes short): generate at "
                f"least {factor:.2f}x as many samples (generator.num_samples)")
        return np.full_like(counts, int(per_class))
    keep = counts.copy()
    if top_fraction is not None:
        f = float(top_fraction)
        if not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise RobustgenError(f"top fraction per class must be in (0, 1], got {top_fraction!r}")
        keep = np.asarray([int(math.floor(f * int(n) + 0.5)) for n in counts], np.int64)
    if top_k is not None:
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
            raise RobustgenError(f"top-k per class must be a positive integer, got {top_k!r}")
        keep = np.minimum(keep, int(top_k))
    if balanced:
        if keep.min() == 0:
            empty = int(np.flatnonzero(keep == 0)[0])
            raise RobustgenError(f"class-balanced selection would keep nothing: class {empty} has no samples")
        keep = np.full_like(keep, keep.min())
    return keep


def select_per_class(labels: np.ndarray, confidences: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Sorted int64 indices of the ``keep[c]`` most confident samples labelled ``c``, for every c."""
    labels = np.asarray(labels)
    confidences = np.asarray(confidences)
    keep = np.asarray(keep, dtype=np.int64)
    if labels.ndim != 1 or confidences.shape != labels.shape:
        raise RobustgenError(f"labels {labels.shape} and confidences {confidences.shape} must be [N] each")
    if labels.size and (labels.min() < 0 or labels.max() >= keep.size):
        raise RobustgenError(f"labels must lie in [0, {keep.size}), got [{labels.min()}, {labels.max()}]")
    parts = []
    for c in range(keep.size):
        idx = np.flatnonzero(labels == c)
        k = int(min(keep[c], idx.size))
        if k == 0:
            continue
        if k < idx.size:
            # confidence descending, then index ascending (lexsort: last key is primary)
            idx = idx[np.lexsort((idx, -confidences[idx].astype(np.float64)))[:k]]
        parts.append(idx)
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
