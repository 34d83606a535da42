"""``robustgen report {run, samples, curves}`` (a run's report.md, figures), ``robustgen measure`` (complementarity,
coverage, FID / IS / KID of generated sets, paper Alg. 1 and Table 1) and ``robustgen diagnose``
(near copies, label agreement and complementarity against the kept and validation images)."""

from __future__ import annotations

from pathlib import Path

import click

from robustgen.cli.app import cli, config_options, echo_json, load_cli_config
from robustgen.runtime.errors import RobustgenError


@cli.group()
def report():
    """A run's report, figures of generated data and of training."""


@report.command("run")
@click.argument("out", metavar="RUN_FOLDER", type=click.Path(path_type=Path, file_okay=False))
def report_run(out):
    """Rebuild RUN_FOLDER/report.md from its results.json and figures (a moved or shared folder too)."""
    from robustgen.provenance import localize
    from robustgen.report import write_report
    from robustgen.report.figures import existing_figures
    from robustgen.results import RunResults
    from robustgen.runtime.io import read_json

    path = out / "results.json"
    results = RunResults.from_dict(localize(read_json(path), out))
    if results is None:
        raise RobustgenError(f"{path}: not the results.json of robustgen run")
    write_report(out, results, samples_path=None, figures=existing_figures(out, [m.name for m in results.models]))
    click.echo(f"wrote {out / 'report.md'}")


