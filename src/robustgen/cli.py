"""Command line: ``robustgen {run, classifier, generate, label, train, eval}``.

Each verb is a thin layer over a library function in ``stages`` / ``pipeline``. Bad input ends
with one line ``robustgen: error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from robustgen import __version__
from robustgen.config import RunConfig, config_to_dict, load_config, parse_number
from robustgen.errors import RobustgenError

def _config(config: str | None, overrides: tuple[str, ...]) -> RunConfig:
    return load_config(config, overrides)


def _common(fn):
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="override a config key, e.g. --set train.alpha=0.5 (repeatable)")(fn)
    fn = click.argument("config", required=False)(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustgen")
def cli() -> None:
    """Adversarial robustness from generated data (Gowal et al., NeurIPS 2021)."""


@cli.command()
@_common
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/default"), show_default=True,
              help="output folder (finished stages in it are reused)")
@click.option("--dry-run", is_flag=True, help="validate the config and print the plan without computing")
@click.option("--quiet", is_flag=True, help="no progress bars")
def run(config, overrides, out, dry_run, quiet):
    """Classifier -> generate -> label -> TRADES training -> evaluation, with a report.

    CONFIG is a preset name (see configs/) or a YAML file; without it, the embedded digits demo.
    """
    from robustgen.pipeline import describe_plan, run as run_pipeline

    cfg = _config(config, overrides)
    if dry_run:
        click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
        click.echo("---\nplan:\n" + describe_plan(cfg))
        return
    results = run_pipeline(cfg, out, progress=not quiet)
    click.echo(f"wrote {out / 'results.json'} and {out / 'report.md'} in {results['wall_time_s']:.0f} s")
    for m in results["models"]:
        click.echo(f"  {m['name']:<24} alpha={m['alpha']:<4g} clean={m['clean_accuracy']:.4f} "
                   f"robust={m['robust_accuracy']:.4f} ({m['attack']}, n={m['n_eval']})")


@cli.command()
@_common
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder")
@click.option("--quiet", is_flag=True)
def classifier(config, overrides, out, quiet):
    """Train the non-robust classifier f_NR (the pseudo-labeller); prints its test accuracy."""
    from robustgen.pipeline import data_fingerprint, fingerprint
    from robustgen.stages import load_splits, resolve_device, train_classifier

    cfg = _config(config, overrides)
    splits = load_splits(cfg)
    fp = fingerprint("classifier", data_fingerprint(cfg, splits), config_to_dict(cfg.classifier), cfg.seed)
    result = train_classifier(cfg, splits, out, device=resolve_device(cfg.device), fingerprint=fp,
                              progress=not quiet)
    click.echo(json.dumps(result, indent=2))


@cli.command()
@_common
@click.option("--generator", "generator_name", default=None, help="registered generator (default: generator.name)")
@click.option("--num-samples", type=int, default=None, help="default: generator.num_samples")
@click.option("--seed", type=int, default=None, help="default: generator.seed")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output .npz (image, label = class)")
def generate(config, overrides, generator_name, num_samples, seed, out):
    """Fit a generator on the real train split and sample images in the released .npz layout."""
    from robustgen.stages import generate_samples, load_splits

    extra = []
    if generator_name is not None:
        extra.append(f"generator.name={generator_name}")
    if num_samples is not None:
        extra.append(f"generator.num_samples={num_samples}")
    if seed is not None:
        extra.append(f"generator.seed={seed}")
    cfg = _config(config, overrides + tuple(extra))
    splits = load_splits(cfg)
    click.echo(json.dumps(generate_samples(cfg, splits.train, out), indent=2))


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="classifier checkpoint (f_NR)")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True, help="images .npz")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="labelled .npz")
@click.option("--top-k", type=int, default=None, help="keep the k most confident images per class")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def label(checkpoint, input_path, out, top_k, batch_size, device, quiet):
    """Pseudo-label images with a classifier; keeps confidences (and the generator's class)."""
    from robustgen.stages import label_samples, resolve_device

    if top_k is not None and top_k <= 0:
        raise RobustgenError(f"--top-k must be > 0, got {top_k}")
    result = label_samples(checkpoint, input_path, out, top_k=top_k, batch_size=batch_size,
                           device=resolve_device(device), progress=not quiet)
    click.echo(json.dumps(result, indent=2))


@cli.command()
@_common
@click.option("--generated", type=click.Path(path_type=Path), default=None,
              help="pseudo-labelled .npz (needed when train.alpha < 1)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder (resumes if interrupted)")
@click.option("--quiet", is_flag=True)
def train(config, overrides, generated, out, quiet):
    """Adversarial training (TRADES by default) on alpha-mixed batches."""
    from robustgen.pipeline import data_fingerprint, train_fingerprint
    from robustgen.stages import load_splits, read_generated, resolve_device, train_robust
    from robustgen.train.distributed import context_from_env

    cfg = _config(config, overrides)
    if cfg.train.alpha < 1 and generated is None:
        raise RobustgenError(f"train.alpha = {cfg.train.alpha} < 1 needs --generated FILE.npz")
    splits = load_splits(cfg)
    gen = read_generated(generated, splits.train.num_classes, splits.train.image_shape) if generated else None
    fp = train_fingerprint(cfg, data_fingerprint(cfg, splits), str(generated.resolve()) if generated else None)
    ctx, device = context_from_env(resolve_device(cfg.device))  # data-parallel under torchrun
    result = train_robust(cfg, splits, gen, out, device=device, fingerprint=fp, name=out.name,
                          progress=not quiet, ctx=ctx)
    if ctx.is_main:
        click.echo(json.dumps(result, indent=2))


@cli.command("eval")
@_common
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="robustgen checkpoint, or a plain state dict with --arch")
@click.option("--arch", default=None, help="architecture of a plain (non-robustgen) state dict, e.g. resnet-18-kuangliu")
@click.option("--attack", default=None, help="registered attack: pgd40, autoattack, aa+mt, ... (default: eval.attack)")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="default: the model's threat.norm")
@click.option("--eps", default=None, help="radius, e.g. 8/255 (default: the model's threat.eps)")
@click.option("--n", "n", type=int, default=None, help="first n test images (default: eval.n, else all)")
@click.option("--batch-size", type=int, default=None, help="default: eval.batch_size")
@click.option("--seed", type=int, default=None, help="default: eval.seed")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="write the JSON here; progress is kept in OUT.partial.pt so a killed run resumes")
@click.option("--quiet", is_flag=True)
def evaluate(config, overrides, checkpoint, arch, attack, norm, eps, n, batch_size, seed, out, quiet):
    """Clean and robust accuracy of a checkpoint on the test split, per attack stage (JSON)."""
    from robustgen.checkpoint import write_json
    from robustgen.data import load_dataset
    from robustgen.stages import evaluate_checkpoint, resolve_device

    extra = [] if config is not None or arch is not None else _trained_for(checkpoint)
    for key, value in (("eval.attack", attack), ("threat.norm", norm), ("eval.n", n),
                       ("eval.batch_size", batch_size), ("eval.seed", seed)):
        if value is not None:
            extra.append(f"{key}={value}")
    if eps is not None:
        extra.append(f"threat.eps={parse_number(eps, key='--eps', source='command line')!r}")
    cfg = _config(config, tuple(extra) + overrides)
    d, e = cfg.data, cfg.eval
    test = load_dataset(d.dataset, "test", data_root=d.data_root, download=d.download, seed=d.split_seed)
    partial = None if out is None else out.with_name(out.name + ".partial.pt")
    result = evaluate_checkpoint(checkpoint, test, attack=e.attack, norm=cfg.threat.norm, eps=cfg.threat.eps, n=e.n,
                                 batch_size=e.batch_size, seed=e.seed, device=resolve_device(cfg.device),
                                 progress=not quiet, arch=arch, state_path=partial)
    if out is not None:
        write_json(out, result)
        partial.unlink(missing_ok=True)
    for warning in result["sanity"]["warnings"]:
        click.echo(f"robustgen: warning: {warning}", err=True)
    click.echo(json.dumps(result, indent=2))


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="robustgen checkpoint")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="plain state dict .pt (+ OUT.json)")
def export(checkpoint, out):
    """Export a model in RobustBench form: a plain state dict ([0,1] NCHW in, logits out) and a JSON sidecar."""
    from robustgen.checkpoint import export_robustbench

    click.echo(json.dumps(export_robustbench(checkpoint, out), indent=2))


def _trained_for(checkpoint: Path) -> list[str]:
    """--set items for the data and threat model a robustgen checkpoint was trained with."""
    from robustgen.checkpoint import model_info

    stored = model_info(checkpoint).get("config", {})
    items = []
    if stored.get("data"):
        data = stored["data"]
        items += [f"data.dataset={data['dataset']}", f"data.split_seed={data['split_seed']}"]
        if data.get("data_root"):
            items.append(f"data.data_root={data['data_root']}")
    if stored.get("threat"):
        items += [f"threat.norm={stored['threat']['norm']}", f"threat.eps={stored['threat']['eps']!r}"]
    return items


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="robustgen", standalone_mode=False)
    except RobustgenError as e:
        click.echo(f"robustgen: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("robustgen: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("robustgen: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
