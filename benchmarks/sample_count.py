"""Robust accuracy against the number of generated samples (paper App. B, Fig. 6), on digits.

The paper trains on generated samples only (alpha = 0) and varies their number, then evaluates
each model on the real test set and on a separate set of generated samples (a generalisation
gap: small for DDPM samples, large for BigGAN's). Here, on the default demo's setting
(configs/digits_generator.yaml: 150 real digits, the class-conditional DDPM fitted on them, Linf
eps 0.1, 469 TRADES steps per model), one sweep point per sample count trains on the first N rows
of one labelled store (``train.generated_rows``), so the DDPM, its samples and f_NR's labels are
shared by every point; the store's last rows, which no point trains on, are the generated
validation set. The real-only baseline (alpha = 1) is one training per seed. Each model is then
attacked with the config's attack (APGD-CE + APGD-T) on the real test split (the sweep's own
evaluation) and on the generated validation rows (``robustgen.api.evaluate``, same attack, seed
and batch size). Mean ± SE over training seeds, the table and the plot in OUT/sample_count.{md,png}:

    python benchmarks/sample_count.py --out runs/sample-count --dry-run   # the grid and its cost
    python benchmarks/sample_count.py --out runs/sample-count             # 5 counts x 3 seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

COUNTS = (250, 1000, 2500, 5000, 10000)
VALIDATION = 1000  # generated rows after the largest count: the generated validation set


def config(counts, validation: int, extra=()):
    from robustgen.presets import load_config

    return load_config("digits_generator", ["arms=[]", "train.alpha=0",
                                            f"generator.num_samples={max(counts) + validation}", *extra])


def generated_validation(out: Path, count: int):
    """(images float NCHW in [0, 1], f_NR labels) of the shared labelled store's last ``count`` rows."""
    import torch

    from robustgen.data.augment import to_float_nchw
    from robustgen.data.store import Store

    stores = sorted(out.glob("stages/label-*/store"))
    if len(stores) != 1:
        raise SystemExit(f"expected one labelled store under {out}/stages, found {len(stores)}")
    store = Store(stores[0])
    rows = np.arange(len(store) - count, len(store), dtype=np.int64)
    images = store.gather(rows)
    return to_float_nchw(torch.from_numpy(images)), torch.from_numpy(np.asarray(store.labels)[rows])


def evaluate_on_generated(out: Path, points: dict, seeds, cfg, x, y) -> list[dict]:
    from robustgen.api import evaluate, load_run

    rows, done = [], {}
    for name in points:
        for seed in seeds:
            run = load_run(out / "points" / f"{name}-seed{seed}")
            for model_name, checkpoint in run.checkpoints.items():
                if checkpoint not in done:  # the baseline is one model per seed, shared by every point
                    done[checkpoint] = evaluate(run.models[model_name], x, y, attack=cfg.eval.attack,
                                                norm=cfg.threat.norm, eps=cfg.threat.eps,
                                                batch_size=cfg.eval.batch_size, seed=cfg.seed)
                r = done[checkpoint]
                rows.append({"point": name, "seed": seed, "model": model_name, "clean": r.clean_accuracy,
                             "robust": r.robust_accuracy})
    return rows


def table(summary: dict, generated: list[dict], counts) -> tuple[list[str], dict]:
    """Markdown rows and the plotted series: robust accuracy (mean, SE) per count, test and generated."""
    from robustgen.metrics.paired import mean_and_se, paired_seed_difference

    # every point's run holds the same baseline training (one per seed, shared through the stage cache)
    base = {r["seed"]: 100 * r["robust_accuracy"] for r in summary["records"] if r["model"] == "baseline"}
    series = {"test": [], "generated": []}
    lines = ["| generated samples | seeds | robust % (real test) | gain vs real only (seed-paired) | "
             "robust % (generated validation) | gap |", "|---|---|---|---|---|---|"]
    for n in counts:
        rows = [r for r in summary["records"] if r["point"] == f"n{n}" and r["model"] == "ddpm-alpha0"]
        test = [100 * r["robust_accuracy"] for r in rows]
        gen = [100 * r["robust"] for r in generated if r["point"] == f"n{n}" and r["model"] == "ddpm-alpha0"]
        (mt, st), (mg, sg) = mean_and_se(test), mean_and_se(gen)
        gain, gain_se, _ = paired_seed_difference(test, [base[r["seed"]] for r in rows])
        series["test"].append((n, mt, st))
        series["generated"].append((n, mg, sg))
        lines.append(f"| {n:,} | {len(test)} | {mt:.2f} ± {st:.2f} | {gain:+.2f} ± {gain_se:.2f} | "
                     f"{mg:.2f} ± {sg:.2f} | {mg - mt:+.2f} |")
    mb, sb = mean_and_se(list(base.values()))
    series["baseline"] = (mb, sb)
    lines.append(f"| 0 (real images only, alpha = 1) | {len(base)} | {mb:.2f} ± {sb:.2f} | | | |")
    return lines, series


def plot(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustgen.runtime.io import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, style, label in (("test", "-o", "real test set"), ("generated", "--s", "generated validation set")):
        n, m, se = (np.array(v) for v in zip(*series[key]))
        ax.errorbar(n, m, yerr=se, fmt=style, capsize=3, label=label)
    mb, sb = series["baseline"]
    ax.axhspan(mb - sb, mb + sb, color="grey", alpha=0.2)
    ax.axhline(mb, color="grey", lw=1, label="real images only (alpha = 1)")
    ax.set_xscale("log")
    ax.set_xlabel("generated training samples (alpha = 0)")
    ax.set_ylabel("robust accuracy % (APGD-CE + APGD-T)")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    from robustgen.runtime.io import write_json, write_text
    from robustgen.sweep import dry_run_sweep, run_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/sample-count"))
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--validation", type=int, default=VALIDATION, help="generated validation rows")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every point")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = config(counts, args.validation, args.overrides)
    points = {f"n{n}": {"train.generated_rows": n} for n in counts}
    if args.dry_run:
        lines, problems = dry_run_sweep(cfg, args.out, points=points, seeds=seeds)
        print("\n".join(lines + problems))
        return 2 if problems else 0
    import torch

    torch.set_num_threads(1)  # beside another job on two cores
    summary = run_sweep(cfg, args.out, points=points, seeds=seeds, progress=False)
    x, y = generated_validation(args.out, args.validation)
    generated = evaluate_on_generated(args.out, points, seeds, cfg, x, y)
    lines, series = table(summary, generated, counts)
    write_json(args.out / "sample_count.json", {"counts": counts, "seeds": seeds, "validation": args.validation,
                                                "generated_eval": generated, "series": series})
    write_text(args.out / "sample_count.md", "\n".join(lines) + "\n")
    plot(series, args.out / "sample_count.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
