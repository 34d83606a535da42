"""Training data path over a large store with flat memory (issue: generated data at paper scale).

Writes an N-image 32x32x3 store (default 2M images, 6.1 GB; random pixels) in a temporary
folder, then runs the training loop's data path over it (``robustgen.train.mixing.batches.TrainingBatches``, what
``train_loop`` reads each step from): batches of 1024 mixing 30% real images (the 50K CIFAR-10
train set from shared/data, held on the device as uint8) with 70% store images drawn with
replacement, gathered by its prefetch thread, returned as uint8 images and soft targets on the
device. Prints write speed, images/s read, the same mix gathered from an in-RAM array as a
baseline (ratio), the loop's wait per step when it "computes" for ``--compute-ms``, and peak
resident memory (must stay under 2 GiB).

Note: the store has just been written, so on a machine with more RAM than the store it is read
from the OS page cache, not the disk (reads are ``preadv`` of the needed rows: the page cache is
not part of this process's RSS). The baseline runs last, after the peak RSS of the store path
has been recorded, because it holds its images in RAM.

    python benchmarks/store_read.py               # 2M images, 2000 steps x 3 repeats
    python benchmarks/store_read.py --n 200000 --steps 300 --repeats 1    # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robustgen.data import ImageDataset
from robustgen.data.store import Store
from robustgen.data.store.writer import StoreWriter
from robustgen.runtime.distributed import DistContext
from robustgen.train.mixing.settings import MixSettings
from robustgen.train.mixing.batches import TrainingBatches
from robustgen.train.mixing.indices import WeightedIndices
from robustgen.train.mixing.sources import ArraySource, gather_rows

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "train.npz"
SHAPE = (32, 32, 3)


def rss() -> dict:
    """Peak and current resident memory of this process, MiB."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def fmt_rss(r: dict) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in r.items()) + " MiB"


def write_store(path: Path, n: int, shard_size: int) -> float:
    t = time.perf_counter()
    with StoreWriter.create(path, image_shape=SHAPE, num_classes=10, shard_size=shard_size,
                            info={"source": {"kind": "benchmark", "content": "uniform random pixels"}}) as w:
        for k, start in enumerate(range(0, n, shard_size)):
            rng = np.random.default_rng([0, k])
            count = min(shard_size, n - start)
            w.write_shard(k, images=rng.integers(0, 256, (count, *SHAPE), dtype=np.uint8),
                          labels=rng.integers(0, 10, count))
    return time.perf_counter() - t


def load_real(n: int = 50_000) -> ArraySource:
    if REAL.is_file():
        from robustgen.data import read_npz

        a = read_npz(REAL)
        return ArraySource(a["image"][:n], a["label"][:n], num_classes=10, name=str(REAL))
    rng = np.random.default_rng(1)
    return ArraySource(rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(0, 10, n),
                       num_classes=10, name="random real stand-in")


