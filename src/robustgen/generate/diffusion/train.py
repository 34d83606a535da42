"""DDPM training (Ho et al. 2020, Alg. 1): eps-prediction MSE at uniform timesteps, or the EDM
objective and preconditioning (``objective="edm"``, Karras et al. 2022; ``edm.py``), Adam with a
linear warm-up, gradient clipping and an EMA of the weights, with resumable checkpoints.
``label_dropout`` replaces the class with a null class (classifier-free guidance, ``edm.py``).

Every random draw of step s (batch indices, flips, timesteps, noise, shifts, null
labels, EDM noise levels, dropout) comes from
generators seeded by (seed, s), and the learning rate and EMA decay are pure functions of s, so
a run resumed from its checkpoint (model, EMA, Adam state, step) equals an uninterrupted one.
The loop does I/O and scheduling only; ``ddpm_loss`` is the math.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from robustgen.checkpoint import resume_state, save_state
from robustgen.generate.diffusion.edm import EDM_P_MEAN, EDM_P_STD, edm_loss
from robustgen.runtime.errors import NonFiniteError, RobustgenError
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.jobs import run_rounds
from robustgen.runtime.progress import progress_bar
from robustgen.tracking import MetricsLog

__all__ = ["DDPMTrainSettings", "StepBatch", "ddpm_loss", "num_shifts", "shift_images", "train_ddpm"]

STATE_FILE = "ddpm_train_state.pt"


@dataclass(frozen=True)
class DDPMTrainSettings:
    steps: int  # optimiser steps
    batch_size: int  # images per step
    lr: float  # Adam peak learning rate
    warmup_steps: int  # linear warm-up from 0 to lr
    ema_decay: float  # EMA of the weights, ramped as min(decay, (1 + s) / (10 + s))
    grad_clip: float  # max global gradient norm (0: none)
    flip: bool  # random horizontal flips
    seed: int
    bf16: bool = False  # autocast the UNet on CUDA
    checkpoint_every_steps: int = 500
    # non-leaking augmentation (Karras et al. 2022): with probability augment_p an image is shifted by
    # (dy, dx) in [-augment_shift, augment_shift]^2 (edges replicated) and the UNet is told the shift
    # through its class embedding (class + num_classes * shift index; no shift = index 0), so that
    # sampling with the plain class draws un-shifted images
    augment_shift: int = 0
    augment_p: float = 0.0
    num_classes: int = 1  # classes of the labels (1: unconditional)
    objective: str = "eps"  # eps: Ho et al.'s eps-prediction; edm: Karras et al.'s preconditioned denoiser
    label_dropout: float = 0.0  # probability of training on the null class (classifier-free guidance)
    null_class: int = -1  # the null class's embedding index (label_dropout > 0)


def num_shifts(augment_shift: int) -> int:
    """Conditions of the augmentation: every (dy, dx) in [-s, s]^2."""
    return (2 * augment_shift + 1) ** 2


def shift_images(x: torch.Tensor, shift_index: torch.Tensor, augment_shift: int) -> torch.Tensor:
    """Shift each image of x [B, C, H, W] by the (dy, dx) of its ``shift_index`` (0: none; see
    ``num_shifts``), replicating the edge pixels (pure)."""
    s = augment_shift
    side = 2 * s + 1
    code = (shift_index + s * side + s) % num_shifts(s)  # index 0 is the centre code (dy, dx) = (0, 0)
    dy, dx = code // side - s, code % side - s
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device)[None, :] + s - dy.to(x.device)[:, None])  # [B, H]
    cols = (torch.arange(w, device=x.device)[None, :] + s - dx.to(x.device)[:, None])  # [B, W]
    b = torch.arange(len(x), device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def ddpm_loss(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
              class_labels: torch.Tensor | None) -> torch.Tensor:
    """Ho et al. L_simple: || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2, mean."""
    a = alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return F.mse_loss(unet(xt, t, class_labels=class_labels).sample.float(), noise)


def _step_seed(seed: int, step: int) -> int:
    s = np.random.SeedSequence([int(seed), int(step), 0xD0F1]).generate_state(2, np.uint32)
    return int(s[0]) << 32 | int(s[1])


def _lr(settings: DDPMTrainSettings, step: int) -> float:
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr


class StepBatch(NamedTuple):
    x0: torch.Tensor  # images on the device, [-1, 1]
    t: torch.Tensor  # timesteps (eps objective)
    noise: torch.Tensor
    idx: torch.Tensor  # rows of the data
    shift: torch.Tensor | None  # augmentation condition of each image (0: none)
    drop: torch.Tensor | None  # True: the null class (classifier-free guidance)
    log_sigma: torch.Tensor | None  # noise levels (edm objective)


def _step_batch(settings: DDPMTrainSettings, step: int, data: torch.Tensor, num_timesteps: int) -> StepBatch:
    """Step ``step``'s batch, a pure function of (seed, step). Also seeds torch's global generator for
    the step's dropout. Options draw after the others, so runs without them keep their batches."""
    seed = _step_seed(settings.seed, step)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    idx = torch.randint(len(data), (settings.batch_size,), generator=g)
    t = torch.randint(num_timesteps, (settings.batch_size,), generator=g)
    noise = torch.randn((settings.batch_size, *data.shape[1:]), generator=g)
    x0 = data[idx.to(data.device)]
    if settings.flip:
        flip = (torch.rand(settings.batch_size, generator=g) < 0.5).to(data.device)
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(3), x0)
    shift = None
    if settings.augment_shift > 0:  # drawn after the others: runs without augmentation are unchanged
        on = torch.rand(settings.batch_size, generator=g) < settings.augment_p
        shift = torch.randint(num_shifts(settings.augment_shift), (settings.batch_size,), generator=g) * on
        x0 = shift_images(x0, shift, settings.augment_shift)
    drop = torch.rand(settings.batch_size, generator=g) < settings.label_dropout if settings.label_dropout > 0 else None
    log_sigma = None
    if settings.objective == "edm":
        log_sigma = EDM_P_MEAN + EDM_P_STD * torch.randn(settings.batch_size, generator=g)
    return StepBatch(x0, t, noise, idx, shift, drop, log_sigma)


