"""``robustgen store {generate, label, import, export, info, verify, merge}``: generated data, whose
one on-disk form is a store; the released .npz layout only through ``import`` / ``export``.

``generate`` and ``label`` call the pipeline's generate and label stages (``robustgen.stages``);
under torchrun the processes share the shards (the same store as one process).
"""

from __future__ import annotations

from pathlib import Path

import click

from robustgen.cli.app import cli, config_options, echo_json, load_cli_config
from robustgen.config import LabelConfig
from robustgen.data.store.format import DEFAULT_SHARD_SIZE
from robustgen.runtime.errors import RobustgenError


@cli.group()
def store():
    """Generated-data stores: folders of memory-mapped uint8 .npy shards plus a manifest."""


def _check_shard_size(shard_size: int) -> None:
    if shard_size < 1:
        raise RobustgenError(f"--shard-size must be >= 1, got {shard_size}")


@store.command("generate")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@config_options
@click.option("--num-samples", type=int, required=True, help="images to generate (the store resumes / extends)")
@click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True, help="images per shard")
@click.option("--seed", type=int, default=None, help="default: generator.seed")
@click.option("--no-verify-existing", is_flag=True, help="trust finished shards without re-hashing them")
@click.option("--quiet", is_flag=True)
def store_generate(store_dir, config, overrides, num_samples, shard_size, seed, no_verify_existing, quiet):
    """Fit the configured generator on the real train split and write samples shard by shard; resumes.
    Under torchrun the processes share the shards (the same store as one process)."""
    from robustgen.runtime.distributed import context_from_env, main_first
    from robustgen.stages import generate as stage
    from robustgen.stages import load_splits, resolve_device

    _check_shard_size(shard_size)
    cfg = load_cli_config(config, overrides, **{"generator.num_samples": num_samples, "generator.seed": seed})
    ctx, device = context_from_env(resolve_device(cfg.device))
    train = stage.fit_data(cfg, main_first(ctx, lambda: load_splits(cfg)))
    result = stage.run(cfg, train, store_dir, device=device, progress=not quiet, shard_size=shard_size,
                       verify_existing=not no_verify_existing, ctx=ctx)
    if ctx.is_main:
        echo_json(result)


@store.command("label")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="classifier checkpoint (f_NR)")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="a new store sharing STORE's images (hard links); default: label STORE in place")
@click.option("--top-k", type=int, default=None, help="keep the k most confident images per class")
@click.option("--balanced", is_flag=True, help="keep the same number per class (the smallest class's)")
@click.option("--per-class", type=int, default=None,
              help="keep exactly N images of every class (paper App. D); needs >= N of each")
@click.option("--per-class-order", type=click.Choice(["confidence", "first"]), default="confidence", show_default=True,
              help="--top-k / --per-class keep the most confident (BigGAN, VDVAE) or the first generated (DDPM, Gaussian)")
@click.option("--condition-top-fraction", type=float, default=None,
              help="label = the generator's class; keep this fraction per class by the classifier's confidence in it")
@click.option("--agree-with-condition", is_flag=True,
              help="keep only images whose label is the class they were generated for (then the rules above)")
@click.option("--arch", default=None, help="architecture of a plain (non-robustgen) state dict, e.g. resnet-18-kuangliu")
@click.option("--batch-size", type=int, default=LabelConfig.batch_size, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--bf16", is_flag=True, help="bfloat16 autocast of the classifier (CUDA; recorded with the labels)")
@click.option("--channels-last", is_flag=True, help="NHWC layout of the classifier and its inputs")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the classifier")
@click.option("--quiet", is_flag=True)
def store_label(store_dir, checkpoint, out, top_k, balanced, per_class, per_class_order, condition_top_fraction,
                agree_with_condition, arch, batch_size, device, bf16, channels_last, compile_model, quiet):
    """Pseudo-label a store shard by shard (resumes), then select rows per class. Under torchrun
    the processes share every shard's rows (the same labels as one process)."""
    from robustgen.runtime.distributed import context_from_env
    from robustgen.stages import label as stage
    from robustgen.stages import resolve_device

    if top_k is not None and top_k <= 0:
        raise RobustgenError(f"--top-k must be > 0, got {top_k}")
    if agree_with_condition and condition_top_fraction is not None:
        raise RobustgenError("--agree-with-condition compares f_NR's label with the generator's class: it excludes "
                             "--condition-top-fraction (label = the generator's class)")
    settings = LabelConfig(mode="condition" if condition_top_fraction is not None else "argmax",
                           top_k_per_class=top_k, top_fraction_per_class=condition_top_fraction, balanced=balanced,
                           per_class=per_class, per_class_order=per_class_order,
                           agree_with_condition=agree_with_condition, batch_size=batch_size,
                           precision="bf16" if bf16 else "fp32",
                           channels_last=channels_last, compile=compile_model)
    ctx, dev = context_from_env(resolve_device(device))
    result = stage.run(checkpoint, store_dir, out or store_dir, settings=settings, device=dev, arch=arch,
                       progress=not quiet, ctx=ctx)
    if ctx.is_main:
        echo_json(result)


@store.command("import")
@click.argument("npz", type=click.Path(path_type=Path))
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True, help="images per shard")
@click.option("--num-classes", type=int, default=None, help="default: len(class_names) in the file, else max label + 1")
@click.option("--quiet", is_flag=True)
def store_import(npz, store_dir, shard_size, num_classes, quiet):
    """Stream an .npz in the released layout (image uint8 NHWC, label) into a new store; resumes."""
    from robustgen.data.store.npz import import_npz

    _check_shard_size(shard_size)
    echo_json(import_npz(npz, store_dir, shard_size=shard_size, num_classes=num_classes, progress=not quiet))


@store.command("export")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.argument("out", metavar="FILE.npz", type=click.Path(path_type=Path))
@click.option("--all", "all_rows", is_flag=True, help="every image, ignoring the store's selection")
@click.option("--quiet", is_flag=True)
def store_export(store_dir, out, all_rows, quiet):
    """Write a store as an .npz in the released layout (image, label, ...), streaming."""
    from robustgen.data.store.npz import export_npz

    echo_json(export_npz(store_dir, out, use_selection=not all_rows, progress=not quiet))


@store.command("info")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
def store_info(store_dir):
    """Summary of a store (sizes, classes, provenance) as JSON; reads no images."""
    from robustgen.data.store.inspect import describe_store

    echo_json(describe_store(store_dir))


@store.command("verify")
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
def store_verify(store_dir):
    """Check every shard (layout, sha256, label range, counts); lists each problem, exit 1 if any."""
    from robustgen.data.store.inspect import verify_store

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
    from robustgen.data.store.merge import merge_stores

    if len(stores) < 2:
        raise RobustgenError("store merge needs input stores and an output folder: STORE... OUT")
    echo_json(merge_stores(stores[:-1], stores[-1]))
