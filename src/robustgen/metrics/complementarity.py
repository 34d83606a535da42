"""Complementarity and coverage of generated data, exactly as paper Alg. 1 (App. D, Table 1).

Given features of N train samples, N test samples and N generated samples:

    1. PCA to 100 components, fitted on the train + test features only; project all three sets.
    2. Complementarity: for each generated x_i, the set (train, test, or self = generated minus
       x_i) holding its nearest neighbour (Euclidean); c_s = share of generated samples whose
       nearest neighbour is in s. An ideal generator gives 1/3 each; a copy of the train set
       100% / 0% / 0%.
    3. Coverage: V_train = {nearest train sample of each x_i}, V_test likewise; v = |V| / N.
       The train set's coverage of the test set (paper footnote 16: 52.27%) is the same count
       with the train samples as queries.

Nearest neighbours are found block by block (``nearest_neighbors``): a [q, r] block of squared
distances at a time, with a running minimum, so memory stays at ``block_size`` entries whatever N.
Pure torch on the inputs' device (CPU or GPU); float64 by default so that results do not depend
on the block size. Ties (duplicates) go to the first set in the order train, test, self.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from robustgen.runtime.errors import RobustgenError

__all__ = ["nearest_neighbors", "pca_fit", "pca_project", "complementarity_coverage", "coverage",
           "ComplementarityResult", "balanced_sample", "format_table"]

SETS = ("train", "test", "self")


@torch.no_grad()
def nearest_neighbors(queries: torch.Tensor, refs: torch.Tensor, *, exclude_self: bool = False,
                      block_size: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row its nearest row of ``refs`` -> (squared distance [Q], index [Q]).

    ``exclude_self``: ``queries`` and ``refs`` are the same set and row i may not match itself.
    Distances are ||q||^2 + ||r||^2 - 2 q.r, clamped at 0, computed on blocks of at most
    ``block_size`` entries (queries x refs); the first index wins a tie.
    """
    if queries.ndim != 2 or refs.ndim != 2 or queries.shape[1] != refs.shape[1]:
        raise RobustgenError(f"nearest neighbours: expected [Q, D] and [R, D], got {tuple(queries.shape)} "
                             f"and {tuple(refs.shape)}")
    if exclude_self and queries.shape[0] != refs.shape[0]:
        raise RobustgenError("nearest neighbours: exclude_self needs the queries to be the references")
    q_n, r_n = queries.shape[0], refs.shape[0]
    if r_n - int(exclude_self) < 1:
        raise RobustgenError("nearest neighbours: no reference points")
    # Square-ish blocks: q_chunk * r_chunk <= block_size.
    r_chunk = max(1, min(r_n, int(block_size ** 0.5), block_size))
    q_chunk = max(1, min(q_n, block_size // r_chunk))
    r_sq = (refs * refs).sum(dim=1)  # [R]
    best_d = torch.full((q_n,), float("inf"), dtype=queries.dtype, device=queries.device)
    best_i = torch.zeros(q_n, dtype=torch.long, device=queries.device)
    for q0 in range(0, q_n, q_chunk):
        q = queries[q0:q0 + q_chunk]  # [q, D]
        q_sq = (q * q).sum(dim=1, keepdim=True)  # [q, 1]
        bd, bi = best_d[q0:q0 + q_chunk], best_i[q0:q0 + q_chunk]
        for r0 in range(0, r_n, r_chunk):
            r = refs[r0:r0 + r_chunk]
            d = (q_sq + r_sq[None, r0:r0 + r_chunk] - 2 * q @ r.T).clamp_min_(0)  # [q, r]
            if exclude_self:
                rows = torch.arange(q.shape[0], device=q.device)
                cols = rows + (q0 - r0)
                ok = (cols >= 0) & (cols < r.shape[0])
                d[rows[ok], cols[ok]] = float("inf")
            md, mi = d.min(dim=1)
            better = md < bd  # strict: an earlier block keeps a tie
            bd.copy_(torch.where(better, md, bd))
            bi.copy_(torch.where(better, mi + r0, bi))
    return best_d, best_i


@torch.no_grad()
def pca_fit(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and the top-k principal directions [D, k] of rows x [N, D] (eigenvectors of the
    covariance, largest first; sign fixed so the largest-magnitude entry is positive)."""
    if k < 1 or k > min(x.shape):
        raise RobustgenError(f"PCA: {k} components requested from {x.shape[0]} samples of dimension {x.shape[1]}")
    mean = x.mean(dim=0)
    xc = x - mean
    denom = max(1, x.shape[0] - 1)
    if x.shape[0] < x.shape[1]:  # fewer samples than dimensions (LPIPS: 124,928): the [N, N] Gram matrix
        w, u = torch.linalg.eigh(xc @ xc.T / denom)  # has the covariance's nonzero eigenvalues, and
        top = torch.argsort(w, descending=True)[:k]  # v = xc^T u / sqrt(N - 1 lambda) its eigenvectors
        v = xc.T @ u[:, top] / (w[top] * denom).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
    else:
        w, v = torch.linalg.eigh(xc.T @ xc / denom)  # [D, D]
        v = v[:, torch.argsort(w, descending=True)[:k]]
    sign = torch.sign(v.gather(0, v.abs().argmax(dim=0, keepdim=True)))
    return mean, v * sign


def pca_project(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    return (x - mean) @ components  # [N, k]


@dataclass
class ComplementarityResult:
    """Shares in [0, 1]: complementarity (train + test + self = 1) and coverage of train / test."""
    train: float
    test: float
    self: float
    coverage_train: float
    coverage_test: float
    n_generated: int
    n_train: int
    n_test: int

    def as_dict(self) -> dict:
        return asdict(self)


def coverage(query_nn_index: torch.Tensor, n_refs: int) -> float:
    """|unique nearest neighbours| / n_refs (Alg. 1 line 13, with n_refs = N)."""
    return float(torch.unique(query_nn_index).numel()) / n_refs


def _as_tensor(x, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise RobustgenError(f"expected features [N, D], got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def project_reference(train_features, test_features, *, pca_components: int | None = 100,
                      device=None, dtype=torch.float64):
    """Fit the PCA on train + test features; -> (projector(features) -> tensor, train_p, test_p)."""
    device = torch.device(device) if device is not None else (
        train_features.device if isinstance(train_features, torch.Tensor) else torch.device("cpu"))
    tr = _as_tensor(train_features, device, dtype)
    te = _as_tensor(test_features, device, dtype)
    if tr.shape[1] != te.shape[1]:
        raise RobustgenError(f"train and test features differ in size ({tr.shape[1]} vs {te.shape[1]})")
    if pca_components is None or pca_components >= tr.shape[1]:
        project = lambda f: _as_tensor(f, device, dtype)  # noqa: E731
    else:
        mean, comps = pca_fit(torch.cat([tr, te]), pca_components)
        project = lambda f: pca_project(_as_tensor(f, device, dtype), mean, comps)  # noqa: E731
    return project, project(tr), project(te)


def complementarity_coverage(train_features, test_features, generated_features, *,
                             pca_components: int | None = 100, block_size: int = 1 << 22,
                             device=None, dtype=torch.float64, _projected=None) -> ComplementarityResult:
    """Paper Alg. 1 on features [N, D] of train / test / generated samples (numpy or torch).

    ``pca_components``: PCA fitted on train + test (None or >= D: no PCA). Runs on ``device``
    (default: the train features' device). Coverage divides by the reference set's size (N in
    Alg. 1, where all three sets have N samples)."""
    if _projected is None:
        project, tr, te = project_reference(train_features, test_features, pca_components=pca_components,
                                            device=device, dtype=dtype)
    else:
        project, tr, te = _projected
    ge = project(generated_features)
    if ge.shape[1] != tr.shape[1]:
        raise RobustgenError("generated features have another size than the reference ones")
    if ge.shape[0] < 2:
        raise RobustgenError("complementarity needs at least 2 generated samples")
    d_tr, i_tr = nearest_neighbors(ge, tr, block_size=block_size)
    d_te, i_te = nearest_neighbors(ge, te, block_size=block_size)
    d_self, _ = nearest_neighbors(ge, ge, exclude_self=True, block_size=block_size)
    closest = torch.stack([d_tr, d_te, d_self], dim=1).argmin(dim=1)  # first minimum: train, test, self
    shares = torch.bincount(closest, minlength=3).double() / ge.shape[0]
    return ComplementarityResult(
        train=float(shares[0]), test=float(shares[1]), self=float(shares[2]),
        coverage_train=coverage(i_tr, tr.shape[0]), coverage_test=coverage(i_te, te.shape[0]),
        n_generated=int(ge.shape[0]), n_train=int(tr.shape[0]), n_test=int(te.shape[0]))


def balanced_sample(labels: np.ndarray | None, n: int, *, seed: int, total: int | None = None) -> np.ndarray:
    """n sorted row indices drawn without replacement, as evenly across classes as the classes
    allow (the paper samples "uniformly across classes"); uniform when labels is None."""
    if labels is None:
        if total is None or n > total:
            raise RobustgenError(f"cannot draw {n} samples from {total}")
        return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    labels = np.asarray(labels)
    if n > labels.size:
        raise RobustgenError(f"cannot draw {n} samples from a set of {labels.size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    quota = {c: 0 for c in classes}
    left = n
    while left > 0:  # fill round-robin; classes that run out leave their share to the others
        open_ = [c for c in classes if quota[c] < pools[c].size]
        each = max(1, left // len(open_))
        for c in open_:
            take = min(each, pools[c].size - quota[c], left)
            quota[c] += take
            left -= take
            if left == 0:
                break
    return np.sort(np.concatenate([pools[c][:quota[c]] for c in classes]))


def format_table(rows: dict[str, dict], *, title: str | None = None, notes: list[str] | None = None) -> str:
    """Markdown in the layout of paper Table 1: one row per source, complementarity (train, test,
    self) and coverage (train, test) in percent, plus FID / IS / KID columns when present."""
    extra = [k for k in ("fid", "is", "kid") if any(k in r for r in rows.values())]
    head = ["setup", "compl. train", "compl. test", "compl. self", "cov. train", "cov. test"]
    head += [{"fid": "FID ↓", "is": "IS ↑", "kid": "KID ↓"}[k] for k in extra]
    lines = [] if title is None else [f"**{title}**", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name] + [f"{100 * r[k]:.2f}%" if r.get(k) is not None else "" for k in
                          ("train", "test", "self", "coverage_train", "coverage_test")]
        for k in extra:
            v = r.get(k)
            if v is None:
                cells.append("")
            elif isinstance(v, (list, tuple)):
                cells.append(f"{v[0]:.4g} ± {v[1]:.2g}")
            else:
                cells.append(f"{v:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"
