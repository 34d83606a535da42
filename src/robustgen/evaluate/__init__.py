"""Robust evaluation: clean accuracy and per-point worst-case robust accuracy under a registered
attack cascade (PGD-40, AutoAttack, AA+MT, ...; new ones plug in through ``register_attack``)."""

from robustgen.evaluate.attacks import get_attack, list_attacks, register_attack
from robustgen.evaluate.cascade import AttackStage, run_cascade
from robustgen.evaluate.robust import evaluate_robustness

__all__ = ["AttackStage", "evaluate_robustness", "get_attack", "list_attacks", "register_attack", "run_cascade"]
