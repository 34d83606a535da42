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
from tqdm.auto import tqdm

from robustgen import preempt
from robustgen.checkpoint import load_state, save_model, save_state, write_json
from robustgen.data import ImageDataset, crop_flip
from robustgen.data.sources import BatchSource, Prefetcher, WeightedIndices, gather_rows, host_buffer
from robustgen.errors import NonFiniteError, RobustgenError
from robustgen.train.distributed import DistContext, barrier, chunk_rows, sum_across
from robustgen.train.ema import WeightAverage
from robustgen.train.losses import smoothed_targets
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


@dataclass(frozen=True)
class LoopSettings:
    batch_size: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    alpha: float = 1.0  # fraction of real images per batch (with one generated source)
    source_weights: tuple | None = None  # share of the real split, then of each generated source (overrides alpha)
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
    micro_batches: int = 1  # chunks per device and step (gradient accumulation); BN statistics per chunk
    bn_group_size: int | None = None  # chunks are ordered so every group of this many images keeps the mix
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


def _step_generator(device: torch.device, seed: int, step: int, chunk: int, stream: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, step, chunk of the global batch, purpose).
    state = np.random.SeedSequence([seed, step, chunk, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class Chunk:
    images: torch.Tensor  # uint8 [b, H, W, C] on the device
    targets: torch.Tensor  # [b, K] soft targets
    index: int  # position in the global batch's chunks (seeds its randomness)
    weight: float  # b * world_size / B: makes DDP's gradient average the global batch mean


class TrainingBatches:
    """This rank's chunks of step t's global batch. Source 0 is the real split, kept on the
    device as uint8 (or, when its images are decoded on demand from files, gathered per step on
    the host like the generated rows); sources 1.. are generated sets (arrays in RAM or stores
    on disk, read with constant memory). Every batch holds exactly ``counts[i]`` rows of source i (``source_counts``
    of the weights; (alpha, 1 - alpha) gives round(alpha * B) real rows), spread evenly over the
    world_size x micro_batches chunks. Indices and generated rows are prepared ahead of the step
    by a background thread, into pinned memory under CUDA, and only for this rank's chunks."""

    def __init__(self, real: ImageDataset, generated: Sequence[BatchSource], s: LoopSettings, num_classes: int,
                 device: torch.device, ctx: DistContext, start_step: int = 0):
        self.device, self.ctx, self.s = device, ctx, s
        self.generated = list(generated)
        weights = s.source_weights or ((s.alpha, 1.0 - s.alpha) if self.generated else (1.0,))
        if len(weights) != 1 + len(self.generated):
            raise RobustgenError(f"{len(weights)} source weights for the real split and {len(self.generated)} "
                                 "generated sources")
        sampling = ("permutation",) + (s.generated_sampling,) * len(self.generated)
        self.indices = WeightedIndices([len(real), *(len(g) for g in self.generated)], weights,
                                       batch_size=s.batch_size, seed=s.seed, sampling=sampling)
        self.counts = self.indices.counts
        self.real_on_device = not real.decoded_on_demand
        if self.real_on_device:
            self.real_images = torch.from_numpy(real.images).to(device)  # uint8 [N, H, W, C]
            self.real_labels = torch.from_numpy(real.labels).to(device)
        # sources whose rows the prefetch thread gathers on the host
        self.host_sources = self.generated if self.real_on_device else [_FileSource(real), *self.generated]
        self.image_shape = tuple(real.images.shape[1:])
        self.num_classes = num_classes
        total_chunks = ctx.world_size * s.micro_batches
        if s.batch_size < total_chunks:
            raise RobustgenError(f"batch size {s.batch_size} is smaller than world size x micro-batches = {total_chunks}")
        first = ctx.rank * s.micro_batches
        self.mine = [(c, rows) for c, rows in enumerate(chunk_rows(self.counts, total_chunks))
                     if first <= c < first + s.micro_batches]
        self.group_order = [self._group_order(rows) for _, rows in self.mine]
        # Indices and generated rows are prepared a few steps ahead in a thread, in pinned host
        # memory on CUDA, so the step's copies are asynchronous: no host sync in the step.
        self.pin = device.type == "cuda"
        self.prefetch = Prefetcher(self._fetch, start_step=start_step, stop_step=s.total_steps, pin_memory=self.pin)

    def _group_order(self, rows) -> torch.Tensor | None:
        """Row order of a chunk (laid out source by source) that gives every consecutive group of
        ``bn_group_size`` rows an equal share (+-1) of each source: ghost BatchNorm groups keep the
        batch's real/generated mix."""
        g = self.s.bn_group_size
        if g is None:
            return None
        counts = [len(r) for r in rows]
        size = sum(counts)
        if size % g:
            raise RobustgenError(f"train.bn_group_size {g} must divide each device's chunk of the batch, which "
                                 f"holds {size} images (batch {self.s.batch_size} / (world size {self.ctx.world_size} "
                                 f"x micro_batches {self.s.micro_batches}))")
        offsets = np.cumsum([0] + counts[:-1])
        order = np.concatenate([offsets[i] + part for group in chunk_rows(counts, size // g)
                                for i, part in enumerate(group)])
        return torch.from_numpy(order).to(self.device)

    def _fetch(self, step: int) -> list:
        """Per chunk of this rank: its real indices (None when the real rows are gathered on the
        host), the number of real rows and the host-gathered rows (images, labels)."""
        idx = self.indices(step)
        out = []
        for _, rows in self.mine:
            real = idx[0][rows[0]]
            real_idx = None
            if self.real_on_device:
                real_idx = host_buffer((len(real),), np.int64, pin_memory=self.pin)
                real_idx.numpy()[:] = real
            picked = [source_idx[r] for source_idx, r in zip(idx, rows)][1 if self.real_on_device else 0:]
            n = sum(len(p) for p in picked)
            images = host_buffer((n, *self.image_shape), np.uint8, pin_memory=self.pin)
            labels = host_buffer((n,), np.int64, pin_memory=self.pin)
            gather_rows(self.host_sources, picked, images.numpy(), labels.numpy())
            out.append((real_idx, len(real), images, labels))
        return out

    def _chunk(self, real_idx: torch.Tensor | None, n_real: int, host_images: torch.Tensor,
               host_labels: torch.Tensor, index: int) -> Chunk:
        s, dev = self.s, self.device
        images = host_images.to(dev, non_blocking=True)
        labels = host_labels.to(dev, non_blocking=True)
        if real_idx is not None:  # real rows from the device copy, then the host rows
            real_idx = real_idx.to(dev, non_blocking=True)
            images = torch.cat([self.real_images[real_idx], images])
            labels = torch.cat([self.real_labels[real_idx], labels])
        n_gen = len(labels) - n_real
        smooth = torch.cat([torch.full((n_real,), s.label_smoothing_real, device=dev),
                            torch.full((n_gen,), s.label_smoothing_generated, device=dev)])
        targets = smoothed_targets(labels, num_classes=self.num_classes, smoothing=smooth)
        weight = (n_real + n_gen) * self.ctx.world_size / s.batch_size
        order = self.group_order[index - self.mine[0][0]]
        if order is not None:
            images, targets = images[order], targets[order]
        return Chunk(images=images, targets=targets, index=index, weight=weight)

    def __call__(self, step: int) -> list[Chunk]:
        if self.prefetch.next_step != step:
            raise RuntimeError(f"batches are read in step order: expected step {self.prefetch.next_step}, got {step}")
        fetched = next(self.prefetch)
        return [self._chunk(*item, c) for (c, _), item in zip(self.mine, fetched)]

    def close(self) -> None:
        self.prefetch.close()


class _FileSource:
    """A real split decoded on demand from files, as a batch source (``gather`` / ``labels``)."""

    def __init__(self, ds: ImageDataset):
        self.images, self.labels, self.num_classes = ds.images, ds.labels, ds.num_classes
        self.image_shape = ds.image_shape

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices, out=None):
        return self.images.gather(indices, out=out)


@dataclass
class LoopResult:
    history: list
    best: dict | None
    wall_time_s: float
    resumed_from: int


def train_loop(model: nn.Module, *, settings: LoopSettings, real: ImageDataset,
               generated: Sequence[BatchSource], step_loss: StepLoss,
               evaluate: Evaluator | None, out_dir: Path, device: torch.device, spec: dict,
               extra_meta: dict, fingerprint: str, desc: str = "train", compile_model: bool = False,
               ctx: DistContext = DistContext(), progress: bool = True) -> LoopResult:
    """Train ``model`` for ``settings.total_steps`` steps, writing into ``out_dir`` (rank 0 only):
    ``state.pt`` (resumable), ``last.safetensors`` (EMA weights when averaging, else raw),
    ``best.safetensors`` (the best of raw / EMA under ``evaluate``'s score) and ``history.json``.
    ``generated``: sources of generated images (``robustgen.data.sources``: arrays or stores),
    mixed with the real split as ``settings.source_weights`` (or alpha) say.
    Under torchrun (``ctx.enabled``) the model is wrapped in DistributedDataParallel."""
    s = settings
    main = ctx.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.SGD(parameter_groups(model, s.weight_decay), lr=0.0, momentum=s.momentum,
                                nesterov=s.nesterov)
    ema = WeightAverage(model, decay=s.ema_decay) if s.ema_decay is not None else None
    history: list[dict] = []
    best: dict | None = None
    start_step = 0
    resumed_running = None
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
        if not ctx.enabled and "running_loss" in state:  # the log window in progress (exact history)
            resumed_running = state["running_loss"]
        if progress and main:
            tqdm.write(f"{desc}: resuming from step {start_step}/{s.total_steps} ({state_path})")
    # The attack needs input gradients only and must not trigger DDP's gradient hooks; the
    # training forward passes go through DDP when distributed.
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

    saved_step = start_step if state_path.exists() else None

    def save_checkpoint(step: int) -> None:
        nonlocal saved_step
        save_state(state_path, {
            "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else {},
            "history": history, "best": best, "running_loss": running.detach().cpu()})
        saved_step = step

    def check_health(done: int, stop: bool) -> bool:
        """Raise ``NonFiniteError`` when the loss or the weights stopped being finite, before
        anything is evaluated or saved; returns whether to stop (agreed by all ranks). One host
        sync (and one all-reduce under torchrun), at boundaries only."""
        flags = torch.stack([(first_bad > 0).float(), nonfinite_weights(model),
                             torch.tensor(float(stop), device=device)])
        bad_loss, bad_weights, stop_votes = sum_across(ctx, flags).tolist()
        if bad_loss or bad_weights:
            step_text = (f"the loss became nan/inf at step {int(first_bad)}" if int(first_bad)
                         else f"the loss became nan/inf on another process by step {done}" if bad_loss
                         else f"the weights became nan/inf by step {done}")
            kept = (f"the last good checkpoint is {state_path} at step {saved_step}" if saved_step is not None
                    else "no checkpoint was written yet")
            if best is not None:
                kept += f"; best.safetensors (step {best['step']}) is untouched"
            raise NonFiniteError(f"{desc}: {step_text}; training stopped, {kept}; lower the learning rate "
                                 f"or check the data")
        return stop_votes > 0

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
    running = torch.zeros((), device=device) if resumed_running is None else resumed_running.to(device)
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss, 0: none
    bar = tqdm(total=s.total_steps, initial=start_step, desc=desc, unit="step", disable=not (progress and main),
               dynamic_ncols=True)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    batches = TrainingBatches(real, generated, s, spec["num_classes"], device, ctx, start_step=start_step)
    try:
        with preempt.resumable():
            for step in range(start_step, s.total_steps):
                lr = warmup_cosine_lr(step, peak_lr=s.peak_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                chunks = batches(step)
                for k, chunk in enumerate(chunks):
                    x = crop_flip(chunk.images, padding=s.crop_padding, flip=s.flip, memory_format=memory_format,
                                  generator=_step_generator(device, s.seed, step, chunk.index, 0))
                    # Gradients are all-reduced once per step, after the last chunk.
                    sync = train_model.no_sync() if ctx.enabled and k < len(chunks) - 1 else contextlib.nullcontext()
                    with sync:
                        loss = step_loss(attack_model, train_model, x, chunk.targets,
                                         _step_generator(device, s.seed, step, chunk.index, 1))
                        (loss * chunk.weight).backward()
                    running += loss.detach() * (chunk.weight / ctx.world_size)
                optimizer.step()
                if ema is not None:
                    ema.update(model, step)
                done = step + 1
                bar.update(1)
                # device-side record of the first non-finite loss: no host sync in the step
                first_bad = torch.where((first_bad == 0) & ~torch.isfinite(running), done, first_bad)
                log_now = done % s.log_every_steps == 0 or done == s.total_steps
                eval_now = bool(s.eval_every_steps and done % s.eval_every_steps == 0) or done == s.total_steps
                save_now = bool(s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0) or done == s.total_steps
                # a stop request is honoured at the next step; under torchrun at the next boundary, where ranks agree
                stop = preempt.requested() is not None and (not ctx.enabled or log_now or eval_now or save_now)
                if log_now or eval_now or save_now or stop:
                    stop = check_health(done, stop)
                if log_now:
                    count = done % s.log_every_steps or s.log_every_steps
                    mean_loss = float(sum_across(ctx, running)) / count  # host sync only at log points
                    running.zero_()
                    history.append({"step": done, "samples": done * s.batch_size, "loss": mean_loss, "lr": lr})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
                if main and eval_now:
                    run_evaluation(done)
                    model.train()
                if main and (save_now or stop):
                    save_checkpoint(done)
                if stop:
                    barrier(ctx)
                    preempt.stop_if_requested(f"in {desc} at step {done}/{s.total_steps} (state in {state_path})")
    finally:
        batches.close()
    bar.close()
    if main:
        final = ema.model if ema is not None else model
        save_model(out_dir / "last.safetensors", final, spec=spec,
                   extra={**extra_meta, "step": s.total_steps, "weights": "ema" if ema is not None else "raw"})
        if best is None:  # no evaluator: the last weights are the selection
            save_model(out_dir / "best.safetensors", final, spec=spec, extra={**extra_meta, "selection": None})
        write_json(out_dir / "history.json", history)
    barrier(ctx)
    return LoopResult(history=history, best=best, wall_time_s=time.perf_counter() - t0,
                      resumed_from=start_step)

