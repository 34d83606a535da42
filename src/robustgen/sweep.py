"""``robustgen sweep``: runs of one config over a grid of settings and seeds, aggregated.

A grid is any config keys with lists of values (``--grid data.train_size=50,75 --grid
train.alpha=0.3,1.0``: their product) or an explicit list of points (``points``: named sets of
overrides, e.g. one factor at a time around a centre, as the regime map does); every point runs
once per seed. Paper Fig. 5 / 10 is ``--grid train.alpha=0.1,...,1 --grid generator.name=...``.

Every (point, seed) runs the whole pipeline in ``OUT/points/<point>-seed<s>/`` (its results.json
and report.md), whose ``stages`` links to the shared ``OUT/stages``: stages are cached by
fingerprint (settings, inputs, code), so what two points share is computed once (the classifier
and the samples across alphas, an alpha = 1 model across generators) and a rerun computes only
what is missing (killed runs resume).

A seed is, by default, ``train.seed``: adversarial training's initialisation, batches and attack
starts vary while the classifier, the samples and their labels are shared; ``seed_key="seed"``
varies the whole run. The seed the config already resolves to is left unset, so that point's
stages are those of a plain ``robustgen run`` of the same config.

Writes ``OUT/sweep.json`` (one record per trained model, and the summary), ``OUT/sweep.md`` (per
point and model: mean and standard error over seeds, and the seed-paired difference from the
baseline arm of the same point and seed) and ``OUT/sweep.png``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections import defaultdict
from pathlib import Path

from robustgen.config import RunConfig, config_to_dict, parse_override, replace
from robustgen.metrics.paired import mean_and_se, paired_seed_difference
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import write_json, write_text
from robustgen.stages import check_names

__all__ = ["SEED_KEYS", "dry_run_sweep", "grid_points", "parse_grid", "point_configs", "run_sweep", "summarize",
           "sweep_table"]

SEED_KEYS = ("train.seed", "seed")


def _split_values(text: str) -> list[str]:
    """Comma-separated values, commas inside [...] or {...} kept (a value may be a YAML list)."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return [v for v in values if v]


