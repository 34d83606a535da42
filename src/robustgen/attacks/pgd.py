"""One projected-gradient core for every attack in robustgen.

The training attack (TRADES inner maximisation, paper Sec. 3.3 and App. A), PGD-40 for
model selection and evaluation, and later MultiTargeted are all this loop with different
objectives, step rules and step-size schedules:

    x_0     = start in the eps-ball around x (uniform, small normal or x itself), clipped to [0, 1]
    x_{k+1} = Proj_{B(x, eps) ∩ [0,1]}( x_k + step(grad_x objective(f(x_k))) )

Step rules: ``adam`` (the authors' choice: Adam on the raw gradient, b1 0.9, b2 0.999, eps 1e-9)
and ``sign`` (steepest ascent for the norm: sign(g) for Linf, g / ||g||_2 for L2, as in the
PyTorch ports). Gradients are taken with respect to the input only; callers freeze parameters
(see ``frozen_parameters``) so no weight gradient is ever computed during an attack.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("linf", "l2")
STEP_RULES = ("adam", "sign")
INITS = ("uniform", "normal", "zero")

Objective = Callable[[torch.Tensor], torch.Tensor]  # logits [B, K] -> per-example value to maximise [B]
SuccessFn = Callable[[torch.Tensor], torch.Tensor]  # logits [B, K] -> bool [B], True = adversarial


# --------------------------------------------------------------------------- objectives
def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{i != y} z_i - z_y per example: positive iff the point is misclassified."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true


def targeted_margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """z_t - z_y per example (MultiTargeted's objective)."""
    return logits.gather(1, targets[:, None])[:, 0] - logits.gather(1, labels[:, None])[:, 0]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum_k p_k log q_k: the TRADES attack objective; equals KL(p || q) up to a constant in q."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1)


def misclassified(labels: torch.Tensor) -> SuccessFn:
    return lambda logits: logits.argmax(dim=1) != labels


# --------------------------------------------------------------------------- geometry
def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, *, norm: str, eps: float) -> torch.Tensor:
    """Project onto the eps-ball around x, then onto [0, 1] (clipping never leaves the ball)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return (x + delta).clamp(0.0, 1.0)


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, *, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)


def random_start(x: torch.Tensor, *, norm: str, eps: float, init: str,
                 generator: torch.Generator | None) -> torch.Tensor:
    """x plus a random start; ``uniform`` is uniform in the ball (Linf: per coordinate)."""
    if init == "zero" or eps == 0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if init == "normal":  # reference TRADES: x + 0.001 * N(0, I)
        return project(x + 0.001 * noise, x, norm=norm, eps=eps)
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return project(x + eps * (2 * u - 1), x, norm=norm, eps=eps)
    # L2: uniform direction, radius eps * U^(1/d)
    d = x[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    direction = noise / _flat_norm(noise).clamp_min(1e-12)
    return project(x + eps * r.view(-1, *([1] * (x.dim() - 1))) * direction, x, norm=norm, eps=eps)


def steepest_ascent_direction(grad: torch.Tensor, *, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _flat_norm(grad).clamp_min(1e-12)


# --------------------------------------------------------------------------- step sizes
def piecewise_constant(values: Sequence[float], boundaries: Sequence[int]) -> Callable[[int], float]:
    """values[i] for boundaries[i-1] <= step < boundaries[i]; e.g. Adam lr 0.1 then 0.01 at step 5."""
    if len(values) != len(boundaries) + 1:
        raise ValueError("piecewise_constant needs len(values) == len(boundaries) + 1")

    def schedule(step: int) -> float:
        i = sum(step >= b for b in boundaries)
        return float(values[i])

    return schedule


@dataclass(frozen=True)
class AttackResult:
    x_adv: torch.Tensor  # [B, C, H, W]: first successful iterate, else the best (or last) one
    success: torch.Tensor  # bool [B]: adversarial at some iterate (all False without success_fn)
    best_objective: torch.Tensor | None  # [B] objective at the returned x_adv (with success_fn)


def projected_gradient_attack(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    objective: Objective,
    *,
    norm: str,
    eps: float,
    steps: int,
    step_rule: str,
    step_size: Callable[[int], float],
    init: str = "uniform",
    success_fn: SuccessFn | None = None,
    generator: torch.Generator | None = None,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-9,
) -> AttackResult:
    """Maximise ``objective(forward(x_adv))`` over the eps-ball around ``x`` intersected with [0, 1].

    ``forward`` maps inputs to logits (the caller fixes model mode and BN behaviour). With
    ``success_fn`` every iterate is checked (from the logits the gradient step already computes,
    plus one forward for the final iterate) and each point keeps its first successful iterate;
    without it the last iterate is returned.
    """
    if norm not in NORMS or step_rule not in STEP_RULES or init not in INITS:
        raise ValueError(f"bad attack settings norm={norm} step_rule={step_rule} init={init}")
    x = x.detach()
    x_adv = random_start(x, norm=norm, eps=eps, init=init, generator=generator)
    batch = x.shape[0]
    success = torch.zeros(batch, dtype=torch.bool, device=x.device)
    best = x_adv.clone()
    best_obj = torch.full((batch,), float("-inf"), device=x.device)
    m = torch.zeros_like(x) if step_rule == "adam" else None
    v = torch.zeros_like(x) if step_rule == "adam" else None
    # Linf: the ball and [0, 1] intersect in per-pixel bounds, so projecting is one clamp.
    bounds = ((x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)) if norm == "linf" else None

    def record(logits: torch.Tensor, candidate: torch.Tensor, obj: torch.Tensor) -> None:
        nonlocal success
        obj = obj.detach().float()
        hit = success_fn(logits.detach()) & ~success
        # Broken points keep their first success; the others their highest-objective iterate.
        take = hit | (~success & (obj > best_obj))
        best.copy_(torch.where(take.view(-1, *([1] * (x.dim() - 1))), candidate, best))
        best_obj.copy_(torch.where(take, obj, best_obj))
        success = success | hit

    for k in range(steps):
        x_adv.requires_grad_(True)
        logits = forward(x_adv)
        obj = objective(logits)
        (grad,) = torch.autograd.grad(obj.sum(), x_adv)
        x_adv = x_adv.detach()
        if success_fn is not None:
            record(logits, x_adv, obj)
        lr = step_size(k)
        if step_rule == "adam":
            # x + lr * m_hat / (sqrt(v_hat) + eps) with the bias corrections folded into scalars
            # (as torch.optim.Adam), so a step is a handful of fused in-place ops.
            b1, b2 = adam_betas
            m.lerp_(grad, 1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = v.sqrt().div_((1 - b2 ** (k + 1)) ** 0.5).add_(adam_eps)
            x_adv = x_adv.addcdiv_(m, denom, value=lr / (1 - b1 ** (k + 1)))
        else:
            x_adv = x_adv.add_(steepest_ascent_direction(grad, norm=norm), alpha=lr)
        x_adv = torch.clamp(x_adv, *bounds) if bounds is not None else project(x_adv, x, norm=norm, eps=eps)

    if success_fn is None:
        return AttackResult(x_adv=x_adv.detach(), success=success, best_objective=None)
    with torch.no_grad():
        logits = forward(x_adv)
        record(logits, x_adv, objective(logits))
    return AttackResult(x_adv=best.detach(), success=success, best_objective=best_obj)


# --------------------------------------------------------------------------- model state helpers
@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad, so attack backward passes compute input gradients only."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def batch_stats_without_update(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with the current batch's statistics and leaves running averages alone.

    The authors' convention for the attack and the clean logits (their released code; paper App. A): train-mode BN,
    no running-stat update; this is not ``model.eval()``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.track_running_stats) for m in bns]
    for m in bns:
        m.train(True)
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.train(training)
            m.track_running_stats = track


def within_ball(distance, eps: float):
    """``distance <= eps`` up to float32 rounding (relative 1e-5, absolute 1e-6): the one check
    that an adversarial example lies in the eps-ball (tensors elementwise, or a float)."""
    return distance <= eps * (1 + 1e-5) + 1e-6


def scaled_piecewise_constant(init: float, boundaries_and_scales: dict[int, float]) -> Callable[[int], float]:
    """optax.piecewise_constant_schedule: from each boundary on, the value is multiplied by its
    scale, so the scales compound (init 0.1 with {20: 0.1, 30: 0.01} gives 0.1, 0.01, 1e-4)."""
    boundaries = sorted(boundaries_and_scales)
    values = [float(init)]
    for b in boundaries:
        values.append(values[-1] * float(boundaries_and_scales[b]))
    return piecewise_constant(values, boundaries)


def pgd40_schedule(lr: float = 0.1) -> Callable[[int], float]:
    """The authors' model-selection PGD-40 step sizes (google-deepmind/deepmind-research,
    adversarial_robustness/jax/experiment.py): Adam with optax.piecewise_constant_schedule(lr,
    {20: 0.1, 30: 0.01}), whose scales compound: lr 0.1 for steps 0-19, 0.01 for 20-29, 1e-4 for 30-39."""
    return scaled_piecewise_constant(lr, {20: 0.1, 30: 0.01})


__all__ = [
    "AttackResult", "NORMS", "STEP_RULES", "INITS", "margin", "targeted_margin", "cross_entropy",
    "soft_cross_entropy", "misclassified", "project", "perturbation_norm", "random_start",
    "projected_gradient_attack", "piecewise_constant", "frozen_parameters",
    "batch_stats_without_update", "within_ball", "pgd40_schedule", "scaled_piecewise_constant",
]
