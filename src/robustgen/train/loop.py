"""The training loop shared by the non-robust classifier and adversarial training.

It does I/O, scheduling, logging and checkpointing, and holds no math: the step's loss comes
from ``train.steps``, schedules from ``train.schedule``. Everything random in step t (which
images, their crops and flips, the attack's start) is a pure function of (seed, t), so a run
interrupted at any checkpoint and resumed produces the same weights as an uninterrupted one.
Progress is counted in samples: an epoch is ``epoch_size`` samples whatever the data mix.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from robustgen.checkpoint import resume_state, save_model, save_state
from robustgen.data import ImageDataset, crop_flip
from robustgen.data.augment import mix_augment
from robustgen.runtime import preempt
from robustgen.runtime.distributed import DistContext, barrier, sum_across
from robustgen.runtime.errors import NonFiniteError
from robustgen.runtime.io import write_json
from robustgen.runtime.progress import peak_memory, progress_bar, progress_write
from robustgen.tracking import MetricsLog, open_trackers
from robustgen.train.ema import WeightAverage
from robustgen.train.mixing.batches import Chunk, TrainingBatches
from robustgen.train.mixing.settings import MixSettings
from robustgen.train.mixing.sources import BatchSource
from robustgen.train.schedule import warmup_cosine_lr
from robustgen.train.steps import StepLoss

# evaluate(models: {"raw": m, "ema": m_ema}, step) -> {name: {"score": float, ...metrics}}
Evaluator = Callable[[dict[str, nn.Module], int], dict[str, dict]]


def nonfinite_weights(model: nn.Module) -> torch.Tensor:
    """1.0 (on the device, no host sync) when any floating parameter or buffer is NaN/inf, else 0.0."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not tensors:
        return torch.zeros((), device=next(iter(model.state_dict().values())).device)
    return (~torch.stack([torch.isfinite(t).all() for t in tensors]).all()).float()


@dataclass(frozen=True, kw_only=True)
class LoopSettings(MixSettings):
    """The training loop's settings: the batch's mix (``MixSettings``, all the batch builder reads)
    plus the optimiser, schedule, weight averaging, periods and augmentation."""

    warmup_steps: int
    peak_lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    ema_decay: float | None = None  # None: no weight averaging
    eval_every_steps: int = 0  # 0: evaluate at the end only
    checkpoint_every_steps: int = 0  # 0: only at the end
    log_every_steps: int = 50
    crop_padding: int = 4
    flip: bool = True
    augment: str = "none"  # after crop and flip (data.augment.mix_augment): mixup, cutmix, cutout, ...
    channels_last: bool = False


