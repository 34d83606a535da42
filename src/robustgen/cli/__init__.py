"""Command line: ``robustgen {run, sweep, presets, config show, classifier, train, eval, export,
convert-guided-diffusion, convert-edm, store, report, measure, diagnose}``.

Each verb is thin: it parses its options, builds the config, calls one library function and
prints the result. The verbs live by group: ``pipeline`` (run, sweep), ``stages`` (one training
stage each, export), ``store`` (generated data: generate, label, import / export, info, verify,
merge), ``report`` (figures and measurements), ``presets`` (presets and resolved configs); ``app`` holds the group and its error handling.
"""

from robustgen.cli import pipeline, presets, report, stages, store  # noqa: F401  (registers the verbs)
from robustgen.cli.app import cli, main

__all__ = ["cli", "main"]
