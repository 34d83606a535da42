"""Clean and worst-case robust accuracy of a model on a labelled image set."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from robustgen.attacks.pgd import perturbation_norm
from robustgen.errors import RobustgenError
from robustgen.evaluate.attacks import get_attack


def evaluate_robustness(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, attack: str,
                        norm: str, eps: float, batch_size: int = 500, device: str | torch.device = "cpu",
                        seed: int = 0, progress: bool = False, desc: str = "eval") -> dict:
    """Robust accuracy = clean-correct and never misclassified along the attack, per point.

    Runs in float32 in eval mode. Checks that every adversarial example stays in the eps-ball and
    in [0, 1] and that its logits are finite; a violation is an error, never a number.
    """
    attack_fn = get_attack(attack)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    n = len(labels)
    clean_correct = torch.zeros(n, dtype=torch.bool)
    robust = torch.zeros(n, dtype=torch.bool)
    max_pert = torch.zeros((), dtype=torch.float64)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for b, lo in enumerate(range(0, n, batch_size)):
            hi = min(lo + batch_size, n)
            x = torch.from_numpy(images[lo:hi]).to(device).permute(0, 3, 1, 2).float().div_(255)
            y = torch.from_numpy(np.asarray(labels[lo:hi], dtype=np.int64)).to(device)
            generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + b)
            with torch.no_grad():
                clean_logits = model(x)
            ok = clean_logits.argmax(1) == y
            x_adv, success = attack_fn(model, x, y, norm=norm, eps=eps, generator=generator)
            dist = perturbation_norm(x_adv, x, norm=norm)
            if bool((dist > eps * (1 + 1e-5) + 1e-6).any()) or bool((x_adv < 0).any() | (x_adv > 1).any()):
                raise RobustgenError(f"attack {attack} left the {norm} eps-ball or [0,1]: max distance {dist.max():.6g} > eps {eps:.6g}")
            if not bool(torch.isfinite(clean_logits).all()):
                raise RobustgenError("the model produced NaN/inf logits on clean inputs")
            clean_correct[lo:hi] = ok.cpu()
            robust[lo:hi] = (ok & ~success).cpu()
            max_pert = torch.maximum(max_pert, dist.max().double().cpu())
            bar.update(hi - lo)
    finally:
        bar.close()
        model.train(was_training)
    return {
        "attack": attack, "norm": norm, "eps": eps, "n": n,
        "clean_accuracy": float(clean_correct.float().mean()) if n else float("nan"),
        "robust_accuracy": float(robust.float().mean()) if n else float("nan"),
        "max_perturbation": float(max_pert), "seed": seed,
        "time_s": round(time.perf_counter() - start, 3),
    }
