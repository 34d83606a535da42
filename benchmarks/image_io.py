"""Image-file decoding and store throughput at TinyImageNet and ImageNet sizes (64x64x3, 256x256x3).

Writes, in a temporary folder:
* JPEG trees (quality 90, smooth random images so the files compress like photographs): 64x64
  sources (TinyImageNet's files) decoded at their size, and 500x375 sources (a typical ImageNet
  file) decoded to 256 px (shorter side resized, centre crop; JPEG draft mode), both through
  ``robustgen.data.folder.FolderImages.gather`` with 1 and with ``--threads`` decoding threads
  (interleaved repeats, median and spread);
* stores of N uint8 images at 64x64x3 and 256x256x3: shard writes (sha256 included) and reads of
  random rows (``Store.gather``, what the training loop's prefetch calls), with the process's peak
  resident memory before and after the reads.

Store reads come from the OS page cache (the store has just been written), not from disk.

    python benchmarks/image_io.py                      # defaults below
    python benchmarks/image_io.py --files 400 --store-n 4000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from robustgen.data.folder import FolderImages
from robustgen.data.store import Store
from robustgen.data.store.writer import StoreWriter


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def smooth_image(rng, w: int, h: int) -> np.ndarray:
    """Random low-frequency colour field plus mild noise: compresses like a photograph, not like noise."""
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
    return np.clip(big + rng.integers(-12, 13, big.shape), 0, 255).astype(np.uint8)


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:06d}.JPEG"
        Image.fromarray(smooth_image(rng, *size)).save(p, quality=90)
        paths.append(str(p))
    return paths


def time_decode(paths, size, threads, repeats) -> dict:
    """images/s of FolderImages.gather over all paths, per thread count, interleaved repeats."""
    runs = {t: [] for t in threads}
    for _ in range(repeats):
        for t in threads:
            images = FolderImages(paths, size=size, workers=t)
            t0 = time.perf_counter()
            images.gather(np.arange(len(paths)))
            runs[t].append(len(paths) / (time.perf_counter() - t0))
    return runs


def store_io(folder: Path, n: int, shape, shard_size: int, read_batch: int, read_batches: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, (min(shard_size, n), *shape), dtype=np.uint8)
    t0 = time.perf_counter()
    with StoreWriter.create(folder, image_shape=shape, num_classes=200, shard_size=shard_size) as w:
        for k, start in enumerate(range(0, n, shard_size)):
            count = min(shard_size, n - start)
            w.write_shard(k, images=block[:count], labels=rng.integers(0, 200, count))
    write_s = time.perf_counter() - t0
    del block
    rss_before = peak_rss_mib()
    store = Store(folder, num_classes=200, image_shape=shape)
    out = np.empty((read_batch, *shape), np.uint8)
    times = []
    for b in range(read_batches):
        idx = np.random.default_rng([seed, b]).integers(0, n, read_batch)
        t0 = time.perf_counter()
        store.gather(idx, out=out)
        times.append(time.perf_counter() - t0)
    return {"write_img_s": n / write_s, "write_mb_s": n * np.prod(shape) / write_s / 1e6,
            "read_img_s": [read_batch / t for t in times], "rss_before": rss_before, "rss_after": peak_rss_mib()}


def fmt(values) -> str:
    med = statistics.median(values)
    return f"{med:,.0f}/s (range {min(values):,.0f}-{max(values):,.0f}, n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=400, help="JPEG files per size")
    ap.add_argument("--threads", type=int, default=2, help="decoding threads to compare with 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-n", type=int, default=20000, help="images per store (64x64 and 256x256)")
    ap.add_argument("--read-batch", type=int, default=256)
    ap.add_argument("--read-batches", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f} (1 min) at start")
    threads = sorted({1, args.threads})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, src, size in (("64x64 (TinyImageNet files, no resize)", (64, 64), None),
                                ("500x375 -> 256x256 (ImageNet-like files, draft + resize + crop)", (500, 375), 256)):
            paths = write_jpegs(tmp / f"jpeg-{src[0]}", args.files, src, seed=src[0])
            kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
            runs = time_decode(paths, size, threads, args.repeats)
            print(f"decode {name}, {args.files} files of {kb:.1f} KiB:")
            for t in threads:
                print(f"  {t} thread(s): {fmt(runs[t])}")
            if len(threads) > 1:
                ratios = [b / a for a, b in zip(runs[1], runs[threads[-1]])]
                print(f"  {threads[-1]} threads / 1 thread: {statistics.median(ratios):.2f}x "
                      f"(range {min(ratios):.2f}-{max(ratios):.2f})")
        for shape, shard in (((64, 64, 3), 10_000), ((256, 256, 3), 2_000)):
            r = store_io(tmp / f"store-{shape[0]}", args.store_n, shape, shard, args.read_batch, args.read_batches,
                         seed=shape[0])
            gb = args.store_n * np.prod(shape) / 1e9
            print(f"store {shape[0]}x{shape[1]}x3, {args.store_n} images ({gb:.2f} GB), shards of {shard}: "
                  f"write {r['write_img_s']:,.0f} img/s ({r['write_mb_s']:,.0f} MB/s incl. sha256); "
                  f"random-row reads of {args.read_batch}: {fmt(r['read_img_s'])}; "
                  f"peak RSS {r['rss_before']:.0f} MiB before reads, {r['rss_after']:.0f} MiB after")
    print(f"load average {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()
