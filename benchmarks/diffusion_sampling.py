"""Sampling throughput of the diffusion samplers (robustgen.generate.diffusion.samplers), as a ratio
against 1000-step DDPM ancestral sampling measured in the same run.

For every sampler the benchmark times ``--repeats`` batches of ``--batch`` images (random-init
UNet weights: throughput does not depend on them; per-sample seeds as in generation) and prints
images/s (median and spread over repeats), UNet evaluations per image and the speed-up over
DDPM-1000. DDPM-1000 is timed once (it is the slow baseline); its first step is a warm-up.

CPU (default; small digits UNet, 8x8x1, one thread; < 3 minutes):

    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py

GPU (Ho et al.'s 35.7M-parameter CIFAR-10 UNet, batch 256, bf16 autocast; < 90 s on an H100/H200):

    python benchmarks/diffusion_sampling.py --device cuda --preset ho-cifar10 --bf16 --batch 256

Options: --steps (default 20 for the fast solvers; edm-heun's N levels cost 2N - 1 UNet calls,
so it runs at (steps + 1) // 2 levels for the same budget), --repeats, --ddpm-steps (default 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from robustgen.generate.diffusion.samplers import sample_diffusion, sample_generators
from robustgen.generate.diffusion.unet import build_unet, ho_scheduler_config

SHAPES = {"digits-small": (8, 1, 10), "ho-cifar10": (32, 3, None), "tiny": (8, 1, 10)}


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} cores visible, torch {torch.__version__}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampler(unet, *, sampler: str, steps: int, batch: int, repeats: int, bf16: bool, num_classes) -> list[float]:
    """Seconds per batch of ``batch`` images, ``repeats`` times (after one warm-up batch of 1 step)."""
    device = next(unet.parameters()).device
    labels = None if num_classes is None else torch.arange(batch) % num_classes
    cfg = ho_scheduler_config()
    sample_diffusion(unet, cfg, generators=sample_generators(0, range(batch)), class_labels=labels,
                     sampler=sampler, steps=1 if sampler != "edm-heun" else 2, bf16=bf16)
    out = []
    for r in range(repeats):
        gens = sample_generators(r + 1, range(batch))
        _sync(device)
        t0 = time.perf_counter()
        sample_diffusion(unet, cfg, generators=gens, class_labels=labels, sampler=sampler, steps=steps, bf16=bf16)
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="digits-small", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=None, help="images per batch (default: 64 on CPU, 256 on GPU)")
    p.add_argument("--steps", type=int, default=20, help="steps of ddim and dpm-solver++")
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast of the UNet (CUDA)")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    batch = a.batch or (64 if device.type == "cpu" else 256)
    size, channels, classes = SHAPES[a.preset]
    torch.manual_seed(0)
    unet = build_unet(a.preset, image_size=size, in_channels=channels, num_classes=classes).to(device).eval()
    params = sum(p.numel() for p in unet.parameters())
    print(f"hardware: {_hardware(device)}")
    print(f"UNet {a.preset}: {params / 1e6:.2f}M parameters, {size}x{size}x{channels}, "
          f"{'class-conditional' if classes else 'unconditional'}; batch {batch}; bf16 {a.bf16 and device.type == 'cuda'}")
    heun_levels = (a.steps + 1) // 2
    plan = [("ddpm", a.ddpm_steps, a.ddpm_steps, 1), ("ddim", a.steps, a.steps, a.repeats),
            ("dpm-solver++", a.steps, a.steps, a.repeats), ("edm-heun", heun_levels, 2 * heun_levels - 1, a.repeats)]
    rows = []
    for name, steps, nfe, repeats in plan:
        secs = time_sampler(unet, sampler=name, steps=steps, batch=batch, repeats=repeats, bf16=a.bf16,
                            num_classes=classes)
        rates = [batch / s for s in secs]
        rows.append({"sampler": name, "steps": steps, "nfe": nfe, "n": repeats, "images": batch * repeats,
                     "images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)})
    base = rows[0]["images_per_s"]
    print(f"\n| sampler | steps | UNet calls / image | n batches | images/s (median) | spread (min-max) | x DDPM-{a.ddpm_steps} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["speedup"] = r["images_per_s"] / base
        print(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['n']} | {r['images_per_s']:.1f} | "
              f"{r['min']:.1f}-{r['max']:.1f} | {r['speedup']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": _hardware(device), "preset": a.preset, "batch": batch, "bf16": a.bf16,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
