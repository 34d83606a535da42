"""Which rows of each source every training batch takes: pure index math (paper Sec. 3.3, Eq. 3),
and how a batch's rows are cut into per-device chunks that keep the mix (``chunk_rows``).

A proportion alpha of every batch is real data and the rest generated; with ``data.sources``,
any number of sources with exact per-batch shares. The indices of step t are a pure function
of (seed, t): a resumed run sees exactly the batches it would have seen, with no sampler state
in the checkpoint.

* ``source_counts(B, weights)``: the rows per batch of each source, floor(w_i * B + 1/2)
  corrected to sum to B (largest remainder; ties to the earlier source when adding, the later
  one when removing). For weights (alpha, 1 - alpha): (floor(alpha * B + 1/2), the rest).
* ``WeightedIndices(sizes, weights, batch_size=, seed=, sampling=)(step)``: one int64 index
  array per source. Source i either walks an infinite concatenation of per-epoch permutations
  (``"permutation"``; epoch e's permutation seeded by (seed, i, e); step t takes positions
  t*c_i .. (t+1)*c_i - 1, so epochs roll over mid-batch) or draws uniformly with replacement
  from ``default_rng([seed, i, step])`` (``"with_replacement"``, as the PyTorch ports of the
  paper draw generated data). The real split (source 0) walks permutations.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import numpy as np

from robustgen.runtime.errors import RobustgenError

__all__ = ["SAMPLING", "PermutationWalk", "WeightedIndices", "chunk_rows", "source_counts"]

SAMPLING = ("with_replacement", "permutation")


class PermutationWalk:
    """Positions [start, stop) of the concatenation of seeded per-epoch permutations of range(n)."""

    def __init__(self, n: int, seed: int, stream: int, cache_size: int = 2):
        self.n, self.seed, self.stream = n, seed, stream
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def permutation(self, epoch: int) -> np.ndarray:
        # A cache of recent epochs saves work without making the output depend on call order.
        perm = self._cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            perm = rng.permutation(self.n).astype(np.int64)
            self._cache[epoch] = perm
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(epoch)
        return perm

    def take(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            pos = start + filled
            epoch, offset = divmod(pos, self.n)
            chunk = self.permutation(epoch)[offset:offset + (count - filled)]
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return out


def source_counts(batch_size: int, weights: Sequence[float], group_size: int | None = None) -> tuple[int, ...]:
    """Rows per batch of each source: floor(w_i * B + 1/2), then +-1 by largest remainder to sum to B.

    Weights are normalised to sum to 1. When the rounded counts exceed B, the sources rounded
    up the most lose one row each (ties: the later source first); when they fall short, the
    sources rounded down the most gain one (ties: the earlier source first). ``group_size`` G:
    the counts of a G-image group times B / G (the authors' per-core mix: 10 real of 32, 320 of 1024).
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise RobustgenError(f"batch size must be a positive integer, got {batch_size!r}")
    if group_size is not None:
        if int(group_size) < 1 or batch_size % int(group_size):
            raise RobustgenError(f"mix group size {group_size} must divide the batch size {batch_size}")
        return tuple(c * (batch_size // int(group_size)) for c in source_counts(int(group_size), weights))
    try:
        w = np.asarray([float(x) for x in weights], dtype=np.float64)
    except (TypeError, ValueError):
        raise RobustgenError(f"source weights must be numbers, got {list(weights)!r}") from None
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise RobustgenError(f"source weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    total = float(w.sum())
    B = int(batch_size)
    exact = [float(x) / total * B if total != 1.0 else float(x) * B for x in w]
    counts = [int(math.floor(e + 0.5)) for e in exact]
    # remainders compared to 1e-9, so float noise (0.725 * 100 = 72.49999999999999) cannot break ties
    while sum(counts) > B:
        i = max((i for i in range(len(counts)) if counts[i] > 0),
                key=lambda i: (round(counts[i] - exact[i], 9), i))
        counts[i] -= 1
    while sum(counts) < B:
        i = max(range(len(counts)), key=lambda i: (round(exact[i] - counts[i], 9), -i))
        counts[i] += 1
    return tuple(counts)


class WeightedIndices:
    """Per-source indices of batch ``step``: a pure function of (seed, step); see the module doc."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], *, batch_size: int, seed: int,
                 sampling: str | Sequence[str] = "with_replacement", group_size: int | None = None):
        self.counts = source_counts(batch_size, weights, group_size)
        self.sizes = tuple(int(n) for n in sizes)
        if len(self.sizes) != len(self.counts):
            raise RobustgenError(f"{len(self.sizes)} sources but {len(self.counts)} weights")
        self.sampling = (sampling,) * len(self.sizes) if isinstance(sampling, str) else tuple(sampling)
        if len(self.sampling) != len(self.sizes) or any(s not in SAMPLING for s in self.sampling):
            raise RobustgenError(f"sampling must be one of {list(SAMPLING)} per source, got {sampling!r}")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise RobustgenError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        for i, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c and n <= 0:
                raise RobustgenError(f"source {i} is empty but its weight gives it {c} rows per batch")
        self._walks = [PermutationWalk(n, self.seed, i) if s == "permutation" and n > 0 else None
                       for i, (n, s) in enumerate(zip(self.sizes, self.sampling))]

    @property
    def batch_size(self) -> int:
        return sum(self.counts)

    def __call__(self, step: int) -> tuple[np.ndarray, ...]:
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        out = []
        for i, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c == 0:
                out.append(np.empty(0, np.int64))
            elif self._walks[i] is not None:
                out.append(self._walks[i].take(step * c, c))
            else:
                out.append(np.random.default_rng([self.seed, i, step]).integers(0, n, size=c, dtype=np.int64))
        return tuple(out)

def chunk_rows(counts, chunks: int) -> list[tuple[np.ndarray, ...]]:
    """Split a batch's rows of each source (``counts[i]`` rows of source i) into ``chunks``
    parts, each with an equal share (+-1) of every source, so every chunk keeps the mix.
    Returns, per chunk, one array of row positions per source."""
    per_source = [np.array_split(np.arange(int(n)), chunks) for n in counts]
    return [tuple(parts[c] for parts in per_source) for c in range(chunks)]
