"""Command line: ``robustgen {run, classifier, generate, label, train, eval, export, store, report}``.

Each verb is a thin layer over a library function in ``stages`` / ``pipeline``. Bad input ends
with one line ``robustgen: error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click
import numpy as np
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


_wait_option = click.option("--wait", is_flag=True,
                            help="if another process owns --out, wait for it instead of exiting")


def _owned(folder: Path, wait: bool, what: str):
    """Own ``folder`` while a verb writes into it (``robustgen.locks``)."""
    from robustgen.locks import FolderLock

    return FolderLock(folder, wait=wait, what=what)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustgen")
def cli() -> None:
    """Adversarial robustness from generated data (Gowal et al., NeurIPS 2021)."""


@cli.command()
@_common
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/default"), show_default=True,
              help="output folder (finished stages in it are reused)")
@click.option("--dry-run", is_flag=True,
              help="validate the config, print the plan, the cost estimate and the preflight of every input; exit 2 on a problem")
@_wait_option
@click.option("--quiet", is_flag=True, help="no progress bars")
def run(config, overrides, out, dry_run, wait, quiet):
    """Classifier -> generate -> label -> TRADES training -> evaluation, with a report.

    CONFIG is a preset name (see configs/) or a YAML file; without it, the embedded digits demo.
    """
    from robustgen.pipeline import describe_plan, run as run_pipeline

    cfg = _config(config, overrides)
    if dry_run:
        from robustgen.preflight import dry_run as preflight_dry_run

        click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
        click.echo("---\nplan:\n" + describe_plan(cfg))
        lines, problems = preflight_dry_run(cfg, out)
        click.echo("\n".join(lines))
        for problem in problems:
            click.echo(f"robustgen: error: {problem}", err=True)
        if problems:
            raise SystemExit(2)
        return
    results = run_pipeline(cfg, out, progress=not quiet, wait=wait)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    click.echo(f"wrote {out / 'results.json'} and {out / 'report.md'} in {results['wall_time_s']:.0f} s")
    for m in results["models"]:
        click.echo(f"  {m['name']:<24} alpha={m['alpha']:<4g} clean={m['clean_accuracy']:.4f} "
                   f"robust={m['robust_accuracy']:.4f} ({m['attack']}, n={m['n_eval']})")


@cli.command()
@_common
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder")
@_wait_option
@click.option("--quiet", is_flag=True)
def classifier(config, overrides, out, wait, quiet):
    """Train the non-robust classifier f_NR (the pseudo-labeller); prints its test accuracy."""
    from robustgen.pipeline import data_fingerprint, fingerprint
    from robustgen.stages import load_splits, resolve_device, train_classifier

    cfg = _config(config, overrides)
    splits = load_splits(cfg)
    fp = fingerprint("classifier", data_fingerprint(cfg, splits), config_to_dict(cfg.classifier), cfg.seed)
    with _owned(out, wait, "training folder"):
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
    from robustgen.stages import generate_samples, generator_data, load_splits

    extra = []
    if generator_name is not None:
        extra.append(f"generator.name={generator_name}")
    if num_samples is not None:
        extra.append(f"generator.num_samples={num_samples}")
    if seed is not None:
        extra.append(f"generator.seed={seed}")
    cfg = _config(config, overrides + tuple(extra))
    splits = load_splits(cfg)
    click.echo(json.dumps(generate_samples(cfg, generator_data(cfg, splits), out, progress=True), indent=2))


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="classifier checkpoint (f_NR)")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True, help="images .npz")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="labelled .npz")
@click.option("--mode", type=click.Choice(["argmax", "condition"]), default="argmax", show_default=True,
              help="label = the classifier's class, or the conditioning class (Wang et al.)")
@click.option("--top-k", type=int, default=None, help="keep the k most confident images per class")
@click.option("--top-fraction", type=float, default=None, help="keep this fraction of each class, most confident first")
@click.option("--balanced", is_flag=True, help="then keep the same number of every class")
@click.option("--per-class", type=int, default=None,
              help="keep exactly N most confident images of every class (paper App. D); needs >= N of each")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def label(checkpoint, input_path, out, mode, top_k, top_fraction, balanced, per_class, batch_size, device, quiet):
    """Label generated images with a classifier and filter per class; keeps confidences (and the generator's class)."""
    from robustgen.stages import label_samples, resolve_device

    if top_k is not None and top_k <= 0:
        raise RobustgenError(f"--top-k must be > 0, got {top_k}")
    result = label_samples(checkpoint, input_path, out, top_k=top_k, top_fraction=top_fraction, balanced=balanced,
                           per_class=per_class, mode=mode, batch_size=batch_size, device=resolve_device(device), progress=not quiet)
    click.echo(json.dumps(result, indent=2))


@cli.command()
@_common
@click.option("--generated", type=click.Path(path_type=Path), default=None,
              help="pseudo-labelled generated data: a store folder or an .npz (needed when train.alpha < 1)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder (resumes if interrupted)")
@_wait_option
@click.option("--quiet", is_flag=True)
def train(config, overrides, generated, out, wait, quiet):
    """Adversarial training (TRADES by default) on batches mixing real and generated data."""
    from robustgen.pipeline import data_fingerprint, needs_generated, train_fingerprint
    from robustgen.stages import load_splits, read_generated, resolve_device, train_robust
    from robustgen.train.distributed import context_from_env

    cfg = _config(config, overrides)
    if needs_generated(cfg) and generated is None:
        raise RobustgenError(f"train.alpha = {cfg.train.alpha} < 1 needs --generated STORE_OR_FILE.npz")
    splits = load_splits(cfg)
    if generated is not None:  # fail early, before any process group or training state
        read_generated(generated, splits.train.num_classes, splits.train.image_shape)
    fp = train_fingerprint(cfg, data_fingerprint(cfg, splits), str(generated.resolve()) if generated else None)
    ctx, device = context_from_env(resolve_device(cfg.device))  # data-parallel under torchrun
    with _owned(out, wait, "training folder") if ctx.is_main else contextlib.nullcontext():
        result = train_robust(cfg, splits, generated, out, device=device, fingerprint=fp, name=out.name,
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
    from robustgen.data import load_split
    from robustgen.io import write_json
    from robustgen.stages import evaluate_checkpoint, resolve_device
    from robustgen.train.distributed import context_from_env, main_first

    extra = [] if config is not None or arch is not None else _trained_for(checkpoint)
    for key, value in (("eval.attack", attack), ("threat.norm", norm), ("eval.n", n),
                       ("eval.batch_size", batch_size), ("eval.seed", seed)):
        if value is not None:
            extra.append(f"{key}={value}")
    if eps is not None:
        extra.append(f"threat.eps={parse_number(eps, key='--eps', source='command line')!r}")
    cfg = _config(config, tuple(extra) + overrides)
    d, e = cfg.data, cfg.eval
    ctx, device = context_from_env(resolve_device(cfg.device))  # under torchrun the ranks share the batches
    test = main_first(ctx, lambda: load_split(d, "test"))
    partial = None if out is None else out.with_name(out.name + ".partial.pt")
    result = evaluate_checkpoint(checkpoint, test, attack=e.attack, norm=cfg.threat.norm, eps=cfg.threat.eps, n=e.n,
                                 batch_size=e.batch_size, seed=e.seed, device=device,
                                 progress=not quiet, arch=arch, state_path=partial, ctx=ctx)
    if not ctx.is_main:
        return
    if out is not None:
        write_json(out, result)
        partial.unlink(missing_ok=True)
    for warning in result["sanity"]["warnings"]:
        click.echo(f"robustgen: warning: {warning}", err=True)
    # the per-point flags stay in --out: one character per test image is no terminal output
    click.echo(json.dumps({k: v for k, v in result.items() if k != "robust_points"}, indent=2))


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


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="robustgen checkpoint")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="plain state dict .pt (+ OUT.json)")
def export(checkpoint, out):
    """Export a model in RobustBench form: a plain state dict ([0,1] NCHW in, logits out) and a JSON sidecar."""
    from robustgen.checkpoint import export_robustbench

    click.echo(json.dumps(export_robustbench(checkpoint, out), indent=2))


