"""How strong is TRADES' inner attack under an L2 threat model? (issue 26 item 3)

The authors' inner maximisation is 10 Adam steps with learning rates 0.1 then 0.01 per pixel,
tuned for Linf eps 8/255. Under L2 (eps 128/255 on 3,072 CIFAR dimensions) one such step has an L2
length of about 0.1 sqrt(d) = 5.5, 11 eps: nearly every step is projected back to the sphere. This
script measures the consequence on the digits data (8x8x1, d = 64; L2 eps 0.8, the L2 length of a
0.1 Linf shift), on CPU:

1. ``robustgen sweep`` trains TRADES models (real data only, the digits_demo recipe) with each
   inner attack (``train.inner``): ``adam`` (the authors' Linf step sizes), ``adam-l2`` (the same
   Adam with learning rates scaled to the L2 ball: a first step of L2 length eps / 4, i.e.
   lr = eps / (4 sqrt(d)), then a tenth of it) and ``sign`` (normalised-gradient L2 steps of eps / 4,
   the PyTorch ports' L2 PGD), 3 training seeds, evaluated with APGD-CE + APGD-T (L2);
2. on the test images, each inner attack (10 steps, the training objective KL(p_clean || p_adv)
   and, as an attack, the cross-entropy) is compared with APGD-CE (10 and 100 steps) on the
   ``adam``-trained model of seed 0: accuracy under attack (lower: stronger) and the KL reached.

    python benchmarks/l2_inner_attack.py --out runs/l2-inner                 # ~20 CPU minutes
    python benchmarks/l2_inner_attack.py --out runs/l2-inner --report docs/figures/l2_inner_attack

The result is in docs/faithfulness.md (L2 row).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

EPS = 0.8
STEPS = 10


def inner_variants(eps: float, dims: int) -> dict[str, dict]:
    """Sweep points: the inner attack's settings of each variant."""
    lr = eps / (4 * math.sqrt(dims))
    return {"adam": {"train.inner.step_rule": "adam"},
            "adam-l2": {"train.inner.step_rule": "adam", "train.inner.adam_lr": f"[{lr:.6g}, {lr / 10:.6g}]"},
            "sign": {"train.inner.step_rule": "sign", "train.inner.sign_step_size": eps / 4}}


def base_config(eps: float):
    from robustgen.presets import load_config

    return load_config("digits_demo", ["threat.norm=l2", f"threat.eps={eps}", "train.alpha=1", "baseline=false",
                                       "eval.attack=apgd-ce+apgd-t", "eval.batch_size=540"])


def attack_strength(model, x, y, eps: float, variants: dict) -> list[dict]:
    """Accuracy under each attack and, for the inner attacks, the mean KL(p_clean || p_adv) reached."""
    import torch
    import torch.nn.functional as F

    from robustgen.attacks.pgd import cross_entropy, frozen_parameters, soft_cross_entropy
    from robustgen.attacks import autoattack as aa
    from robustgen.train.steps import TrainingAttack

    model.eval()
    rows = []
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    for name, point in variants.items():
        lr = json.loads(point.get("train.inner.adam_lr", "[0.1, 0.01]"))
        attack = TrainingAttack(norm="l2", eps=eps, steps=STEPS, step_rule=point["train.inner.step_rule"],
                                adam_lr=tuple(lr), sign_step_size=point.get("train.inner.sign_step_size"))
        for objective, fn in (("kl", lambda z: soft_cross_entropy(z, p_clean)), ("ce", lambda z: cross_entropy(z, y))):
            g = torch.Generator().manual_seed(0)
            with frozen_parameters(model):
                x_adv = attack.run(model, x, fn, g)
            with torch.no_grad():
                logits = model(x_adv)
                kl = F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="batchmean")
            rows.append({"attack": f"inner {name}", "objective": objective, "steps": STEPS,
                         "accuracy": float((logits.argmax(1) == y).float().mean()), "kl": float(kl)})
    for steps in (STEPS, 100):
        with frozen_parameters(model):
            x_adv = aa.apgd(model, x, y, norm="l2", eps=eps, seed=0, loss="ce", restarts=1, steps=steps)
        with torch.no_grad():
            logits = model(x_adv)
            kl = F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="batchmean")
        rows.append({"attack": "APGD-CE", "objective": "ce", "steps": steps,
                     "accuracy": float((logits.argmax(1) == y).float().mean()), "kl": float(kl)})
    return rows


def report(out: Path, prefix: Path) -> str:
    from robustgen.metrics.paired import mean_and_se, paired_seed_difference

    sweep = json.loads((out / "sweep.json").read_text())
    strength = json.loads((out / "strength.json").read_text())
    by = {}
    for r in sweep["records"]:
        by.setdefault(r["point"], {})[r["seed"]] = r
    base = by["adam"]
    lines = ["# TRADES' inner attack under L2 (digits, eps 0.8, 10 steps)", "",
             "## Training with each inner attack (real data only, 469 steps; APGD-CE + APGD-T, 540 test images)", "",
             "| inner attack | seeds | clean % | robust % | robust vs adam (paired) |", "|---|---|---|---|---|"]
    for point, runs in by.items():
        seeds = sorted(runs)
        clean = [runs[s]["clean_accuracy"] for s in seeds]
        robust = [runs[s]["robust_accuracy"] for s in seeds]
        paired = [s for s in seeds if s in base]
        c, r = mean_and_se(clean), mean_and_se(robust)
        d = paired_seed_difference([runs[s]["robust_accuracy"] for s in paired],
                                   [base[s]["robust_accuracy"] for s in paired])
        lines.append(f"| {point} | {len(seeds)} | {100 * c[0]:.2f} ± {100 * c[1]:.2f} | {100 * r[0]:.2f} ± "
                     f"{100 * r[1]:.2f} | {'—' if point == 'adam' else f'{100 * d[0]:+.2f} ± {100 * d[1]:.2f}'} |")
    lines += ["", "## Attack strength on the adam-trained model (seed 0, 540 test images)", "",
              "| attack | objective | steps | accuracy under attack % | KL(p_clean, p_adv) |", "|---|---|---|---|---|"]
    for r in strength:
        lines.append(f"| {r['attack']} | {r['objective']} | {r['steps']} | {100 * r['accuracy']:.2f} | {r['kl']:.4f} |")
    lines += ["", "Lower accuracy under attack and higher KL: a stronger attack. Reproduce: "
                  "`python benchmarks/l2_inner_attack.py --out runs/l2-inner`."]
    text = "\n".join(lines) + "\n"
    prefix.with_suffix(".md").write_text(text)
    (prefix.with_suffix(".json")).write_text(json.dumps({"sweep_records": sweep["records"], "strength": strength},
                                                        indent=1))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/l2-inner"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--report", type=Path, default=None, help="write PREFIX.md / PREFIX.json from --out")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(report(args.out, args.report))
        return 0
    import torch

    from robustgen.api import load_run
    from robustgen.sweep import run_sweep

    torch.set_num_threads(1)
    cfg = base_config(EPS)
    points = inner_variants(EPS, dims=64)
    run_sweep(cfg, args.out, points=points, seeds=[int(s) for s in args.seeds.split(",")], progress=False)
    run = load_run(args.out / "points" / "adam-seed0")
    x, y = run.test_data()
    rows = attack_strength(run.models["baseline"], x, y, EPS, points)
    (args.out / "strength.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
