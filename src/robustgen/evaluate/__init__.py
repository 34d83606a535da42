"""Robust evaluation: clean accuracy and per-point worst-case robust accuracy under a registered
attack cascade (PGD-40, AutoAttack, AA+MT, ...; new ones plug in through ``register_attack``).

The cascade, its registered suites and the AutoAttack adapters are attack compositions and live in
``robustgen.attacks`` (re-exported here); this package adds the evaluation's bookkeeping
(``robust``) and the Python API's ``evaluate`` on tensors (``tensors``). The package is also that
function: ``robustgen.evaluate(model, x, y, attack=..., norm=..., eps=...)`` (a subpackage and a
function cannot share the name ``robustgen.evaluate`` otherwise: importing the package would
replace the function).
"""

import sys
import types

from robustgen.attacks.suites import get_attack, list_attacks, register_attack
from robustgen.attacks.cascade import AttackStage, run_cascade
from robustgen.evaluate.robust import evaluate_robustness

__all__ = ["AttackStage", "evaluate_robustness", "get_attack", "list_attacks", "register_attack", "run_cascade"]


class _CallableModule(types.ModuleType):
    def __call__(self, model, x, y=None, **kwargs):
        from robustgen.evaluate.tensors import evaluate

        return evaluate(model, x, y, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