# --------------------------------------------------------------------------- stores
@cli.group()
def store():
    """Generated-data stores: folders of memory-mapped uint8 .npy shards plus a manifest."""


@store.command("import")
@click.argument("npz", type=click.Path(path_type=Path))
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--shard-size", type=int, default=100_000, show_default=True, help="images per shard")
@click.option("--num-classes", type=int, default=None, help="default: len(class_names) in the file, else max label + 1")
@click.option("--quiet", is_flag=True)
def store_import(npz, store_dir, shard_size, num_classes, quiet):
    """Stream an .npz in the released layout (image uint8 NHWC, label) into a new store; resumes."""
    from robustgen.data.store_npz import import_npz

    if shard_size < 1:
        raise RobustgenError(f"--shard-size must be >= 1, got {shard_size}")
    click.echo(json.dumps(import_npz(npz, store_dir, shard_size=shard_size, num_classes=num_classes,
                                     progress=not quiet), indent=2))


@store.command("export")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.argument("out", metavar="FILE.npz", type=click.Path(path_type=Path))
@click.option("--all", "all_rows", is_flag=True, help="every image, ignoring the store's selection")
@click.option("--quiet", is_flag=True)
def store_export(store_dir, out, all_rows, quiet):
    """Write a store as an .npz in the released layout (image, label, ...), streaming."""
    from robustgen.data.store_npz import export_npz

    click.echo(json.dumps(export_npz(store_dir, out, use_selection=not all_rows, progress=not quiet), indent=2))


