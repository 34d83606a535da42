"""The Python API's evaluation, on float NCHW tensors in [0, 1]: ``evaluate(model, x, y, attack=...,
norm=..., eps=...)`` (also ``robustgen.evaluate(...)``) returns an ``Evaluation``; the numbers equal
``robustgen eval`` on the same points with the same seed and batch size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from robustgen.attacks.objects import check_images_labels
from robustgen.data.augment import to_float_nchw
from robustgen.evaluate.robust import evaluate_robustness
from robustgen.runtime.errors import RobustgenError

__all__ = ["Evaluation", "as_tensors", "evaluate", "uint8_to_float"]


@dataclass(frozen=True)
class Evaluation:
    """Clean and robust accuracy of one model under one attack cascade.

    ``stages``: per stage, the points attacked and broken and the robust accuracy after it (paper
    Table 3 layout); ``robust_accuracy_after``: e.g. AutoAttack's own number inside
    worst-of-aa-and-aa+mt; ``robust``: bool [N], per point; ``adversarial``: float [N, C, H, W]
    (CPU) when asked for, the candidate that fooled the model, else the input itself."""

    attack: str
    norm: str
    eps: float
    n: int
    clean_accuracy: float
    robust_accuracy: float
    stages: list
    robust_accuracy_after: dict
    robust: torch.Tensor
    warnings: list
    time_s: float
    adversarial: torch.Tensor | None = field(default=None, repr=False)


def as_tensors(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """(float NCHW in [0, 1], int64 labels) from tensors, or from a DataLoader / iterable of
    (x, y) batches; uint8 NHWC numpy arrays (robustgen's own datasets) are converted."""
    if y is None:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            raise RobustgenError("evaluate needs labels: evaluate(model, x, y, ...) or a DataLoader of (x, y)")
        batches = list(x)
        if not batches:
            raise RobustgenError("evaluate: the DataLoader yielded no batches")
        x = torch.cat([torch.as_tensor(b[0]) for b in batches])
        y = torch.cat([torch.as_tensor(b[1]) for b in batches])
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 4:
            raise RobustgenError(f"numpy images must be uint8 [N, H, W, C], got {x.dtype} {x.shape}; "
                                 f"pass float tensors [N, C, H, W] in [0, 1] otherwise")
        x = uint8_to_float(x)
    return check_images_labels(x, y)


def uint8_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] numpy -> float32 [N, C, H, W] in [0, 1] (CPU)."""
    return to_float_nchw(torch.from_numpy(np.ascontiguousarray(images)))


def evaluate(model: nn.Module, x, y=None, *, attack: str = "autoattack", norm: str = "linf", eps: float = 8 / 255,
             batch_size: int = 500, seed: int = 0, device: str | torch.device | None = None,
             return_adversarial: bool = False, progress: bool = False) -> Evaluation:
    """Clean and per-point worst-case robust accuracy of ``model`` (float NCHW in [0, 1] -> logits)
    on ``x`` (float tensor [N, C, H, W] in [0, 1], with labels ``y``; or a DataLoader of (x, y)
    batches) under the registered cascade ``attack`` ("pgd40", "autoattack", "aa+mt",
    "worst-of-aa-and-aa+mt", ...; ``robustgen.evaluate.list_attacks()``). ``device``: default the
    model's. The numbers equal ``robustgen eval`` on the same points with the same seed and batch size."""
    x, y = as_tensors(x, y)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.enable_grad():  # the attacks take input gradients, also when called under torch.no_grad()
        r = evaluate_robustness(model, x, y, attack=attack, norm=norm, eps=float(eps), batch_size=batch_size,
                                device=device, seed=seed, progress=progress, keep_adversarial=return_adversarial)
    robust = torch.tensor([c == "1" for c in r["robust_points"]], dtype=torch.bool)
    return Evaluation(attack=attack, norm=norm, eps=float(eps), n=r["n"], clean_accuracy=r["clean_accuracy"],
                      robust_accuracy=r["robust_accuracy"], stages=r["stages"],
                      robust_accuracy_after=r["robust_accuracy_after"], robust=robust, warnings=r["warnings"],
                      time_s=r["time_s"], adversarial=r.get("adversarial"))
