"""PNG figures of the paper's analyses, drawn with matplotlib's Agg canvas (no pyplot, no display):

    plot_sweep                robust and clean accuracy over a sweep's points per model, error
                              bars over seeds (against alpha per generator: paper Fig. 5 / 10)
    plot_accuracy_vs_samples  accuracy vs number of generated samples (paper Fig. 6)
    plot_training_curves      loss / learning rate and validation accuracies of a training stage
                              (its history.json, written by robustgen.train.loop)
    plot_loss_landscapes      margin loss over (u * d_adv + v * d_rand) around test points (paper
                              Fig. 11); the grid itself is robustgen.metrics.landscape.loss_landscape
    sample grids (Fig. 12)    robustgen.report.grid

Each takes plain records (dicts / arrays) and a path, and writes the PNG atomically.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import save_figure

__all__ = ["plot_sweep", "plot_accuracy_vs_samples", "plot_training_curves", "plot_loss_landscapes",
           "read_history"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _mean_std(rows: list[dict], x_key: str, y_key: str, group_key: str):
    """{group: (x [M], mean [M], std [M], count [M])}."""
    cells: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[r.get(group_key)][float(r[x_key])].append(float(r[y_key]))
    out = {}
    for g, by_x in cells.items():
        xs = sorted(by_x)
        vals = [np.asarray(by_x[x]) for x in xs]
        out[g] = (np.asarray(xs), np.array([v.mean() for v in vals]), np.array([v.std() for v in vals]),
                  np.array([v.size for v in vals]))
    return out


def _check_rows(rows, keys, what):
    if not rows:
        raise RobustgenError(f"{what}: no records to plot")
    missing = [k for k in keys if any(k not in r for r in rows)]
    if missing:
        raise RobustgenError(f"{what}: records lack {', '.join(missing)}")


def _as_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_sweep(rows: list[dict], path, *, points: dict[str, dict], title: str | None = None) -> str:
    """Two panels (robust, clean accuracy in %), mean +- standard error over seeds, one line per
    model (per generator when the x axis is train.alpha: paper Fig. 5 / 10). ``rows``: the
    sweep's summary (point, model, generator, *_mean, *_se, seeds). The x axis is the grid's one
    numeric key when there is one, else the points in order."""
    _check_rows(rows, ("point", "model", "robust_accuracy_mean", "clean_accuracy_mean"), "sweep")
    keys = sorted({k for p in points.values() for k in p})
    varying = [k for k in keys if len({str(p.get(k)) for p in points.values()}) > 1]
    numeric = [k for k in varying if all(_as_number(p.get(k)) is not None for p in points.values())]
    x_key = numeric[0] if len(varying) == 1 and numeric else None
    order = list(points)
    x_of = (lambda point: _as_number(points[point][x_key])) if x_key else order.index
    series_of = (lambda r: r["generator"]) if x_key == "train.alpha" else (lambda r: r["model"])
    fig = _figure(11, 4.2)
    for k, (key, label) in enumerate((("robust_accuracy", "robust accuracy (%)"), ("clean_accuracy", "clean accuracy (%)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        series: dict[str, list] = defaultdict(list)
        for r in rows:
            series[series_of(r)].append((x_of(r["point"]), r[f"{key}_mean"], r[f"{key}_se"], r["seeds"]))
        for j, (name, values) in enumerate(sorted(series.items())):
            values.sort()
            x = np.asarray([v[0] for v in values], dtype=float) + (0 if x_key else 0.06 * (j - len(series) / 2))
            se = np.nan_to_num(np.asarray([v[2] for v in values], dtype=float))
            ax.errorbar(x, [100 * v[1] for v in values], yerr=100 * se, marker="o", capsize=3, label=name,
                        linestyle="-" if x_key else "none")
        if x_key:
            ax.set_xlabel(x_key)
            xs = [_as_number(p[x_key]) for p in points.values()]
            if min(xs) > 0 and max(xs) >= 10 * min(xs):  # e.g. generator.num_samples (paper Fig. 6)
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    seeds = max(r["seeds"] for r in rows)
    fig.suptitle((title + ": " if title else "") + f"mean ± standard error over up to {seeds} seed(s)")
    return save_figure(fig, path, dpi=100, bbox_inches="tight")


def plot_accuracy_vs_samples(records: list[dict], path, *, title: str | None = None) -> str:
    """Robust (solid) and clean (dashed) accuracy vs number of generated samples (log x), one
    colour per generator (paper Fig. 6). ``records``: {generator, generated_samples, clean_accuracy,
    robust_accuracy[, seed]}."""
    _check_rows(records, ("generator", "generated_samples", "clean_accuracy", "robust_accuracy"),
                "accuracy vs samples")
    if any(int(r["generated_samples"]) <= 0 for r in records):
        raise RobustgenError("accuracy vs samples: generated_samples must be > 0 (log axis)")
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    robust = _mean_std(records, "generated_samples", "robust_accuracy", "generator")
    clean = _mean_std(records, "generated_samples", "clean_accuracy", "generator")
    for i, g in enumerate(sorted(robust)):
        color = f"C{i}"
        x, m, s, _ = robust[g]
        ax.errorbar(x, 100 * m, yerr=100 * s, marker="o", capsize=4, color=color, label=f"{g} robust")
        x, m, s, _ = clean[g]
        ax.errorbar(x, 100 * m, yerr=100 * s, marker="s", capsize=4, color=color, linestyle="--",
                    label=f"{g} clean")
    ax.set_xscale("log")
    ax.set_xlabel("generated samples")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path, dpi=100, bbox_inches="tight")


def read_history(path) -> list[dict]:
    """A training stage's history.json (a list of {step, samples, loss, lr} and {step, samples,
    model, score, val_*} entries)."""
    from robustgen.runtime.io import read_json

    path = Path(path)
    if path.is_dir():
        path = path / "history.json"
    if not path.is_file():
        raise RobustgenError(f"{path}: training history not found")
    try:
        history = read_json(path)
    except ValueError as e:
        raise RobustgenError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(history, list) or not all(isinstance(h, dict) and "step" in h for h in history):
        raise RobustgenError(f"{path}: not a training history (a list of entries with 'step')")
    return history


def plot_training_curves(history: list[dict], path, *, title: str | None = None) -> str:
    """Left: training loss and learning rate vs step. Right: validation accuracies (clean, robust)
    at each model-selection point, per weights (raw / EMA)."""
    losses = [h for h in history if "loss" in h]
    evals = [h for h in history if "model" in h]
    if not losses and not evals:
        raise RobustgenError("training curves: the history has neither loss nor evaluation entries")
    fig = _figure(11, 4)
    fig.subplots_adjust(wspace=0.45)  # room for the left panel's second (learning-rate) axis
    ax = fig.add_subplot(1, 2, 1)
    if losses:
        steps = [h["step"] for h in losses]
        ax.plot(steps, [h["loss"] for h in losses], color="C0", label="training loss")
        ax.set_ylabel("loss", color="C0")
        if any("lr" in h for h in losses):
            ax2 = ax.twinx()
            ax2.plot(steps, [h.get("lr", np.nan) for h in losses], color="C1", alpha=0.6, label="lr")
            ax2.set_ylabel("learning rate", color="C1")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    for name in sorted({h["model"] for h in evals}):
        pts = [h for h in evals if h["model"] == name]
        steps = [h["step"] for h in pts]
        for key, style in (("val_clean_accuracy", "--"), ("val_robust_accuracy", "-")):
            if any(key in h for h in pts):
                ax.plot(steps, [100 * h.get(key, np.nan) for h in pts], style, marker="o",
                        label=f"{name} {key[4:].replace('_accuracy', '')}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    if evals:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100, bbox_inches="tight")


def plot_loss_landscapes(landscape: dict, path, *, max_points: int = 4, title: str | None = None) -> str:
    """Surface plots of ``loss_landscape``'s margin z_y - max_{i != y} z_i over (u, v) for the first
    ``max_points`` points; the zero level (where the prediction flips) is drawn as a contour."""
    u, v, loss = np.asarray(landscape["u"]), np.asarray(landscape["v"]), np.asarray(landscape["loss"])
    if loss.ndim != 3 or loss.shape[1:] != (u.size, v.size):
        raise RobustgenError(f"loss landscape: expected loss [B, {u.size}, {v.size}], got {loss.shape}")
    k = min(max_points, loss.shape[0])
    fig = _figure(4.5 * k, 4)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    for i in range(k):
        ax = fig.add_subplot(1, k, i + 1, projection="3d")
        ax.plot_surface(uu, vv, loss[i], cmap="viridis", linewidth=0, antialiased=True)
        if loss[i].min() < 0 < loss[i].max():
            ax.contour(uu, vv, loss[i], levels=[0.0], colors="red", offset=float(loss[i].min()))
        ax.set_xlabel("u (PGD direction)")
        ax.set_ylabel("v (Rademacher)")
        ax.set_zlabel("margin z_y - max z_i")
        ax.set_title(f"point {landscape.get('indices', list(range(k)))[i]}", fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100, bbox_inches="tight")
