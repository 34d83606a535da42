"""Multi-process training through torch.distributed, launched by ``torchrun`` (DDP).

``torchrun --nproc_per_node=N -m robustgen.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
each process then owns one device (cuda:LOCAL_RANK, or the CPU with the gloo backend). The
global batch of B images is the same pure function of (seed, step) on every rank and is cut
into world_size x micro_batches chunks (``chunk_rows``), so the per-batch mix of sources stays exact
whatever the number of processes. BatchNorm statistics are per chunk (per device, as the
authors); DDP averages gradients, and each chunk's loss is weighted so that the update equals
the gradient of the global batch mean. Checkpoints, evaluation and logs come from rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context_from_env(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun; returns the context and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local), device


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def sum_across(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def chunk_rows(counts, chunks: int) -> list[tuple[np.ndarray, ...]]:
    """Split a batch's rows of each source (``counts[i]`` rows of source i) into ``chunks``
    parts, each with an equal share (+-1) of every source, so every chunk keeps the mix.
    Returns, per chunk, one array of row positions per source."""
    per_source = [np.array_split(np.arange(int(n)), chunks) for n in counts]
    return [tuple(parts[c] for parts in per_source) for c in range(chunks)]
