"""Preemption: stop at the next step boundary with the resumable state on disk.

Cluster schedulers stop jobs with a signal and a grace period: SLURM and Kubernetes send
SIGTERM, then SIGKILL (``KillWait`` / ``terminationGracePeriodSeconds``); SLURM's
``--signal=B:USR1@120`` sends SIGUSR1 some time before the time limit. ``install()`` (done by the
CLI) makes both signals set a flag instead of killing the process; every long loop (training,
DDPM training, generation and labelling shard by shard, evaluation batch by batch) calls
``stop_if_requested`` at its step boundaries, which writes the loop's resumable state and raises
``Preempted``; a signal that arrives outside such a loop (between stages, in a short verb)
raises ``Preempted`` at once, since all finished work is already on disk. The CLI prints where the work stopped and exits with ``EXIT_PREEMPTED`` (75,
sysexits' EX_TEMPFAIL: "try again"), distinct from errors (2) and SIGINT (130); the same command
run again resumes and ends with the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable

__all__ = ["EXIT_PREEMPTED", "Preempted", "install", "requested", "reset", "restore", "resumable",
           "stop_if_requested"]

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: str | None = None
_sections = 0  # resumable loops running now


class Preempted(Exception):
    """A stop signal arrived; the work up to ``where`` is saved and resumes on the next run."""

    def __init__(self, signal_name: str, where: str):
        super().__init__(f"stopped by {signal_name} {where}; run the same command again to resume")
        self.signal_name, self.where = signal_name, where


def _handler(signum, frame) -> None:
    global _received
    _received = signal.Signals(signum).name
    if not _sections:  # no loop is there to save and stop: stop now (finished work is on disk)
        raise Preempted(_received, "outside a resumable step")


@contextlib.contextmanager
def resumable():
    """Mark a loop that calls ``stop_if_requested`` at its step boundaries; outside such loops a
    stop signal raises ``Preempted`` at once."""
    global _sections
    _sections += 1
    try:
        yield
    finally:
        _sections -= 1


def install() -> dict:
    """Turn SIGTERM and SIGUSR1 into a stop request (main thread only; elsewhere a no-op).
    Returns the previous handlers, for ``restore``."""
    reset()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, _handler)
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers ``install`` replaced (a CLI call inside another program, tests)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def requested() -> str | None:
    """The name of the stop signal received, if any."""
    return _received


def reset() -> None:
    global _received
    _received = None


def stop_if_requested(where: str, save: Callable[[], None] | None = None) -> None:
    """At a step boundary: when a stop was requested, call ``save()`` and raise ``Preempted``."""
    name = _received
    if name is None:
        return
    if save is not None:
        save()
    raise Preempted(name, where)
