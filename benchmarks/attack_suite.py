"""Attack-suite cross-checks and cost on one checkpoint (issue: evaluation users can trust).

Runs PGD-40, APGD-CE, APGD-T, MultiTargeted, AutoAttack (standard) and AA+MT on the same test
points and seed, then checks: AA+MT <= APGD-CE alone; MultiTargeted alone <= APGD-T alone + 0.5
points; our APGD-CE -> APGD-DLR stages equal pyautoattack's own runner on the same points and
seed. Prints per-stage robust accuracy and seconds per 100 attacked images.

    python benchmarks/attack_suite.py --checkpoint runs/default/stages/train-baseline-*/best.safetensors --n 540
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from robustgen.checkpoint import load_model, model_info
from robustgen.data import load_dataset
from robustgen.evaluate import evaluate_robustness
from robustgen.attacks.autoattack import run_reference_autoattack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=540)
    parser.add_argument("--batch-size", type=int, default=540)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", default="pgd40,apgd-ce,apgd-t,mt,aa+mt,autoattack")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    info = model_info(args.checkpoint)
    cfg = info["config"]
    norm, eps = cfg["threat"]["norm"], float(cfg["threat"]["eps"])
    test = load_dataset(cfg["data"]["dataset"], "test", seed=cfg["data"]["split_seed"])
    images, labels = test.images[: args.n], test.labels[: args.n]
    model = load_model(args.checkpoint)
    torch.set_num_threads(torch.get_num_threads())
    print(f"{args.checkpoint}: {cfg['data']['dataset']}, {norm} eps={eps:.4g}, n={len(labels)}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")

    results = {}
    for attack in args.attacks.split(","):
        r = evaluate_robustness(model, images, labels, attack=attack, norm=norm, eps=eps,
                                batch_size=args.batch_size, seed=args.seed)
        results[attack] = r
        stages = ", ".join(f"{s['stage']} {100 * s['robust_accuracy']:.2f}% ({s['s_per_100_images']:.2f} s/100 img)"
                           for s in r["stages"])
        print(f"{attack:>10}: clean {100 * r['clean_accuracy']:.2f}%  robust {100 * r['robust_accuracy']:.2f}%  "
              f"[{stages}]  max pert {r['max_perturbation']:.4g}  {r['time_s']:.1f} s")
        for w in r["warnings"]:
            print(f"{'':>12}warning: {w}")

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    t0 = time.perf_counter()
    reference = run_reference_autoattack(model, x, y, norm=norm, eps=eps, seed=args.seed,
                                         attacks=["apgd-ce", "apgd-dlr"], batch_size=args.batch_size)
    ref_time = time.perf_counter() - t0
    checks = {}
    if "aa+mt" in results:
        ours = results["aa+mt"]["stages"][1]["robust_accuracy"]
        checks["apgd_ce_dlr_matches_pyautoattack"] = {"ours": ours, "pyautoattack": reference,
                                                       # same number of robust points (pyautoattack averages in float32)
                                                       "equal": round(ours * len(labels)) == round(reference * len(labels)),
                                                       "pyautoattack_time_s": round(ref_time, 1)}
    if {"aa+mt", "apgd-ce"} <= results.keys():
        checks["aa_mt_le_apgd_ce"] = results["aa+mt"]["robust_accuracy"] <= results["apgd-ce"]["robust_accuracy"]
    if {"mt", "apgd-t"} <= results.keys():
        mt, apgd_t = results["mt"]["robust_accuracy"], results["apgd-t"]["robust_accuracy"]
        checks["mt_le_apgd_t_plus_half_point"] = {"mt": mt, "apgd_t": apgd_t, "ok": mt <= apgd_t + 0.005}
    print(json.dumps(checks, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": results, "checks": checks}, f, indent=2)


if __name__ == "__main__":
    main()
