"""Regime map: where does extra data improve robustness? (paper Sec. 4; Schmidt et al. 2018)

A small grid on the digits demo, one factor at a time around a centre point (150 real training
images, small CNN of width 32, 469 TRADES steps of batch 128, Linf eps 0.2, f_NR pseudo-labels);
the other points change the labels of the oracle's images (true labels), the steps (938), the
width (64; 16 with 938 steps), eps (0.1) or the real-set size (400, 75, 50). For every point and
seed it trains, at the same number of steps (the arms each job lists):

    baseline            real images only (alpha = 1)
    heldout (oracle)    + the real training images withheld by data.train_size, pseudo-labelled by
                        f_NR like generated data (the perfect-generator reference), alpha 0.3
    gaussian            + 5000 samples of the class-conditional Gaussian (App. D), alpha 0.8 (the
                        proportion the paper found best for it, Sec. 3.2)
    ddpm                + 5000 samples of a class-conditional DDPM fitted on the real images, alpha 0.3
                        (generator.ddpm's defaults = the digits_ddpm preset: 0.9M-parameter UNet,
                        3000 steps, DPM-Solver++ with 20 steps)

and evaluates each on the 540 test images (and the baseline's robust gap on its own training
images) with the attack of --attack. A seed is train.seed: f_NR, the samples and their labels
are shared by the seeds of a point, so the standard errors measure training noise only.

    python benchmarks/regime_map.py --out runs/regime-map --worker 0/2 &   # two processes,
    python benchmarks/regime_map.py --out runs/regime-map --worker 1/2 &   # one thread each
    python benchmarks/regime_map.py --out runs/regime-map --report docs/figures/regime_map

Jobs run in priority order and each writes OUT/jobs/<point>-seed<s>.json when done; a rerun
skips finished jobs and resumes unfinished stages. --report tabulates whatever has finished.

The generator study (docs/generator_study.md) adds DDPM variants as arms (ARMS, e.g.
ddpm-steps1000; NAME@ALPHA for another alpha) in named job lists (--jobs b0 / b1: phase B;
c0 / c1: phase C; s0 / s1: model selection every 5 epochs at eps 0.1, with --attack apgd-ce+apgd-t). A job without "baseline" pairs with the recorded baselines of its point and
seed; --from-map docs/figures/regime_map.json makes a new --out start from the published jobs.
One point, every arm and seed (e.g. the DDPM's gain at eps 0.1 with 150 real images):

    python benchmarks/regime_map.py --out runs/regime-map --point eps-0.1
    python benchmarks/regime_map.py --out runs/regime-map --report runs/eps-0.1-map
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

CENTRE = {"data.train_size": 150, "train.arch": "small-cnn", "train.epoch_size": 1200, "train.epochs": 50,
          "threat.eps": 0.2}
ALL_ARMS = ("baseline", "heldout", "ddpm", "gaussian")
ORACLE, GAUSSIAN, DDPM = ("baseline", "heldout"), ("baseline", "gaussian"), ("baseline", "ddpm")
ALL3 = ("baseline", "heldout", "gaussian")
POINTS = {"centre": {}, "true-labels": {"label.mode": "condition"}, "steps-938": {"train.epochs": 100},
          "width-16-steps-938": {"train.arch": "small-cnn-16", "train.epochs": 100},
          "real-75": {"data.train_size": 75}, "real-50": {"data.train_size": 50},
          "real-400": {"data.train_size": 400}, "eps-0.1": {"threat.eps": 0.1},
          # the study's check of model selection: PGD-40 on the validation split every 5 epochs (10
          # checkpoints) instead of 25, every arm retrained (issue 23 item 4)
          "eps-0.1-select5": {"threat.eps": 0.1, "train.eval_every_epochs": 5},
          "width-64": {"train.arch": "small-cnn-64"}}

# Jobs (point, arms, seed) in the order each worker runs them: the jobs docs/regime_map.md reports,
# most informative first (the oracle arm decides where extra data can help). A job's baseline is
# cached by fingerprint in the run folder of its real-set size, so jobs of a point and seed share
# it (and "true-labels" shares the centre's: the baseline reads no labels). Worker 0 owns the
# points with 150 real images, worker 1 the other real-set sizes: no two processes share a folder.
WORKER_JOBS = [
    [("true-labels", ORACLE, 0), ("steps-938", ORACLE, 0), ("width-16-steps-938", ORACLE, 0), ("centre", ORACLE, 0),
     ("true-labels", ORACLE, 1), ("centre", ORACLE, 1), ("true-labels", ORACLE, 2), ("centre", ORACLE, 2),
     ("steps-938", ORACLE, 1), ("width-16-steps-938", ORACLE, 1), ("eps-0.1", ORACLE, 0), ("width-64", ORACLE, 0),
     ("eps-0.1", ORACLE, 1), ("width-64", ORACLE, 1), ("steps-938", ORACLE, 2), ("width-16-steps-938", ORACLE, 2),
     ("eps-0.1", ORACLE, 2), ("width-64", ORACLE, 2),
     # the generator at the point where the oracle helps with 150 real images (issue 23, phase C);
     # seed 0 retrains its baseline: the check that the other seeds may pair with the recorded ones
     ("eps-0.1", DDPM, 0), ("eps-0.1", ("ddpm",), 1), ("eps-0.1", ("ddpm",), 2)],
    [("real-75", ALL3, 0), ("real-50", ALL3, 0), ("real-75", ALL3, 1), ("real-75", ALL3, 2), ("real-75", DDPM, 0),
     ("real-50", ALL3, 1), ("real-75", DDPM, 1), ("real-75", DDPM, 2), ("real-50", ALL3, 2), ("real-400", ORACLE, 0),
     ("real-400", ORACLE, 1), ("real-400", ORACLE, 2), ("real-50", DDPM, 0), ("real-50", DDPM, 1),
     ("real-50", DDPM, 2)],
]


# Generator arms: name -> (generator, alpha, config changes). The variants change the DDPM's fit
# (issue 23; docs/generator_study.md): a job trains at most one arm with changes (the run's
# configured generator). "NAME@A" is arm NAME at alpha A.
ARMS = {"heldout": ("heldout", 0.3, ()), "gaussian": ("gaussian", 0.8, ()), "ddpm": ("ddpm", 0.3, ()),
        "ddpm-dropout0.1": ("ddpm", 0.3, ("generator.ddpm.dropout=0.1",)),
        "ddpm-dropout0.3": ("ddpm", 0.3, ("generator.ddpm.dropout=0.3",)),
        "ddpm-steps1000": ("ddpm", 0.3, ("generator.ddpm.train_steps=1000",)),
        "ddpm-uncond": ("ddpm", 0.3, ("generator.ddpm.class_conditional=false",)),
        "ddpm-augment": ("ddpm", 0.3, ("generator.ddpm.augment_shift=1", "generator.ddpm.augment_p=0.5")),
        # added after phase A's choice (issue 23 item 2): Karras et al.'s objective; classifier-free guidance
        "ddpm-edm": ("ddpm", 0.3, ("generator.ddpm.objective=edm",)),
        "ddpm-cfg": ("ddpm", 0.3, ("generator.ddpm.label_dropout=0.1", "generator.ddpm.guidance=0.5"))}


def arm_spec(arm: str) -> tuple[str, float, tuple]:
    """(generator, alpha, config changes) of an arm name."""
    name, _, alpha = arm.partition("@")
    generator, default_alpha, changes = ARMS[name]
    return generator, float(alpha) if alpha else default_alpha, changes

# The generator study's adversarial jobs (docs/generator_study.md), as named lists run with
# --jobs NAME; each list owns its run folders (--out), so two lists run side by side.
CHOSEN = "ddpm-steps1000"  # phase A's choice by the pre-registered rule (docs/figures/generator_study.md)
STUDY_JOBS = {
    # phase B: the chosen variant at real-75 (eps 0.2), alpha 0.3 first, then 0.5 and 0.7
    "b0": [("real-75", (CHOSEN,), 0), ("real-75", (CHOSEN,), 2), ("real-75", (f"{CHOSEN}@0.5",), 1),
           ("real-75", (f"{CHOSEN}@0.7",), 0), ("real-75", (f"{CHOSEN}@0.7",), 2)],
    "b1": [("real-75", (CHOSEN,), 1), ("real-75", (f"{CHOSEN}@0.5",), 0), ("real-75", (f"{CHOSEN}@0.5",), 2),
           ("real-75", (f"{CHOSEN}@0.7",), 1)],
    # phase C: the chosen variant at the other points where the oracle helps
    "c0": [("eps-0.1", (CHOSEN,), 0), ("eps-0.1", (CHOSEN,), 1), ("eps-0.1", (CHOSEN,), 2)],
    "c1": [("real-50", (CHOSEN,), 0), ("real-50", (CHOSEN,), 1), ("real-50", (CHOSEN,), 2)],
    # model selection every 5 epochs at eps 0.1 (run with --attack apgd-ce+apgd-t: FAB-T and Square
    # broke no point of this point's 7 models under full AutoAttack)
    "s0": [("eps-0.1-select5", ("baseline", CHOSEN, "heldout"), 0), ("eps-0.1-select5", ("baseline", CHOSEN, "heldout"), 2)],
    "s1": [("eps-0.1-select5", ("baseline", CHOSEN, "heldout"), 1)],
}


def point_config(changes: dict, arms, seed: int, attack: str, extra=()):
    from robustgen.config import load_config

    settings = {**CENTRE, **changes}
    generated = [a for a in arms if a != "baseline"]
    # a job without "baseline" pairs with the baselines of the point's other jobs (same seed, same
    # steps, the same code: a rerun reproduces them bit for bit, docs/figures/regime_map.md)
    (main, alpha, main_changes), others = arm_spec(generated[0]), [arm_spec(a) for a in generated[1:]]
    if any(c for _, _, c in others):
        raise ValueError(f"only the first arm of a job may change the generator's settings: {arms}")
    arm_list = "[" + ", ".join(f"{{generator: {g}, alpha: {a}}}" for g, a, _ in others) + "]"
    # f_NR: ~250 steps of batch 128 whatever the real-set size (30 passes over 150 images leave it at 25%)
    classifier_epochs = round(32000 / settings["data.train_size"])
    # model selection every 25 epochs (two checkpoints) unless the point says otherwise
    overrides = ["train.eval_every_epochs=25"] + [f"{k}={v}" for k, v in settings.items()] + [
        f"classifier.epochs={classifier_epochs}",
        f"generator.name={main}", f"train.alpha={alpha}", f"arms={arm_list}", "generator.num_samples=5000",
        *main_changes,
        # seed 0 leaves train.seed null (the run's seed, 0): the centre's seed 0 is then exactly the
        # digits_oracle preset, whose run folder's stages a shared cache can reuse
        *([f"train.seed={seed}"] if seed else []), f"eval.attack={attack}", "eval.batch_size=540",
        f"baseline={'baseline' in arms}", *extra]
    return load_config("digits_demo", overrides), settings


def run_job(out: Path, name: str, arms, seed: int, attack: str, extra=()) -> dict:
    from robustgen.io import write_json
    from robustgen.config import replace
    from robustgen.pipeline import run
    from robustgen.stages import evaluate, load_splits

    cfg, settings = point_config(POINTS[name], arms, seed, attack, extra)
    arm_of = {arm_spec(a)[0]: a for a in arms if a != "baseline"}  # generator -> arm name
    t0 = time.perf_counter()
    # one run folder per real-set size (owned by one worker): its stage cache shares f_NR, the
    # samples and their labels between seeds and points; results.json is rewritten per job
    results = run(cfg, out / "runs" / f"real-{settings['data.train_size']}", progress=False).to_dict()
    splits = load_splits(cfg)
    models = []
    for m in results["models"]:
        # robust accuracy on the model's own real training images: the robust generalisation gap
        on_train = evaluate.run(replace(cfg, **{"eval.attack": attack, "eval.n": None, "eval.batch_size": 540,
                                                "eval.seed": 0}),
                                Path(m["checkpoint"]), splits.train, device=results["device"], progress=False)
        models.append({"arm": arm_of[m["generator"]] if m["generator"] else "baseline", "alpha": m["alpha"],
                       "steps": m["steps"],
                       "clean_accuracy": m["clean_accuracy"], "robust_accuracy": m["robust_accuracy"],
                       "train_robust_accuracy": on_train.robust_accuracy,
                       "train_clean_accuracy": on_train.clean_accuracy,
                       "robust_points": m["robust_points"], "attack": m["attack"], "n_eval": m["n_eval"],
                       **({"diagnostics": results["diagnostics_by_generator"][m["generator"]]}
                          if m["generator"] in results.get("diagnostics_by_generator", {}) else {})})
    record = {"point": name, "settings": settings, "seed": seed, "attack": attack, "models": models,
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    write_json(out / "jobs" / f"{job_name(name, arms, seed)}.json", record)
    return record


ARM_COLOR = {"baseline": "tab:gray", "heldout": "tab:blue", "ddpm": "tab:orange", "gaussian": "tab:green"}
BASE_LABEL = {"baseline": "baseline (real only)", "heldout": "oracle: held-out real", "ddpm": "DDPM",
              "gaussian": "Gaussian"}


def arm_label(arm: str) -> str:
    if arm == "baseline":
        return BASE_LABEL[arm]
    name = arm.partition("@")[0]
    generator, alpha, changes = arm_spec(arm)
    label = BASE_LABEL.get(name) or f"{BASE_LABEL[generator]} {name.removeprefix(generator + '-')}"
    return f"{label}, alpha {alpha:g}"


def arm_color(arm: str) -> str:
    name = arm.partition("@")[0]
    return ARM_COLOR.get(name) or ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")[
        sorted(a for a in ARMS if a not in ARM_COLOR).index(name) % 6]


def arm_order(records: list[dict]) -> list[str]:
    """baseline, the map's arms, then the others in the order they first appear."""
    seen = list(dict.fromkeys(m["arm"] for r in records for m in r["models"]))
    return [a for a in ALL_ARMS if a in seen] + [a for a in seen if a not in ALL_ARMS]


