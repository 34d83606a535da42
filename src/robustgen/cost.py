"""What a run will cost before it runs: forward-equivalents, GPU-hours and disk per stage.

A stage's work is counted in forward-equivalents (one forward pass of its network on one image;
a backward pass counts as about two): standard training 3 per image, a TRADES-k step 2k + 6 per
image (one clean pass that is both the attack's target and the loss's clean logits, k attack
steps with input gradients, the adversarial pass, and the backward of both), PGD-AT 2k + 3, labelling 1, a sampler's UNet calls 1 each, evaluation the
attack's stages at most (``AttackStage.forward_equivalents``, every point surviving every
stage: an upper bound). Forward FLOPs per image come from ``torch.utils.flop_counter`` on the
meta device (no memory, no weights).

GPU-hours divide the FLOPs by a model-FLOP rate from the table of measured rates
(``measured_rates.json``, one row per workload, network, sampler and speed options, written by the
benchmarks' ``--record``: ``trades_step.py``, ``diffusion_sampling.py``, ``label_throughput.py``).
``find_rate`` says which row priced a stage and how well it fits: *measured* (same workload,
network, image size, sampler and options), *extrapolated* (the nearest row of the same workload:
same precision first, then the network of the nearest FLOPs, the sampler, the layout options; the
line names what differs), or *proxy* (no row of the workload at all, for instance the
classifier's standard training or the evaluation's attacks: the TRADES step's rate, as the nearest
measured workload). Paper context: Gowal et al. 2021, Sec. 3.3 and App. D (1M-100M generated
images, 400 CIFAR-10-equivalent epochs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from robustgen.config import RunConfig

__all__ = ["GPU", "RATE_TABLE", "CostEstimate", "Rate", "StageCost", "estimate_cost", "find_rate", "forward_gflops",
           "measured_row", "rate_table", "record_rates", "step_forward_equivalents"]

GPU = "NVIDIA H200"  # the GPU the table's rows were measured on
RATE_TABLE = Path(__file__).with_name("measured_rates.json")
# what makes two rows the same measurement (a newer --record replaces the older row)
RATE_KEY = ("workload", "network", "image_shape", "solver", "precision", "channels_last", "compile", "gpu")


@dataclass(frozen=True)
class Rate:
    tflops: float  # model TFLOP/s
    kind: str  # measured, extrapolated or proxy (see the module doc)
    source: str  # the row it comes from, and what differs

    def describe(self) -> str:
        return f"{self.tflops:.3g} TFLOP/s ({self.kind}: {self.source})"


@lru_cache(maxsize=4)
def rate_table(path: str | None = None) -> tuple[dict, ...]:
    """The rows of a measured-rates table (default: the package's)."""
    return tuple(json.loads(Path(path or RATE_TABLE).read_text())["rows"])


def record_rates(path: str | Path, rows: list[dict]) -> None:
    """Add ``rows`` to the table at ``path`` (a new table when missing), replacing
    rows of the same measurement (``RATE_KEY``); one row per line, atomically."""
    from robustgen.runtime.io import write_text

    path = Path(path)
    table = json.loads(path.read_text()) if path.exists() else {**json.loads(RATE_TABLE.read_text()), "rows": []}
    key = lambda r: tuple(json.dumps(r.get(k)) for k in RATE_KEY)  # noqa: E731
    new = {key(r) for r in rows}
    table["rows"] = [r for r in table["rows"] if key(r) not in new] + list(rows)
    body = ",\n".join("  " + json.dumps(r) for r in table["rows"])
    write_text(path, f'{{\n "about": {json.dumps(table["about"])},\n "rows": [\n{body}\n ]\n}}\n')
    rate_table.cache_clear()


def measured_row(workload: str, network: str, image_shape, *, precision: str, channels_last: bool, compile: bool,
                 batch: int, detail: str, gflop: float, images_per_s: float, tflops: float, device: torch.device,
                 source: str, solver: str | None = None) -> dict:
    """One row of the rates table, as the benchmarks record it (the device's name and torch's version added)."""
    from robustgen.train.speed import hardware_name

    gpu = hardware_name(device)
    return {"workload": workload, "network": network, "image_shape": [int(d) for d in image_shape], "solver": solver,
            "precision": precision, "channels_last": bool(channels_last), "compile": bool(compile), "batch": int(batch),
            "detail": detail, "gflop": float(f"{gflop:.4g}"), "images_per_s": float(f"{images_per_s:.4g}"),
            "tflops": float(f"{tflops:.4g}"), "gpu": gpu, "torch": torch.__version__.split("+")[0], "source": source}


def _row_text(r: dict) -> str:
    shape = "x".join(str(d) for d in r["image_shape"])
    options = "+".join(["bf16" if r["precision"] == "bf16" else "fp32"] + ["channels_last"] * r["channels_last"]
                       + ["compile"] * r["compile"])
    return f"{r['workload']} {r['network']} {shape} {options} batch {r['batch']} ({r['detail']}), torch {r['torch']}"


def find_rate(workload: str, network: str, image_shape: tuple[int, int, int], gflop: float, *, precision: str,
              channels_last: bool = False, compile: bool = False, solver: str | None = None,
              table: str | None = None) -> Rate:
    """The rate that prices ``workload`` on ``network`` (see the module doc for the choice)."""
    on_gpu = [r for r in rate_table(table) if GPU in r["gpu"]]
    rows, kind = [r for r in on_gpu if r["workload"] == workload], "measured"
    if not rows:  # no measurement of this workload: the TRADES step's, named a proxy
        rows, kind = [r for r in on_gpu if r["workload"] == "trades-step"], "proxy"
    shape = list(image_shape)

    def distance(r: dict) -> tuple:
        same_net = r["network"] == network and r["image_shape"] == shape
        return (r["precision"] != precision, 0.0 if same_net else 1.0 + abs(math.log(r["gflop"] / gflop)),
                r.get("solver") != solver, r["channels_last"] != channels_last, r["compile"] != compile)

    best = min(rows, key=distance)
    d = distance(best)
    differs = [what for what, off in zip(("precision", "network", "sampler", "channels_last", "compile"), d) if off]
    if kind == "measured" and differs:
        kind = "extrapolated"
    note = f" (other {', '.join(differs)})" if differs and kind == "extrapolated" else ""
    return Rate(float(best["tflops"]), kind, _row_text(best) + note)


@dataclass(frozen=True)
class StageCost:
    stage: str
    forward_equivalents: float  # image forward passes of the stage's network
    gflops_per_forward: float  # of that network, per image
    rate: Rate | None  # None: no GPU work (CPU stage)
    detail: str  # how the forward-equivalents were counted

    @property
    def pflop(self) -> float:
        return self.forward_equivalents * self.gflops_per_forward / 1e6

    @property
    def gpu_hours(self) -> float:
        return 0.0 if self.rate is None else self.pflop * 1e3 / self.rate.tflops / 3600

    def line(self) -> str:
        if self.rate is None:
            return f"{self.stage}: {self.detail}"
        return (f"{self.stage}: {self.detail} = {self.forward_equivalents:.3g} forward-equivalents x "
                f"{self.gflops_per_forward:.3g} GFLOP = {self.pflop:.3g} PFLOP -> {self.gpu_hours:.3g} GPU-hours "
                f"at {self.rate.describe()}")


@dataclass(frozen=True)
class CostEstimate:
    stages: list[StageCost]
    disk_bytes: int  # generated store, its labels and the checkpoints
    disk_detail: str

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    def lines(self) -> list[str]:
        out = [f"cost estimate ({GPU} rates from robustgen/measured_rates.json; evaluation is an upper bound):"]
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


def estimate_cost(cfg: RunConfig, *, n_train: int, n_test: int, image_shape: tuple[int, int, int],
                  num_classes: int) -> CostEstimate:
    """The cost of ``robustgen run cfg`` on a dataset of these sizes (see the module docstring)."""
    from robustgen.pipeline import model_variants
    from robustgen.stages.train import needs_generated

    image_shape = tuple(image_shape)
    n_real = max(n_train - cfg.data.val_size, 1)
    if cfg.data.train_size is not None:  # the real images kept; the held-out ones reach no stage's steps
        n_real = min(n_real, cfg.data.train_size)
    stages: list[StageCost] = []
    disk, params_total = 0, 0
    variants = model_variants(cfg)
    if any(needs_generated(v) for _, v in variants):
        params_total += _generated_data_costs(cfg, n_real, image_shape, num_classes, stages)
        # uint8 images plus label, confidence and condition per image; the labelled copy shares the images
        disk += cfg.generator.num_samples * (math.prod(image_shape) + 24)
    stored = [src.path for src in cfg.data.sources if src.path not in ("train", "generated")]
    if stored:  # data made before this run (an imported set such as Wang et al.'s): nothing to sample or label
        stages.append(StageCost("sampling", 0.0, 0.0, None,
                                f"none: data.sources reads {', '.join(stored)} as stored (no sampling or labelling)"))
    for name, v in variants:
        params_total += _model_costs(name, v, n_real, min(cfg.data.val_size, n_train), n_test, image_shape,
                                     num_classes, stages)
    # best + last weights, and state.pt with weights, EMA weights and momentum: 5 float32 copies
    disk += params_total * 4 * 5
    detail = f"{cfg.generator.num_samples:,} generated images + checkpoints" if disk > params_total * 20 else "checkpoints"
    return CostEstimate(stages, int(disk), detail)


def _generated_data_costs(cfg: RunConfig, n_real: int, image_shape: tuple, num_classes: int,
                          stages: list[StageCost]) -> int:
    """Append the costs of f_NR, the generator, sampling and labelling; returns f_NR's parameters (0 if not trained)."""
    from robustgen.generate.diffusion.samplers import resolve_sampler
    from robustgen.stages.label import labels_are_conditions
    from robustgen.train.loop import steps_for

    c, g = cfg.classifier, cfg.generator
    gf, params = forward_gflops(c.arch, image_shape, num_classes)
    pseudo_labels = not labels_are_conditions(cfg)  # else no f_NR: labels are the conditioning classes
    trained = 0
    if c.checkpoint is None and pseudo_labels:
        steps = steps_for(epochs=c.epochs, epoch_size=n_real, batch_size=c.batch_size)
        stages.append(StageCost("classifier", 3.0 * steps * c.batch_size, gf,
                                find_rate("standard-step", c.arch, image_shape, gf, precision="fp32"),
                                f"{c.arch}, {steps:,} steps x {c.batch_size} images x 3"))
        trained = params
    if g.name == "ddpm":
        d = g.ddpm
        ug = unet_gflops(d.unet, image_shape, num_classes if d.class_conditional else None)
        if d.pretrained is None:
            stages.append(StageCost("generator training", 3.0 * d.train_steps * d.batch_size, ug,
                                    find_rate("unet-train-step", d.unet, image_shape, ug, precision=d.precision),
                                    f"UNet {d.unet}, {d.train_steps:,} steps x {d.batch_size} images x 3"))
        solver, solver_steps = resolve_sampler(d.sampler, d.sampling_steps)  # a named setting fixes both
        calls = _unet_calls(solver, solver_steps) * (2 if d.guidance else 1)  # guidance: conditional + null
        rate = find_rate("sampling", d.unet, image_shape, ug, precision=d.precision,
                         channels_last=d.channels_last, compile=d.compile, solver=solver)
        stages.append(StageCost("sampling", float(g.num_samples) * calls, ug, rate,
                                f"{g.num_samples:,} images x {calls} UNet calls ({d.sampler}, "
                                f"{solver_steps} steps{', guided' if d.guidance else ''}, UNet {d.unet})"))
    else:
        where = "the plug-in's own cost, not known here" if g.name == "plugin" else "on the CPU (no GPU estimate)"
        stages.append(StageCost("sampling", 0.0, 0.0, None, f"{g.name}: {g.num_samples:,} images, {where}"))
    if pseudo_labels:
        lb = cfg.label
        stages.append(StageCost("labelling", float(g.num_samples), gf,
                                find_rate("labelling", c.arch, image_shape, gf, precision=lb.precision,
                                          channels_last=lb.channels_last, compile=lb.compile),
                                f"{g.num_samples:,} images x 1 forward of {c.arch}"))
    return trained


def _model_costs(name: str, v: RunConfig, n_real: int, val: int, n_test: int, image_shape: tuple, num_classes: int,
                 stages: list[StageCost]) -> int:
    """Append the costs of training, selecting and evaluating one model; returns its parameters."""
    from robustgen.evaluate import get_attack
    from robustgen.stages.train import training_loop_settings

    t = v.train
    gf, params = forward_gflops(t.arch, image_shape, num_classes)
    s = training_loop_settings(v, n_real, source_weights=(1.0,))  # steps and batch size do not depend on the mix
    k = t.inner.steps
    per_image = step_forward_equivalents(t.loss, k)
    runs = f" x {t.runs} runs" if t.runs > 1 else ""
    stages.append(StageCost(f"train[{name}]", float(s.total_steps) * s.batch_size * per_image * t.runs, gf,
                            find_rate("trades-step" if t.loss == "trades" else "pgd-at-step", t.arch, image_shape,
                                      gf, precision=t.precision, channels_last=t.channels_last is not False,
                                      compile=t.compile),
                            f"{t.arch}, {s.total_steps:,} steps x {s.batch_size} images x {per_image} "
                            f"({t.loss.upper()}-{k}){runs}"))
    evals = math.ceil(s.total_steps / s.eval_every_steps) + 1
    watched = val + min(t.monitor_train_images, n_real)  # the validation and the monitored training images
    attack_rate = find_rate("attack", t.arch, image_shape, gf, precision="fp32")
    stages.append(StageCost(f"model selection[{name}]", float(evals) * 2 * watched * 82 * t.runs, gf, attack_rate,
                            f"{evals} evaluations x 2 (raw, EMA) x {watched} images x 82 (PGD-40){runs}"))
    n = min(v.eval.n or n_test, n_test)
    per_point = sum(st.forward_equivalents for st in get_attack(v.eval.attack, norm=v.threat.norm, eps=v.threat.eps))
    stages.append(StageCost(f"eval[{name}]", float(n) * per_point, gf, attack_rate,
                            f"{n:,} images x {per_point:,} at most ({v.eval.attack})"))
    return params
