"""The resumable, rank-dealt job loop, written once.

Every long job has one shape: rank 0 prepares (opens the output, reads what is already done,
lists the work left), the work is cut into rounds that every rank runs in step, each rank does
its share of a round, the shares are gathered and recorded (rank 0 writes: a manifest entry, a
state file), progress shows on rank 0, and between rounds the ranks check together for a stop
signal (``distributed.stop_if_requested``): a signal that reached any rank stops them all after
the same round, so what is recorded after a kill or a preemption is a prefix of the rounds, which
any number of ranks continues. ``run_rounds`` is that loop; ``run_dealt_job`` adds the dealing,
gathering, recording and progress bar of the store jobs (``generate.sample_to_store``, ``label.label_store``).
The evaluation cascade and DDPM training run their rounds (batches, steps) through
``run_rounds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from robustgen.runtime import preempt
from robustgen.runtime.distributed import DistContext, all_gather, stop_if_requested
from robustgen.runtime.progress import progress_bar

__all__ = ["JobPlan", "run_dealt_job", "run_rounds"]


@dataclass(frozen=True)
class JobPlan:
    """What rank 0 decided before the rounds start (handed to every rank)."""

    rounds: list  # per round, the work it does (the same on every rank)
    total: int  # units (images, points) of the whole job, for the progress bar
    done: int = 0  # units already done by an earlier run
    info: dict = field(default_factory=dict)  # anything else the ranks need (a fit file's name, times)


def run_rounds(ctx: DistContext, rounds: Sequence, do_round: Callable[[int, Any], None], *,
               where: Callable[[int, Any], str] | None, save: Callable[[int, Any], None] | None = None,
               stop_after_last: bool = False) -> None:
    """``do_round(r, rounds[r])`` for every round, on every rank in step. After each round but the
    last (and after the last too with ``stop_after_last``), a stop signal that reached any rank
    calls ``save(r, round)`` and raises ``preempt.Preempted`` saying ``where(r, round)``.
    ``where=None``: a job that cannot resume, with no stop checks."""
    if where is None:
        for r, item in enumerate(rounds):
            do_round(r, item)
        return
    with preempt.resumable():
        for r, item in enumerate(rounds):
            do_round(r, item)
            if stop_after_last or r + 1 < len(rounds):
                stop_if_requested(ctx, where(r, item), None if save is None else (lambda: save(r, item)))


def run_dealt_job(ctx: DistContext, plan: JobPlan, *, share: Callable[[Any], Any], work: Callable[[Any], Any],
                  record: Callable[[Any, list], int], where: Callable[[int, Any], str], desc: str,
                  progress: bool, unit: str = "img", **bar_options) -> None:
    """Run ``plan.rounds``: per round, ``share(round)`` is this rank's part of it (None: nothing to
    do), ``work(part)`` its result; the results of all ranks (rank order) go to ``record(round,
    results)`` on every rank, which writes on rank 0 and returns the units done, for the bar."""
    with progress_bar(total=plan.total, initial=plan.done, unit=unit, unit_scale=True, desc=desc,
                      disable=not (progress and ctx.is_main), **bar_options) as bar:
        def do_round(r: int, item) -> None:
            part = share(item)
            result = None if part is None else work(part)
            bar.update(record(item, all_gather(ctx, result)))

        run_rounds(ctx, plan.rounds, do_round, where=where)
