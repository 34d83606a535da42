"""Paired differences of two models' accuracies and their standard errors.

Two models evaluated on the same test points (or trained with the same seeds) are compared by
the per-pair differences, not by two independent binomial errors: the pairs share most of their
noise, so the paired standard error is the honest (and usually much smaller) one.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_and_se", "paired_point_difference", "paired_seed_difference"]


def paired_point_difference(points_a: str, points_b: str) -> tuple[float, float]:
    """Robust accuracy of A minus B on the same test points and the standard error of that
    difference over the points (McNemar-style: std of the per-point differences in {-1, 0, 1},
    ddof 1, over sqrt(n)). ``points_*``: one character per point, '1' where the model is robust."""
    if len(points_a) != len(points_b) or not points_a:
        raise ValueError(f"per-point results must cover the same points, got {len(points_a)} and {len(points_b)}")
    d = np.frombuffer(points_a.encode(), np.uint8).astype(np.int64) - np.frombuffer(points_b.encode(), np.uint8)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(d.mean()), se


def paired_seed_difference(values_a, values_b) -> tuple[float, float, int]:
    """Mean over seeds of A - B (values paired by seed) and its standard error (std ddof 1 over
    sqrt(k); nan for a single seed), and k."""
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"seed-paired values must have the same non-zero length, got {a.size} and {b.size}")
    return (*mean_and_se(a - b), int(a.size))


def mean_and_se(values) -> tuple[float, float]:
    """Mean and standard error (std ddof 1 over sqrt(k); nan for one value) of k values, e.g. one
    accuracy per seed."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("mean_and_se needs at least one value")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
