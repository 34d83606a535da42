"""What a run will cost before it runs: forward-equivalents, GPU-hours and disk per stage.

A stage's work is counted in forward-equivalents (one forward pass of its network on one image;
a backward pass counts as about two): standard training 3 per image, a TRADES-k step 2k + 6 per
image (one clean pass that is both the attack's target and the loss's clean logits, k attack
steps with input gradients, the adversarial pass, and the backward of both), PGD-AT 2k + 3, labelling 1, a sampler's UNet calls 1 each, evaluation the
attack's stages at most (``AttackStage.forward_equivalents``, every point surviving every
stage: an upper bound). Forward FLOPs per image come from ``torch.utils.flop_counter`` on the
meta device (no memory, no weights). GPU-hours divide the FLOPs by model-FLOP rates measured
with ``benchmarks/trades_step.py`` on one NVIDIA H200 (README, Speed); stages without a
measurement of their own (sampling, labelling, attacks) use the rate of the TRADES step at the
same precision, and say so. Paper context: Gowal et al. 2021, Sec. 3.3 and App. D (1M-100M
generated images, 400 CIFAR-10-equivalent epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from robustgen.config import RunConfig

__all__ = ["GPU", "MEASURED_TFLOPS", "StageCost", "CostEstimate", "estimate_cost", "forward_gflops",
           "step_forward_equivalents"]

GPU = "NVIDIA H200"
# Model-FLOP rates of one TRADES-10 training step measured on one H200 (torch 2.11;
# benchmarks/trades_step.py; README "Speed"), TFLOP/s.
MEASURED_TFLOPS = {
    "fp32": (136.0, "TRADES-10 step, WRN-28-10, batch 256, float32"),
    "bf16": (294.0, "TRADES-10 step, WRN-28-10, batch 256, bf16 + channels_last"),
    "bf16 wrn-70-16": (457.0, "TRADES-10 step, WRN-70-16, batch 1024 in 4 micro-batches, bf16 + channels_last"),
}


@dataclass(frozen=True)
class StageCost:
    stage: str
    forward_equivalents: float  # image forward passes of the stage's network
    gflops_per_forward: float  # of that network, per image
    rate_key: str | None  # MEASURED_TFLOPS key; None: no GPU work (CPU stage)
    detail: str  # how the forward-equivalents were counted
    proxy: bool = False  # the rate is another workload's measurement at this precision

    @property
    def pflop(self) -> float:
        return self.forward_equivalents * self.gflops_per_forward / 1e6

    @property
    def gpu_hours(self) -> float:
        if self.rate_key is None:
            return 0.0
        return self.pflop * 1e3 / MEASURED_TFLOPS[self.rate_key][0] / 3600

    def line(self) -> str:
        if self.rate_key is None:
            return f"{self.stage}: {self.detail}"
        tflops, what = MEASURED_TFLOPS[self.rate_key]
        rate = f"{tflops:g} TFLOP/s ({'proxy: ' if self.proxy else ''}{what})"
        return (f"{self.stage}: {self.detail} = {self.forward_equivalents:.3g} forward-equivalents x "
                f"{self.gflops_per_forward:.3g} GFLOP = {self.pflop:.3g} PFLOP -> {self.gpu_hours:.3g} GPU-hours at {rate}")


@dataclass(frozen=True)
class CostEstimate:
    stages: list[StageCost]
    disk_bytes: int  # generated store, its labels and the checkpoints
    disk_detail: str

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    def lines(self) -> list[str]:
        out = [f"cost estimate ({GPU} rates measured by benchmarks/trades_step.py; evaluation is an upper bound):"]
        out += [f"  {s.line()}" for s in self.stages]
        out.append(f"  total: {self.gpu_hours:.3g} {GPU} GPU-hours; disk {self.disk_bytes / 1e9:.3g} GB "
                   f"({self.disk_detail})")
        return out


@lru_cache(maxsize=32)
def step_forward_equivalents(loss: str, attack_steps: int) -> int:
    """Forward-equivalents per image of one adversarial training step (see the module docstring)."""
    return 2 * attack_steps + (6 if loss == "trades" else 3)


def forward_gflops(arch: str, image_shape: tuple[int, int, int], num_classes: int) -> tuple[float, int]:
    """(GFLOPs of one forward pass per image, parameter count) of a registered classifier."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustgen.models import create_model

    h, w, c = image_shape
    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, in_channels=c).eval()
        x = torch.zeros(1, c, h, w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9, sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=8)
