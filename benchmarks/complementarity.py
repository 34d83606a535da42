"""Complementarity and coverage (paper Alg. 1, Table 1) of a Gaussian-fit generator on CIFAR-10-jpeg,
with a held-out half of the real train set as a sanity row.

The train split is cut in two seeded halves A and B. The class-conditional Gaussian (paper App. D,
registered "gaussian") is fitted on A; Alg. 1 then compares N samples of the Gaussian and N images of
B (a "generator" that draws fresh real images: the ideal row) against N images of A (the train set
the generator saw) and N test images.

Features: Inception weights cannot be downloaded everywhere, so the default extractor is the
penultimate layer (512-d) of the real, independently trained CIFAR-10 ResNet-18 that ships in the
pyautoattack package (examples/model_test.pt, kuangliu layout, ~87% clean accuracy on this data):
``classifier:<that file>`` with arch resnet-18-kuangliu. ``--features inception [--inception-weights
PATH]`` gives the paper's feature space where the weights are available. Numbers in another feature
space are not comparable with the paper's Table 1 (they compare generators with each other).

    OMP_NUM_THREADS=1 python benchmarks/complementarity.py --n 5000          # CPU, single thread
    python benchmarks/complementarity.py --n 10000 --device cuda             # paper's N
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from robustgen.generate import get_generator
from robustgen.metrics.features import get_extractor
from robustgen.metrics.measure import ImageSet, measure

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def pyautoattack_resnet18() -> Path:
    import pyautoattack

    return Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder with train.npz and test.npz")
    p.add_argument("--n", type=int, default=5000, help="samples per set (paper: 10000)")
    p.add_argument("--features", default=None, help="default: classifier:<pyautoattack ResNet-18>")
    p.add_argument("--inception-weights", type=Path, default=None)
    p.add_argument("--pca", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--metrics", default="complementarity,fid,is,kid")
    p.add_argument("--out", type=Path, default=None, help="JSON with the table and timings")
    args = p.parse_args()
    if args.device == "cpu" and os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    t0 = time.perf_counter()
    train = np.load(args.data / "train.npz")
    test = np.load(args.data / "test.npz")
    train_x, train_y = train["image"], train["label"].astype(np.int64)
    test_x, test_y = test["image"], test["label"].astype(np.int64)
    perm = np.random.default_rng(args.seed).permutation(len(train_x))
    a, b = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:])
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    gen = get_generator("gaussian")
    fit = gen.fit(train_x[a], train_y[a], num_classes=10, num_components=200)
    t_fit = time.perf_counter() - t1
    t1 = time.perf_counter()
    gauss_x, gauss_y = gen.sample(fit, args.n, seed=args.seed)
    t_sample = time.perf_counter() - t1

    if args.features is None:
        spec, options = f"classifier:{pyautoattack_resnet18()}", {"arch": "resnet-18-kuangliu", "num_classes": 10}
    else:
        spec = args.features
        options = {"weights_path": args.inception_weights} if spec == "inception" else {}
    extractor = get_extractor(spec, device=args.device, **options)

    t1 = time.perf_counter()
    result = measure(ImageSet("train half A", train_x[a], train_y[a]), ImageSet("test", test_x, test_y),
                     {"Class-conditional Gaussian-fit (on A)": ImageSet("gaussian", gauss_x, gauss_y),
                      "held-out real half B (sanity)": ImageSet("half B", train_x[b], train_y[b])},
                     extractor=extractor, n=args.n, metrics=args.metrics.split(","), reference="train",
                     seed=args.seed, batch_size=args.batch_size, pca_components=args.pca)
    t_measure = time.perf_counter() - t1
    total = time.perf_counter() - t0

    print(result["markdown"])
    threads = torch.get_num_threads()
    print(f"device {args.device} ({platform.processor() or platform.machine()}, torch threads {threads}"
          + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "") + ")")
    print(f"wall time {total:.1f} s: load {t_load:.1f} s, Gaussian fit on {len(a)} images {t_fit:.1f} s, "
          f"sampling {args.n} {t_sample:.1f} s, measure {t_measure:.1f} s (reference features "
          f"{result['reference_time_s']:.1f} s; per source: "
          + ", ".join(f"{k} {v['time_s']:.1f} s" for k, v in result["rows"].items()) + ")")
    if args.out is not None:
        result.update(timings={"load_s": t_load, "fit_s": t_fit, "sample_s": t_sample, "measure_s": t_measure,
                               "total_s": total}, device=args.device, threads=threads)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
