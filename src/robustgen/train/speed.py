"""Speed options of the training step chosen by measurement: bf16 autocast, channels_last, compile.

They change how the step is computed, not what it computes (paper Sec. 3.3's TRADES step
either way), but whether they help depends on the hardware: on GPUs with bf16 tensor cores
bf16 does; on a CPU, bf16 convolutions without native bf16 instructions fall back to slow
kernels (a WRN-16-4 TRADES-10 step has been measured 20x slower than fp32 on a 2-core CPU; on
one with AVX512-BF16 the two were on par), and channels_last and torch.compile help some CPU
models and not others. So where it is the hardware's call:

- ``precision: bf16`` and ``compile: true`` on a CPU are measured against fp32 / eager and
  dropped, with a one-line warning, when they are slower;
- ``channels_last: null`` (auto) measures both layouts and takes the faster.

The measurement runs a few interleaved steps of each candidate on a copy of the actual model
with a batch of the actual per-device shape (after a warm-up step of each, a candidate whose
first timed step takes ``give_up`` times the fastest one is not run again, so a trap costs two
steps, not several). The choice is written to the run folder, so a resumed run
computes the same way, and cached per machine, model and batch shape
(``$ROBUSTGEN_CACHE/step_options.json``, default ``~/.cache/robustgen``), so the next run
with the same settings does not measure again. Under torchrun rank 0 decides for all ranks.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgen.runtime.distributed import DistContext
from robustgen.runtime.io import read_json, write_json

CACHE_FILE = "step_options.json"


@dataclass(frozen=True)
class StepOptions:
    bf16: bool = False  # autocast the step's forward passes to bfloat16 (losses and the attack's update stay fp32)
    channels_last: bool = False  # model weights and input images in NHWC memory layout
    compile: bool = False  # torch.compile the model


def candidate_options(precision: str, channels_last: bool | None, device: torch.device,
                      compile: bool = False) -> list[StepOptions]:
    """The settings worth measuring, the requested (or default) one first: bf16 and compile on a
    CPU are tried against fp32 and eager; an auto layout (None) is tried both ways."""
    on_cpu = device.type == "cpu"
    bf16 = [True, False] if precision == "bf16" and on_cpu else [precision == "bf16"]
    layouts = [False, True] if channels_last is None else [bool(channels_last)]
    compiled = [True, False] if compile and on_cpu else [compile]
    return [StepOptions(bf16=b, channels_last=cl, compile=c) for b in bf16 for cl in layouts for c in compiled]


def measure_candidates(run_step: Callable[[StepOptions], None], candidates: list[StepOptions], *,
                       rounds: int = 3, give_up: float = 5.0, clock: Callable[[], float] = time.perf_counter,
                       sync: Callable[[], None] = lambda: None) -> dict[StepOptions, list[float]]:
    """Seconds per step of each candidate over ``rounds`` interleaved rounds (one step of each per
    round, so drifting machine load hits all alike), after one untimed warm-up step each (first
    calls pay one-time set-up costs). A candidate that takes more than ``give_up`` x the fastest
    in the first round is not run again: a trap costs two steps, not ``rounds + 1``."""

    def timed(option: StepOptions) -> float:
        sync()
        t0 = clock()
        run_step(option)
        sync()
        return clock() - t0

    for option in candidates:
        timed(option)
    times = {option: [timed(option)] for option in candidates}
    fastest = min(t[0] for t in times.values())
    alive = [o for o in candidates if times[o][0] <= give_up * fastest]
    for _ in range(rounds - 1):
        for option in alive:
            times[option].append(timed(option))
    return times


def pick_fastest(times: dict[StepOptions, list[float]]) -> StepOptions:
    """The candidate with the lowest median; ties go to the earlier (requested) one."""
    return min(times, key=lambda o: statistics.median(times[o]))


def trial_step(model: nn.Module, make_step_loss: Callable[[bool], Callable], batch_shape: tuple[int, ...],
               num_classes: int, device: torch.device, seed: int = 0) -> Callable[[StepOptions], None]:
    """A function running one training step (loss, backward; no optimiser update) with given options
    on copies of ``model`` (one per layout and compilation, so the real model is never touched)
    and a random batch."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.rand(batch_shape, generator=gen).to(device)
    targets = F.one_hot(torch.randint(0, num_classes, (batch_shape[0],), generator=gen), num_classes).float().to(device)
    copies: dict[tuple[bool, bool], nn.Module] = {}

    def run(option: StepOptions) -> None:
        layout = torch.channels_last if option.channels_last else torch.contiguous_format
        key = (option.channels_last, option.compile)
        if key not in copies:
            trial = copy.deepcopy(model).to(memory_format=layout).train()
            copies[key] = torch.compile(trial) if option.compile else trial
        trial = copies[key]
        step_loss = make_step_loss(option.bf16)
        loss = step_loss(trial, trial, x.contiguous(memory_format=layout), targets,
                         torch.Generator(device=device).manual_seed(seed))
        loss.backward()
        trial.zero_grad(set_to_none=True)

    return run