def _ddpm_step(unet, opt, params, ema, b: StepBatch, settings: DDPMTrainSettings, step: int, ys, abar,
               device: torch.device, autocast) -> torch.Tensor:
    """One optimiser step on batch ``b``, then the EMA update; returns the loss (on the device)."""
    for group in opt.param_groups:
        group["lr"] = _lr(settings, step)
    condition = None if ys is None else ys[b.idx.to(device)]
    if b.shift is not None:  # the augmentation's condition, through the class embedding
        condition = condition + settings.num_classes * b.shift.to(device)
    if b.drop is not None:
        condition = torch.where(b.drop.to(device), settings.null_class, condition)
    with autocast:
        if settings.objective == "edm":
            loss = edm_loss(unet, b.x0, b.log_sigma, b.noise.to(device), condition)
        else:
            loss = ddpm_loss(unet, b.x0, b.t.to(device), b.noise.to(device), abar, condition)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    opt.step()
    decay = min(settings.ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
    return loss.detach()


def train_ddpm(unet, images: np.ndarray, labels: np.ndarray | None, *, alphas_cumprod: torch.Tensor,
               settings: DDPMTrainSettings, device: torch.device | str = "cpu", work_dir: Path | None = None,
               fingerprint: str = "", progress: bool = False, stop_after: int | None = None) -> dict:
    """Train ``unet`` in place on uint8 NHWC ``images`` (class ``labels`` when conditional); returns
    a summary with the EMA weights under ``"ema_state"``.

    ``work_dir``: keeps ``ddpm_train_state.pt`` every ``checkpoint_every_steps`` and resumes from it
    (it must come from a run with the same ``fingerprint``). ``stop_after``: stop once that many
    steps are done (tests of resumption).
    """
    device = torch.device(device)
    if len(images) == 0:
        raise RobustgenError("cannot train a diffusion model on 0 images")
    # uint8 NHWC -> float [-1, 1] NCHW, kept on the device
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    ys = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    abar = alphas_cumprod.to(device=device, dtype=torch.float32)
    unet.to(device).train()
    params = [p for p in unet.parameters()]
    opt = torch.optim.Adam(params, lr=settings.lr)
    ema = [p.detach().clone() for p in params]
    state_path = None if work_dir is None else Path(work_dir) / STATE_FILE
    start = _resume(state_path, fingerprint, unet, opt, ema, device)
    saved_step = start if start else None

    def save(step: int) -> None:
        nonlocal saved_step
        if not all(bool(torch.isfinite(e).all()) for e in ema):
            raise NonFiniteError(f"ddpm: the weights became nan/inf by step {step}; training stopped, "
                                 f"{state_path} keeps step {saved_step}")
        if state_path is not None:
            save_state(state_path, {"fingerprint": fingerprint, "step": step, "model": unet.state_dict(),
                                    "optimizer": opt.state_dict(), "ema": [e.cpu() for e in ema],
                                    "settings": asdict(settings)})
            saved_step = step

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if settings.bf16 and device.type == "cuda"
                else contextlib.nullcontext())
    end = settings.steps if stop_after is None else min(settings.steps, stop_after)
    t0 = time.perf_counter()
    losses = []
    # live metrics next to the training state (robustgen.tracking): loss, lr and img/s every 50 steps
    live = None if work_dir is None else _LossLog(Path(work_dir) / "metrics.jsonl", start, settings)

    def do_step(r: int, step: int) -> None:
        loss = _ddpm_step(unet, opt, params, ema, _step_batch(settings, step, data, len(abar)), settings, step, ys,
                          abar, device, autocast)
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):  # before the weights reach a checkpoint
            kept = (f"the last good checkpoint is {state_path} at step {saved_step}" if saved_step is not None
                    else "no checkpoint was written yet")
            raise NonFiniteError(f"ddpm: the loss became {losses[-1]} at step {step + 1}; training stopped, "
                                 f"{kept}; lower generator.ddpm.lr")
        bar.update(1)
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if live is not None:
                live.log(step, losses)
        if (step + 1) % settings.checkpoint_every_steps == 0 and step + 1 < settings.steps:
            save(step + 1)

    where = (f" (state in {state_path})" if state_path is not None else " (no work folder: restarts)")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            progress_bar(total=settings.steps, initial=start, desc="ddpm", disable=not progress, unit="step") as bar:
        run_rounds(DistContext(), range(start, end), do_step, save=lambda r, step: save(step + 1),
                   where=lambda r, step: f"in ddpm training at step {step + 1}/{settings.steps}{where}")
    if live is not None:
        live.close()
    if end == settings.steps:
        save(end)
    unet.eval()
    names = [name for name, _ in unet.named_parameters()]
    return {"steps": end, "resumed_from": start, "wall_time_s": round(time.perf_counter() - t0, 2),
            "final_loss": round(float(np.mean(losses[-100:])), 5) if losses else None,
            "ema_state": {name: e.detach().cpu().clone() for name, e in zip(names, ema)}}


def _resume(state_path: Path | None, fingerprint: str, unet, opt, ema: list, device) -> int:
    """Load the saved training state (when there is one) into ``unet``, ``opt`` and ``ema``; the step it reached."""
    state = None if state_path is None else resume_state(
        state_path, fingerprint, refusal="a checkpoint of another diffusion training (other data or settings); "
                                         "remove it or use another work folder")
    if state is None:
        return 0
    unet.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for e, v in zip(ema, state["ema"]):
        e.copy_(v.to(device))
    return int(state["step"])


class _LossLog:
    """``metrics.jsonl`` of DDPM training: the mean loss, lr and img/s of every 50 steps."""

    def __init__(self, path: Path, start: int, settings: DDPMTrainSettings):
        self.metrics, self.settings, self.last = MetricsLog(path, resume_step=start), settings, time.perf_counter()

    def log(self, step: int, losses: list) -> None:
        now = time.perf_counter()
        self.metrics.log({"step": step + 1, "loss": float(np.mean(losses[-50:])), "lr": _lr(self.settings, step),
                          "img_per_s": 50 * self.settings.batch_size / max(now - self.last, 1e-9)}, prefix="ddpm/")
        self.last = now

    def close(self) -> None:
        self.metrics.close()