@store.command("info")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
def store_info(store_dir):
    """Summary of a store (sizes, classes, provenance) as JSON; reads no images."""
    from robustgen.data.store import Store

    s = Store(store_dir, allow_incomplete=True)
    m = s.manifest
    disk = sum(p.stat().st_size for p in Path(store_dir).iterdir() if p.is_file())
    gen = m.get("generator")
    info = {
        "store": str(store_dir), "images": len(s), "total_images": s.total,
        "target_images": m.get("target_num_images"), "shards": s.num_shards, "shard_size": m["shard_size"],
        "image_shape": list(s.image_shape), "num_classes": s.num_classes, "class_names": list(s.class_names),
        "counts_per_class": np.bincount(s.labels, minlength=s.num_classes).tolist(),
        "has_conditions": s.conditions is not None, "has_confidences": s.confidences is not None,
        "selection": m.get("selection"), "source": m.get("source"),
        "generator": None if gen is None else {k: gen.get(k) for k in ("name", "seed", "fit_config", "train_data")},
        "labeller": m.get("labeller"), "code_version": m.get("code_version"), "disk_bytes": disk,
    }
    click.echo(json.dumps(info, indent=2))


@store.command("verify")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
def store_verify(store_dir):
    """Check every shard (layout, sha256, label range, counts); lists each problem, exit 1 if any."""
    from robustgen.data.store import verify_store

    problems = verify_store(store_dir)
    for line in problems:
        click.echo(f"robustgen: error: {line}", err=True)
    if problems:
        click.echo(f"{store_dir}: {len(problems)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo(f"{store_dir}: ok")


@store.command("merge")
@click.argument("stores", metavar="STORE... OUT", nargs=-1, required=True, type=click.Path(path_type=Path))
def store_merge(stores):
    """Merge stores (same image shape and classes) into the new store OUT: shards are hard links,
    sha256s and provenance are kept."""
    from robustgen.data.store_merge import merge_stores

    if len(stores) < 2:
        raise RobustgenError("store merge needs input stores and an output folder: STORE... OUT")
    click.echo(json.dumps(merge_stores(stores[:-1], stores[-1]), indent=2))


@store.command("generate")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@_common
@click.option("--num-samples", type=int, required=True, help="images to generate (the store resumes / extends)")
@click.option("--shard-size", type=int, default=100_000, show_default=True, help="images per shard")
@click.option("--seed", type=int, default=None, help="default: generator.seed")
@click.option("--no-verify-existing", is_flag=True, help="trust finished shards without re-hashing them")
@click.option("--quiet", is_flag=True)
def store_generate(store_dir, config, overrides, num_samples, shard_size, seed, no_verify_existing, quiet):
    """Fit the configured generator on the real train split and write samples shard by shard; resumes.
    Under torchrun the processes share the shards (the same store as one process)."""
    from robustgen.stages import generate_into_store, generator_data, load_splits, resolve_device
    from robustgen.train.distributed import context_from_env, main_first

    if shard_size < 1:
        raise RobustgenError(f"--shard-size must be >= 1, got {shard_size}")
    extra = [f"generator.num_samples={num_samples}"] + ([] if seed is None else [f"generator.seed={seed}"])
    cfg = _config(config, overrides + tuple(extra))
    ctx, device = context_from_env(resolve_device(cfg.device))
    train = generator_data(cfg, main_first(ctx, lambda: load_splits(cfg)))
    result = generate_into_store(cfg, train, store_dir, device=device, progress=not quiet, shard_size=shard_size,
                                 verify_existing=not no_verify_existing, ctx=ctx)
    if ctx.is_main:
        click.echo(json.dumps(result, indent=2))


@store.command("label")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="classifier checkpoint (f_NR)")
@click.option("--top-k", type=int, default=None, help="keep the k most confident images per class")
@click.option("--balanced", is_flag=True, help="keep the same number per class (the smallest class's)")
@click.option("--per-class", type=int, default=None,
              help="keep exactly N most confident images of every class (paper App. D); needs >= N of each")
