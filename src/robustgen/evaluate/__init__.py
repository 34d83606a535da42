"""Robust evaluation: clean accuracy and per-point worst-case robust accuracy under a registered
attack cascade (PGD-40, AutoAttack, AA+MT, ...; new ones plug in through ``register_attack``).

The package is also the API function: ``robustgen.evaluate(model, x, y, attack=..., norm=...,
eps=...)`` calls ``robustgen.api.evaluate`` (a subpackage and a function cannot share the name
``robustgen.evaluate`` otherwise: importing the package would replace the function).
"""

import sys
import types

from robustgen.evaluate.attacks import get_attack, list_attacks, register_attack
from robustgen.evaluate.cascade import AttackStage, run_cascade
from robustgen.evaluate.robust import evaluate_robustness

__all__ = ["AttackStage", "evaluate_robustness", "get_attack", "list_attacks", "register_attack", "run_cascade"]


class _CallableModule(types.ModuleType):
    def __call__(self, model, x, y=None, **kwargs):
        from robustgen.api import evaluate

        return evaluate(model, x, y, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