@report.command("samples")
@click.argument("source", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file")
@click.option("--per-class", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--title", default=None)
def report_samples(source, out, per_class, seed, title):
    """A grid of random images of a store (or released-layout .npz), one row per class (paper Fig. 12)."""
    from robustgen.report.grid import save_store_grid

    echo_json(save_store_grid(out, source, per_class=per_class, seed=seed, title=title))


@report.command("curves")
@click.argument("history", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file")
def report_curves(history, out):
    """Training curves of a training stage (its folder or history.json): loss, lr, validation accuracy."""
    from robustgen.report.plots import plot_training_curves, read_history

    click.echo(plot_training_curves(read_history(history), out, title=str(history)))


def _open_sets(generated) -> dict:
    """``[NAME=]PATH`` items -> {name: ImageSet}; a name given twice is an error."""
    from robustgen.metrics.measure import open_image_set

    sources = {}
    for item in generated:
        name, sep, path = item.partition("=")
        path, name = (Path(path), name) if sep and path else (Path(item), None)
        s = open_image_set(path, name)
        if s.name in sources:
            raise RobustgenError(f"--generated: two sets are named {s.name!r}; name them NAME=PATH")
        sources[s.name] = s
    return sources


def _extractor(features: str, data, *, arch, inception_weights, download: bool, device: str, lpips_weights=None):
    from robustgen.metrics.features import get_extractor
    from robustgen.stages import resolve_device

    if features in ("inception", "lpips"):
        options = {"weights_path": inception_weights if features == "inception" else lpips_weights, "download": download}
    else:
        options = {"arch": arch, "num_classes": data.num_classes, "in_channels": data.image_shape[2]}
    return get_extractor(features, device=resolve_device(device), **options)


@cli.command()
@config_options
@click.option("--generated", "generated", multiple=True, required=True, metavar="[NAME=]PATH",
              help="a store folder or released-layout .npz to measure (repeatable)")
@click.option("--features", "features", default="inception", show_default=True,
              help="inception, lpips (LPIPS-VGG: complementarity only, paper Table 4), or classifier:CHECKPOINT "
                   "(penultimate layer)")
@click.option("--arch", default=None, help="architecture of a plain state dict for classifier:PATH")
@click.option("--inception-weights", type=click.Path(path_type=Path), default=None,
              help="local copy of torch-fidelity's Inception weights (offline use)")
@click.option("--lpips-weights", type=click.Path(path_type=Path), default=None,
              help="local copy of torchvision's VGG16 weights (vgg16-397923af.pth) for --features lpips")
@click.option("--no-download", is_flag=True, help="never download the Inception or VGG16 weights")
@click.option("--metrics", default=None,
              help="comma-separated: complementarity, fid, is, kid (default: all four; lpips: complementarity)")
@click.option("--reference", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="the real split FID / KID compare against")
@click.option("--n", "n", type=int, default=10_000, show_default=True, help="samples per set (paper: 10K)")
@click.option("--pca", "pca", type=int, default=100, show_default=True, help="PCA components (paper: 100)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON file (markdown next to it)")
@click.option("--quiet", is_flag=True)
def measure(config, overrides, generated, features, arch, inception_weights, lpips_weights, no_download, metrics,
            reference, n, pca, seed, batch_size, device, out, quiet):
    """Complementarity and coverage (paper Alg. 1), FID, IS and KID of generated sets against the
    config's real train / test splits, in the layout of paper Table 1."""
    from robustgen.data import load_split
    from robustgen.metrics.measure import METRICS, ImageSet
    from robustgen.metrics.measure import measure as measure_sets
    from robustgen.runtime.io import write_json, write_text

    cfg = load_cli_config(config, overrides)
    if n < 2:
        raise RobustgenError(f"--n must be >= 2, got {n}")
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    sources = _open_sets(generated)
    extractor = _extractor(features, train, arch=arch, inception_weights=inception_weights,
                           lpips_weights=lpips_weights, download=not no_download, device=device)
    if metrics is None:
        metrics = ",".join(getattr(extractor, "metrics", METRICS))
    result = measure_sets(ImageSet("train", train.images, train.labels), ImageSet("test", test.images, test.labels),
                          sources, extractor=extractor, n=n, reference=reference, seed=seed, batch_size=batch_size,
                          pca_components=pca, metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                          progress=not quiet)
    if out is not None:
        write_json(out, {k: v for k, v in result.items() if k != "markdown"})
        write_text(out.with_suffix(".md"), result["markdown"])
    click.echo(result["markdown"].rstrip())


@cli.command()
@config_options
@click.option("--generated", "generated", multiple=True, required=True, metavar="[NAME=]PATH",
              help="a store folder or released-layout .npz to diagnose (repeatable)")
@click.option("--features", "features", default=None,
              help="classifier:CHECKPOINT (e.g. f_NR) or inception, for complementarity / KID / FID; "
                   "none given: pixel and label diagnostics only")
@click.option("--arch", default=None, help="architecture of a plain state dict for classifier:PATH")
@click.option("--inception-weights", type=click.Path(path_type=Path), default=None,
              help="local copy of torch-fidelity's Inception weights (offline use)")
@click.option("--no-download", is_flag=True, help="never download the Inception weights")
@click.option("--n", "n", type=int, default=5000, show_default=True, help="samples per set (class-balanced)")
@click.option("--copy-ratio", type=float, default=None,
              help="near copy: closer to a kept image than this fraction of the validation images' "
                   "median distance to them (default 1/3)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON file (markdown next to it)")
def diagnose(config, overrides, generated, features, arch, inception_weights, no_download, n, copy_ratio, seed,
             device, out):
    """Near copies of the kept real images, novelty, f_NR's agreement with the conditioning class,
    complementarity / coverage against the kept and validation images, KID / FID: does a
    generator add anything to the real data it was fitted on? Never reads the test split."""
    from robustgen.metrics.diagnostics import COPY_RATIO, format_diagnostics
    from robustgen.metrics.diagnostics import diagnose as diagnose_set
    from robustgen.runtime.io import write_json, write_text
    from robustgen.stages import load_splits

    cfg = load_cli_config(config, overrides)
    if n < 2:
        raise RobustgenError(f"--n must be >= 2, got {n}")
    splits = load_splits(cfg)
    if len(splits.val) < 2:
        raise RobustgenError("diagnose needs a validation split: set data.val_size >= 2")
    sources = _open_sets(generated)
    extractor = None if features is None else _extractor(features, splits.train, arch=arch,
                                                         inception_weights=inception_weights,
                                                         download=not no_download, device=device)
    reports = {name: diagnose_set(s, splits.train, splits.val, extractor=extractor, n=n, seed=seed,
                                  copy_ratio=COPY_RATIO if copy_ratio is None else copy_ratio)
               for name, s in sources.items()}
    markdown = format_diagnostics(reports)
    if out is not None:
        write_json(out, reports)
        write_text(out.with_suffix(".md"), markdown)
    click.echo(markdown.rstrip())