@click.option("--condition-top-fraction", type=float, default=None,
              help="label = the generator's class; keep this fraction per class by the classifier's confidence in it")
@click.option("--arch", default=None, help="architecture of a plain (non-robustgen) state dict, e.g. resnet-18-kuangliu")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--bf16", is_flag=True, help="bfloat16 autocast of the classifier (CUDA; recorded with the labels)")
@click.option("--channels-last", is_flag=True, help="NHWC layout of the classifier and its inputs")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the classifier")
@click.option("--quiet", is_flag=True)
def store_label(store_dir, checkpoint, top_k, balanced, per_class, condition_top_fraction, arch, batch_size, device,
                bf16, channels_last, compile_model, quiet):
    """Pseudo-label a store shard by shard (resumes), then select rows per class. Under torchrun
    the processes share every shard's rows (the same labels as one process)."""
    from robustgen.checkpoint import load_external_model, load_model, model_info
    from robustgen.data.store import file_sha256, read_manifest
    from robustgen.label.runner import label_store, select_store
    from robustgen.models.inference import InferenceOptions, prepare_for_inference
    from robustgen.stages import resolve_device
    from robustgen.train.distributed import context_from_env

    manifest = read_manifest(store_dir)
    h, w, c = manifest["image_shape"]
    ctx, dev = context_from_env(resolve_device(device))
    if arch is not None:
        model = load_external_model(checkpoint, arch=arch, num_classes=int(manifest["num_classes"]),
                                    in_channels=c, device=dev)
    else:
        spec = model_info(checkpoint)["spec"]
        if int(spec["num_classes"]) != int(manifest["num_classes"]):
            raise RobustgenError(f"{checkpoint}: the classifier has {spec['num_classes']} classes but {store_dir} "
                                 f"has {manifest['num_classes']}")
        if int(spec["in_channels"]) != c or (spec.get("image_size") not in (None, h)):
            raise RobustgenError(f"{checkpoint}: the classifier takes {spec.get('image_size')}px images with "
                                 f"{spec['in_channels']} channels but {store_dir} holds {h}x{w}x{c}")
        model = load_model(checkpoint, device=dev)
    mode = "condition" if condition_top_fraction is not None else "argmax"
    labeller = {"checkpoint": str(checkpoint), "id": file_sha256(checkpoint)[:16]}
    options = InferenceOptions(bf16=bf16, channels_last=channels_last, compile=compile_model)
    result = label_store(store_dir, prepare_for_inference(model, options), labeller=labeller, mode=mode,
                         batch_size=batch_size, device=dev, progress=not quiet, options=options, ctx=ctx)
    if ctx.is_main:
        result["selection"] = select_store(store_dir, top_k=top_k, top_fraction=condition_top_fraction,
                                           balanced=balanced, per_class=per_class)
        click.echo(json.dumps(result, indent=2))


@cli.group()
def report():
    """Figures of generated data."""