def load_diagnostics(study_dir: Path) -> dict:
    """{(real-set size, arm): diagnostics} from the generator study's records (benchmarks/generator_study.py):
    a generator's data, and so its diagnostics, depend on the kept images, not on eps or the steps."""
    out = {}
    for path in sorted(study_dir.glob("*.json")) if study_dir.is_dir() else []:
        r = json.loads(path.read_text())
        out[(r["settings"]["data.train_size"], r["variant"])] = r["diagnostics"]
    return out


def summarize(records: list[dict], order: list[str], diagnostics: dict | None = None) -> list[dict]:
    """One row per (point, arm): accuracies (mean over seeds), the paired difference to the
    baseline over seeds with its SE, the per-test-point (McNemar-style) SE averaged over seeds,
    and the arm's data diagnostics (from its records, else from ``diagnostics``)."""
    import numpy as np

    from robustgen.metrics.paired import paired_point_difference, paired_seed_difference

    rows = []
    arms = arm_order(records)
    for point in order:
        recs = sorted((r for r in records if r["point"] == point), key=lambda r: r["seed"])
        if not recs:
            continue
        by_arm = {}
        for r in recs:
            for m in r["models"]:
                by_arm.setdefault(m["arm"], {})[r["seed"]] = m
        base = by_arm.get("baseline", {})
        for arm in arms:
            if arm not in by_arm:
                continue
            seeds = sorted(set(by_arm[arm]) & set(base))
            ms = [by_arm[arm][s] for s in seeds]
            row = {"point": point, "settings": recs[0]["settings"], "arm": arm, "seeds": seeds,
                   "alpha": ms[0]["alpha"], "steps": ms[0]["steps"], "attack": ms[0]["attack"],
                   "n_eval": ms[0]["n_eval"],
                   "clean": float(np.mean([m["clean_accuracy"] for m in ms])),
                   "robust": float(np.mean([m["robust_accuracy"] for m in ms])),
                   "train_robust": float(np.mean([m["train_robust_accuracy"] for m in ms])),
                   "gap": float(np.mean([m["train_robust_accuracy"] - m["robust_accuracy"] for m in ms]))}
            if arm != "baseline":
                d, se, k = paired_seed_difference([m["robust_accuracy"] for m in ms],
                                                  [base[s]["robust_accuracy"] for s in seeds])
                point_se = [paired_point_difference(by_arm[arm][s]["robust_points"], base[s]["robust_points"])[1]
                            for s in seeds]
                dc, sec, _ = paired_seed_difference([m["clean_accuracy"] for m in ms],
                                                    [base[s]["clean_accuracy"] for s in seeds])
                row.update(gain=d, gain_se_seeds=se, gain_se_points=float(np.mean(point_se)) / np.sqrt(len(seeds)),
                           clean_gain=dc, clean_gain_se=sec)
                # the study's records hold the data of a real-set size with the map's f_NR labels:
                # not the diagnostics of a point that labels otherwise (true-labels)
                relabelled = any(k.startswith("label.") for k in POINTS.get(point, {}))
                found = next((m["diagnostics"] for m in ms if "diagnostics" in m), None) or (
                    None if relabelled else (diagnostics or {}).get((row["settings"]["data.train_size"],
                                                                    arm.partition("@")[0])))
                if found is not None:
                    row["diagnostics"] = found
            rows.append(row)
    return rows


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _diag_cells(row: dict) -> list[str]:
    d = row.get("diagnostics")
    if d is None:
        return [""] * 4
    agree = d.get("label_agreement")
    return [f"{100 * d['near_copy_share']:.0f}%", f"{d['novelty']:.2f}", "" if agree is None else f"{100 * agree:.0f}%",
            f"{100 * d['complementarity']['kept']:.0f}%" if "complementarity" in d else ""]


