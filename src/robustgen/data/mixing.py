"""Alpha-mixing of real and generated data in every batch (paper Sec. 3.3, Eq. 3).

A fraction ``alpha`` of each batch is real data, the rest generated. The index source is a
pure function of (seed, step): a resumed run sees exactly the batches it would have seen,
with no sampler state in the checkpoint.

Real data walks without replacement through an infinite concatenation of per-epoch
permutations (epoch e's permutation seeded by (seed, e)); step t takes positions
t*n_r .. (t+1)*n_r - 1 of it, so epochs roll over mid-batch correctly. Generated data is
drawn uniformly with replacement per step (seeded by (seed, t), as in the PyTorch ports of
the paper), or walked like the real data ("permutation").
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from robustgen.errors import RobustgenError

__all__ = ["batch_composition", "MixedBatchIndices", "GENERATED_SAMPLING"]

GENERATED_SAMPLING = ("with_replacement", "permutation")

# Independent random streams under one seed.
_REAL_STREAM, _GEN_STREAM = 0, 1


def batch_composition(batch_size: int, alpha: float) -> tuple[int, int]:
    """(n_real, n_generated) for one batch: n_real = floor(alpha * B + 0.5), the same every batch."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise RobustgenError(f"batch size must be a positive integer, got {batch_size!r}")
    try:
        ok = isinstance(alpha, bool) is False and math.isfinite(float(alpha)) and 0.0 <= float(alpha) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise RobustgenError(f"alpha (fraction of real data per batch) must be in [0, 1], got {alpha!r}")
    n_real = int(math.floor(float(alpha) * int(batch_size) + 0.5))
    return n_real, int(batch_size) - n_real


class _PermutationWalk:
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


class MixedBatchIndices:
    """Deterministic, stateless-per-step index source: indices for step t are a pure function of (seed, t), so a resumed run sees the same batches.

    ``n_real`` / ``n_generated``: sizes of the real and generated sets; ``batch_size`` and
    ``alpha`` fix (n_r, n_g) per batch via ``batch_composition``. ``__call__(step)`` returns
    (real_indices [n_r], generated_indices [n_g]), both int64.
    """

    def __init__(self, n_real: int, n_generated: int, batch_size: int, alpha: float, seed: int,
                 generated_sampling: str = "with_replacement"):
        self.batch_size = int(batch_size)
        self.alpha = float(alpha)
        self.n_real_per_batch, self.n_generated_per_batch = batch_composition(batch_size, alpha)
        if generated_sampling not in GENERATED_SAMPLING:
            raise RobustgenError(f"generated_sampling must be one of {list(GENERATED_SAMPLING)}, "
                                 f"got {generated_sampling!r}")
        if n_real < 0 or n_generated < 0:
            raise RobustgenError(f"dataset sizes must be >= 0, got n_real={n_real}, n_generated={n_generated}")
        if alpha < 1 and n_generated == 0:
            raise RobustgenError(f"alpha < 1 needs generated data (alpha={alpha}, but the generated set is empty)")
        if alpha > 0 and n_real == 0:
            raise RobustgenError(f"alpha > 0 needs real data (alpha={alpha}, but the real set is empty)")
        if int(seed) != seed or seed < 0:
            raise RobustgenError(f"seed must be a non-negative integer, got {seed!r}")
        self.n_real, self.n_generated = int(n_real), int(n_generated)
        self.seed = int(seed)
        self.generated_sampling = generated_sampling
        self._real = _PermutationWalk(self.n_real, self.seed, _REAL_STREAM) if self.n_real else None
        self._gen = (_PermutationWalk(self.n_generated, self.seed, _GEN_STREAM)
                     if self.n_generated and generated_sampling == "permutation" else None)

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        n_r, n_g = self.n_real_per_batch, self.n_generated_per_batch
        real = self._real.take(step * n_r, n_r) if n_r else np.empty(0, np.int64)
        if n_g == 0:
            gen = np.empty(0, np.int64)
        elif self._gen is not None:
            gen = self._gen.take(step * n_g, n_g)
        else:
            rng = np.random.default_rng([self.seed, _GEN_STREAM, step])
            gen = rng.integers(0, self.n_generated, size=n_g, dtype=np.int64)
        return real, gen

    def __repr__(self) -> str:
        return (f"MixedBatchIndices(n_real={self.n_real}, n_generated={self.n_generated}, "
                f"batch_size={self.batch_size}, alpha={self.alpha}, seed={self.seed}, "
                f"generated_sampling={self.generated_sampling!r})")
