"""Clean and worst-case robust accuracy of a model on a labelled image set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from robustgen.attacks.suites import get_attack
from robustgen.attacks.autoattack import collected_warnings
from robustgen.attacks.cascade import masking_warnings, run_cascade
from robustgen.runtime.distributed import DistContext


def evaluate_robustness(model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                        attack: str,
                        norm: str, eps: float, batch_size: int = 500, device: str | torch.device = "cpu",
                        seed: int = 0, progress: bool = False, desc: str = "eval",
                        state_path: Path | None = None, state_key: str = "", ctx: DistContext = DistContext(),
                        keep_adversarial: bool = False) -> dict:
    """Robust accuracy = clean-correct and not fooled by any stage of ``attack``, per point.

    Runs in float32 in eval mode; the result has per-stage accuracies (paper Table 3 layout),
    the largest perturbation seen, timings, a list of sanity warnings and ``robust_points`` (one
    character per point, '1' where it stays robust). ``ctx``: this rank under torchrun (each rank
    attacks its share of the batches; every rank returns the whole result)."""
    stages = get_attack(attack, norm=norm, eps=eps)
    collected_warnings(reset=True)
    result = run_cascade(model, images, labels, stages, norm=norm, eps=eps, batch_size=batch_size,
                         device=torch.device(device), seed=seed, state_path=state_path,
                         state_key=f"{state_key}|{attack}|{norm}|{eps!r}|{seed}|{batch_size}",
                         progress=progress, desc=desc, ctx=ctx, keep_adversarial=keep_adversarial)
    # per point, '1' = robust (clean-correct and never fooled): paired comparisons of two models
    result["robust_points"] = "".join("1" if r else "0" for r in result.pop("robust_mask"))
    warnings = masking_warnings(result["stages"]) + [f"autoattack: {m}" for m in collected_warnings(reset=True)]
    return {"attack": attack, "norm": norm, "eps": eps, "seed": seed, **result,
            "robust_accuracy_after": robust_accuracy_after(result["stages"]), "warnings": warnings}


def robust_accuracy_after(stages: list[dict]) -> dict[str, float]:
    """For cascades of cascades (stage names "autoattack/apgd-ce", ...): each inner cascade's own
    robust accuracy (after its last stage), e.g. {"autoattack": AutoAttack's number, "aa+mt":
    AA+MT's number}; the result's robust_accuracy is their per-point worst case. Empty for plain cascades."""
    return {s["stage"].split("/", 1)[0]: s["robust_accuracy"] for s in stages if "/" in s["stage"]}
