"""This rank's share of every training batch: which rows of each source, gathered ahead, on the device.

Source 0 is the real split, the others generated sets (``robustgen.train.mixing.sources``); every
global batch holds exactly ``source_counts`` rows of each (paper Sec. 3.3, Eq. 3: a proportion
alpha of real data), picked by ``robustgen.train.mixing.indices.WeightedIndices`` as a pure function of
(seed, step), so a resumed run sees the same batches. The batch is split into world_size x
micro_batches chunks; a background thread prepares this rank's chunks a few steps ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from robustgen.data import ImageDataset
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.errors import RobustgenError
from robustgen.train.losses import smoothed_targets
from robustgen.train.mixing.indices import WeightedIndices, chunk_rows
from robustgen.train.mixing.settings import MixSettings
from robustgen.train.mixing.sources import BatchSource, Prefetcher, check_sources_agree, gather_rows, host_buffer


@dataclass(frozen=True)
class Chunk:
    images: torch.Tensor  # uint8 [b, H, W, C] on the device
    targets: torch.Tensor  # [b, K] soft targets
    index: int  # position in the global batch's chunks (seeds its randomness)
    weight: float  # b * world_size / B: makes DDP's gradient average the global batch mean


class TrainingBatches:
    """This rank's chunks of step t's global batch. Source 0 is the real split, kept on the
    device as uint8 (or, when its images are decoded on demand from files, gathered per step on
    the host like the generated rows); sources 1.. are generated sets (arrays in RAM or stores
    on disk, read with constant memory). Every batch holds exactly ``counts[i]`` rows of source i (``source_counts``
    of the weights; (alpha, 1 - alpha) gives round(alpha * B) real rows), spread evenly over the
    world_size x micro_batches chunks. Indices and generated rows are prepared ahead of the step
    by a background thread, into pinned memory under CUDA, and only for this rank's chunks."""

    def __init__(self, real: ImageDataset, generated: Sequence[BatchSource], s: MixSettings, num_classes: int,
                 device: torch.device, ctx: DistContext, start_step: int = 0):
        self.device, self.ctx, self.s = device, ctx, s
        self.generated = list(generated)
        check_sources_agree([real, *self.generated])
        weights = s.source_weights
        if len(weights) != 1 + len(self.generated):
            raise RobustgenError(f"{len(weights)} source weights for the real split and {len(self.generated)} "
                                 "generated sources")
        sampling = ("permutation",) + (s.generated_sampling,) * len(self.generated)
        self.indices = WeightedIndices([len(real), *(len(g) for g in self.generated)], weights,
                                       batch_size=s.batch_size, seed=s.seed, sampling=sampling,
                                       group_size=s.mix_group_size)
        self.counts = self.indices.counts
        self.real_on_device = not real.decoded_on_demand
        if self.real_on_device:
            self.real_images = torch.from_numpy(real.images).to(device)  # uint8 [N, H, W, C]
            self.real_labels = torch.from_numpy(real.labels).to(device)
        # sources whose rows the prefetch thread gathers on the host
        self.host_sources = self.generated if self.real_on_device else [_FileSource(real), *self.generated]
        self.image_shape = tuple(real.images.shape[1:])
        self.num_classes = num_classes
        total_chunks = ctx.world_size * s.micro_batches
        if s.batch_size < total_chunks:
            raise RobustgenError(f"batch size {s.batch_size} is smaller than world size x micro-batches = {total_chunks}")
        first = ctx.rank * s.micro_batches
        self.mine = [(c, rows) for c, rows in enumerate(chunk_rows(self.counts, total_chunks))
                     if first <= c < first + s.micro_batches]
        self.group_order = [self._group_order(rows) for _, rows in self.mine]
        # Indices and generated rows are prepared a few steps ahead in a thread, in pinned host
        # memory on CUDA, so the step's copies are asynchronous: no host sync in the step.
        self.pin = device.type == "cuda"
        self.prefetch = Prefetcher(self._fetch, start_step=start_step, stop_step=s.total_steps)

    def _group_order(self, rows) -> torch.Tensor | None:
        """Row order of a chunk (laid out source by source) that gives every consecutive group of
        ``bn_group_size`` rows an equal share (+-1) of each source: ghost BatchNorm groups keep the
        batch's real/generated mix."""
        g = self.s.bn_group_size
        if g is None:
            return None
        counts = [len(r) for r in rows]
        size = sum(counts)
        if size % g:
            raise RobustgenError(f"train.bn_group_size {g} must divide each device's chunk of the batch, which "
                                 f"holds {size} images (batch {self.s.batch_size} / (world size {self.ctx.world_size} "
                                 f"x micro_batches {self.s.micro_batches}))")
        offsets = np.cumsum([0] + counts[:-1])
        order = np.concatenate([offsets[i] + part for group in chunk_rows(counts, size // g)
                                for i, part in enumerate(group)])
        return torch.from_numpy(order).to(self.device)

    def _fetch(self, step: int) -> list:
        """Per chunk of this rank: its real indices (None when the real rows are gathered on the
        host), the number of real rows and the host-gathered rows (images, labels)."""
        idx = self.indices(step)
        out = []
        for _, rows in self.mine:
            real = idx[0][rows[0]]
            real_idx = None
            if self.real_on_device:
                real_idx = host_buffer((len(real),), np.int64, pin_memory=self.pin)
                real_idx.numpy()[:] = real
            picked = [source_idx[r] for source_idx, r in zip(idx, rows)][1 if self.real_on_device else 0:]
            n = sum(len(p) for p in picked)
            images = host_buffer((n, *self.image_shape), np.uint8, pin_memory=self.pin)
            labels = host_buffer((n,), np.int64, pin_memory=self.pin)
            gather_rows(self.host_sources, picked, images.numpy(), labels.numpy())
            out.append((real_idx, len(real), images, labels))
        return out

    def _chunk(self, real_idx: torch.Tensor | None, n_real: int, host_images: torch.Tensor,
               host_labels: torch.Tensor, index: int) -> Chunk:
        s, dev = self.s, self.device
        images = host_images.to(dev, non_blocking=True)
        labels = host_labels.to(dev, non_blocking=True)
        if real_idx is not None:  # real rows from the device copy, then the host rows
            real_idx = real_idx.to(dev, non_blocking=True)
            images = torch.cat([self.real_images[real_idx], images])
            labels = torch.cat([self.real_labels[real_idx], labels])
        n_gen = len(labels) - n_real
        smooth = torch.cat([torch.full((n_real,), s.label_smoothing_real, device=dev),
                            torch.full((n_gen,), s.label_smoothing_generated, device=dev)])
        targets = smoothed_targets(labels, num_classes=self.num_classes, smoothing=smooth)
        weight = (n_real + n_gen) * self.ctx.world_size / s.batch_size
        order = self.group_order[index - self.mine[0][0]]
        if order is not None:
            images, targets = images[order], targets[order]
        return Chunk(images=images, targets=targets, index=index, weight=weight)

    def __call__(self, step: int) -> list[Chunk]:
        if self.prefetch.next_step != step:
            raise RuntimeError(f"batches are read in step order: expected step {self.prefetch.next_step}, got {step}")
        fetched = next(self.prefetch)
        return [self._chunk(*item, c) for (c, _), item in zip(self.mine, fetched)]

    def close(self) -> None:
        self.prefetch.close()


class _FileSource:
    """A real split decoded on demand from files, as a batch source (``gather`` / ``labels``)."""

    def __init__(self, ds: ImageDataset):
        self.images, self.labels, self.num_classes = ds.images, ds.labels, ds.num_classes
        self.image_shape = ds.image_shape

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices, out=None):
        return self.images.gather(indices, out=out)
