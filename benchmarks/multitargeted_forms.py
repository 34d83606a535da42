"""MultiTargeted's two orders of runs against APGD-T on a robust CIFAR-10 model trained here.

Trains a small pre-activation CNN with TRADES (the authors' Adam inner loop, alpha = 1) on the
JPEG-decoded CIFAR-10 copy, then attacks --n random test images (seeded) with each attack alone
(not in a cascade, same points, same seed): APGD-T (AutoAttack's 9 targets x 100 steps),
MultiTargeted with one target per restart (restarts x 1) and the published restarts x targets
loop (``robustgen.attacks.multitargeted``). Prints and writes a markdown table: robust accuracy,
runs and gradient steps per attacked point, wall time, and the points each attack breaks that
APGD-T does not. Sized for a CPU (--downsample 2 gives 16x16 images, --width 8).

    OMP_NUM_THREADS=1 python benchmarks/multitargeted_forms.py --data /work/shared/data/cifar10-jpeg \
        --out docs/figures/multitargeted_forms.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from robustgen.attacks.multitargeted import multitargeted_attack, target_ranks
from robustgen.data import load_dataset
from robustgen.data.datasets import ImageDataset
from robustgen.evaluate import AttackStage, run_cascade
from robustgen.attacks.autoattack import apgd_targeted
from robustgen.models.small_cnn import SmallCNN
from robustgen.train.loop import LoopSettings, train_loop
from robustgen.train.steps import TrainingAttack, trades_step_loss

TRAINING_ARGS = ("data", "downsample", "width", "train_steps", "batch_size", "inner_steps", "seed")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def downsample(ds: ImageDataset, factor: int) -> ImageDataset:
    if factor == 1:
        return ds
    n, h, w, c = ds.images.shape
    pooled = ds.images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return ImageDataset(np.round(pooled).astype(np.uint8), ds.labels, ds.class_names, f"{ds.name}@1/{factor}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/cifar10-jpeg")
    p.add_argument("--work", default="/tmp/mt-forms", help="training folder (resumes)")
    p.add_argument("--downsample", type=int, default=2)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--n", type=int, default=250)
    p.add_argument("--mt-steps", type=int, default=200)
    p.add_argument("--forms", default="1x10,9x3,3x10", help="targets x restarts; targets 1 = one target per restart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    eps = 8 / 255

    train = downsample(load_dataset(f"npz:{args.data}", "train"), args.downsample)
    test = downsample(load_dataset(f"npz:{args.data}", "test"), args.downsample)
    model = SmallCNN(num_classes=10, width=args.width, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    inner = TrainingAttack(norm="linf", eps=eps, steps=args.inner_steps,
                           adam_lr_boundaries=(args.inner_steps // 2,))
    settings = LoopSettings(batch_size=args.batch_size, total_steps=args.train_steps,
                            warmup_steps=args.train_steps // 20, peak_lr=0.1 * args.batch_size / 256,
                            ema_decay=None, checkpoint_every_steps=50, log_every_steps=25,
                            crop_padding=4 // args.downsample, seed=args.seed)
    t0 = time.perf_counter()
    train_loop(model, settings=settings, real=train, generated=[], step_loss=trades_step_loss(inner, beta=6.0),
               evaluate=None, out_dir=Path(args.work), device=torch.device("cpu"),
               spec={"arch": f"small-cnn-width{args.width}", "num_classes": 10}, extra_meta={},
               fingerprint=json.dumps({k: getattr(args, k) for k in TRAINING_ARGS}),
               progress=False)
    train_s = time.perf_counter() - t0
    model.eval()

    # A seeded random subset: the test file may be sorted by class.
    pick = np.sort(np.random.default_rng(args.seed).permutation(len(test.labels))[: args.n])
    images, labels = test.images[pick], test.labels[pick]

    def mt(targets: int, restarts: int):
        def run(m, x, y, seed):
            g = torch.Generator().manual_seed(seed)
            return multitargeted_attack(m, x, y, norm="linf", eps=eps, restarts=restarts,
                                        targets=None if targets == 1 else targets, steps=args.mt_steps,
                                        generator=g)[0]
        runs = len(target_ranks(restarts, None if targets == 1 else targets, 9))
        name = f"MT one target per restart, {restarts} restarts" if targets == 1 else \
            f"MT published, {restarts} restarts x top-{targets} targets"
        return AttackStage(name, run), runs, runs * args.mt_steps

    attacks = [(AttackStage("APGD-T (9 targets x 100 steps)",
                            lambda m, x, y, s: apgd_targeted(m, x, y, norm="linf", eps=eps, seed=s)), 9, 900)]
    for form in args.forms.split(","):
        t, r = (int(v) for v in form.split("x"))
        attacks.append(mt(t, r))
    rows, masks = [], {}
    for stage, runs, steps in attacks:
        r = run_cascade(model, images, labels, [stage], norm="linf", eps=eps, batch_size=args.n,
                        device=torch.device("cpu"), seed=args.seed)
        masks[stage.name] = r["robust_mask"]
        rows.append({"attack": stage.name, "robust_accuracy": r["robust_accuracy"], "runs": runs,
                     "max_gradient_steps_per_point": steps, "time_s": r["stages"][0]["time_s"],
                     "clean_accuracy": r["clean_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    apgd = masks[attacks[0][0].name]
    for row in rows:
        row["broken_not_by_apgd_t"] = int((apgd & ~masks[row["attack"]]).sum())
        row["robust_where_apgd_t_broke"] = int((masks[row["attack"]] & ~apgd).sum())
    all_mask = np.logical_and.reduce(list(masks.values()))
    h = test.images.shape[1]
    lines = [
        f"TRADES small CNN (width {args.width}, {sum(p.numel() for p in model.parameters()):,} parameters) trained "
        f"{args.train_steps} steps of {args.batch_size} ({args.inner_steps}-step Adam inner loop, beta 6) on "
        f"CIFAR-10 (cifar10-jpeg) at {h}x{h} in {train_s / 60:.1f} min; Linf 8/255; {args.n} random test images; "
        f"clean accuracy {100 * rows[0]['clean_accuracy']:.1f}%; seed {args.seed}; "
        f"{platform.machine()} CPU, {torch.get_num_threads()} thread, machine shared with other jobs (times are indicative).",
        "",
        "| attack (alone) | robust accuracy | runs | gradient steps per point (max) | time (s) | broken here, not by APGD-T | robust here, broken by APGD-T |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['attack']} | {100 * row['robust_accuracy']:.1f}% | {row['runs']} | "
                     f"{row['max_gradient_steps_per_point']} | {row['time_s']:.0f} | {row['broken_not_by_apgd_t']} | "
                     f"{row['robust_where_apgd_t_broke']} |")
    lines.append(f"| all of the above (per-point worst case) | {100 * all_mask.mean():.1f}% | | | | | |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