def _cache_dir() -> Path:
    return Path(os.environ.get("ROBUSTGEN_CACHE") or "~/.cache/robustgen").expanduser()


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:  # the CPU model decides which bf16 kernels exist
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def _broadcast(ctx: DistContext, option: StepOptions | None, device: torch.device) -> StepOptions:
    if not ctx.enabled:
        return option
    import torch.distributed as dist

    flags = torch.tensor([option.bf16, option.channels_last, option.compile] if ctx.is_main else [0, 0, 0],
                         dtype=torch.int64, device=device)
    dist.broadcast(flags, src=0)
    return StepOptions(bf16=bool(flags[0]), channels_last=bool(flags[1]), compile=bool(flags[2]))


def choose_step_options(model: nn.Module, make_step_loss: Callable[[bool], Callable], *, precision: str,
                        channels_last: bool | None, compile: bool = False, batch_shape: tuple[int, ...], num_classes: int,
                        device: torch.device, what: str, out_dir: Path | None = None, fingerprint: str = "",
                        ctx: DistContext = DistContext(), log: Callable[[str], None] = print,
                        measure: Callable = measure_candidates) -> StepOptions:
    """The step's options: the requested ones where nothing needs measuring, else the fastest
    candidate (see the module docstring). ``make_step_loss(bf16)`` builds the step's loss;
    ``batch_shape`` is one device's chunk [b, C, H, W]; ``what`` names the step (arch, loss,
    attack steps) in the cache key. Rank 0 decides; the choice is written to
    ``out_dir/step_options.json`` and reused from there when the run resumes."""
    candidates = candidate_options(precision, channels_last, device, compile)
    requested = candidates[0]
    chosen: StepOptions | None = None
    record = out_dir / CACHE_FILE if out_dir is not None else None
    if ctx.is_main:
        key = json.dumps({"hardware": hardware_name(device), "torch": torch.__version__, "step": what,
                          "batch": list(batch_shape), "candidates": [asdict(c) for c in candidates]}, sort_keys=True)
        if len(candidates) == 1 or any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
            chosen = requested  # nothing to choose, or a trial step would wait for the other ranks' SyncBatchNorm
        elif record is not None and _read_json_or_empty(record).get("fingerprint") == fingerprint:
            chosen = StepOptions(**read_json(record)["options"])  # a resumed run computes as before
        else:
            cache_path = _cache_dir() / CACHE_FILE
            cache = _read_json_or_empty(cache_path)
            if key in cache:
                chosen = StepOptions(**cache[key]["options"])
            else:
                run = trial_step(model, make_step_loss, batch_shape, num_classes, device)
                sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
                times = measure(run, candidates, sync=sync)
                del run  # frees the trial copies of the model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                chosen = pick_fastest(times)
                report = ", ".join(f"{_label(o)} {1000 * statistics.median(t):.0f} ms" for o, t in times.items())
                log(f"step options measured on {hardware_name(device)} ({report}): {_label(chosen)}")
                cache[key] = {"options": asdict(chosen),
                              "median_s": {_label(o): statistics.median(t) for o, t in times.items()}}
                try:
                    write_json(cache_path, cache)
                except OSError:
                    pass  # an unwritable cache only costs a measurement next time
        for name, asked, slower in (("precision=bf16", requested.bf16 and not chosen.bf16, "fp32"),
                                    ("compile=true", requested.compile and not chosen.compile, "eager")):
            if asked:
                print(f"robustgen: warning: train.{name} is slower than {slower} on {hardware_name(device)} for this "
                      f"model and batch (measured at start-up): training {slower}", file=sys.stderr)
        if record is not None:
            write_json(record, {"fingerprint": fingerprint, "options": asdict(chosen), "requested": {
                "precision": precision, "channels_last": channels_last, "compile": compile}})
    return _broadcast(ctx, chosen, device)


def _label(option: StepOptions) -> str:
    return ("bf16" if option.bf16 else "fp32") + (" + channels_last" if option.channels_last else "") + (
        " + compile" if option.compile else "")


def _read_json_or_empty(path: Path) -> dict:
    try:
        value = read_json(path)
    except Exception:  # missing or unreadable: measure again
        return {}
    return value if isinstance(value, dict) else {}