def parse_grid(items) -> dict[str, list[str]]:
    """``["KEY=V1,V2", ...]`` -> {KEY: [V1, V2]} (values parsed later, as ``--set`` values)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise RobustgenError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. train.alpha=0.3,1.0")
        key, values = (s.strip() for s in item.split("=", 1))
        if key in grid:
            raise RobustgenError(f"--grid {key}: given twice")
        if not _split_values(values):
            raise RobustgenError(f"--grid {item!r}: no values")
        grid[key] = _split_values(values)
    return grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:80] or "point"


def grid_points(grid: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """Point name -> {key: value} for every combination of the grid's values (one empty point
    without a grid). Names are the last part of each key and its value, e.g. ``train_size50-alpha0.3``."""
    keys = list(grid)
    points = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = "-".join(_slug(f"{k.rsplit('.', 1)[-1]}{v}") for k, v in zip(keys, combo)) or "config"
        if name in points:
            raise RobustgenError(f"--grid: two points would be named {name!r}; use distinct values")
        points[name] = dict(zip(keys, combo))
    return points


def point_configs(cfg: RunConfig, points: dict[str, dict], seeds, *, seed_key: str = "train.seed"
                  ) -> list[tuple[str, int, RunConfig]]:
    """(point name, seed, config) for every point and seed, in that order (points vary fastest)."""
    if seed_key not in SEED_KEYS:
        raise RobustgenError(f"a sweep varies one of {', '.join(SEED_KEYS)}, not {seed_key!r}")
    if not seeds:
        raise RobustgenError("a sweep needs at least one seed")
    configs = {}
    for name, overrides in points.items():
        changes = {k: parse_override(f"{k}={v}")[1] if isinstance(v, str) else v for k, v in overrides.items()}
        try:
            configs[name] = replace(cfg, **changes)
            check_names(configs[name], source="replace")
        except RobustgenError as e:
            raise RobustgenError(f"sweep point {name}: {e}") from None
    out = []
    for seed in seeds:
        for name, point_cfg in configs.items():
            default = point_cfg.seed if seed_key == "train.seed" and point_cfg.train.seed is None else None
            if int(seed) != default:
                point_cfg = replace(point_cfg, **{seed_key: int(seed)})
            out.append((name, int(seed), point_cfg))
    return out


def _point_dir(out: Path, name: str, seed: int) -> Path:
    d = out / "points" / f"{name}-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    link = d / "stages"
    if not link.exists() and not link.is_symlink():
        (out / "stages").mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(os.path.join("..", "..", "stages"), link, target_is_directory=True)
        except OSError as e:
            raise RobustgenError(f"{link}: cannot link to the shared stage cache ({e})") from None
    return d


def run_sweep(cfg: RunConfig, out: Path, *, points: dict[str, dict] | None = None, seeds=(0,),
              seed_key: str = "train.seed", baseline_arm: str = "baseline", progress: bool = True, run_fn=None,
              log=print) -> dict:
    """Run every (point, seed) (``pipeline.run``, or ``run_fn(cfg, out)`` returning ``RunResults``),
    then write sweep.json, sweep.md and sweep.png. ``points``: name -> overrides (default: the
    config alone). Returns the summary."""
    from robustgen.report.plots import plot_sweep

    if run_fn is None:
        from robustgen.pipeline import run as pipeline_run

        run_fn = lambda c, o: pipeline_run(c, o, progress=progress)  # noqa: E731
    points = points or {"config": {}}
    jobs = point_configs(cfg, points, seeds, seed_key=seed_key)  # every config is checked before anything runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = []
    for k, (name, seed, point_cfg) in enumerate(jobs):
        log(f"sweep: {k + 1}/{len(jobs)}: {name}, seed {seed}")
        results = run_fn(point_cfg, _point_dir(out, name, seed))
        for m in results.models:
            records.append({"point": name, "settings": points[name], "seed": seed, "model": m.name,
                            "alpha": float(m.alpha), "generator": m.generator or "none",
                            "clean_accuracy": m.clean_accuracy, "robust_accuracy": m.robust_accuracy,
                            "attack": m.attack, "n_eval": m.n_eval, "steps": m.steps,
                            "wall_time_s": m.wall_time_s, "robust_points": m.robust_points})
    summary = {"points": points, "seeds": [int(s) for s in seeds], "seed_key": seed_key, "baseline_arm": baseline_arm,
               "dataset": cfg.data.dataset, "threat": {"norm": cfg.threat.norm, "eps": cfg.threat.eps},
               "records": records, "summary": summarize(records, baseline_arm=baseline_arm),
               "wall_time_s": round(time.perf_counter() - started, 2), "config": config_to_dict(cfg)}
    write_json(out / "sweep.json", summary)
    write_text(out / "sweep.md", sweep_table(summary))
    plot_sweep(summary["summary"], out / "sweep.png", points=points,
               title=f"{cfg.data.dataset}, {cfg.threat.norm} eps={cfg.threat.eps:.4g}")
    return summary


def summarize(records: list[dict], *, baseline_arm: str = "baseline") -> list[dict]:
    """Per (point, model): seeds, mean and standard error of clean and robust accuracy, and the
    mean and standard error of the seed-paired differences from ``baseline_arm`` (same point, same
    seed; None where the point has no such model)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["point"], r["model"])].append(r)
    base = {(r["point"], r["seed"]): r for r in records if r["model"] == baseline_arm}
    rows = []
    for (point, model), rs in groups.items():
        row = {"point": point, "model": model, "alpha": rs[0]["alpha"], "generator": rs[0]["generator"],
               "seeds": len(rs)}
        pairs = [(r, base[(point, r["seed"])]) for r in rs if (point, r["seed"]) in base and model != baseline_arm]
        row["paired_seeds"] = len(pairs)
        for key in ("clean_accuracy", "robust_accuracy"):
            row[f"{key}_mean"], row[f"{key}_se"] = mean_and_se([r[key] for r in rs])
            gain = (paired_seed_difference([r[key] for r, _ in pairs], [b[key] for _, b in pairs])[:2] if pairs
                    else (None, None))
            row[f"{key}_gain"], row[f"{key}_gain_se"] = gain
        rows.append(row)
    return rows


def _pct(mean, se) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + ("" if se is None or math.isnan(se) else f" ± {100 * se:.2f}")


def _signed(mean, se) -> str:
    return "—" if mean is None else ("+" if mean >= 0 else "") + _pct(mean, se)


