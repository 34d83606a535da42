"""Progress that fits where it is shown: a tqdm bar on a terminal, otherwise one heartbeat line
every ``ROBUSTGEN_HEARTBEAT_S`` seconds (default 30) with the count, rate, ETA and memory, so a
captured log (CI, SLURM, nohup) stays small and still says how a long job is going.

``progress_bar(...)`` takes tqdm's arguments; both kinds support ``update``, ``set_postfix``,
``close``, iteration and ``with``.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

__all__ = ["Heartbeat", "memory_summary", "peak_memory", "progress_bar", "progress_write"]


def peak_memory() -> tuple[str, float] | None:
    """("gpu", GiB) peak of the CUDA allocator on a GPU, else ("rss", GiB) peak resident set; None
    where unknown (Windows)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return "gpu", torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return "rss", rss / (2**30 if sys.platform == "darwin" else 2**20)


def memory_summary() -> str:
    """Peak memory of this process, for a heartbeat line."""
    peak = peak_memory()
    return "" if peak is None else f"{'GPU' if peak[0] == 'gpu' else 'RSS'} peak {peak[1]:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Heartbeat:
    """tqdm's interface, printing one line per ``interval`` seconds instead of redrawing a bar."""

    def __init__(self, iterable=None, *, total=None, initial=0, desc="", unit="it", disable=False,
                 interval: float | None = None, file=None, **_ignored):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = int(initial)
        self.interval = float(os.environ.get("ROBUSTGEN_HEARTBEAT_S", 30)) if interval is None else interval
        self.file = file or sys.stderr
        self.postfix = ""
        self.t0 = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_postfix(self, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def line(self, now: float | None = None) -> str:
        """The heartbeat: count, rate, ETA, postfix and memory."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.postfix:
            parts.append(self.postfix)
        memory = memory_summary()
        if memory:
            parts.append(memory)
        return f"[robustgen] {self.desc}: " + ", ".join(parts)

    def _line(self, now: float) -> None:
        print(self.line(now), file=self.file, flush=True)

    def close(self) -> None:
        if not self.disable and self.n > self.start_n and time.monotonic() - self.t0 >= self.interval:
            self._line(time.monotonic())  # the last word of a long job
        self.disable = True

    @staticmethod
    def write(message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)


def progress_bar(iterable=None, **kwargs):
    """tqdm on a terminal (or ``ROBUSTGEN_PROGRESS=bar``), else a ``Heartbeat`` (or
    ``ROBUSTGEN_PROGRESS=heartbeat``); ``disable=True`` silences either."""
    mode = os.environ.get("ROBUSTGEN_PROGRESS", "auto")
    terminal = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
    if terminal:
        return tqdm(iterable, **kwargs)
    return Heartbeat(iterable, **kwargs)


def progress_write(message: str) -> None:
    """A line on stderr that does not break a tqdm bar being drawn."""
    if sys.stderr.isatty():
        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