@report.command("samples")
@click.argument("source", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file")
@click.option("--per-class", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--title", default=None)
def report_samples(source, out, per_class, seed, title):
    """A grid of random images of a store (or released-layout .npz), one row per class (paper Fig. 12)."""
    from robustgen.report.grid import save_store_grid

    click.echo(json.dumps(save_store_grid(out, source, per_class=per_class, seed=seed, title=title), indent=2))


# --------------------------------------------------------------------------- measuring generated data
def _floats(text: str, what: str) -> list[float]:
    try:
        return [parse_number(t.strip(), key=what, source="command line") for t in text.split(",") if t.strip()]
    except RobustgenError:
        raise
    except ValueError:
        raise RobustgenError(f"{what}: expected comma-separated numbers, got {text!r}") from None


@cli.command()
@_common
@click.option("--alphas", default="0.5,0.8,1", show_default=True, help="proportions of real data per batch")
@click.option("--generators", default=None, help="comma-separated registered generators (default: generator.name)")
@click.option("--seeds", default="0,1", show_default=True, help="comma-separated seeds")
@click.option("--vary-seed", "seed_key", type=click.Choice(["train.seed", "seed"]), default="train.seed",
              show_default=True, help="train.seed: adversarial training only (shared classifier and samples); "
                                      "seed: the whole run, classifier included")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/sweep"), show_default=True,
              help="output folder; its stages/ cache is shared by every grid point")
@click.option("--quiet", is_flag=True)
def sweep(config, overrides, alphas, generators, seeds, seed_key, out, quiet):
    """Run a grid alpha x generator x seed through the pipeline (reusing finished stages) and write
    sweep.json, sweep.md and alpha_sweep.png (paper Fig. 5)."""
    from robustgen.sweep import run_sweep

    cfg = _config(config, overrides)
    gens = [g.strip() for g in (generators or cfg.generator.name).split(",") if g.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise RobustgenError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    summary = run_sweep(cfg, out, alphas=_floats(alphas, "--alphas"), generators=gens, seeds=seed_list,
                        seed_key=seed_key, progress=not quiet, log=lambda m: click.echo(m, err=True))
    click.echo((out / "sweep.md").read_text().rstrip())
    click.echo(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'} and {out / 'alpha_sweep.png'} "
               f"in {summary['wall_time_s']:.0f} s")


@cli.command()
@_common
@click.option("--generated", "generated", multiple=True, required=True, metavar="[NAME=]PATH",
              help="a store folder or released-layout .npz to measure (repeatable)")
@click.option("--features", "features", default="inception", show_default=True,
              help="inception, or classifier:CHECKPOINT (penultimate layer)")
@click.option("--arch", default=None, help="architecture of a plain state dict for classifier:PATH")
@click.option("--inception-weights", type=click.Path(path_type=Path), default=None,
              help="local copy of torch-fidelity's Inception weights (offline use)")
@click.option("--no-download", is_flag=True, help="never download the Inception weights")
@click.option("--metrics", default="complementarity,fid,is,kid", show_default=True,
              help="comma-separated: complementarity, fid, is, kid")
@click.option("--reference", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="the real split FID / KID compare against")
@click.option("--n", "n", type=int, default=10_000, show_default=True, help="samples per set (paper: 10K)")
@click.option("--pca", "pca", type=int, default=100, show_default=True, help="PCA components (paper: 100)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON file (markdown next to it)")
@click.option("--quiet", is_flag=True)
def measure(config, overrides, generated, features, arch, inception_weights, no_download, metrics, reference, n,
            pca, seed, batch_size, device, out, quiet):
    """Complementarity and coverage (paper Alg. 1), FID, IS and KID of generated sets against the
    config's real train / test splits, in the layout of paper Table 1."""
    from robustgen.data import load_split
    from robustgen.io import write_json, write_text
    from robustgen.metrics.features import get_extractor
    from robustgen.metrics.measure import ImageSet, measure as measure_sets, open_image_set
    from robustgen.stages import resolve_device

    cfg = _config(config, overrides)
    if n < 2:
        raise RobustgenError(f"--n must be >= 2, got {n}")
    d = cfg.data
    train = load_split(d, "train")
    test = load_split(d, "test")
    sources = {}
    for item in generated:
        name, sep, path = item.partition("=")
        path, name = (Path(path), name) if sep and path else (Path(item), None)
        s = open_image_set(path, name)
        if s.name in sources:
            raise RobustgenError(f"--generated: two sets are named {s.name!r}; name them NAME=PATH")
        sources[s.name] = s
    options = {"weights_path": inception_weights, "download": not no_download} if features == "inception" else \
        {"arch": arch, "num_classes": train.num_classes, "in_channels": train.image_shape[2]}
    extractor = get_extractor(features, device=resolve_device(device), **options)
    result = measure_sets(ImageSet("train", train.images, train.labels), ImageSet("test", test.images, test.labels),
                          sources, extractor=extractor, n=n, reference=reference, seed=seed, batch_size=batch_size,
                          pca_components=pca, metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                          progress=not quiet)
    if out is not None:
        write_json(out, {k: v for k, v in result.items() if k != "markdown"})
        write_text(out.with_suffix(".md"), result["markdown"])
    click.echo(result["markdown"].rstrip())


@report.command("curves")
@click.argument("history", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file")
def report_curves(history, out):
    """Training curves of a training stage (its folder or history.json): loss, lr, validation accuracy."""
    from robustgen.report.plots import plot_training_curves, read_history

    click.echo(plot_training_curves(read_history(history), out, title=str(history)))


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
    from robustgen import preempt

    previous = preempt.install()  # SIGTERM / SIGUSR1: save at the next step boundary, exit EXIT_PREEMPTED
    try:
        cli.main(args=argv, prog_name="robustgen", standalone_mode=False)
    except preempt.Preempted as e:
        click.echo(f"robustgen: {e}", err=True)
        sys.exit(preempt.EXIT_PREEMPTED)
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
    finally:
        preempt.restore(previous)


if __name__ == "__main__":
    main()
