"""Pseudo-labelling throughput (robustgen.label): images/s of f_NR over a store shard, for the speed
options of ``label.*`` against the labelling loop as it was before them (read a batch, copy it,
move it, forward; no read-ahead), timed interleaved in the same run.

Variants (``--variants``): ``fp32`` (the current path: batches read one ahead by a thread), or
``+``-joined ``bf16`` (autocast, CUDA only), ``cl`` (channels_last), ``compile`` (torch.compile).
Model TFLOP/s (``robustgen.cost.forward_gflops``) and % of the bf16 peak as in ``diffusion_sampling.py``.

CPU (small CNN, 32x32x3, one thread; ~1 minute; ratios are what it shows):

    OMP_NUM_THREADS=1 python benchmarks/label_throughput.py

GPU (WRN-28-10, the paper's f_NR for CIFAR-10):

    python benchmarks/label_throughput.py --device cuda --arch wrn-28-10 --n 65536 --batch 1024 \\
        --variants fp32,bf16,bf16+cl,bf16+cl+compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from diffusion_sampling import bf16_peak, parse_variant  # noqa: E402  (same folder)

from robustgen.cost import forward_gflops, measured_row, record_rates
from robustgen.data.store import Store
from robustgen.data.store.writer import StoreWriter
from robustgen.label.pseudo import predict_probabilities
from robustgen.models import create_model
from robustgen.models.inference import prepare_for_inference


@torch.no_grad()
def before(model, images: np.ndarray, *, batch_size: int, device) -> np.ndarray:
    """The labelling loop before the speed options: no read-ahead, float32, NCHW."""
    out = []
    for lo in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + batch_size]).copy()).to(device)
        out.append(model(x.permute(0, 3, 1, 2).float().div_(255)).float().softmax(-1).cpu().numpy())
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--n", type=int, default=4096, help="images in the shard")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--variants", default="fp32,cl")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--record", default=None, metavar="TABLE",
                   help="add one row per variant to this measured-rates table (robustgen.cost)")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rng = np.random.default_rng(0)
    scratch = tempfile.TemporaryDirectory(prefix="label-bench-")  # removed at exit
    folder = scratch.name
    with StoreWriter.create(folder, image_shape=(32, 32, 3), num_classes=10, shard_size=a.n) as w:
        w.write_shard(0, images=rng.integers(0, 256, (a.n, 32, 32, 3), dtype=np.uint8), labels=np.zeros(a.n, np.int64))
    shard = Store(folder).shard_images(0)
    torch.manual_seed(0)
    base = create_model(a.arch, num_classes=10).to(device).eval().requires_grad_(False)
    flops = forward_gflops(a.arch, (32, 32, 3), 10)[0] * 1e9
    peak = bf16_peak(device, a.peak_tflops)
    runs = {"before": lambda: before(base, shard, batch_size=a.batch, device=device)}
    for v in a.variants.split(","):
        opt = parse_variant(v, device)
        model = create_model(a.arch, num_classes=10).to(device).eval().requires_grad_(False)
        model.load_state_dict(base.state_dict())
        model = prepare_for_inference(model, opt)
        runs[v] = (lambda m=model, o=opt: predict_probabilities(m, shard, batch_size=a.batch, device=device, options=o))
    for fn in runs.values():  # warm-up / compile
        fn()
    secs = {k: [] for k in runs}
    for _ in range(a.repeats):
        for k, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs[k].append(time.perf_counter() - t0)
    print(f"{a.arch}: {flops / 1e9:.3f} GFLOP per image, {a.n} images, batch {a.batch}, device {device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else f', {torch.get_num_threads()} thread(s)'}")
    print("| path | n | images/s (median) | spread | x before (median, min-max, interleaved) | model TFLOP/s | % of bf16 peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    recorded = []
    for k, s in secs.items():
        rates = [a.n / t for t in s]
        ratios = [t0 / t for t0, t in zip(secs["before"], s)]
        rate = statistics.median(rates)
        tflops = rate * flops / 1e12
        pct = f"{100 * tflops / peak:.1f}" if peak else "n/a"
        print(f"| {k} | {a.repeats} | {rate:.0f} | {min(rates):.0f}-{max(rates):.0f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) | {tflops:.4g} | {pct} |")
        if k != "before":
            opt = parse_variant(k, device)
            recorded.append(measured_row(
                "labelling", a.arch, (32, 32, 3), precision="bf16" if opt.bf16 else "fp32",
                channels_last=opt.channels_last, compile=opt.compile, batch=a.batch,
                detail=f"f_NR over a {a.n}-image store shard with read-ahead, median of {a.repeats}",
                gflop=flops / 1e9, images_per_s=rate, tflops=tflops, device=device,
                source="benchmarks/label_throughput.py"))
    if a.record:
        record_rates(a.record, recorded)
        print(f"recorded {len(recorded)} row(s) in {a.record}")


if __name__ == "__main__":
    main()