def steps_for(*, epochs: float, epoch_size: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * epoch_size / batch_size))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on everything but BatchNorm parameters (the authors' choice)."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay = [p for p in model.parameters() if id(p) not in bn_params]
    no_decay = [p for p in model.parameters() if id(p) in bn_params]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_generator(device: torch.device, seed: int, step: int, chunk: int, stream: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, step, chunk of the global batch, purpose).
    state = np.random.SeedSequence([seed, step, chunk, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class LoopResult:
    history: list
    best: dict | None
    wall_time_s: float
    resumed_from: int


def _resume(state_path: Path, fingerprint: str, model: nn.Module, optimizer, ema, ctx: DistContext):
    """Load the training state at ``state_path`` into ``model`` / ``optimizer`` / ``ema``:
    (history, best, start step, the log window in progress: (loss sum, {term: sum}) or None); a
    fresh start when there is none."""
    state = resume_state(state_path, fingerprint,
                         refusal="belongs to a run with a different config; use another output folder or delete it")
    if state is None:
        return [], None, 0, None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    # the log window in progress, for an exact history (one process only)
    running = (state["running_loss"], state.get("running_terms") or {}) \
        if not ctx.enabled and "running_loss" in state else None
    return state["history"], state["best"], int(state["step"]), running


def _attack_and_training_models(model: nn.Module, ctx: DistContext, device: torch.device, compile_model: bool):
    """(the model the attack runs on, the model the training forward passes run on). The attack
    needs input gradients only and must not trigger DDP's gradient hooks; the training forward
    passes go through DDP when distributed."""
    attack_model = torch.compile(model) if compile_model else model
    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Per-device BatchNorm: running statistics are not re-synchronised at every forward.
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              **no_buffer_sync)
    if compile_model:
        train_model = attack_model if not ctx.enabled else torch.compile(train_model)
    return attack_model, train_model


def _accumulate_gradients(chunks: list[Chunk], step: int, s: LoopSettings, step_loss: StepLoss, attack_model,
                          train_model, device: torch.device, ctx: DistContext, memory_format,
                          running: torch.Tensor, running_terms: dict) -> None:
    """Backward of step ``step``'s loss over this rank's chunks (each weighted by its share of the
    global batch); the loss is added to ``running``, the log window's sum, and the loss's terms
    (``last_terms`` of the step loss, e.g. TRADES' CE and KL) to ``running_terms`` (on the device:
    no host sync)."""
    for k, chunk in enumerate(chunks):
        x = crop_flip(chunk.images, padding=s.crop_padding, flip=s.flip, memory_format=memory_format,
                      generator=_step_generator(device, s.seed, step, chunk.index, 0))
        targets = chunk.targets
        if s.augment != "none":
            x, targets = mix_augment(x, targets, s.augment, _step_generator(device, s.seed, step, chunk.index, 2))
        # Gradients are all-reduced once per step, after the last chunk.
        sync = train_model.no_sync() if ctx.enabled and k < len(chunks) - 1 else contextlib.nullcontext()
        with sync:
            loss = step_loss(attack_model, train_model, x, targets,
                             _step_generator(device, s.seed, step, chunk.index, 1))
            (loss * chunk.weight).backward()
        running += loss.detach() * (chunk.weight / ctx.world_size)
        for name, value in (getattr(step_loss, "last_terms", None) or {}).items():
            total = running_terms.setdefault(name, torch.zeros((), device=device))
            total += value.float() * (chunk.weight / ctx.world_size)


def _boundaries(done: int, s: LoopSettings) -> tuple[bool, bool, bool]:
    """Whether ``done`` steps end a log window, an evaluation period and a checkpoint period (the
    last step ends all three)."""
    last = done == s.total_steps
    return (done % s.log_every_steps == 0 or last,
            bool(s.eval_every_steps and done % s.eval_every_steps == 0) or last,
            bool(s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0) or last)


def _save_final(out_dir: Path, final: nn.Module, s: LoopSettings, *, spec: dict, extra_meta: dict, weights: str,
                selected: bool, history: list) -> None:
    """``last.safetensors``, ``best.safetensors`` when no evaluation selected one, and the history."""
    save_model(out_dir / "last.safetensors", final, spec=spec,
               extra={**extra_meta, "step": s.total_steps, "weights": weights})
    if not selected:  # no evaluator: the last weights are the selection
        save_model(out_dir / "best.safetensors", final, spec=spec, extra={**extra_meta, "selection": None})
    write_json(out_dir / "history.json", history)


def _nonfinite_error(desc: str, first_bad_step: int, bad_loss: bool, done: int, state_path: Path,
                     saved_step: int | None, best: dict | None) -> NonFiniteError:
    """The one-line error of a loss or weights that stopped being finite, saying what is kept."""
    step_text = (f"the loss became nan/inf at step {first_bad_step}" if first_bad_step
                 else f"the loss became nan/inf on another process by step {done}" if bad_loss
                 else f"the weights became nan/inf by step {done}")
    kept = (f"the last good checkpoint is {state_path} at step {saved_step}" if saved_step is not None
            else "no checkpoint was written yet")
    if best is not None:
        kept += f"; best.safetensors (step {best['step']}) is untouched"
    return NonFiniteError(f"{desc}: {step_text}; training stopped, {kept}; lower the learning rate or check the data")


class _LoopState:
    """What the loop keeps between steps besides the weights: history, the best selection, the log
    window's loss sums (on the device: no host sync per step) and the checkpoint it last wrote."""

    def __init__(self, resumed, device: torch.device, state_path: Path):
        self.history, self.best, self.start_step, running = resumed
        self.running = torch.zeros((), device=device) if running is None else running[0].to(device)
        # the loss terms' log window (TRADES: natural CE, robust KL)
        self.running_terms = {} if running is None else {k: v.to(device) for k, v in running[1].items()}
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss
        self.saved_step = self.start_step if state_path.exists() else None

    def state(self, step: int, model: nn.Module, optimizer, ema, fingerprint: str) -> dict:
        return {"fingerprint": fingerprint, "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                "history": self.history, "best": self.best, "running_loss": self.running.detach().cpu(),
                "running_terms": {k: v.detach().cpu() for k, v in self.running_terms.items()}}

    def window_means(self, ctx: DistContext, count: int) -> tuple[float, dict]:
        """The log window's mean loss and terms over ``count`` steps (summed over ranks), then reset."""
        mean_loss = float(sum_across(ctx, self.running)) / count  # host sync only at log points
        self.running.zero_()
        terms = {}
        if self.running_terms:
            names = sorted(self.running_terms)
            sums = sum_across(ctx, torch.stack([self.running_terms[k] for k in names])).tolist()
            terms = {f"loss_{k}": v / count for k, v in zip(names, sums)}
            for v in self.running_terms.values():
                v.zero_()
        return mean_loss, terms


def _select(evaluate: Evaluator, model: nn.Module, ema, step: int, s: LoopSettings, loop: _LoopState, live: MetricsLog,
            out_dir: Path, spec: dict, extra_meta: dict) -> None:
    """Evaluate the raw and EMA weights; the best so far goes to ``best.safetensors``."""
    variants = {"raw": model} if ema is None else {"raw": model, "ema": ema.model}
    for name, metrics in evaluate(variants, step).items():
        loop.history.append({"step": step, "samples": step * s.batch_size, "model": name, **metrics})
        live.log({"step": step, "model": name, **metrics}, prefix=f"val/{name}/")
        if loop.best is None or metrics["score"] > loop.best["score"]:
            loop.best = {"step": step, "model": name, **metrics}
            save_model(out_dir / "best.safetensors", variants[name], spec=spec, extra={**extra_meta, "selection": loop.best})
    write_json(out_dir / "history.json", loop.history)


def train_loop(model: nn.Module, *, settings: LoopSettings, real: ImageDataset,
               generated: Sequence[BatchSource], step_loss: StepLoss,
               evaluate: Evaluator | None, out_dir: Path, device: torch.device, spec: dict,
               extra_meta: dict, fingerprint: str, desc: str = "train", compile_model: bool = False,
               ctx: DistContext = DistContext(), progress: bool = True, logging=None) -> LoopResult:
    """Train ``model`` for ``settings.total_steps`` steps, writing into ``out_dir`` (rank 0 only):
    ``state.pt`` (resumable), ``last.safetensors`` (EMA weights when averaging, else raw),
    ``best.safetensors`` (the best of raw / EMA under ``evaluate``'s score), ``history.json`` and
    ``metrics.jsonl`` (``robustgen.tracking``; mirrored to the trackers ``logging`` turns on).
    ``generated``: sources of generated images (``robustgen.train.mixing.sources``: arrays or stores),
    mixed with the real split as ``settings.source_weights`` say.
    Under torchrun (``ctx.enabled``) the model is wrapped in DistributedDataParallel."""
    s, main = settings, ctx.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.SGD(parameter_groups(model, s.weight_decay), lr=0.0, momentum=s.momentum,
                                nesterov=s.nesterov)
    ema = WeightAverage(model, decay=s.ema_decay) if s.ema_decay is not None else None
    state_path = out_dir / "state.pt"
    loop = _LoopState(_resume(state_path, fingerprint, model, optimizer, ema, ctx), device, state_path)
    if state_path.exists() and progress and main:
        progress_write(f"{desc}: resuming from step {loop.start_step}/{s.total_steps} ({state_path})")
    attack_model, train_model = _attack_and_training_models(model, ctx, device, compile_model)
    live = None if not main else MetricsLog(out_dir / "metrics.jsonl", resume_step=loop.start_step, trackers=open_trackers(
        logging, out_dir, name=out_dir.name, resume_step=loop.start_step, config=extra_meta.get("config")))
    t0 = last_log = time.perf_counter()
    model.train()
    bar = progress_bar(total=s.total_steps, initial=loop.start_step, desc=desc, unit="step",
                       disable=not (progress and main), dynamic_ncols=True)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    batches = TrainingBatches(real, generated, s, spec["num_classes"], device, ctx, start_step=loop.start_step)
    try:
        with preempt.resumable():
            for step in range(loop.start_step, s.total_steps):
                lr = warmup_cosine_lr(step, peak_lr=s.peak_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                _accumulate_gradients(batches(step), step, s, step_loss, attack_model, train_model, device, ctx,
                                      memory_format, loop.running, loop.running_terms)
                optimizer.step()
                if ema is not None:
                    ema.update(model, step)
                done = step + 1
                bar.update(1)
                # device-side record of the first non-finite loss: no host sync in the step
                loop.first_bad = torch.where((loop.first_bad == 0) & ~torch.isfinite(loop.running), done, loop.first_bad)
                log_now, eval_now, save_now = _boundaries(done, s)
                # a stop request is honoured at the next step; under torchrun at the next boundary, where ranks agree
                stop = preempt.requested() is not None and (not ctx.enabled or log_now or eval_now or save_now)
                if log_now or eval_now or save_now or stop:
                    stop = _check_health(model, loop, ctx, device, done, stop, desc, state_path)
                if log_now:
                    last_log = _log_window(loop, ctx, s, done, lr, bar, live, last_log)
                if main and eval_now:
                    if evaluate is not None:
                        _select(evaluate, model, ema, done, s, loop, live, out_dir, spec, extra_meta)
                    model.train()
                    last_log = time.perf_counter()  # img/s counts training, not model selection
                if main and (save_now or stop):
                    save_state(state_path, loop.state(done, model, optimizer, ema, fingerprint))
                    loop.saved_step = done
                if stop:
                    barrier(ctx)
                    preempt.stop_if_requested(f"in {desc} at step {done}/{s.total_steps} (state in {state_path})")
    finally:
        batches.close()
        if live is not None:
            live.close()
    bar.close()
    if main:
        _save_final(out_dir, ema.model if ema is not None else model, s, spec=spec, extra_meta=extra_meta,
                    weights="ema" if ema is not None else "raw", selected=loop.best is not None, history=loop.history)
    barrier(ctx)
    return LoopResult(history=loop.history, best=loop.best, wall_time_s=time.perf_counter() - t0, resumed_from=loop.start_step)


def _check_health(model: nn.Module, loop: _LoopState, ctx: DistContext, device, done: int, stop: bool, desc: str,
                  state_path: Path) -> bool:
    """Raise ``NonFiniteError`` when the loss or the weights stopped being finite, before anything
    is evaluated or saved; returns whether to stop (agreed by all ranks). One host sync (and one
    all-reduce under torchrun), at boundaries only."""
    flags = torch.stack([(loop.first_bad > 0).float(), nonfinite_weights(model), torch.tensor(float(stop), device=device)])
    bad_loss, bad_weights, stop_votes = sum_across(ctx, flags).tolist()
    if bad_loss or bad_weights:
        raise _nonfinite_error(desc, int(loop.first_bad), bool(bad_loss), done, state_path, loop.saved_step, loop.best)
    return stop_votes > 0


def _log_window(loop: _LoopState, ctx: DistContext, s: LoopSettings, done: int, lr: float, bar, live, last_log: float) -> float:
    """Close the log window ending at step ``done``: history, progress bar, ``metrics.jsonl``; returns its end time."""
    count = done % s.log_every_steps or s.log_every_steps
    mean_loss, terms = loop.window_means(ctx, count)
    loop.history.append({"step": done, "samples": done * s.batch_size, "loss": mean_loss, "lr": lr})
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
    if not ctx.is_main:
        return last_log
    now = time.perf_counter()
    peak = peak_memory()
    live.log({"step": done, "samples": done * s.batch_size, "loss": mean_loss, **terms, "lr": lr,
              "img_per_s": count * s.batch_size / max(now - last_log, 1e-9),
              **({f"{peak[0]}_peak_gib": peak[1]} if peak else {})}, prefix="train/")
    return now
