"""Registry of evaluation attacks.

An evaluation attack is ``attack(model, x, y, *, norm, eps, generator) -> (x_adv, success)``:
``model`` is in eval mode, ``x`` float [B, C, H, W] in [0, 1], ``success`` bool [B] marks points
for which some iterate was misclassified, and ``x_adv`` holds that iterate.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from robustgen.attacks.pgd import (frozen_parameters, margin, misclassified, pgd40_schedule,
                                   projected_gradient_attack)
from robustgen.errors import RobustgenError

EvalAttack = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_ATTACKS: dict[str, EvalAttack] = {}


def register_attack(name: str):
    def decorator(fn: EvalAttack) -> EvalAttack:
        _ATTACKS[name] = fn
        return fn

    return decorator


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str) -> EvalAttack:
    if name not in _ATTACKS:
        raise RobustgenError(f"unknown attack {name!r} (known: {', '.join(list_attacks())})")
    return _ATTACKS[name]


@register_attack("pgd40")
def pgd40(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' model-selection attack (REFERENCE.md §2): 40 Adam steps on the margin loss,
    lr 0.1, x0.1 at step 20, x0.01 at step 30, uniform start; every iterate is checked."""
    with frozen_parameters(model):
        result = projected_gradient_attack(
            model, x, lambda logits: margin(logits, y), norm=norm, eps=eps, steps=40,
            step_rule="adam", step_size=pgd40_schedule(0.1), init="uniform",
            success_fn=misclassified(y), generator=generator)
    return result.x_adv, result.success