def write_regime_map(records: list[dict], prefix: Path, *, order: list[str], centre: dict, command: str,
                     missing: list[str] = (), diagnostics: dict | None = None) -> None:
    from robustgen.io import save_figure, write_json
    from robustgen.report.plots import _figure

    rows = summarize(records, order, diagnostics)
    # the main attack, and the points evaluated with another (named in the title)
    attacks = [r["attack"] for r in rows]
    attack = max(set(attacks), key=attacks.count) if attacks else "?"
    others = sorted({(r["point"], r["attack"]) for r in rows if r["attack"] != attack})
    if others:
        attack += " (" + "; ".join(f"{p}: {a}" for p, a in others) + ")"
    lines = [f"# Regime map: when does extra data improve robust accuracy? (digits, {attack} on the 540 test images)", "",
             "Centre point: " + ", ".join(f"`{k}={v}`" for k, v in centre.items()) + " (469 TRADES steps of batch 128, "
             "Linf; the steps column gives each point's). Each other point changes one factor. Gains are robust-accuracy points against the baseline "
             "trained with the same seed and steps: mean over seeds ± the standard error of the seed-paired "
             "differences (SE seeds); SE points is the per-test-point (McNemar-style) standard error of one "
             "seed's paired difference, divided by sqrt(seeds). Gap = robust accuracy on the model's own real "
             "training images minus on the test images (same attack). Data diagnostics (docs/generator_study.md; "
             "against the kept real images and the validation split, never the test split): near copies of the "
             "kept images, novelty (1: as far from the kept images as fresh real digits), f_NR's agreement "
             "with the conditioning class (for the oracle: f_NR's accuracy), and the share of samples whose "
             "nearest neighbour is a kept image in Alg. 1 (an ideal generator: 33%).", "",
             "| point | steps | arm | seeds | clean | robust | gain vs baseline (± SE seeds) | SE points | robust on train "
             "| gap | near copies | novelty | f_NR = class | Alg. 1 kept |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gain = "" if r["arm"] == "baseline" else (f"{_pts(r['gain'])} ± {100 * r['gain_se_seeds']:.1f}"
                                                  if len(r["seeds"]) > 1 else f"{_pts(r['gain'])} (one seed)")
        se_pts = "" if r["arm"] == "baseline" else f"{100 * r['gain_se_points']:.1f}"
        lines.append(f"| {r['point']} | {r['steps']} | {arm_label(r['arm'])} | {len(r['seeds'])} | {100 * r['clean']:.1f} | "
                     f"{100 * r['robust']:.1f} | {gain} | {se_pts} | {100 * r['train_robust']:.1f} | "
                     f"{100 * r['gap']:.1f} | " + " | ".join(_diag_cells(r)) + " |")
    total = sum(r.get("wall_time_s", 0) for r in records)
    lines += ["", f"{len(records)} (point, seed) jobs, {total / 60:.0f} job-minutes in all (one thread each, on a shared "
              f"machine). Reproduce: `{command}`."]
    if missing:
        lines += ["", "Jobs of the grid not finished yet (not in the table): " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += ["", f"![regime map]({prefix.name}.png)", "", f"![gain against the data diagnostics]({prefix.name}_diagnostics.png)", ""]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.md").write_text("\n".join(lines))
    write_json(Path(f"{prefix}.json"), {"rows": rows, "records": records, "centre": centre})

    points = [p for p in order if any(r["point"] == p for r in rows)]
    fig = _figure(12, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    arms = [a for a in arm_order(records) if a != "baseline"]
    for k, arm in enumerate(arms):
        xs, ys, es = [], [], []
        for i, p in enumerate(points):
            r = next((r for r in rows if r["point"] == p and r["arm"] == arm), None)
            if r is not None:
                xs.append(i + (k - (len(arms) - 1) / 2) * 0.8 / max(len(arms), 1))
                ys.append(100 * r["gain"])
                # one seed: the per-test-point standard error
                es.append(200 * (r["gain_se_seeds"] if len(r["seeds"]) > 1 else r["gain_se_points"]))
        if xs:
            ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=4, color=arm_color(arm), label=arm_label(arm))
    ax.axhline(0, color="gray", lw=1)
    ax.set_xticks(range(len(points)), points, rotation=20)
    ax.set_ylabel("robust accuracy gain vs baseline (points, ± 2 SE;\n seeds' SE, or the test points' for one seed)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    for arm in ("baseline", *arms):
        vals = [(i, 100 * r["gap"]) for i, p in enumerate(points) for r in rows if r["point"] == p and r["arm"] == arm]
        if vals:
            ax.plot(*zip(*vals), marker="o", color=arm_color(arm), label=arm_label(arm))
    ax.set_xticks(range(len(points)), points, rotation=20)
    ax.set_ylabel("robust generalisation gap (train - test, points)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"digits regime map ({attack}); mean over seeds")
    save_figure(fig, f"{prefix}.png", dpi=100, bbox_inches="tight")
    plot_gain_vs_diagnostics(rows, Path(f"{prefix}_diagnostics.png"))


def plot_gain_vs_diagnostics(rows: list[dict], path: Path) -> None:
    """Does a data diagnostic predict the gain? Gain (± 2 SE) against near copies, Alg. 1's kept
    share and novelty, one marker per (point, arm) with diagnostics."""
    from robustgen.io import save_figure
    from robustgen.report.plots import _figure

    rows = [r for r in rows if "diagnostics" in r and "complementarity" in r["diagnostics"]]
    fig = _figure(13, 4)
    for k, (title, value) in enumerate((("near copies of the kept images (%)", lambda d: 100 * d["near_copy_share"]),
                                        ("Alg. 1: nearest neighbour a kept image (%)",
                                         lambda d: 100 * d["complementarity"]["kept"]),
                                        ("novelty (1 = fresh real data)", lambda d: d["novelty"]))):
        ax = fig.add_subplot(1, 3, k + 1)
        for r in rows:
            se = r["gain_se_seeds"] if len(r["seeds"]) > 1 else r["gain_se_points"]
            ax.errorbar(value(r["diagnostics"]), 100 * r["gain"], yerr=200 * se, fmt="o", capsize=3,
                        color=arm_color(r["arm"]))
            ax.annotate(f"{r['point']}\n{r['arm']}", (value(r["diagnostics"]), 100 * r["gain"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="gray", lw=1)
        ax.set_xlabel(title)
        if k == 0:
            ax.set_ylabel("robust accuracy gain vs baseline (points, ± 2 SE)")
        ax.grid(alpha=0.3)
    fig.suptitle("digits: gain of each extra-data arm against its data diagnostics (kept / validation images only)")
    save_figure(fig, path, dpi=100, bbox_inches="tight")


def job_name(point: str, arms, seed: int) -> str:
    return f"{point}-{'+'.join(arms)}-seed{seed}"


def restore_jobs(map_json: Path, out: Path) -> list[Path]:
    """Write each record of a finished map as OUT/jobs/<job>.json unless that job file exists."""
    from robustgen.io import write_json

    written = []
    for record in json.loads(map_json.read_text())["records"]:
        path = out / "jobs" / f"{job_name(record['point'], [m['arm'] for m in record['models']], record['seed'])}.json"
        if not path.exists():
            write_json(path, record)
            written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/regime-map"))
    parser.add_argument("--worker", default="0/1", help="I/N: run the jobs of worker I of N")
    parser.add_argument("--jobs", default=None, choices=sorted(STUDY_JOBS),
                        help="run the generator study's job list NAME instead of a worker's")
    parser.add_argument("--point", default=None, choices=list(POINTS),
                        help="run every job of the map and of the study at this point (all seeds and arms)")
    parser.add_argument("--attack", default="autoattack")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE applied to every point (smoke tests, e.g. train.epochs=1)")
    parser.add_argument("--from-map", type=Path, default=None,
                        help="a regime_map.json whose records become finished jobs of --out (extend a map "
                             "without rerunning it)")
    parser.add_argument("--report", type=Path, default=None,
                        help="write PREFIX.md, PREFIX.png and PREFIX.json from the finished jobs instead")
    args = parser.parse_args(argv)
    if args.from_map is not None:
        restore_jobs(args.from_map, args.out)
    if args.report is not None:
        records = [json.loads(p.read_text()) for p in sorted((args.out / "jobs").glob("*.json"))]
        order = list(POINTS)
        done = {p.stem for p in (args.out / "jobs").glob("*.json")}
        missing = [job_name(*job) for jobs in (*WORKER_JOBS, *STUDY_JOBS.values()) for job in jobs
                   if job_name(*job) not in done]
        write_regime_map(records, args.report, order=order, centre=CENTRE, missing=missing,
                         diagnostics=load_diagnostics(args.out / "study"),
                         command="python benchmarks/regime_map.py --worker 0/2 & "
                                 "python benchmarks/regime_map.py --worker 1/2; "
                                 "python benchmarks/generator_study.py --point real-75 (and --point eps-0.1 / real-50 "
                                 "--variants ddpm,heldout,gaussian,ddpm-steps1000: the diagnostics); "
                                 "python benchmarks/regime_map.py --jobs b0 (b1, c0, c1: the study's jobs); "
                                 f"python benchmarks/regime_map.py --report {args.report}; one point: "
                                 "python benchmarks/regime_map.py --point eps-0.1")
        print(args.report.with_suffix(".md").read_text())
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    worker, workers = (int(v) for v in args.worker.split("/"))
    if args.jobs is None and args.point is None and (workers != len(WORKER_JOBS) or not 0 <= worker < workers):
        raise SystemExit(f"--worker must be I/{len(WORKER_JOBS)} with I in 0..{len(WORKER_JOBS) - 1}")
    if args.point is not None:
        jobs = [j for js in (*WORKER_JOBS, *STUDY_JOBS.values()) for j in js if j[0] == args.point]
    else:
        jobs = STUDY_JOBS[args.jobs] if args.jobs else WORKER_JOBS[worker]
    for name, arms, seed in jobs:
        if (args.out / "jobs" / f"{job_name(name, arms, seed)}.json").exists():
            continue
        t0 = time.perf_counter()
        print(f"[regime-map] {time.strftime('%H:%M:%S')} {name} seed {seed}: arms {', '.join(arms)}", flush=True)
        record = run_job(args.out, name, arms, seed, args.attack, args.overrides)
        summary = ", ".join(f"{m['arm']} {100 * m['robust_accuracy']:.1f}" for m in record["models"])
        print(f"[regime-map] {name} seed {seed} done in {time.perf_counter() - t0:.0f} s: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
