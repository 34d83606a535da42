"""A resumable cascade of attacks with per-point worst-case robust accuracy (paper App. A, Evaluation).

Each stage attacks only the points still robust after the stages before it; a point counts as
robust when it is classified correctly on the clean input and on every stage's adversarial
candidate. Success is decided here, in float32 and eval mode, from the candidates each stage
returns, after checking that they lie in the eps-ball and [0, 1] and give finite logits (a
violation is an error, never a number). Progress is saved after every batch when a state path
is given, so a killed evaluation resumes where it stopped and ends with identical numbers.

Under torchrun (``ctx``) the batches (of ``batch_size`` points, the same as in one process) are
dealt in rounds of one per rank; after each round the ranks' results are summed and rank 0 saves
the progress. An attack's randomness is a function of (seed, its batch), so every point's result,
and every number, equals one process's whatever the number of ranks, and a killed job resumes
from its last complete round with any number of ranks.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from robustgen.attacks.pgd import frozen_parameters, perturbation_norm, within_ball
from robustgen.checkpoint import load_state, save_state
from robustgen.data.augment import to_float_nchw
from robustgen.runtime import preempt
from robustgen.runtime.distributed import DistContext, sum_across
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.jobs import run_rounds
from robustgen.runtime.progress import progress_bar

# (model, x [B,C,H,W], y [B], seed) -> candidate adversarial examples [B,C,H,W]
StageFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class AttackStage:
    name: str
    run: StageFn
    white_box: bool = True  # False for score-based attacks (Square): used to flag gradient masking
    # Upper bound of the model evaluations per attacked point, in forward-equivalents (an input
    # gradient counts as a forward and a backward, ~2); for cost estimates (robustgen.cost).
    forward_equivalents: int = 0
    # True: this stage starts a new inner cascade that attacks every clean-correct point, not only
    # the survivors, so that cascade's own robust accuracy is measured too (worst-of-aa-and-aa+mt)
    restart: bool = False


def _to_device(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, idx: np.ndarray,
               device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as float32 NCHW in [0, 1] on ``device``: from uint8 NHWC numpy (robustgen's datasets,
    divided by 255 on the device) or from a float NCHW tensor (the Python API's input)."""
    if isinstance(images, torch.Tensor):
        x = images[torch.from_numpy(idx)].to(device=device, dtype=torch.float32)
    else:
        x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(images[idx])).to(device))
    y = torch.as_tensor(labels[idx] if isinstance(labels, torch.Tensor) else np.asarray(labels[idx]))
    return x, y.to(device=device, dtype=torch.int64)


@dataclass
class CascadeState:
    """A cascade's resumable progress (as auto-attack's ``state.py``), saved after every round as a
    dict of tensors and numbers (``checkpoint.save_state``, read back weights-only)."""

    key: str  # identifies model, data and attack settings; another key is refused
    clean: torch.Tensor  # [n] bool: classified correctly on the clean input
    robust: torch.Tensor  # [n] bool: also on every stage's candidate so far
    stage_start: torch.Tensor  # [n] bool: the points the stage in progress attacks
    group_robust: torch.Tensor  # [n] bool: robust within the inner cascade in progress
    clean_done: bool = False
    stage: int = 0  # the stage in progress
    batch: int = 0  # its first batch not yet done
    stages: list = field(default_factory=list)  # the finished stages' records
    stage_time: float = 0.0  # seconds spent in the stage in progress
    max_perturbation: float = 0.0

    @classmethod
    def resume(cls, path: Path | None, n: int, key: str) -> "CascadeState":
        """The state saved at ``path`` (when there is one), else a fresh one for ``n`` points."""
        if path is None or not Path(path).exists():
            flags = [torch.zeros(n, dtype=torch.bool) for _ in range(4)]
            return cls(key, *flags)
        saved = load_state(path)
        if saved.get("key") != key:
            raise RobustgenError(f"{path}: partial evaluation of another model/attack/data; delete it or use another --out")
        return cls(**saved)

    def save(self, path: Path) -> None:
        save_state(path, dict(vars(self)))


