"""``robustgen presets`` (what each preset is and costs) and ``robustgen config show`` (the
resolved config of a preset with ``--set`` overrides, as ``robustgen run`` would use it)."""

from __future__ import annotations

import click
import yaml

from robustgen.cli.app import cli, config_options, echo_json, load_cli_config
from robustgen.config import config_to_dict


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON record per preset instead of a table")
def presets(as_json):
    """Every preset: name, dataset, model, one-line description and estimated H200 GPU-hours."""
    from robustgen.preflight import preset_summaries

    rows = preset_summaries()
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        hours = ("H200 GPU-hours unknown (dataset not found here)" if r["gpu_hours"] is None
                 else f"~{r['gpu_hours']:.3g} H200 GPU-hours")
        default = " (default)" if r["default"] else ""
        click.echo(f"{r['name']}{default}: {r['dataset']}, {r['model']}, {hours}\n  {r['description']}")


@cli.group("config")
def config_group():
    """Inspect configs."""


@config_group.command("show")
@config_options
def config_show(config, overrides):
    """The resolved config of CONFIG (a preset or YAML file; default: the demo) with --set overrides."""
    click.echo(yaml.safe_dump(config_to_dict(load_cli_config(config, overrides)), sort_keys=False).rstrip())
