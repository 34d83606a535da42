"""Generator study, phase A (issue 23; docs/generator_study.md): fit DDPM variants on the kept
real images of a regime-map point, sample and pseudo-label them exactly as the map's jobs do, and
score each with the diagnostics (near copies, f_NR agreement and confidence, complementarity)
against the kept images and the validation split only. No adversarial training, no test split.
The pre-registered rule (``choose``) then names the variant phase B trains.

    python benchmarks/generator_study.py --out runs/regime-map --point real-75
    python benchmarks/generator_study.py --out runs/regime-map --point real-75 --report docs/figures/generator_study

Stages go into the map's run folder of the point's real-set size (``runs/real-<n>``), so the
map's jobs for a chosen variant reuse its f_NR, samples and labels; run it while no map worker
uses that folder (the folder lock says so otherwise). Each variant writes
OUT/study/<point>-<variant>.json; a rerun skips finished variants.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regime_map import ARMS, POINTS, point_config  # noqa: E402

REFERENCE = "ddpm"  # today's DDPM: the variant every other one is compared with
CANDIDATES = ("ddpm", "ddpm-dropout0.1", "ddpm-dropout0.3", "ddpm-steps1000", "ddpm-uncond", "ddpm-augment")
# Variants built after the choice was made: scored with the same diagnostics and reported with what the
# same rule picks among all variants, but phase B's choice stays the pre-registered one among CANDIDATES
LATER = ("ddpm-edm", "ddpm-cfg")
# The rule, fixed before any variant was scored (docs/generator_study.md):
CONFIDENCE_MARGIN = 0.05  # eligible: mean f_NR confidence >= the reference's - 0.05 ...
AGREEMENT_MARGIN = 0.05  # ... and (conditional) f_NR = conditioning class on >= the reference's - 5 points
COPY_TIE = 0.02  # near-copy shares within 2 points of the lowest tie; the lowest "kept" complementarity wins


def choose(diagnostics: dict[str, dict], reference: str = REFERENCE) -> tuple[str | None, list[str]]:
    """The pre-registered choice among the variants other than ``reference``: (chosen, reasons).

    1. Eligible: mean f_NR confidence at least the reference's minus CONFIDENCE_MARGIN and, where
       the variant has conditioning classes, f_NR agreement with them at least the reference's minus
       AGREEMENT_MARGIN (its labels must not be much worse).
    2. Among the eligible, the lowest near-copy share of the kept images; shares within COPY_TIE
       of the lowest tie, and the lowest complementarity share of "kept" (Alg. 1: fewer samples
       whose nearest neighbour is a kept image) breaks the tie.
    """
    ref = diagnostics[reference]
    reasons, eligible = [], []
    for name, d in diagnostics.items():
        if name == reference:
            continue
        ok = d["confidence"] >= ref["confidence"] - CONFIDENCE_MARGIN
        why = [f"confidence {d['confidence']:.3f} vs the reference's {ref['confidence']:.3f}"]
        if "label_agreement" in d and "label_agreement" in ref:
            ok &= d["label_agreement"] >= ref["label_agreement"] - AGREEMENT_MARGIN
            why.append(f"agreement {100 * d['label_agreement']:.1f}% vs {100 * ref['label_agreement']:.1f}%")
        reasons.append(f"{name}: {'eligible' if ok else 'not eligible'} ({', '.join(why)})")
        if ok:
            eligible.append(name)
    if not eligible:
        return None, reasons + ["no variant is eligible"]
    lowest = min(diagnostics[n]["near_copy_share"] for n in eligible)
    tied = [n for n in eligible if diagnostics[n]["near_copy_share"] <= lowest + COPY_TIE]
    order = CANDIDATES + LATER
    chosen = min(tied, key=lambda n: (diagnostics[n]["complementarity"]["kept"], order.index(n)))
    reasons.append(f"lowest near-copy share {100 * lowest:.1f}%; tied within {100 * COPY_TIE:.0f} points: "
                   f"{', '.join(tied)}; chosen by the lowest 'kept' complementarity: {chosen}")
    return chosen, reasons


def run_variant(out: Path, point: str, variant: str, extra=()) -> dict:
    from robustgen.pipeline import generated_data
    from robustgen.runtime.io import write_json

    cfg, settings = point_config(POINTS[point], (variant,), 0, "autoattack", extra)
    t0 = time.perf_counter()
    data = generated_data(cfg, out / "runs" / f"real-{settings['data.train_size']}", progress=False)
    entry = data[ARMS[variant][0]]
    record = {"point": point, "variant": variant, "changes": list(ARMS[variant][2]), "settings": settings,
              "labeling": entry["labeling"], "diagnostics": entry["diagnostics"],
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    write_json(out / "study" / f"{point}-{variant}.json", record)
    return record


def write_report(records: list[dict], prefix: Path, point: str) -> dict:
    from robustgen.metrics.diagnostics import format_diagnostics
    from robustgen.runtime.io import write_json, write_text

    every = {r["variant"]: r["diagnostics"] for r in records}
    diagnostics = {n: d for n, d in every.items() if n in CANDIDATES}
    chosen, reasons = choose(diagnostics) if REFERENCE in diagnostics and len(diagnostics) > 1 else (None, [])
    later = [n for n in every if n in LATER]
    extended, extended_reasons = choose(every) if later and chosen else (None, [])
    changes = {r["variant"]: ", ".join(r["changes"]) or "today's settings" for r in records}
    lines = [f"# Generator study, phase A: DDPM variants at the regime map's `{point}` point", "",
             "Each variant is fitted on the kept real images only, sampled (5000, DPM-Solver++ 20 steps) and "
             "pseudo-labelled by f_NR exactly as the map's jobs; diagnostics against the kept images and the "
             "validation split (no test images, no adversarial training). The choice rule was written and "
             "committed before these numbers existed (docs/generator_study.md).", "",
             "| variant | changes | fit + sample + label time |", "|---|---|---:|"]
    lines += [f"| {r['variant']} | {changes[r['variant']]} | {r['wall_time_s']:.0f} s |" for r in records]
    lines += ["", format_diagnostics(every), "", "Choice (the pre-registered rule, among the variants registered "
              f"with it: {', '.join(n for n in every if n in CANDIDATES)}):", ""]
    lines += [f"- {r}" for r in reasons] + ["", f"Chosen for phase B: **{chosen}**" if chosen else "No choice yet.", ""]
    if extended:
        lines += [f"Variants added after the choice ({', '.join(later)}), scored the same way; the same rule "
                  "among all variants:", ""] + [f"- {r}" for r in extended_reasons] + \
                 ["", f"The rule's pick among all variants: **{extended}**", ""]
    write_text(Path(f"{prefix}.md"), "\n".join(lines))
    # without the machine's store paths: the report is shared
    shared = [{**r, "labeling": {k: v for k, v in (r["labeling"] or {}).items() if k != "path"}} for r in records]
    summary = {"point": point, "chosen": chosen, "reasons": reasons, "chosen_among_all": extended,
               "reasons_among_all": extended_reasons, "records": shared}
    write_json(Path(f"{prefix}.json"), summary)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/regime-map"))
    parser.add_argument("--point", default="real-75", choices=list(POINTS))
    parser.add_argument("--variants", default=",".join(CANDIDATES + LATER), help="comma-separated arm names")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE applied to every variant (smoke tests, e.g. generator.ddpm.train_steps=20)")
    parser.add_argument("--report", type=Path, default=None, help="write PREFIX.md and PREFIX.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    records = []
    for variant in args.variants.split(","):
        path = args.out / "study" / f"{args.point}-{variant}.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
            continue
        print(f"[study] {time.strftime('%H:%M:%S')} {args.point} {variant}", flush=True)
        records.append(run_variant(args.out, args.point, variant, args.overrides))
        d = records[-1]["diagnostics"]
        print(f"[study] {variant}: near copies {100 * d['near_copy_share']:.1f}%, novelty {d['novelty']:.2f}, "
              f"agreement {100 * d.get('label_agreement', float('nan')):.1f}%, confidence {d['confidence']:.3f}",
              flush=True)
    if args.report is not None:
        summary = write_report(records, args.report, args.point)
        print(Path(f"{args.report}.md").read_text())
        print(json.dumps({"chosen": summary["chosen"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