class _Cascade:
    """One evaluation's data, settings and state; ``run_cascade`` is its public face."""

    def __init__(self, model, images, labels, *, norm, eps, batch_size, device, seed, state_path, state_key,
                 progress, desc, ctx, keep_adversarial):
        self.model, self.images, self.labels, self.n = model, images, labels, len(labels)
        self.norm, self.eps, self.batch_size, self.device, self.seed = norm, eps, batch_size, device, seed
        self.state_path, self.progress, self.desc, self.ctx = state_path, progress, desc, ctx
        self.state = CascadeState.resume(state_path, self.n, state_key)
        self.adversarial = None
        self.keep_adversarial = keep_adversarial

    def save(self) -> None:
        if self.state_path is not None and self.ctx.is_main:
            self.state.save(self.state_path)

    def clean_pass(self) -> None:
        """Which points the model classifies correctly (each rank its strided batches, then summed)."""
        ctx, n, state = self.ctx, self.n, self.state
        clean = torch.zeros(n, dtype=torch.int64)
        with torch.no_grad():
            for lo in range(ctx.rank * self.batch_size, n, ctx.world_size * self.batch_size):
                idx = np.arange(lo, min(lo + self.batch_size, n))
                x, y = _to_device(self.images, self.labels, idx, self.device)
                if self.keep_adversarial:
                    if self.adversarial is None:
                        self.adversarial = torch.empty((n, *x.shape[1:]), dtype=torch.float32)
                    self.adversarial[idx] = x.cpu()
                logits = self.model(x)
                if not bool(torch.isfinite(logits).all()):
                    raise RobustgenError("the model produced NaN/inf logits on clean test inputs")
                clean[idx] = (logits.argmax(1) == y).cpu().long()
        state.clean = _across(ctx, clean, self.device) > 0
        state.robust, state.group_robust, state.stage_start = (state.clean.clone() for _ in range(3))
        state.clean_done = True
        self.save()

    def attack_batch(self, stage: AttackStage, idx: np.ndarray, fooled: torch.Tensor) -> float:
        """Attack the points ``idx``; marks those fooled in ``fooled`` and returns the largest distance."""
        x, y = _to_device(self.images, self.labels, idx, self.device)
        candidates = stage.run(self.model, x, y, self.seed).detach()
        dist = perturbation_norm(candidates, x, norm=self.norm)
        if not bool(within_ball(dist, self.eps).all()) or bool((candidates < 0).any() | (candidates > 1).any()):
            raise RobustgenError(f"attack stage {stage.name} returned points outside the {self.norm} eps-ball "
                                 f"or [0,1]: max distance {float(dist.max()):.6g}, eps {self.eps:.6g}")
        with torch.no_grad():
            logits = self.model(candidates)
        if not bool(torch.isfinite(logits).all()):
            raise RobustgenError(f"attack stage {stage.name}: the model produced NaN/inf logits")
        fooled_here = (logits.argmax(1) != y).cpu()
        fooled[idx] = fooled_here.long()
        if self.adversarial is not None:
            self.adversarial[idx[fooled_here.numpy()]] = candidates[fooled_here.to(candidates.device)].cpu()
        return float(dist.max())

    def run_stage(self, s: int, stage: AttackStage) -> None:
        """Stage ``s`` on the points still robust, in rounds of one batch per rank (resumable)."""
        ctx, state, w = self.ctx, self.state, self.ctx.world_size
        if stage.restart and state.batch == 0 and s > 0:  # a new inner cascade: every clean-correct point
            state.group_robust, state.stage_start = state.clean.clone(), state.clean.clone()
        todo = state.stage_start.nonzero(as_tuple=True)[0].numpy()
        batches = [todo[lo:lo + self.batch_size] for lo in range(0, len(todo), self.batch_size)]
        bar = progress_bar(total=len(todo), initial=sum(len(b) for b in batches[:state.batch]),
                           desc=f"{self.desc}[{stage.name}]", unit="img",
                           disable=not (self.progress and ctx.is_main), leave=False)

        def do_round(r: int, first: int) -> None:
            t0 = time.perf_counter()
            fooled, farthest = torch.zeros(self.n, dtype=torch.int64), torch.zeros(1, dtype=torch.float64)
            if first + ctx.rank < len(batches):  # this rank's batch of the round
                farthest[0] = self.attack_batch(stage, batches[first + ctx.rank], fooled)
            broken = _across(ctx, fooled, self.device) > 0
            state.robust &= ~broken
            state.group_robust &= ~broken
            state.max_perturbation = max(state.max_perturbation,
                                         float(_across(ctx, farthest, self.device, op="max")[0]))
            state.stage_time += time.perf_counter() - t0
            state.batch = min(first + w, len(batches))
            self.save()
            bar.update(sum(len(b) for b in batches[first:state.batch]))

        # every rank stops after the same round (saved by rank 0); without a state path nothing resumes
        where = None if self.state_path is None else (
            lambda r, first: f"while evaluating ({stage.name}, batch {state.batch} of {len(batches)}; "
                             f"progress in {self.state_path})")
        run_rounds(ctx, range(state.batch, len(batches), w), do_round, where=where, stop_after_last=True)
        bar.close()
        broken = int((state.stage_start & ~state.group_robust).sum())
        state.stages.append({
            "stage": stage.name, "white_box": stage.white_box, "attacked": int(len(todo)),
            # within an inner cascade: that cascade's own robust accuracy so far
            "newly_broken": broken, "robust_accuracy": _fraction(state.group_robust),
            "time_s": round(state.stage_time, 3),
            "s_per_100_images": round(100 * state.stage_time / len(todo), 3) if len(todo) else 0.0})
        state.stage, state.batch, state.stage_time, state.stage_start = s + 1, 0, 0.0, state.group_robust.clone()
        self.save()


