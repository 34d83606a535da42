"""Per-model figures of a run's report: training curves and loss landscapes (paper Fig. 11).

Thin glue over ``report.plots`` (drawing) and ``metrics.landscape`` (the numbers); the pipeline
calls ``model_figures`` for every trained model and lists the PNGs in report.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["existing_figures", "figure_caption", "model_figures"]


def figure_caption(name: str, kind: str, points: int = 4) -> str:
    """The report's caption of ``figures/<name>-<kind>.png``."""
    if kind == "curves":
        return f"`{name}`: training loss, learning rate and validation accuracy"
    return f"`{name}`: loss landscape around the first {points} test images (paper Fig. 11)"


def existing_figures(out: Path, names) -> list[tuple[str, str]]:
    """(caption, path relative to ``out``) of the figures a run already wrote for models ``names``."""
    return [(figure_caption(name, kind), f"figures/{name}-{kind}.png") for name in names
            for kind in ("curves", "landscape") if (out / "figures" / f"{name}-{kind}.png").exists()]


def model_figures(out: Path, name: str, checkpoint: Path, test, *, norm: str, eps: float,
                  device: torch.device, points: int = 4, seed: int = 0) -> list[tuple[str, str]]:
    """Write ``figures/<name>-curves.png`` (loss, lr, validation accuracy from the history.json
    next to ``checkpoint``, in its training stage's folder) and ``figures/<name>-landscape.png`` (margin over the worst PGD direction and a
    Rademacher direction around the first ``points`` test images). Returns (caption, path relative
    to ``out``) pairs."""
    from robustgen.checkpoint import load_model
    from robustgen.data import to_float_nchw
    from robustgen.metrics.landscape import loss_landscape
    from robustgen.report.plots import plot_loss_landscapes, plot_training_curves, read_history

    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    history = Path(checkpoint).parent / "history.json"
    if history.exists():
        path = folder / f"{name}-curves.png"
        plot_training_curves(read_history(history), path, title=f"{name}: training")
        made.append((figure_caption(name, "curves"), str(path.relative_to(out))))
    count = min(points, len(test))
    if count:
        model = load_model(checkpoint, device=device)
        x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(test.images[:count])).to(device))
        y = torch.from_numpy(test.labels[:count]).to(device)
        landscape = loss_landscape(model, x, y, norm=norm, eps=eps, seed=seed)
        landscape["indices"] = list(range(count))
        path = folder / f"{name}-landscape.png"
        plot_loss_landscapes(landscape, path, max_points=count,
                             title=f"{name}: margin around test points (u: PGD-40 direction, v: Rademacher; "
                                   f"{norm} eps={eps:.4g})")
        made.append((figure_caption(name, "landscape", count), str(path.relative_to(out))))
    return made
