"""FID, Inception Score and KID as pure functions of features / logits (paper Table 1's "Inception
metrics"; Heusel et al. 2017, Salimans et al. 2016, Binkowski et al. 2018).

Conventions follow torch-fidelity (the reference the paper's numbers are comparable with):

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})   (np.cov, ddof = 1, float64)
    IS  = exp(E_x KL(p(y|x) || p(y))) over ``splits`` shuffled chunks: mean and std
    KID = unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3 over ``subsets`` random
          subsets of ``subset_size`` rows of each set: mean and std

Features come from ``robustgen.metrics.features`` (Inception pool3 for the standard numbers; a
classifier's penultimate layer otherwise, then the numbers are not comparable with published ones).
"""

from __future__ import annotations

import numpy as np

from robustgen.runtime.errors import RobustgenError

__all__ = ["feature_statistics", "frechet_distance", "fid_from_features", "inception_score",
           "kernel_inception_distance"]


def _as_2d(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise RobustgenError(f"{what}: expected a [N >= 2, D] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise RobustgenError(f"{what}: contains NaN or inf")
    return x


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (ddof = 1) of features [N, D], float64."""
    f = _as_2d(features, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}).

    Tr((S1 S2)^{1/2}) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^{1/2} S2 S1^{1/2} (same spectrum as S1 S2), which is stable where sqrtm of the
    non-symmetric product is not (singular covariances when N < D)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise RobustgenError(f"FID statistics do not match: mu {mu1.shape} / {mu2.shape}, "
                             f"sigma {s1.shape} / {s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(features_1, features_2) -> float:
    """FID between two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))


def inception_score(logits, *, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) over ``splits`` chunks of exp(mean_x KL(p(y|x) || mean_x p(y|x))), from logits
    [N, K] (softmax taken here; torch-fidelity's order and seed for the shuffle)."""
    z = _as_2d(logits, "logits")
    n = z.shape[0]
    if not 1 <= splits <= n:
        raise RobustgenError(f"inception score: splits must be in [1, {n}], got {splits}")
    if shuffle:
        z = z[np.random.RandomState(seed).permutation(n)]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # [N, K]
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        kl = (p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, *, degree: int, gamma: float | None, coef0: float) -> float:
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k = lambda a, b: (a @ b.T * g + coef0) ** degree  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = x.shape[0]
    sum_xx = kxx.sum() - np.trace(kxx)
    sum_yy = kyy.sum() - np.trace(kyy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(features_1, features_2, *, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                              seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over ``subsets`` random subsets of
    ``subset_size`` rows drawn without replacement from each set (torch-fidelity's defaults)."""
    f1, f2 = _as_2d(features_1, "features_1"), _as_2d(features_2, "features_2")
    if f1.shape[1] != f2.shape[1]:
        raise RobustgenError(f"KID: feature sizes differ ({f1.shape[1]} vs {f2.shape[1]})")
    if not 2 <= subset_size <= min(len(f1), len(f2)):
        raise RobustgenError(f"KID: subset_size {subset_size} must be in [2, {min(len(f1), len(f2))}] "
                             f"(the smaller set's size)")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(a, b, degree=degree, gamma=gamma, coef0=coef0)
    return float(mmds.mean()), float(mmds.std())