def run_cascade(model: nn.Module, images: np.ndarray, labels: np.ndarray, stages: list[AttackStage], *,
                norm: str, eps: float, batch_size: int, device, seed: int = 0, state_path: Path | None = None,
                state_key: str = "", progress: bool = False, desc: str = "eval",
                ctx: DistContext = DistContext(), keep_adversarial: bool = False) -> dict:
    """Clean and robust accuracy after each stage; ``state_path`` makes the run resumable
    (``state_key`` must identify model, data and attack settings; a mismatch is an error).
    ``images``: uint8 NHWC numpy or float NCHW tensor in [0, 1]. ``keep_adversarial``: the result's
    ``adversarial`` holds, per point, the candidate that fooled the model (float NCHW, CPU; the
    input itself where no stage succeeded); one process only, without a state path."""
    if keep_adversarial and (state_path is not None or ctx.enabled):
        raise RobustgenError("keep_adversarial needs an in-memory evaluation in one process (no state path, no torchrun)")
    job = _Cascade(model, images, labels, norm=norm, eps=eps, batch_size=batch_size, device=device, seed=seed,
                   state_path=state_path, state_key=state_key, progress=progress, desc=desc, ctx=ctx,
                   keep_adversarial=keep_adversarial)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with frozen_parameters(model), preempt.resumable() if state_path is not None else contextlib.nullcontext():
            if not job.state.clean_done:
                job.clean_pass()
            for s in range(job.state.stage, len(stages)):
                job.run_stage(s, stages[s])
    finally:
        model.train(was_training)
    state = job.state
    return {"n": job.n, "clean_accuracy": _fraction(state.clean), "robust_accuracy": _fraction(state.robust),
            "stages": state.stages, "max_perturbation": state.max_perturbation, "robust_mask": state.robust.numpy(),
            "time_s": round(time.perf_counter() - start, 3),
            **({"adversarial": job.adversarial} if keep_adversarial else {})}


def _across(ctx: DistContext, values: torch.Tensor, device, *, op: str = "sum") -> torch.Tensor:
    """``values`` (CPU) summed (or maxed) over the ranks; through ``device`` (NCCL needs CUDA tensors)."""
    if not ctx.enabled:
        return values
    import torch.distributed as tdist

    on = values.to(device)
    if op == "max":
        tdist.all_reduce(on, op=tdist.ReduceOp.MAX)
        return on.cpu()
    return sum_across(ctx, on).cpu()


def _fraction(flags: torch.Tensor) -> float:
    return int(flags.sum()) / len(flags) if len(flags) else float("nan")


def masking_warnings(stages: list[dict]) -> list[str]:
    """A black-box stage breaking points that the white-box stages before it missed suggests
    gradient masking (AutoAttack's own check_square_sr, per point)."""
    notes = []
    seen_white_box = False
    for s in stages:
        if s["white_box"]:
            seen_white_box = True
        elif seen_white_box and s["newly_broken"] > 0:
            notes.append(f"{s['stage']} broke {s['newly_broken']} points that the white-box stages missed: "
                         "possible gradient masking, the white-box numbers may overstate robustness")
    return notes
