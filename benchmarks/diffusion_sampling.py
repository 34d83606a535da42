"""Sampling throughput of the diffusion samplers (robustgen.generate.diffusion.samplers): images/s,
model TFLOP/s and % of the device's bf16 peak per sampler and speed option, with each option's
ratio to the current default path (float32, eager, NCHW), timed interleaved in the same run.

For every sampler and every variant (``--variants``, comma-separated; the first is the reference,
default ``fp32``) the benchmark times ``--repeats`` batches of ``--batch`` images (random-init UNet
weights: throughput does not depend on them; per-sample seeds as in generation), the variants in
turn within each repeat, so a busy machine slows them alike. A variant is ``fp32`` or ``+``-joined
options: ``bf16`` (autocast, CUDA only), ``cl`` (channels_last), ``compile`` (torch.compile; with
CUDA graphs on CUDA). Model FLOPs per UNet call are counted once (torch.utils.flop_counter: 2 per
multiply-add of convolutions and matmuls); TFLOP/s = images/s x UNet calls per image x FLOPs per
call (``robustgen.cost.unet_gflops``). % of peak uses the dense bf16 tensor-core peak of the GPU
(``benchmarks/trades_step.py``'s table, or --peak-tflops). ``x ddpm`` is each row's speed-up over
1000-step ancestral DDPM sampling of the same variant (when ddpm is among the samplers).

CPU (default; small digits UNet, 8x8x1, one thread; a few minutes; ratios are what it shows):

    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py --variants fp32,cl

GPU (Ho et al.'s 35.7M-parameter CIFAR-10 UNet; batch chosen by memory with --batch 0; < 5 min):

    python benchmarks/diffusion_sampling.py --device cuda --preset ho-cifar10 --batch 256 \\
        --samplers dpm-solver++,wang2023,edm-heun --variants fp32,bf16,bf16+cl,bf16+cl+compile

Samplers: ddpm (--ddpm-steps, default 1000, one batch), ddim and dpm-solver++ (--steps, default
20), edm-heun at (steps + 1) // 2 noise levels (the same UNet budget), wang2023 (EDM Heun, 20
levels = 39 UNet calls, as Wang et al. 2023). ``--profile`` prints where one batch's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from trades_step import (
    device_peak_tflops,  # the same bf16 peak table (this folder is on the path)
)

from robustgen.cost import measured_row, record_rates, unet_gflops
from robustgen.generate.diffusion.samplers import SAMPLER_SETTINGS, auto_batch_size, sample_diffusion, sample_generators
from robustgen.generate.diffusion.unet import build_unet, ho_scheduler_config
from robustgen.models.inference import InferenceOptions, prepare_for_inference

# preset -> (image size, channels, classes or None); the guided-diffusion UNets output 3 channels here, not
# their 6 (learned variances): the last convolution's extra channels are < 0.1% of a call's FLOPs
SHAPES = {"digits-small": (8, 1, 10), "ho-cifar10": (32, 3, None), "tiny": (8, 1, 10), "cifar-small": (32, 3, 10),
          "guided-diffusion-imagenet64": (64, 3, 1000), "guided-diffusion-imagenet256": (256, 3, 1000),
          "edm-ddpmpp-cifar10": (32, 3, 10)}  # EDM's DDPM++ (Wang et al. 2023's generators): edm-heun calls D itself

def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} cores visible, torch {torch.__version__}")


def bf16_peak(device: torch.device, override: float | None) -> float | None:
    return override or device_peak_tflops(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_variant(text: str, device: torch.device) -> InferenceOptions:
    parts = set(text.split("+")) - {"fp32"}
    unknown = parts - {"bf16", "cl", "compile"}
    if unknown:
        raise SystemExit(f"unknown variant option(s) {sorted(unknown)} in {text!r} (bf16, cl, compile)")
    return InferenceOptions(bf16="bf16" in parts, channels_last="cl" in parts, compile="compile" in parts,
                            cuda_graphs="compile" in parts and device.type == "cuda")


def sampler_plan(names: list[str], steps: int, ddpm_steps: int) -> list[tuple[str, str, int, int]]:
    """(label, solver, steps, UNet calls per image) per sampler name."""
    plan = []
    for name in names:
        if name in SAMPLER_SETTINGS:
            solver, n = SAMPLER_SETTINGS[name]
            plan.append((name, solver, n, 2 * n - 1))
        elif name == "edm-heun":
            n = (steps + 1) // 2
            plan.append((name, name, n, 2 * n - 1))
        elif name == "ddpm":
            plan.append((name, name, ddpm_steps, ddpm_steps))
        elif name in ("ddim", "dpm-solver++"):
            plan.append((name, name, steps, steps))
        else:
            raise SystemExit(f"unknown sampler {name!r}")
    return plan


def run_once(unet, model, options, *, solver: str, steps: int, batch: int, seed: int, labels) -> float:
    device = next(unet.parameters()).device
    gens = sample_generators(seed, range(batch))
    _sync(device)
    t0 = time.perf_counter()
    sample_diffusion(unet, ho_scheduler_config(), generators=gens, class_labels=labels, sampler=solver, steps=steps,
                     bf16=options.bf16, channels_last=options.channels_last, model=model)
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="digits-small", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=None,
                   help="images per batch (default: 64 on CPU, 256 on GPU; 0: the largest that fits, by memory)")
    p.add_argument("--samplers", default="ddpm,ddim,dpm-solver++,edm-heun,wang2023")
    p.add_argument("--variants", default="fp32", help="comma-separated; the first is the reference (see the doc)")
    p.add_argument("--steps", type=int, default=20, help="steps of ddim and dpm-solver++")
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: table)")
    p.add_argument("--profile", action="store_true",
                   help="print the top operators of one batch of the first sampler, per variant (what limits it)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--record", default=None, metavar="TABLE",
                   help="add one row per solver and variant to this measured-rates table (robustgen.cost)")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    size, channels, classes = SHAPES[a.preset]
    torch.manual_seed(0)
    unet = build_unet(a.preset, image_size=size, in_channels=channels, num_classes=classes).to(device).eval()
    unet.requires_grad_(False)
    variants = [(v, parse_variant(v, device)) for v in a.variants.split(",")]
    batch = a.batch if a.batch is not None else (64 if device.type == "cpu" else 256)
    if batch == 0:
        best = variants[-1][1]
        batch = auto_batch_size(unet, class_conditional=classes is not None, bf16=best.bf16,
                                channels_last=best.channels_last)
    flops = unet_gflops(a.preset, (size, size, channels), classes) * 1e9
    peak = bf16_peak(device, a.peak_tflops)
    params = sum(p.numel() for p in unet.parameters())
    print(f"hardware: {_hardware(device)}; bf16 peak {f'{peak:.0f} TFLOP/s' if peak else 'n/a'}")
    print(f"UNet {a.preset}: {params / 1e6:.2f}M parameters, {flops / 1e9:.3f} GFLOP per image per call, "
          f"{size}x{size}x{channels}, {'class-conditional' if classes else 'unconditional'}; batch {batch}")
    labels = None if classes is None else (torch.arange(batch) % classes).to(device)
    models = {}
    for name, opt in variants:  # every variant's own UNet copy: channels_last converts the weights in place
        copy = build_unet(a.preset, image_size=size, in_channels=channels, num_classes=classes).to(device).eval()
        copy.load_state_dict(unet.state_dict())
        copy.requires_grad_(False)
        models[name] = (copy, prepare_for_inference(copy, opt), opt)
    rows = []
    for label, solver, steps, nfe in sampler_plan(a.samplers.split(","), a.steps, a.ddpm_steps):
        repeats = 1 if solver == "ddpm" else a.repeats
        for name, (copy, model, opt) in models.items():  # warm-up (and compilation) at this batch shape
            run_once(copy, model, opt, solver=solver, steps=2, batch=batch, seed=0, labels=labels)
        secs = {name: [] for name in models}
        for r in range(repeats):
            for name, (copy, model, opt) in models.items():
                secs[name].append(run_once(copy, model, opt, solver=solver, steps=steps, batch=batch, seed=r + 1,
                                           labels=labels))
        ref = variants[0][0]
        for name in models:
            rates = [batch / s for s in secs[name]]
            ratios = [s_ref / s for s_ref, s in zip(secs[ref], secs[name])]
            rate = statistics.median(rates)
            tflops = rate * nfe * flops / 1e12
            rows.append({"sampler": label, "solver": solver, "steps": steps, "nfe": nfe, "variant": name,
                         "n": repeats, "images_per_s": rate, "min": min(rates), "max": max(rates),
                         "vs_reference": statistics.median(ratios), "ratio_min": min(ratios),
                         "ratio_max": max(ratios), "model_tflops": tflops,
                         "percent_of_bf16_peak": 100 * tflops / peak if peak else None})
            print(f"  {label} [{name}] {rate:.1f} img/s", flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        label, solver, steps, _ = sampler_plan(a.samplers.split(","), a.steps, a.ddpm_steps)[0]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for name, (copy, model, opt) in models.items():
            with profile(activities=activities) as prof:
                run_once(copy, model, opt, solver=solver, steps=steps, batch=batch, seed=0, labels=labels)
            print(f"\n{label} [{name}]: one batch of {batch}\n" + prof.key_averages().table(sort_by=sort, row_limit=12))
    ddpm = {r["variant"]: r["images_per_s"] for r in rows if r["solver"] == "ddpm"}
    print(f"\n| sampler | UNet calls / image | variant | n | images/s (median) | spread | x {variants[0][0]} "
          f"(median, min-max, interleaved) | x ddpm | model TFLOP/s | % of bf16 peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pct = f"{r['percent_of_bf16_peak']:.1f}" if r["percent_of_bf16_peak"] is not None else "n/a"
        r["vs_ddpm"] = r["images_per_s"] / ddpm[r["variant"]] if r["variant"] in ddpm else None
        vs_ddpm = f"{r['vs_ddpm']:.1f}" if r["vs_ddpm"] is not None else "n/a"
        print(f"| {r['sampler']} | {r['nfe']} | {r['variant']} | {r['n']} | {r['images_per_s']:.1f} | "
              f"{r['min']:.1f}-{r['max']:.1f} | {r['vs_reference']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{vs_ddpm} | {r['model_tflops']:.4g} | {pct} |")
    if a.record:
        recorded = [measured_row(
            "sampling", a.preset, (size, size, channels), solver=r["solver"], precision="bf16" if opt.bf16 else "fp32",
            channels_last=opt.channels_last, compile=opt.compile, batch=batch,
            detail=f"{r['sampler']}, {r['steps']} steps = {r['nfe']} UNet calls per image, median of {r['n']}",
            gflop=flops / 1e9, images_per_s=r["images_per_s"], tflops=r["model_tflops"], device=device,
            source="benchmarks/diffusion_sampling.py") for r in rows for opt in [dict(variants)[r["variant"]]]]
        record_rates(a.record, recorded)  # a solver's later row (wang2023 after edm-heun) replaces its earlier one
        print(f"recorded {len(recorded)} row(s) in {a.record}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": _hardware(device), "preset": a.preset, "batch": batch, "gflop_per_call": flops / 1e9,
                       "bf16_peak_tflops": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
