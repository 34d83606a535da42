"""The torchrun rank helpers: the process group, this rank's context and the collectives every
multi-process job uses (DDP training, and the rank-dealt jobs of ``runtime.jobs``).

``torchrun --nproc_per_node=N -m robustgen.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
each process then owns one device (cuda:LOCAL_RANK, or the CPU with the gloo backend). The
global batch of B images is the same pure function of (seed, step) on every rank and is cut
into world_size x micro_batches chunks (``train.mixing.indices.chunk_rows``), so the per-batch
mix of sources stays exact whatever the number of processes. BatchNorm statistics are per chunk
(per device, as the authors); DDP averages gradients, and each chunk's loss is weighted so that
the update equals the gradient of the global batch mean. Checkpoints, evaluation and logs come
from rank 0.

The same context runs the embarrassingly parallel jobs (``store generate`` / ``store label`` /
``eval`` and those stages of ``run`` under torchrun, through ``runtime.jobs``): ``on_main`` runs
the single-writer part (manifests, results, the store's lock) on rank 0 and hands its result (or
its error, or its preemption) to every rank; ``all_gather`` collects the ranks' results. What is
recorded after a kill is a prefix of the rounds, which any number of ranks can continue.
``stop_if_requested`` makes a stop signal that reached any rank stop every rank after the same
round (``runtime.preempt``).
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=72)  # longest wait in a collective


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
        # rank 0 alone may fit a generator for hours while the others wait in a collective
        # (``on_main``); a rank that dies is noticed by torchrun, which stops the others
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
        # left to interpreter shutdown, the backend's threads can be destroyed still joinable, which aborts
        # the process ("terminate called without an active exception", seen with gloo on a busy CPU)
        atexit.register(_leave_process_group)
    return DistContext(rank=rank, world_size=world, local_rank=local), device


def _leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def in_process_group() -> bool:
    """Is this process one of several joined by ``context_from_env`` (torchrun)?"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def sum_across(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value




def broadcast(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only, its result broadcast; an error there is raised on every rank
    (the others would otherwise wait in the next collective until it times out), a preemption
    there (``preempt.Preempted``) as a preemption, so every rank exits with the same status."""
    from robustgen.runtime import preempt
    from robustgen.runtime.errors import RobustgenError

    result = error = None
    if ctx.is_main:
        try:
            result = fn()
        except BaseException as e:
            if not ctx.enabled:
                raise
            error = e
    failure = None
    if isinstance(error, preempt.Preempted):
        failure = ("preempted", error.signal_name, error.where)
    elif error is not None:
        failure = ("error", str(error) or type(error).__name__)
    failure, result = broadcast(ctx, (failure, result))
    if error is not None:
        raise error
    if failure is not None and failure[0] == "preempted":
        raise preempt.Preempted(failure[1], failure[2])
    if failure is not None:
        raise RobustgenError(failure[1])
    return result


def stop_if_requested(ctx: DistContext, where: str, save: Callable[[], None] | None = None) -> None:
    """``preempt.stop_if_requested`` for a loop that all ranks run in step: a collective (every
    rank calls it at the same boundary), so a stop signal that reached any rank stops them all
    after the same step, with the same exit status."""
    from robustgen.runtime import preempt

    if not ctx.enabled:
        preempt.stop_if_requested(where, save)
        return
    names = [name for name in all_gather(ctx, preempt.requested()) if name is not None]
    if names:
        if save is not None:
            save()
        raise preempt.Preempted(names[0], where)


def main_first(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank, rank 0 first (it downloads or builds what the others then read)."""
    if ctx.is_main:
        result = fn()
    barrier(ctx)
    if not ctx.is_main:
        result = fn()
    return result
