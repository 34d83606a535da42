"""``robustgen sweep``: a grid of alphas x generators x seeds through ``pipeline.run`` (paper
Fig. 5 / 10: robust and clean accuracy against the proportion alpha of real data per generator).

Every grid point runs in ``OUT/points/<generator>-alpha<a>-seed<s>/`` (its results.json, report.md
and samples grid), whose ``stages`` is a link to the shared ``OUT/stages``: finished stages are
cached by fingerprint, so the classifier, the samples and their labels are computed once per
(seed, generator) and reused by every alpha, an alpha = 1 model (no generated data) once per seed
whatever the generator, and a rerun of the sweep only computes what is missing.

A seed is, by default, ``train.seed``: adversarial training's initialisation, batches and attack
starts vary while the classifier, the samples and their labels are shared (computed once);
``seed_key="seed"`` varies the run's seed instead, retraining the classifier per seed. The
generated samples depend on ``generator.seed`` only. With ``baseline: true`` in the config,
each point also trains (once per seed, cached) the alpha = 1 model; it joins every generator's curve.

Writes ``OUT/sweep.json`` (one record per trained model), ``OUT/sweep.md`` (mean +- std over seeds)
and ``OUT/alpha_sweep.png``.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from robustgen.config import RunConfig, config_to_dict, is_baseline, replace
from robustgen.errors import RobustgenError
from robustgen.io import write_json, write_text
from robustgen.results import SweepRecord

__all__ = ["grid_points", "run_sweep", "summarize", "sweep_table"]


def grid_points(alphas, generators, seeds) -> list[tuple[str, float, int]]:
    """(generator, alpha, seed) for every point; alpha = 1 (no generated data) once per seed."""
    alphas = [float(a) for a in alphas]
    bad = [a for a in alphas if not 0 <= a <= 1]
    if bad or not alphas:
        raise RobustgenError(f"alphas must be in [0, 1], got {alphas}")
    if not generators or not seeds:
        raise RobustgenError("a sweep needs at least one generator and one seed")
    points = []
    for seed in seeds:
        if any(is_baseline(a) for a in alphas):
            points.append((generators[0], 1.0, int(seed)))
        for g in generators:
            points += [(g, a, int(seed)) for a in alphas if not is_baseline(a)]
    return points


def _point_dir(out: Path, generator: str, alpha: float, seed: int) -> Path:
    name = f"baseline-seed{seed}" if is_baseline(alpha) else f"{generator}-alpha{alpha:g}-seed{seed}"
    d = out / "points" / name
    d.mkdir(parents=True, exist_ok=True)
    link = d / "stages"
    if not link.exists() and not link.is_symlink():
        (out / "stages").mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(os.path.join("..", "..", "stages"), link, target_is_directory=True)
        except OSError as e:
            raise RobustgenError(f"{link}: cannot link to the shared stage cache ({e})") from None
    return d


SEED_KEYS = ("train.seed", "seed")


def run_sweep(cfg: RunConfig, out: Path, *, alphas, generators, seeds, seed_key: str = "train.seed",
              progress: bool = True, run_fn=None, log=print) -> dict:
    """Run every grid point (``pipeline.run``, or ``run_fn(cfg, out)`` returning ``RunResults``),
    then write sweep.json (one ``SweepRecord`` per trained model), sweep.md and alpha_sweep.png.
    Returns the sweep summary."""
    from robustgen.generate import list_generators
    from robustgen.report.plots import plot_alpha_sweep

    if run_fn is None:
        from robustgen.pipeline import run as pipeline_run

        run_fn = lambda c, o: pipeline_run(c, o, progress=progress)  # noqa: E731
    if seed_key not in SEED_KEYS:
        raise RobustgenError(f"a sweep varies one of {', '.join(SEED_KEYS)}, not {seed_key!r}")
    unknown = [g for g in generators if g not in list_generators()]
    if unknown:
        raise RobustgenError(f"unknown generator(s) {', '.join(unknown)}; choose from {', '.join(list_generators())}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records: dict[tuple, dict] = {}
    points = grid_points(alphas, generators, seeds)
    for k, (g, a, s) in enumerate(points):
        # a sweep point trains its own grid of models: the config's extra arms are not repeated at every point
        point_cfg = replace(cfg, **{"generator.name": g, "train.alpha": a, seed_key: s, "arms": []})
        log(f"sweep: point {k + 1}/{len(points)}: generator {g}, alpha {a:g}, seed {s}")
        results = run_fn(point_cfg, _point_dir(out, g, a, s))
        for m in results.models:
            record = SweepRecord.of(m, generator="none" if is_baseline(m.alpha) else g, seed=s)
            records[(record.generator, record.alpha, s)] = record.to_dict()
    rows = sorted(records.values(), key=lambda r: (r["generator"], r["alpha"], r["seed"]))
    summary = {"grid": {"alphas": [float(a) for a in alphas], "generators": list(generators),
                        "seeds": [int(s) for s in seeds], "seed_key": seed_key},
               "dataset": cfg.data.dataset, "threat": {"norm": cfg.threat.norm, "eps": cfg.threat.eps},
               "records": rows, "summary": summarize(rows, generators),
               "wall_time_s": round(time.perf_counter() - started, 2), "config": config_to_dict(cfg)}
    write_json(out / "sweep.json", summary)
    write_text(out / "sweep.md", sweep_table(summary))
    title = f"{cfg.data.dataset}, {cfg.threat.norm} eps={cfg.threat.eps:.4g}"
    plot_alpha_sweep(rows, out / "alpha_sweep.png", title=title)
    return summary


def summarize(rows: list[dict], generators) -> list[dict]:
    """Mean and std (over seeds, ddof 0) of clean and robust accuracy per (generator, alpha); the
    alpha = 1 models (no generated data) are listed under every generator."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        for g in (generators if r["generator"] == "none" else [r["generator"]]):
            groups[(g, r["alpha"])].append(r)
    out = []
    for (g, a), rs in sorted(groups.items()):
        clean = np.array([r["clean_accuracy"] for r in rs])
        robust = np.array([r["robust_accuracy"] for r in rs])
        out.append({"generator": g, "alpha": a, "seeds": len(rs),
                    "clean_mean": float(clean.mean()), "clean_std": float(clean.std()),
                    "robust_mean": float(robust.mean()), "robust_std": float(robust.std())})
    return out


def sweep_table(summary: dict) -> str:
    attack = next((r["attack"] for r in summary["records"] if r.get("attack")), "?")
    lines = [f"# Alpha sweep on {summary['dataset']} ({summary['threat']['norm']} eps={summary['threat']['eps']:.4g}, "
             f"robust accuracy under {attack})", "",
             "| generator | alpha | seeds | clean (mean ± std) | robust (mean ± std) |", "|---|---|---|---|---|"]
    for s in summary["summary"]:
        lines.append(f"| {s['generator']} | {s['alpha']:g} | {s['seeds']} | "
                     f"{100 * s['clean_mean']:.2f}% ± {100 * s['clean_std']:.2f} | "
                     f"{100 * s['robust_mean']:.2f}% ± {100 * s['robust_std']:.2f} |")
    lines += ["", f"alpha = proportion of real images per batch (1: no generated data). "
                  f"Wall time {summary['wall_time_s']:.0f} s."]
    return "\n".join(lines) + "\n"
