"""Whole-run verbs: ``robustgen run`` (every stage, cached) and ``robustgen sweep`` (a grid of runs)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import yaml

from robustgen.cli.app import cli, config_options, load_cli_config, wait_option
from robustgen.config import config_to_dict
from robustgen.runtime.errors import RobustgenError


@cli.command()
@config_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/default"), show_default=True,
              help="output folder (finished stages in it are reused)")
@click.option("--dry-run", is_flag=True,
              help="validate the config, print the plan, the cost estimate and the preflight of every input; exit 2 on a problem")
@wait_option
@click.option("--quiet", is_flag=True, help="no progress bars")
def run(config, overrides, out, dry_run, wait, quiet):
    """Classifier -> generate -> label -> TRADES training -> evaluation, with a report.

    CONFIG is a preset name (see configs/) or a YAML file; without it, the embedded digits demo.
    """
    from robustgen.pipeline import describe_plan
    from robustgen.pipeline import run as run_pipeline

    cfg = load_cli_config(config, overrides)
    if dry_run:
        from robustgen.preflight import dry_run as preflight_dry_run

        click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
        click.echo("---\nplan:\n" + describe_plan(cfg))
        _report_dry_run(*preflight_dry_run(cfg, out))
        return
    results = run_pipeline(cfg, out, progress=not quiet, wait=wait,
                           command={"config": config, "overrides": list(overrides)})
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    click.echo(f"wrote {out / 'results.json'} and {out / 'report.md'} in {results.wall_time_s:.0f} s")
    for m in results.models:
        click.echo(f"  {m.name:<24} alpha={m.alpha:<4g} clean={m.clean_accuracy:.4f} "
                   f"robust={m.robust_accuracy:.4f} ({m.attack}, n={m.n_eval})")


@cli.command()
@config_options
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="a config key and its values (repeatable: the product of every --grid); lists in [...]")
@click.option("--seeds", default="0,1", show_default=True, help="comma-separated seeds")
@click.option("--vary-seed", "seed_key", type=click.Choice(["train.seed", "seed"]), default="train.seed",
              show_default=True, help="train.seed: adversarial training only (shared classifier and samples); "
                                      "seed: the whole run, classifier included")
@click.option("--baseline-arm", default="baseline", show_default=True,
              help="the model that gains are measured against (same point, same seed)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/sweep"), show_default=True,
              help="output folder; its stages/ cache is shared by every grid point")
@click.option("--dry-run", is_flag=True, help="print the grid, its cost and the preflight; exit 2 on a problem")
@click.option("--quiet", is_flag=True)
def sweep(config, overrides, grid, seeds, seed_key, baseline_arm, out, dry_run, quiet):
    """Run the config over a grid of settings and seeds (stages shared between points run once,
    a rerun resumes), then write sweep.json, sweep.md (mean ± SE, seed-paired gains) and sweep.png.

    Paper Fig. 5: --grid train.alpha=0.3,0.5,0.8,1 --grid generator.name=gaussian,ddpm.
    """
    from robustgen.sweep import dry_run_sweep, grid_points, parse_grid, run_sweep

    cfg = load_cli_config(config, overrides)
    points = grid_points(parse_grid(grid))
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise RobustgenError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if dry_run:
        _report_dry_run(*dry_run_sweep(cfg, out, points=points, seeds=seed_list, seed_key=seed_key))
        return
    summary = run_sweep(cfg, out, points=points, seeds=seed_list, seed_key=seed_key, baseline_arm=baseline_arm,
                        progress=not quiet, log=lambda m: click.echo(m, err=True))
    click.echo((out / "sweep.md").read_text().rstrip())
    click.echo(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'} and {out / 'sweep.png'} "
               f"in {summary['wall_time_s']:.0f} s")


def _report_dry_run(lines: list[str], problems: list[str]) -> None:
    """Print a dry run's lines, each problem as a one-line error, and exit 2 if there is one."""
    click.echo("\n".join(lines))
    for problem in problems:
        click.echo(f"robustgen: error: {problem}", err=True)
    if problems:
        raise SystemExit(2)
