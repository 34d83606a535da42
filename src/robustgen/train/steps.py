"""One optimisation step's loss for standard and adversarial training.

These functions own the model's BatchNorm behaviour for the step (the authors' released code;
paper App. A): the attack and the clean logits use the batch's statistics without updating the running averages;
only the forward pass that the loss is trained on (adversarial for TRADES / PGD-AT, clean for
standard training) updates them. The math lives in ``losses`` and ``attacks.pgd``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgen.attacks.pgd import (batch_stats_without_update, frozen_parameters, piecewise_constant,
                                   projected_gradient_attack, soft_cross_entropy)
from robustgen.train.losses import pgd_at_loss, soft_cross_entropy_mean, trades_terms

# (attack_model, train_model, x, targets, generator) -> scalar loss. ``attack_model`` runs the
# attack (input gradients only); ``train_model`` (the same network, possibly wrapped in DDP)
# runs the forward passes whose loss is back-propagated.
# A step loss may leave its terms (detached device tensors) in ``last_terms``; the loop logs their means.
StepLoss = Callable[[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TrainingAttack:
    """The inner maximisation (paper App. A)."""

    norm: str
    eps: float
    steps: int = 10
    step_rule: str = "adam"
    adam_lr: tuple = (0.1, 0.01)
    adam_lr_boundaries: tuple = (5,)
    sign_step_size: float | None = None
    init: str = "uniform"

    def step_size(self) -> Callable[[int], float]:
        if self.step_rule == "adam":
            return piecewise_constant(self.adam_lr, self.adam_lr_boundaries)
        size = self.sign_step_size if self.sign_step_size is not None else self.eps / 4
        return piecewise_constant([size], [])

    def run(self, forward, x: torch.Tensor, objective, generator: torch.Generator) -> torch.Tensor:
        return projected_gradient_attack(
            forward, x, objective, norm=self.norm, eps=self.eps, steps=self.steps,
            step_rule=self.step_rule, step_size=self.step_size(), init=self.init,
            generator=generator).x_adv


def _autocast(x: torch.Tensor, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)


def standard_step_loss(*, bf16: bool = False) -> StepLoss:
    """Cross-entropy on clean inputs (the non-robust classifier f_NR)."""

    def loss(attack_model, model, x, targets, generator):
        with _autocast(x, bf16):
            logits = model(x)
        return soft_cross_entropy_mean(logits, targets)

    return loss


def trades_step_loss(attack: TrainingAttack, *, beta: float, bf16: bool = False,
                     share_clean_pass: bool = True) -> StepLoss:
    """TRADES: the attack maximises CE(f(x_adv), p_clean) with p_clean computed once; the loss is
    CE(f(x), targets) + beta KL(p_clean || p_adv).

    The attack's target p_clean and the loss's clean logits are the same function of x (same
    weights, batch statistics, no stat update), so by default one forward pass serves both: 26
    forward-equivalents per TRADES-10 step instead of 27. Its graph is kept through the attack,
    which freezes the parameters only for the attack's own passes. ``share_clean_pass=False``
    evaluates it twice as the authors' ``jax/experiment.py`` does (a no-grad pass for the target
    before the attack, a second one for the loss after it): the same numbers, for comparisons."""

    def loss(attack_model, model, x, targets, generator):
        with _autocast(x, bf16), batch_stats_without_update(model):
            if share_clean_pass:
                clean_logits = model(x)
                p_clean = F.softmax(clean_logits.detach().float(), dim=1)
            else:
                with torch.no_grad():
                    p_clean = F.softmax(attack_model(x).float(), dim=1)
            with frozen_parameters(model):
                x_adv = attack.run(attack_model, x, lambda z: soft_cross_entropy(z.float(), p_clean), generator)
            if not share_clean_pass:
                clean_logits = model(x)
        with _autocast(x, bf16):
            adv_logits = model(x_adv)  # the only pass that updates BN running statistics
        natural, robust = trades_terms(clean_logits, adv_logits, targets)
        loss.last_terms = {"natural_ce": natural.detach(), "robust_kl": robust.detach()}  # for metrics.jsonl
        return natural + beta * robust  # = trades_loss

    return loss


def pgd_at_step_loss(attack: TrainingAttack, *, bf16: bool = False) -> StepLoss:
    """Madry et al.: the attack maximises CE against the (soft) targets; train on x_adv only."""

    def loss(attack_model, model, x, targets, generator):
        with _autocast(x, bf16), batch_stats_without_update(model), frozen_parameters(model):
            x_adv = attack.run(attack_model, x, lambda z: soft_cross_entropy(z.float(), targets), generator)
        with _autocast(x, bf16):
            adv_logits = model(x_adv)
        return pgd_at_loss(adv_logits, targets)

    return loss
