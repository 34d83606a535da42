"""Registry of evaluation attacks: each name builds a cascade of ``AttackStage``s.

    pgd40       the authors' model-selection attack (REFERENCE.md §2)
    apgd-ce     APGD on cross-entropy, 1 restart x 100 steps (AutoAttack's first stage)
    apgd-t      APGD-T, 9 target classes x 100 steps
    mt          MultiTargeted alone, 10 restarts x 200 steps
    autoattack  AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (paper Table 3)
    aa+mt       the paper's headline metric: APGD-CE (5 x 100), APGD-DLR (5 x 100), MultiTargeted (10 x 200)
    aa+mt-top10 aa+mt with MultiTargeted's targets limited to the 10 largest clean margins (App. B, ImageNet)

Stages run in float32 on the model in eval mode; ``evaluate.cascade`` takes the per-point worst case.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from robustgen.attacks.multitargeted import multitargeted_attack
from robustgen.attacks.pgd import margin, misclassified, pgd40_schedule, projected_gradient_attack
from robustgen.errors import RobustgenError
from robustgen.evaluate import autoattack as aa
from robustgen.evaluate.cascade import AttackStage
from robustgen.registry import Registry

CascadeBuilder = Callable[..., list[AttackStage]]  # (*, norm, eps) -> stages
_ATTACKS = Registry("attack")  # name -> CascadeBuilder
register_attack = _ATTACKS.register
list_attacks = _ATTACKS.names


def get_attack(name: str, *, norm: str, eps: float) -> list[AttackStage]:
    if name not in _ATTACKS:
        raise RobustgenError(f"unknown attack {name!r} (known: {', '.join(list_attacks())})")
    return _ATTACKS[name](norm=norm, eps=eps)


def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(seed)


def pgd40_stage(model, x, y, seed, *, norm: str, eps: float) -> torch.Tensor:
    """40 Adam steps on the margin loss, lr 0.1, x0.1 at step 20, x0.01 at step 30, uniform start;
    every iterate is checked and a point keeps its first misclassified iterate."""
    return projected_gradient_attack(model, x, lambda logits: margin(logits, y), norm=norm, eps=eps, steps=40,
                                     step_rule="adam", step_size=pgd40_schedule(0.1), init="uniform",
                                     success_fn=misclassified(y), generator=_generator(x, seed)).x_adv


def mt_stage(model, x, y, seed, *, norm: str, eps: float, restarts: int = 10, steps: int = 200,
             num_targets: int | None = None) -> torch.Tensor:
    return multitargeted_attack(model, x, y, norm=norm, eps=eps, restarts=restarts, steps=steps,
                                num_targets=num_targets, generator=_generator(x, seed))[0]


def _pyaa(fn, **kwargs):
    return lambda model, x, y, seed, *, norm, eps: fn(model, x, y, norm=norm, eps=eps, seed=seed, **kwargs)


def _stage(name: str, fn, norm: str, eps: float, white_box: bool = True) -> AttackStage:
    return AttackStage(name, partial(fn, norm=norm, eps=eps), white_box=white_box)


@register_attack("pgd40")
def _pgd40(*, norm, eps):
    return [_stage("pgd40", pgd40_stage, norm, eps)]


@register_attack("apgd-ce")
def _apgd_ce(*, norm, eps):
    return [_stage("apgd-ce", _pyaa(aa.apgd, loss="ce", restarts=1), norm, eps)]


@register_attack("apgd-t")
def _apgd_t(*, norm, eps):
    return [_stage("apgd-t", _pyaa(aa.apgd_targeted), norm, eps)]


@register_attack("mt")
def _mt(*, norm, eps):
    return [_stage("multitargeted", mt_stage, norm, eps)]


@register_attack("autoattack")
def _autoattack(*, norm, eps):
    return [_stage("apgd-ce", _pyaa(aa.apgd, loss="ce", restarts=1), norm, eps),
            _stage("apgd-t", _pyaa(aa.apgd_targeted), norm, eps),
            _stage("fab-t", _pyaa(aa.fab_targeted), norm, eps),
            _stage("square", _pyaa(aa.square), norm, eps, white_box=False)]


@register_attack("aa+mt")
def _aa_mt(*, norm, eps):
    return [_stage("apgd-ce", _pyaa(aa.apgd, loss="ce", restarts=5), norm, eps),
            _stage("apgd-dlr", _pyaa(aa.apgd, loss="dlr", restarts=5), norm, eps),
            _stage("multitargeted", mt_stage, norm, eps)]


@register_attack("aa+mt-top10")
def _aa_mt_top10(*, norm, eps):
    return [*_aa_mt(norm=norm, eps=eps)[:2],
            _stage("multitargeted-top10", partial(mt_stage, num_targets=10), norm, eps)]