def read_pass(real: ArraySource, store: Store, args, steps: int, start: int, compute_s: float) -> tuple[float, float]:
    """(images/s, mean seconds the loop waited per step) over ``steps`` training batches."""
    device = torch.device(args.device)
    real_set = ImageDataset(images=real.images, labels=real.labels, class_names=tuple(map(str, range(10))),
                            name=real.name)
    settings = MixSettings(batch_size=args.batch_size, total_steps=start + steps,
                           source_weights=(args.alpha, 1 - args.alpha), seed=0)
    batches = TrainingBatches(real_set, [store], settings, 10, device, DistContext(), start_step=start)
    waited = 0.0
    t0 = time.perf_counter()
    try:
        for step in range(start, start + steps):
            t = time.perf_counter()
            (chunk,) = batches(step)
            int(chunk.images[-1, 0, 0, 0])  # the last row is from the store: wait for it
            waited += time.perf_counter() - t
            if compute_s:
                time.sleep(compute_s)  # the device's work; the GIL is free meanwhile, as during CUDA kernels
    finally:
        batches.close()
    wall = time.perf_counter() - t0
    return steps * args.batch_size / wall, waited / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2_000_000, help="images in the store")
    p.add_argument("--shard-size", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--alpha", type=float, default=0.3, help="fraction of real images per batch")
    p.add_argument("--compute-ms", type=float, default=20.0, help="simulated training step for the wait test")
    p.add_argument("--device", default="cpu", help="where the real set and the batches live")
    p.add_argument("--dir", default=None, help="where to write the store (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the store")
    args = p.parse_args()

    base = Path(args.dir or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    need = args.n * int(np.prod(SHAPE)) * 1.02 + (64 << 20)
    free = shutil.disk_usage(base).free
    print(f"host: {platform.machine()} {os.cpu_count()} CPUs (may be shared with other jobs); disk at {base}: "
          f"{free / 2**30:.1f} GiB free, store needs {need / 2**30:.1f} GiB")
    if free < need:
        raise SystemExit(f"not enough disk for {args.n} images; pass a smaller --n or another --dir")
    folder = Path(tempfile.mkdtemp(prefix="robustgen-store-bench-", dir=base))
    try:
        write_s = write_store(folder / "store", args.n, args.shard_size)
        gb = args.n * int(np.prod(SHAPE)) / 1e9
        print(f"wrote {args.n} images ({gb:.2f} GB, {args.n // args.shard_size} shards, sha256 + fsync) in "
              f"{write_s:.1f} s = {gb / write_s:.2f} GB/s; {fmt_rss(rss())}")

        real = load_real()
        store = Store(folder / "store", num_classes=10, image_shape=SHAPE)
        n_real = int(np.floor(args.alpha * args.batch_size + 0.5))
        print(f"batches of {args.batch_size}: {n_real} real ({real.name}, on {args.device}) + "
              f"{args.batch_size - n_real} from the store")

        rates = []
        for r in range(args.repeats):
            rate, _ = read_pass(real, store, args, args.steps, r * args.steps, 0.0)
            rates.append(rate)
            print(f"  pass {r + 1}: {args.steps} steps, {rate:,.0f} images/s through the training data path; "
                  f"{fmt_rss(rss())}")
        mean = statistics.mean(rates)
        spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
        wait_steps = min(args.steps, 300)
        _, wait = read_pass(real, store, args, wait_steps, 10 * args.steps, args.compute_ms / 1000)
        peak = rss()["peak_rss_mib"]

        # baseline: the same mix gathered from arrays in RAM (what the anchors do, needing the whole set in RAM)
        n_ram = min(len(store), 100_000)
        ram = ArraySource(store.gather(np.arange(n_ram)), store.labels[:n_ram], num_classes=10,
                          name=f"in-RAM copy of {n_ram} store images")
        ram_indices = WeightedIndices([len(real), len(ram)], [args.alpha, 1 - args.alpha], batch_size=args.batch_size,
                                      seed=0, sampling=("permutation", "with_replacement"))
        batch_images = np.empty((args.batch_size, *SHAPE), np.uint8)
        batch_labels = np.empty(args.batch_size, np.int64)
        base_steps = min(args.steps, 500)
        t = time.perf_counter()
        for s in range(base_steps):
            gather_rows([real, ram], ram_indices(s), batch_images, batch_labels)
        baseline = base_steps * args.batch_size / (time.perf_counter() - t)

        print(f"store read: {mean:,.0f} +- {spread:,.0f} images/s (n={len(rates)} passes of {args.steps} steps); "
              f"in-RAM baseline (same mix gathered from arrays, no thread, {base_steps} steps): {baseline:,.0f} images/s; "
              f"ratio store/RAM {mean / baseline:.2f}")
        print(f"with a {args.compute_ms:g} ms training step: the loop waited {1000 * wait:.3f} ms per step for data "
              f"(mean over {wait_steps} steps)")
        print(f"peak RSS of the write + store read path {peak:.0f} MiB "
              f"({'under' if peak < 2048 else 'OVER'} the 2 GiB limit) for a {gb:.1f} GB store")
    finally:
        if args.keep:
            print(f"kept {folder / 'store'}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
