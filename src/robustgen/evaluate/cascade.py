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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from robustgen.progress import progress_bar
from robustgen import preempt
from robustgen.attacks.pgd import frozen_parameters, perturbation_norm, within_ball
from robustgen.checkpoint import load_state, save_state
from robustgen.data.augment import to_float_nchw
from robustgen.errors import RobustgenError
from robustgen.train.distributed import DistContext, stop_if_requested, sum_across

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


def _fresh_state(n: int, key: str) -> dict:
    return {"key": key, "clean_done": False, "clean": torch.zeros(n, dtype=torch.bool),
            "robust": torch.zeros(n, dtype=torch.bool), "stage_start": torch.zeros(n, dtype=torch.bool),
            "group_robust": torch.zeros(n, dtype=torch.bool),
            "stage": 0, "batch": 0, "stages": [], "stage_time": 0.0, "max_perturbation": 0.0}


def run_cascade(model: nn.Module, images: np.ndarray, labels: np.ndarray, stages: list[AttackStage], *,
                norm: str, eps: float, batch_size: int, device, seed: int = 0, state_path: Path | None = None,
                state_key: str = "", progress: bool = False, desc: str = "eval",
                ctx: DistContext = DistContext(), keep_adversarial: bool = False) -> dict:
    """Clean and robust accuracy after each stage; ``state_path`` makes the run resumable
    (``state_key`` must identify model, data and attack settings; a mismatch is an error).
    ``images``: uint8 NHWC numpy or float NCHW tensor in [0, 1]. ``keep_adversarial``: the result's
    ``adversarial`` holds, per point, the candidate that fooled the model (float NCHW, CPU; the
    input itself where no stage succeeded); one process only, without a state path."""
    n = len(labels)
    if keep_adversarial and (state_path is not None or ctx.enabled):
        raise RobustgenError("keep_adversarial needs an in-memory evaluation in one process (no state path, no torchrun)")
    adversarial = None
    was_training = model.training
    model.eval()
    state = _fresh_state(n, state_key)
    if state_path is not None and Path(state_path).exists():
        state = load_state(state_path)
        if state.get("key") != state_key:
            raise RobustgenError(f"{state_path}: partial evaluation of another model/attack/data; delete it or use another --out")

    def save() -> None:
        if state_path is not None and ctx.is_main:
            save_state(state_path, state)

    w = ctx.world_size

    start = time.perf_counter()
    try:
        with frozen_parameters(model), preempt.resumable() if state_path is not None else contextlib.nullcontext():
            if not state["clean_done"]:
                clean = torch.zeros(n, dtype=torch.int64)
                with torch.no_grad():
                    for lo in range(ctx.rank * batch_size, n, w * batch_size):
                        idx = np.arange(lo, min(lo + batch_size, n))
                        x, y = _to_device(images, labels, idx, device)
                        if keep_adversarial:
                            if adversarial is None:
                                adversarial = torch.empty((n, *x.shape[1:]), dtype=torch.float32)
                            adversarial[idx] = x.cpu()
                        logits = model(x)
                        if not bool(torch.isfinite(logits).all()):
                            raise RobustgenError("the model produced NaN/inf logits on clean test inputs")
                        clean[idx] = (logits.argmax(1) == y).cpu().long()
                state["clean"] = _across(ctx, clean, device) > 0
                state["robust"] = state["clean"].clone()
                state["group_robust"] = state["clean"].clone()
                state["stage_start"] = state["clean"].clone()
                state["clean_done"] = True
                save()
            for s in range(state["stage"], len(stages)):
                stage = stages[s]
                if stage.restart and state["batch"] == 0 and s > 0:  # a new inner cascade: every clean-correct point
                    state["group_robust"] = state["clean"].clone()
                    state["stage_start"] = state["clean"].clone()
                todo = state["stage_start"].nonzero(as_tuple=True)[0].numpy()
                batches = [todo[lo:lo + batch_size] for lo in range(0, len(todo), batch_size)]
                bar = progress_bar(total=len(todo), initial=sum(len(b) for b in batches[:state["batch"]]),
                           desc=f"{desc}[{stage.name}]", unit="img", disable=not (progress and ctx.is_main),
                           leave=False)
                for first in range(state["batch"], len(batches), w):
                    t0 = time.perf_counter()
                    fooled = torch.zeros(n, dtype=torch.int64)
                    farthest = torch.zeros(1, dtype=torch.float64)
                    if first + ctx.rank < len(batches):  # this rank's batch of the round
                        idx = batches[first + ctx.rank]
                        x, y = _to_device(images, labels, idx, device)
                        candidates = stage.run(model, x, y, seed).detach()
                        dist = perturbation_norm(candidates, x, norm=norm)
                        if not bool(within_ball(dist, eps).all()) or bool((candidates < 0).any() | (candidates > 1).any()):
                            raise RobustgenError(f"attack stage {stage.name} returned points outside the {norm} eps-ball "
                                                 f"or [0,1]: max distance {float(dist.max()):.6g}, eps {eps:.6g}")
                        with torch.no_grad():
                            logits = model(candidates)
                        if not bool(torch.isfinite(logits).all()):
                            raise RobustgenError(f"attack stage {stage.name}: the model produced NaN/inf logits")
                        fooled_here = (logits.argmax(1) != y).cpu()
                        fooled[idx] = fooled_here.long()
                        if adversarial is not None:
                            adversarial[idx[fooled_here.numpy()]] = candidates[fooled_here.to(candidates.device)].cpu()
                        farthest[0] = float(dist.max())
                    broken = _across(ctx, fooled, device) > 0
                    state["robust"] &= ~broken
                    state["group_robust"] &= ~broken
                    state["max_perturbation"] = max(state["max_perturbation"],
                                                    float(_across(ctx, farthest, device, op="max")[0]))
                    state["stage_time"] += time.perf_counter() - t0
                    state["batch"] = min(first + w, len(batches))
                    save()
                    bar.update(sum(len(b) for b in batches[first:state["batch"]]))
                    if state_path is not None:  # every rank stops after the same round (saved by rank 0)
                        stop_if_requested(ctx, f"while evaluating ({stage.name}, batch {state['batch']} of "
                                               f"{len(batches)}; progress in {state_path})")
                bar.close()
                broken = int((state["stage_start"] & ~state["group_robust"]).sum())
                state["stages"].append({
                    "stage": stage.name, "white_box": stage.white_box, "attacked": int(len(todo)),
                    # within an inner cascade: that cascade's own robust accuracy so far
                    "newly_broken": broken, "robust_accuracy": _fraction(state["group_robust"]),
                    "time_s": round(state["stage_time"], 3),
                    "s_per_100_images": round(100 * state["stage_time"] / len(todo), 3) if len(todo) else 0.0})
                state.update(stage=s + 1, batch=0, stage_time=0.0, stage_start=state["group_robust"].clone())
                save()
    finally:
        model.train(was_training)
    return {
        "n": n,
        "clean_accuracy": _fraction(state["clean"]),
        "robust_accuracy": _fraction(state["robust"]),
        "stages": state["stages"],
        "max_perturbation": state["max_perturbation"],
        "robust_mask": state["robust"].numpy(),
        "time_s": round(time.perf_counter() - start, 3),
        **({"adversarial": adversarial} if keep_adversarial else {}),
    }


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
