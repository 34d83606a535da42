"""The ``robustgen`` command group, its error handling and the options every config verb shares.

Bad input ends with one line ``robustgen: error: ...`` on stderr and exit status 2, never a
traceback; an interrupt says how to resume and exits 130; SIGTERM / SIGUSR1 save at the next
step boundary and exit ``preempt.EXIT_PREEMPTED``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from robustgen.config import RunConfig
from robustgen.presets import load_config
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.version import __version__

__all__ = ["cli", "config_options", "echo_json", "load_cli_config", "main", "owned", "wait_option"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustgen")
def cli() -> None:
    """Adversarial robustness from generated data (Gowal et al., NeurIPS 2021)."""


def config_options(fn):
    """CONFIG (a preset name or YAML file) and repeatable ``--set KEY=VALUE`` overrides."""
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="override a config key, e.g. --set train.alpha=0.5 (repeatable)")(fn)
    fn = click.argument("config", required=False)(fn)
    return fn


wait_option = click.option("--wait", is_flag=True,
                           help="if another process owns --out, wait for it instead of exiting")


def owned(folder: Path, wait: bool, what: str):
    """Own ``folder`` while a verb writes into it (``robustgen.runtime.locks``)."""
    from robustgen.runtime.locks import FolderLock

    return FolderLock(folder, wait=wait, what=what)


def load_cli_config(config: str | None, overrides: tuple[str, ...], **options: Any) -> RunConfig:
    """The config with the verb's options (dotted config key -> value; None: not given) applied
    before the ``--set`` overrides."""
    return load_config(config, overrides, changes={k: v for k, v in options.items() if v is not None})


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def main(argv: list[str] | None = None) -> None:
    from robustgen.runtime import preempt

    previous = preempt.install()  # SIGTERM / SIGUSR1: save at the next step boundary, exit EXIT_PREEMPTED
    try:
        cli.main(args=argv, prog_name="robustgen", standalone_mode=False)
    except preempt.Preempted as e:
        click.echo(f"robustgen: {e}", err=True)
        sys.exit(preempt.EXIT_PREEMPTED)
    except RobustgenError as e:
        click.echo(f"robustgen: error: {e}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("robustgen: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    finally:
        preempt.restore(previous)
