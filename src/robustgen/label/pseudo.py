"""Pseudo-labelling of generated images with the non-robust classifier f_NR (paper Sec. 4, App. D).

Score every generated image with f_NR, label it with the argmax class, and (for the filtered
BigGAN/VDVAE sets of App. D) keep the ``k`` most confident images of each class.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch import nn

from robustgen.data.npz import validate_images
from robustgen.models.inference import InferenceOptions, autocast, to_memory_format
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.progress import progress_bar

__all__ = ["assign_labels", "predict_probabilities", "pseudo_label", "top_k_per_class"]


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images_uint8_nhwc: np.ndarray,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    batches: Sequence[tuple[int, int]] | None = None,
    options: InferenceOptions = InferenceOptions(),
) -> np.ndarray:
    """Softmax of ``model`` on uint8 NHWC images -> float32 [N, K].

    The model (already on ``device``, prepared with ``models.inference.prepare_for_inference``
    when ``options`` ask for channels_last / compile) takes [0, 1] NCHW input and returns logits;
    it runs in eval mode and its previous train/eval mode is restored afterwards. Batches of rows
    (``batches``: (start, stop) ranges, default consecutive ``batch_size`` rows; the result has
    their rows in that order) are read from ``images`` by a background thread one batch ahead
    (into pinned memory on CUDA), moved to ``device`` and converted there, so a memory-mapped
    store shard is read while the model runs.
    """
    images = images_uint8_nhwc
    validate_images(images, source="images to label", allow_empty=True)
    if len(images) == 0:
        raise RobustgenError("no images to label")
    if batch_size < 1:
        raise RobustgenError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    if batches is None:
        batches = [(lo, min(lo + batch_size, len(images))) for lo in range(0, len(images), batch_size)]
    pin = device.type == "cuda"

    def read(rows: tuple[int, int]) -> torch.Tensor:
        x = torch.from_numpy(np.array(images[rows[0]:rows[1]]))  # a copy: store shards are read-only maps
        return x.pin_memory() if pin else x

    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with progress_bar(total=sum(hi - lo for lo, hi in batches), unit="img", desc="pseudo-label",
                  disable=not progress) as bar, ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(read, batches[0]) if batches else None
            for b in range(len(batches)):
                batch = ahead.result()
                ahead = reader.submit(read, batches[b + 1]) if b + 1 < len(batches) else None
                # [B, H, W, C] uint8 -> [B, C, H, W] float in [0, 1], on the device
                x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                with autocast(options, device):
                    logits = model(to_memory_format(x, options))
                out.append(logits.float().softmax(dim=-1).cpu().numpy())
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32, copy=False)


def pseudo_label(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax labels int64 [N], max probability float32 [N]) from probabilities [N, K]."""
    p = np.asarray(probabilities)
    if p.ndim != 2 or p.shape[1] == 0:
        raise RobustgenError(f"expected probabilities of shape [N, K], got {p.shape}")
    labels = p.argmax(axis=1).astype(np.int64)
    confidences = np.take_along_axis(p, labels[:, None], axis=1)[:, 0].astype(np.float32)
    return labels, confidences


def assign_labels(probabilities: np.ndarray, *, mode: str, conditions: np.ndarray | None = None,
                  source: str = "samples") -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], confidences float32 [N]) of generated samples from f_NR's probabilities.

    ``mode="argmax"``: f_NR's most likely class and its probability (paper Sec. 3.3);
    ``mode="condition"``: the conditioning class and f_NR's probability of it (Wang et al.).
    """
    if mode == "argmax":
        return pseudo_label(probabilities)
    if mode != "condition":
        raise RobustgenError(f"label mode must be argmax or condition, got {mode!r}")
    if conditions is None:
        raise RobustgenError(f"{source}: label mode 'condition' needs class-conditional samples "
                             "(there are no conditioning classes)")
    labels = np.asarray(conditions).astype(np.int64)
    confidences = np.asarray(probabilities)[np.arange(len(labels)), labels].astype(np.float32)
    return labels, confidences


def top_k_per_class(labels: np.ndarray, confidences: np.ndarray, *, k: int, num_classes: int) -> np.ndarray:
    """Sorted int64 indices of the ``k`` most confident samples of each labelled class.

    A class with fewer than ``k`` members keeps all of them; ties go to the lower index.
    """
    from robustgen.label.select import select_per_class

    if k < 0:
        raise RobustgenError(f"k must be >= 0, got {k}")
    return select_per_class(labels, confidences, np.full(int(num_classes), int(k), np.int64))