def unet_gflops(preset: str, image_shape: tuple[int, int, int], num_classes: int | None) -> float:
    """GFLOPs of one UNet call per image (Ho et al.'s CIFAR-10 UNet: ho-cifar10)."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustgen.generate.diffusion.unet import build_unet

    h, _, c = image_shape
    with torch.device("meta"):
        unet = build_unet(preset, image_size=h, in_channels=c, num_classes=num_classes).eval()
        x, t = torch.zeros(1, c, h, h), torch.zeros(1, dtype=torch.long)
        labels = torch.zeros(1, dtype=torch.long) if num_classes else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, class_labels=labels)
    return counter.get_total_flops() / 1e9


def _unet_calls(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "edm-heun" else steps


def _train_rate(precision: str, arch: str) -> str:
    if precision == "bf16":
        return "bf16 wrn-70-16" if arch == "wrn-70-16" else "bf16"
    return "fp32"


def estimate_cost(cfg: RunConfig, *, n_train: int, n_test: int, image_shape: tuple[int, int, int],
                  num_classes: int) -> CostEstimate:
    """The cost of ``robustgen run cfg`` on a dataset of these sizes (see the module docstring)."""
    from robustgen.evaluate import get_attack
    from robustgen.generate.diffusion.samplers import resolve_sampler
    from robustgen.pipeline import model_variants
    from robustgen.stages.adversarial import loop_settings, needs_generated
    from robustgen.stages.label import labels_are_conditions
    from robustgen.train.loop import steps_for

    image_shape = tuple(image_shape)
    n_real = max(n_train - cfg.data.val_size, 1)
    if cfg.data.train_size is not None:  # the real images kept; the withheld ones reach no stage's steps
        n_real = min(n_real, cfg.data.train_size)
    val = min(cfg.data.val_size, n_train)
    pixels = math.prod(image_shape)
    stages: list[StageCost] = []
    disk, params_total = 0, 0
    variants = model_variants(cfg)
    if any(needs_generated(v) for _, v in variants):
        c, g = cfg.classifier, cfg.generator
        gf, params = forward_gflops(c.arch, image_shape, num_classes)
        pseudo_labels = not labels_are_conditions(cfg)  # else no f_NR: labels are the conditioning classes
        if c.checkpoint is None and pseudo_labels:
            steps = steps_for(epochs=c.epochs, epoch_size=n_real, batch_size=c.batch_size)
            stages.append(StageCost("classifier", 3.0 * steps * c.batch_size, gf, "fp32",
                                    f"{c.arch}, {steps:,} steps x {c.batch_size} images x 3", proxy=True))
            params_total += params
        if g.name == "ddpm":
            d = g.ddpm
            ug = unet_gflops(d.unet, image_shape, num_classes if d.class_conditional else None)
            rate = "bf16" if d.precision == "bf16" else "fp32"
            if d.pretrained is None:
                stages.append(StageCost("generator training", 3.0 * d.train_steps * d.batch_size, ug, rate,
                                        f"UNet {d.unet}, {d.train_steps:,} steps x {d.batch_size} images x 3", proxy=True))
            solver, solver_steps = resolve_sampler(d.sampler, d.sampling_steps)  # a named setting fixes both
            calls = _unet_calls(solver, solver_steps) * (2 if d.guidance else 1)  # guidance: conditional + null
            stages.append(StageCost("sampling", float(g.num_samples) * calls, ug, rate,
                                    f"{g.num_samples:,} images x {calls} UNet calls ({d.sampler}, "
                                    f"{solver_steps} steps{', guided' if d.guidance else ''}, UNet {d.unet})",
                                    proxy=True))
        else:
            stages.append(StageCost("sampling", 0.0, 0.0, None,
                                    f"{g.name}: {g.num_samples:,} images on the CPU (no GPU estimate)"))
        if pseudo_labels:
            stages.append(StageCost("labelling", float(g.num_samples), gf, "fp32",
                                    f"{g.num_samples:,} images x 1 forward of {c.arch}", proxy=True))
        # uint8 images plus label, confidence and condition per image; the labelled copy shares the images
        disk += g.num_samples * (pixels + 24)
    for name, v in variants:
        t = v.train
        gf, params = forward_gflops(t.arch, image_shape, num_classes)
        params_total += params
        s = loop_settings(v, n_real, source_weights=(1.0,))  # steps and batch size do not depend on the mix
        k = t.inner.steps
        per_image = step_forward_equivalents(t.loss, k)
        runs = f" x {t.runs} runs" if t.runs > 1 else ""
        stages.append(StageCost(f"train[{name}]", float(s.total_steps) * s.batch_size * per_image * t.runs, gf,
                                _train_rate(t.precision, t.arch),
                                f"{t.arch}, {s.total_steps:,} steps x {s.batch_size} images x {per_image} "
                                f"({t.loss.upper()}-{k}){runs}"))
        evals = math.ceil(s.total_steps / s.eval_every_steps) + 1
        watched = val + min(t.monitor_train_images, n_real)  # the validation and the monitored training images
        stages.append(StageCost(f"model selection[{name}]", float(evals) * 2 * watched * 82 * t.runs, gf, "fp32",
                                f"{evals} evaluations x 2 (raw, EMA) x {watched} images x 82 (PGD-40){runs}",
                                proxy=True))
        n = min(v.eval.n or n_test, n_test)
        per_point = sum(st.forward_equivalents for st in get_attack(v.eval.attack, norm=v.threat.norm, eps=v.threat.eps))
        stages.append(StageCost(f"eval[{name}]", float(n) * per_point, gf, "fp32",
                                f"{n:,} images x {per_point:,} at most ({v.eval.attack})", proxy=True))
    # best + last weights, and state.pt with weights, EMA weights and momentum: 5 float32 copies
    disk += params_total * 4 * 5
    detail = f"{cfg.generator.num_samples:,} generated images + checkpoints" if disk > params_total * 20 else "checkpoints"
    return CostEstimate(stages, int(disk), detail)


def preset_summaries() -> list[dict]:
    """Name, dataset, model, description and estimated GPU-hours (``estimate_cost``; None where the
    dataset's size cannot be read here) of every preset."""
    from robustgen.config import DEFAULT_PRESET, list_presets, load_config, preset_description
    from robustgen.errors import RobustgenError
    from robustgen.preflight import data_shape

    rows = []
    for name in list_presets():
        cfg = load_config(name)
        try:
            shape = data_shape(cfg)
            hours = estimate_cost(cfg, n_train=shape.n_train, n_test=shape.n_test, image_shape=shape.image_shape,
                                  num_classes=shape.num_classes).gpu_hours
        except RobustgenError:
            hours = None
        rows.append({"name": name, "default": name == DEFAULT_PRESET, "dataset": cfg.data.dataset,
                     "model": cfg.train.arch, "gpu_hours": hours, "description": preset_description(name)})
    return rows
