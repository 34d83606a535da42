"""Sample grids: one row per class, a few random images each (paper Fig. 12).

``save_sample_grid`` takes images in memory; ``save_store_grid`` draws from a store (or an .npz
in the released layout) reading only the rows it shows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from robustgen.data.npz import validate_images
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import save_figure

__all__ = ["save_sample_grid", "save_store_grid"]

# Pixels of white space between cells.
_PAD = 2


def save_sample_grid(
    path,
    images_uint8_nhwc: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    per_class: int = 10,
    seed: int = 0,
    title: str | None = None,
) -> None:
    """Write a PNG with row ``c`` = ``per_class`` random images labelled ``c`` (seeded).

    Rows are ``class_names`` in order, the name at the start of the row; a class with fewer
    images leaves blank cells. Grayscale (C = 1) images use the gray colormap. Rendered with
    matplotlib's Agg canvas (no pyplot, no display, no global backend switch) and written
    atomically (temp file in the same folder, then rename).
    """
    # Agg canvas on a bare Figure: headless, and leaves the user's pyplot backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = images_uint8_nhwc
    validate_images(images, source="images of the grid", allow_empty=True)
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise RobustgenError(f"labels shape {labels.shape} does not match {len(images)} images")
    num_classes = len(class_names)
    if num_classes == 0 or per_class < 1:
        raise RobustgenError("the grid needs at least one class name and per_class >= 1")
    _, h, w, ch = images.shape
    if ch not in (1, 3):
        raise RobustgenError(f"grid images need 1 or 3 channels, got {ch}")

    # [rows * (h + pad), cols * (w + pad), ch], white background = blank cells
    cell_h, cell_w = h + _PAD, w + _PAD
    mosaic = np.full((num_classes * cell_h + _PAD, per_class * cell_w + _PAD, ch), 255, np.uint8)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, c])
        pick = rng.choice(idx, size=min(per_class, idx.size), replace=False) if idx.size else idx
        for j, i in enumerate(pick):
            y0, x0 = _PAD + c * cell_h, _PAD + j * cell_w
            mosaic[y0 : y0 + h, x0 : x0 + w] = images[i]

    # about 0.5 inch per cell, at least the native resolution
    inch = 0.5
    dpi = max(100, int(np.ceil(max(cell_h, cell_w) / inch)))
    label_width = 0.12 * max(len(str(n)) for n in class_names) + 0.3
    title_height = 0.5 if title else 0.1
    fig_w = per_class * inch + label_width
    fig_h = num_classes * inch + title_height + 0.1
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((label_width / fig_w, 0.1 / fig_h, per_class * inch / fig_w, num_classes * inch / fig_h))
    if ch == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    else:
        ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks(_PAD + np.arange(num_classes) * cell_h + h / 2 - 0.5)
    ax.set_yticklabels([str(n) for n in class_names])
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, y=1 - 0.1 / fig_h, va="top")

    save_figure(fig, path, dpi=dpi)


def save_store_grid(path, source, *, per_class: int = 10, seed: int = 0, title: str | None = None) -> dict:
    """Grid of a store folder or released-layout .npz ``source`` (its labels; a store's selection).

    Picks ``per_class`` random rows of each class (seeded), gathers only those, and writes the
    PNG with ``save_sample_grid``. Returns what it drew: rows per class.
    """
    from pathlib import Path

    from robustgen.data.npz import read_npz
    from robustgen.data.store import Store, is_store

    if per_class < 1:
        raise RobustgenError(f"per_class must be >= 1, got {per_class}")
    source = Path(source)
    if is_store(source):
        store = Store(source)
        labels, class_names, gather = store.labels, store.class_names, store.gather
    else:
        arrays = read_npz(source)
        labels = arrays["label"]
        names = arrays.get("class_names")
        class_names = (tuple(names.tolist()) if names is not None
                       else tuple(str(c) for c in range(int(labels.max()) + 1)))
        gather = lambda idx: arrays["image"][idx]  # noqa: E731
    picks = []
    for c in range(len(class_names)):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, c])
        picks.append(np.sort(rng.choice(idx, size=min(per_class, idx.size), replace=False)) if idx.size else idx)
    rows = np.concatenate(picks).astype(np.int64)
    save_sample_grid(path, gather(rows), labels[rows], class_names=class_names, per_class=per_class,
                     seed=seed, title=title)
    return {"path": str(path), "rows_per_class": [int(len(p)) for p in picks]}
