"""``MixSettings``: how every training batch is made from its sources (paper Sec. 3.3, Eq. 3), the
only settings the batch builder reads (``batches.TrainingBatches``); the training loop's
``LoopSettings`` extends it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MixSettings"]


@dataclass(frozen=True)
class MixSettings:
    batch_size: int  # images per global batch
    total_steps: int  # batches drawn (the prefetching stops there)
    seed: int = 0
    source_weights: tuple = (1.0,)  # share of each batch: the real split's, then each generated source's (normalised)
    generated_sampling: str = "with_replacement"  # or "permutation" (``indices.WeightedIndices``)
    mix_group_size: int | None = None  # source rows counted per group of this many images (None: per batch)
    micro_batches: int = 1  # chunks per device and step
    bn_group_size: int | None = None  # chunks are ordered so every group of this many images keeps the mix
    label_smoothing_real: float = 0.0
    label_smoothing_generated: float = 0.1

    @property
    def real_share(self) -> float:
        """alpha: the real split's share of every batch (before rounding to rows)."""
        return float(self.source_weights[0]) / float(sum(self.source_weights))
