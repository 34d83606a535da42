"""The training loop shared by the non-robust classifier and adversarial training.

It does I/O, scheduling, logging and checkpointing, and holds no math: the step's loss comes
from ``train.steps``, schedules from ``train.schedule``. Everything random in step t (which
images, their crops and flips, the attack's start) is a pure function of (seed, t), so a run
interrupted at any checkpoint and resumed produces the same weights as an uninterrupted one.
Progress is counted in samples: an epoch is ``epoch_size`` samples whatever the data mix.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from robustgen.checkpoint import load_state, save_model, save_state, write_json
from robustgen.data import ImageDataset, MixedBatchIndices, batch_composition, crop_flip
from robustgen.errors import RobustgenError
from robustgen.train.ema import WeightAverage
from robustgen.train.losses import smoothed_targets
from robustgen.train.schedule import warmup_cosine_lr
from robustgen.train.steps import StepLoss

# evaluate(models: {"raw": m, "ema": m_ema}, step) -> {name: {"score": float, ...metrics}}
Evaluator = Callable[[dict[str, nn.Module], int], dict[str, dict]]


@dataclass(frozen=True)
class LoopSettings:
    batch_size: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    alpha: float = 1.0  # fraction of real images per batch
    label_smoothing_real: float = 0.0
    label_smoothing_generated: float = 0.1
    generated_sampling: str = "with_replacement"
    ema_decay: float | None = None  # None: no weight averaging
    eval_every_steps: int = 0  # 0: evaluate at the end only
    checkpoint_every_steps: int = 0  # 0: only at the end
    log_every_steps: int = 50
    crop_padding: int = 4
    flip: bool = True
    channels_last: bool = False
    seed: int = 0


def steps_for(*, epochs: float, epoch_size: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * epoch_size / batch_size))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on everything but BatchNorm parameters (the authors' choice)."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay = [p for p in model.parameters() if id(p) not in bn_params]
    no_decay = [p for p in model.parameters() if id(p) in bn_params]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_generator(device: torch.device, seed: int, step: int, stream: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, step, purpose).
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 8 + stream)


class _Batches:
    """uint8 images on the device and the exact alpha mix of real and generated rows per step."""

    def __init__(self, real: ImageDataset, generated: tuple[np.ndarray, np.ndarray] | None,
                 s: LoopSettings, num_classes: int, device: torch.device):
        self.device = device
        self.n_real, self.n_gen = batch_composition(s.batch_size, s.alpha)
        n_generated = 0 if generated is None else len(generated[1])
        self.indices = MixedBatchIndices(len(real), n_generated, s.batch_size, s.alpha, s.seed,
                                         generated_sampling=s.generated_sampling)
        self.real_images = torch.from_numpy(real.images).to(device)  # uint8 [N, H, W, C]
        self.real_labels = torch.from_numpy(real.labels).to(device)
        self.gen_images = self.gen_labels = None
        if generated is not None and self.n_gen:
            # Generated sets can be far larger than the real one: rows are gathered on the host.
            self.gen_images, self.gen_labels = generated
        smoothing = [s.label_smoothing_real] * self.n_real + [s.label_smoothing_generated] * self.n_gen
        self.smoothing = torch.tensor(smoothing, device=device, dtype=torch.float32)
        self.num_classes = num_classes
        self.pin = device.type == "cuda"

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx_real, idx_gen = self.indices(step)
        images = self.real_images[torch.from_numpy(idx_real).to(self.device)]
        labels = self.real_labels[torch.from_numpy(idx_real).to(self.device)]
        if self.n_gen:
            gen = torch.from_numpy(self.gen_images[idx_gen])
            gen_labels = torch.from_numpy(self.gen_labels[idx_gen])
            if self.pin:
                gen, gen_labels = gen.pin_memory(), gen_labels.pin_memory()
            images = torch.cat([images, gen.to(self.device, non_blocking=True)])
            labels = torch.cat([labels, gen_labels.to(self.device, non_blocking=True)])
        targets = smoothed_targets(labels, num_classes=self.num_classes, smoothing=self.smoothing)
        return images, targets


@dataclass
class LoopResult:
    history: list
    best: dict | None
    wall_time_s: float
    resumed_from: int


def train_loop(model: nn.Module, *, settings: LoopSettings, real: ImageDataset,
               generated: tuple[np.ndarray, np.ndarray] | None, step_loss: StepLoss,
               evaluate: Evaluator | None, out_dir: Path, device: torch.device, spec: dict,
               extra_meta: dict, fingerprint: str, desc: str = "train", compiled: nn.Module | None = None,
               progress: bool = True) -> LoopResult:
    """Train ``model`` for ``settings.total_steps`` steps, writing into ``out_dir``:
    ``state.pt`` (resumable), ``last.safetensors`` (EMA weights when averaging, else raw),
    ``best.safetensors`` (the best of raw / EMA under ``evaluate``'s score) and ``history.json``.
    ``compiled`` optionally is a ``torch.compile``d view of ``model`` used for the steps."""
    s = settings
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = spec["num_classes"]
    batches = _Batches(real, generated, s, num_classes, device)
    optimizer = torch.optim.SGD(parameter_groups(model, s.weight_decay), lr=0.0, momentum=s.momentum,
                                nesterov=s.nesterov)
    ema = WeightAverage(model, decay=s.ema_decay) if s.ema_decay is not None else None
    history: list[dict] = []
    best: dict | None = None
    start_step = 0
    state_path = out_dir / "state.pt"
    if state_path.exists():
        state = load_state(state_path)
        if state.get("fingerprint") != fingerprint:
            raise RobustgenError(f"{state_path}: belongs to a run with a different config; use another output folder or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, best, start_step = state["history"], state["best"], int(state["step"])
        if progress:
            tqdm.write(f"{desc}: resuming from step {start_step}/{s.total_steps} ({state_path})")
    forward_model = compiled if compiled is not None else model

    def save_checkpoint(step: int) -> None:
        save_state(state_path, {
            "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else {},
            "history": history, "best": best})

    def run_evaluation(step: int) -> None:
        nonlocal best
        if evaluate is None:
            return
        variants = {"raw": model} if ema is None else {"raw": model, "ema": ema.model}
        results = evaluate(variants, step)
        for name, metrics in results.items():
            history.append({"step": step, "samples": step * s.batch_size, "model": name, **metrics})
            if best is None or metrics["score"] > best["score"]:
                best = {"step": step, "model": name, **metrics}
                save_model(out_dir / "best.safetensors", variants[name], spec=spec,
                           extra={**extra_meta, "selection": best})
        write_json(out_dir / "history.json", history)

    t0 = time.perf_counter()
    model.train()
    running = torch.zeros((), device=device)
    bar = tqdm(total=s.total_steps, initial=start_step, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    for step in range(start_step, s.total_steps):
        lr = warmup_cosine_lr(step, peak_lr=s.peak_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = batches(step)
        x = crop_flip(images, padding=s.crop_padding, flip=s.flip,
                      generator=_step_generator(device, s.seed, step, 0), memory_format=memory_format)
        loss = step_loss(forward_model, x, targets, _step_generator(device, s.seed, step, 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        running += loss.detach()
        done = step + 1
        bar.update(1)
        if done % s.log_every_steps == 0 or done == s.total_steps:
            count = done % s.log_every_steps or s.log_every_steps
            mean_loss = float(running) / count  # host sync only at log points
            running.zero_()
            if not math.isfinite(mean_loss):
                raise RobustgenError(f"{desc}: loss became {mean_loss} at step {done}; lower the learning rate")
            history.append({"step": done, "samples": done * s.batch_size, "loss": mean_loss, "lr": lr})
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
        if (s.eval_every_steps and done % s.eval_every_steps == 0) or done == s.total_steps:
            run_evaluation(done)
            model.train()
        if (s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0) or done == s.total_steps:
            save_checkpoint(done)
    bar.close()
    final = ema.model if ema is not None else model
    save_model(out_dir / "last.safetensors", final, spec=spec,
               extra={**extra_meta, "step": s.total_steps, "weights": "ema" if ema is not None else "raw"})
    if best is None:  # no evaluator: the last weights are the selection
        save_model(out_dir / "best.safetensors", final, spec=spec, extra={**extra_meta, "selection": None})
    write_json(out_dir / "history.json", history)
    return LoopResult(history=history, best=best, wall_time_s=time.perf_counter() - t0,
                      resumed_from=start_step)


def settings_dict(s: LoopSettings) -> dict:
    return asdict(s)