def sweep_table(summary: dict) -> str:
    attack = next((r["attack"] for r in summary["records"] if r.get("attack")), "?")
    lines = [f"# Sweep on {summary['dataset']} ({summary['threat']['norm']} eps={summary['threat']['eps']:.4g}, "
             f"robust accuracy under {attack})", "",
             "| point | settings | model | seeds | clean % | robust % | robust gain vs "
             f"{summary['baseline_arm']} (paired) |", "|---|---|---|---|---|---|---|"]
    points = summary["points"]
    keys = list(dict.fromkeys(k for p in points.values() for k in p))
    varying = [k for k in keys if len({str(p.get(k)) for p in points.values()}) > 1]
    for s in summary["summary"]:
        point = points[s["point"]]
        settings = ", ".join(f"{k}={point[k]}" for k in varying if k in point) or "—"
        lines.append(f"| {s['point']} | {settings} | {s['model']} | {s['seeds']} | "
                     f"{_pct(s['clean_accuracy_mean'], s['clean_accuracy_se'])} | "
                     f"{_pct(s['robust_accuracy_mean'], s['robust_accuracy_se'])} | "
                     f"{_signed(s['robust_accuracy_gain'], s['robust_accuracy_gain_se'])} |")
    shared = [f"{k}={v}" for k, v in next(iter(points.values()), {}).items() if k not in varying]
    if shared:
        lines += ["", f"Every point: {', '.join(shared)}."]
    lines += ["", f"Mean ± standard error over seeds ({summary['seed_key']} = {', '.join(map(str, summary['seeds']))}); "
                  f"gains are differences from the {summary['baseline_arm']} model of the same point and seed. "
                  f"Wall time {summary['wall_time_s']:.0f} s."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- dry run
def _stage_key(stage: str, variants: dict, cfg: RunConfig) -> str:
    """What a stage's cached result depends on (approximately its fingerprint's settings), so that
    the grid's estimate counts a stage that several points share once."""
    from dataclasses import asdict

    name = stage.split("[", 1)[1].rstrip("]") if "[" in stage else None
    v = variants.get(name, cfg)
    parts = {"data": asdict(v.data), "seed": v.seed}
    if stage == "classifier":
        parts["classifier"] = asdict(v.classifier)
    elif stage in ("generator training", "sampling"):
        parts["generator"] = asdict(v.generator)
    elif stage == "labelling":
        parts.update(classifier=asdict(v.classifier), generator=asdict(v.generator), label=asdict(v.label))
    else:  # train / model selection / eval of one model: everything of its variant
        parts = {"stage": stage.split("[", 1)[0], "variant": config_to_dict(v)}
        if v.train.alpha >= 1 and not v.data.sources:  # a real-data-only model reads no generated data
            parts["variant"] = {k: val for k, val in parts["variant"].items() if k not in ("generator", "label", "arms")}
    return f"{stage.split('[', 1)[0]}|{json.dumps(parts, sort_keys=True, default=str)}"


def dry_run_sweep(cfg: RunConfig, out: Path, *, points: dict[str, dict] | None = None, seeds=(0,),
                  seed_key: str = "train.seed") -> tuple[list[str], list[str]]:
    """(lines, problems) of ``robustgen sweep --dry-run``: the grid, its cost (stages that points
    share counted once) and the preflight of every point's inputs."""
    from robustgen.cost import estimate_cost
    from robustgen.pipeline import model_variants
    from robustgen.preflight import Preflight, data_shape, preflight

    points = points or {"config": {}}
    jobs = point_configs(cfg, points, seeds, seed_key=seed_key)
    lines = [f"grid: {len(points)} point(s) x {len(seeds)} seed(s) ({seed_key}) = {len(jobs)} runs"]
    unique: dict[str, float] = {}
    total_all, disk, problems = 0.0, 0, []
    for name, seed, point_cfg in jobs:
        shape = data_shape(point_cfg, Preflight())
        if shape is None:
            problems.append(f"sweep point {name}: the data cannot be read (see robustgen run --dry-run)")
            continue
        estimate = estimate_cost(point_cfg, n_train=shape.n_train, n_test=shape.n_test,
                                 image_shape=shape.image_shape, num_classes=shape.num_classes)
        variants = dict(model_variants(point_cfg))
        hours = 0.0
        for stage in estimate.stages:
            h = stage.gpu_hours
            hours += h
            unique.setdefault(_stage_key(stage.stage, variants, point_cfg), h)
        total_all += hours
        disk += estimate.disk_bytes
        settings = ", ".join(f"{k}={v}" for k, v in points[name].items()) or "the config as given"
        lines.append(f"  {name} seed {seed}: {settings}; ~{hours:.3g} GPU-hours alone")
    distinct = sum(unique.values())
    lines.append(f"cost: ~{distinct:.3g} GPU-hours for the grid ({len(unique)} distinct stages; "
                 f"{total_all:.3g} if no stage were shared); disk at most {disk / 1e9:.3g} GB")
    for name, _, point_cfg in jobs[:len(points)]:  # inputs and output folder, once per point
        report, _ = preflight(point_cfg, Path(out), disk_bytes=disk)
        problems += [f"sweep point {name}: {p}" for p in report.problems]
    lines.append("preflight: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return lines, problems
