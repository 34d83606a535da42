"""One verb per training stage (``classifier``, ``train``, ``eval``), ``export`` and
``convert-guided-diffusion``, ``convert-edm``; generating and labelling are ``robustgen store generate`` / ``label``.

Each builds the config (the verb's options are config keys) and calls the stage's ``run`` in
``robustgen.stages``: the same function, with the same fingerprint, as ``robustgen run``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from robustgen.cli.app import cli, config_options, echo_json, load_cli_config, owned, wait_option
from robustgen.config import parse_number
from robustgen.runtime.errors import RobustgenError


@cli.command()
@config_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder (resumes if interrupted)")
@wait_option
@click.option("--quiet", is_flag=True)
def classifier(config, overrides, out, wait, quiet):
    """Train the non-robust classifier f_NR (the pseudo-labeller); prints its test accuracy."""
    from robustgen.stages import classifier as stage
    from robustgen.stages import data_fingerprint, load_splits, resolve_device

    cfg = load_cli_config(config, overrides)
    splits = load_splits(cfg)
    with owned(out, wait, "training folder"):
        result = stage.run(cfg, splits, out, device=resolve_device(cfg.device), data_fp=data_fingerprint(cfg, splits),
                           progress=not quiet)
    echo_json(result.to_dict())


@cli.command()
@config_options
@click.option("--generated", type=click.Path(path_type=Path), default=None,
              help="pseudo-labelled generated data: a store folder or an .npz (needed when train.alpha < 1)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder (resumes if interrupted)")
@wait_option
@click.option("--quiet", is_flag=True)
def train(config, overrides, generated, out, wait, quiet):
    """Adversarial training (TRADES by default) on batches mixing real and generated data."""
    from robustgen.runtime.distributed import context_from_env
    from robustgen.stages import train as stage
    from robustgen.stages import data_fingerprint, load_splits, resolve_device

    cfg = load_cli_config(config, overrides)
    if stage.needs_generated(cfg) and generated is None:
        raise RobustgenError(f"train.alpha = {cfg.train.alpha} < 1 needs --generated STORE_OR_FILE.npz")
    splits = load_splits(cfg)
    if generated is not None:  # fail early, before any process group or training state
        stage.read_generated(generated, splits.train.num_classes, splits.train.image_shape)
    ctx, device = context_from_env(resolve_device(cfg.device))  # data-parallel under torchrun
    with owned(out, wait, "training folder") if ctx.is_main else contextlib.nullcontext():
        result = stage.run(cfg, splits, generated, out, device=device, data_fp=data_fingerprint(cfg, splits),
                           generated_fp=str(generated.resolve()) if generated else None, name=out.name,
                           progress=not quiet, ctx=ctx)
    if ctx.is_main:
        echo_json(result.to_dict())


@cli.command("eval")
@config_options
@click.option("--checkpoint", required=True,
              help="robustgen checkpoint, a plain state dict with --arch, or robustbench:<Name> "
                   "(robustbench:<dataset>/<threat>/<Name>)")
@click.option("--arch", default=None, help="architecture of a plain (non-robustgen) state dict, e.g. resnet-18-kuangliu")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="RobustBench's model folder for robustbench:<Name> (default $ROBUSTBENCH_MODEL_DIR, else ./models)")
@click.option("--protocol", type=click.Choice(["robustgen", "robustbench"]), default="robustgen", show_default=True,
              help="robustbench: the official pyautoattack standard evaluation on RobustBench's test points")
@click.option("--attack", default=None, help="registered attack: pgd40, autoattack, aa+mt, ... (default: eval.attack)")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="default: the model's threat.norm")
@click.option("--eps", default=None, help="radius, e.g. 8/255 (default: the model's threat.eps)")
@click.option("--n", "n", type=int, default=None, help="first n test images (default: eval.n, else all)")
@click.option("--batch-size", type=int, default=None, help="default: eval.batch_size")
@click.option("--seed", type=int, default=None, help="default: eval.seed")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="write the JSON here; progress is kept in OUT.partial.pt so a killed run resumes")
@click.option("--quiet", is_flag=True)
def evaluate(config, overrides, checkpoint, arch, model_dir, protocol, attack, norm, eps, n, batch_size, seed, out,
             quiet):
    """Clean and robust accuracy of a checkpoint on the test split, per attack stage (JSON)."""
    from robustgen.data import load_split
    from robustgen.runtime.distributed import context_from_env, main_first
    from robustgen.stages import evaluate as stage
    from robustgen.stages import load_test_split, resolve_device

    options = {"eval.attack": attack, "threat.norm": norm, "eval.n": n, "eval.batch_size": batch_size,
               "eval.seed": seed, "threat.eps": None if eps is None else parse_number(eps, key="--eps",
                                                                                    source="command line")}
    if checkpoint.startswith("robustbench:"):
        trained_for = _robustbench_setting(checkpoint, config, norm)
    else:
        checkpoint = Path(checkpoint)
        trained_for = {} if config is not None or arch is not None else _trained_for(checkpoint)
    cfg = load_cli_config(config, overrides, **{**trained_for, **{k: v for k, v in options.items() if v is not None}})
    if protocol == "robustbench":
        from robustgen.zoo import robustbench_benchmark

        device = resolve_device(cfg.device)
        test = load_split(cfg.data, "test")  # RobustBench's points come from the test split, whatever eval.split
        model = stage.load_for_eval(cfg, checkpoint, test, device=device, arch=arch, model_dir=model_dir)[0]
        result = robustbench_benchmark(model, cfg, device=device, n=n, batch_size=cfg.eval.batch_size,
                                       seed=cfg.eval.seed, test=test)
        if out is not None:
            from robustgen.runtime.io import write_json

            write_json(out, {"checkpoint": str(checkpoint), **result})
        echo_json({"checkpoint": str(checkpoint), **result})
        return
    ctx, device = context_from_env(resolve_device(cfg.device))  # under torchrun the ranks share the batches
    test = main_first(ctx, lambda: load_test_split(cfg))
    result = stage.run(cfg, checkpoint, test, device=device, progress=not quiet, arch=arch, out=out, ctx=ctx,
                       model_dir=model_dir)
    if not ctx.is_main:
        return
    for warning in result.sanity["warnings"]:
        click.echo(f"robustgen: warning: {warning}", err=True)
    # the per-point flags stay in --out: one character per test image is no terminal output
    echo_json({k: v for k, v in result.to_dict().items() if k != "robust_points"})


def _robustbench_setting(spec: str, config, norm) -> dict:
    """The dataset, threat and leaderboard eps of "robustbench:..." as config changes (a config
    given on the command line keeps its dataset)."""
    from robustgen.zoo import RB_EPS, parse_robustbench_name

    # the short form names no dataset: cifar10, RobustBench's default, unless a config says which
    dataset, threat, _ = parse_robustbench_name(spec, dataset="" if config is not None else "cifar10",
                                                norm=norm or "linf")
    changes = {"threat.norm": threat.lower()}
    if dataset:
        changes["data.dataset"] = dataset
    if (dataset, threat) in RB_EPS:
        changes["threat.eps"] = RB_EPS[(dataset, threat)]
    return changes


def _trained_for(checkpoint: Path) -> dict:
    """The data and threat model a robustgen checkpoint was trained with, as config changes."""
    from robustgen.checkpoint import model_info

    stored = model_info(checkpoint).get("config", {})
    changes = {}
    if stored.get("data"):
        data = stored["data"]
        changes.update({"data.dataset": data["dataset"], "data.split_seed": data["split_seed"]})
        if data.get("data_root"):
            changes["data.data_root"] = data["data_root"]
    if stored.get("threat"):
        changes.update({"threat.norm": stored["threat"]["norm"], "threat.eps": stored["threat"]["eps"]})
    return changes


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="robustgen checkpoint")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="plain state dict .pt (+ OUT.json, OUT.md)")
@click.option("--eval-json", "eval_json", type=click.Path(path_type=Path), multiple=True,
              help="a `robustgen eval --out` result of this checkpoint, for the model card (repeatable: "
                   "AutoAttack, AA+MT, ...)")
def export(checkpoint, out, eval_json):
    """Export a model in RobustBench form: a state dict that loads into RobustBench's own class
    (DMWideResNet / DMPreActResNet for wrn-* / preact-resnet-18), a JSON sidecar and a model card."""
    from robustgen.runtime.io import read_json
    from robustgen.zoo import export_robustbench

    evaluations = [read_json(p) for p in eval_json]
    echo_json(export_robustbench(checkpoint, out, evaluations=evaluations or None))


@cli.command("convert-guided-diffusion")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--preset", required=True, help="imagenet64-cond or imagenet256-cond (the checkpoint's flags)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="diffusers folder to write")
@click.option("--class-names", type=click.Path(path_type=Path), default=None,
              help="text file: the model's class names (WordNet ids), one per line in class order")
def convert_guided_diffusion_cmd(checkpoint, preset, out, class_names):
    """Convert an openai/guided-diffusion checkpoint to a diffusers folder for generator.ddpm.pretrained."""
    from robustgen.generate.diffusion.convert import convert_guided_diffusion

    click.echo(f"wrote {convert_guided_diffusion(checkpoint, out, preset, class_names_file=class_names)}")


@cli.command("convert-edm")
@click.argument("network_pkl", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder to write")
@click.option("--key", default="ema", show_default=True, help="the pickle's entry holding the network")
def convert_edm_cmd(network_pkl, out, key):
    """Convert an EDM network pickle (NVlabs/edm, Wang et al. 2023) to a state-dict folder for
    generator.ddpm.pretrained, without running the pickle's code."""
    from robustgen.generate.diffusion.edm_pickle import convert_edm_pickle

    click.echo(f"wrote {convert_edm_pickle(network_pkl, out, key=key)}")
