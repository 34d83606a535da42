"""Robust evaluation: clean accuracy and per-point worst-case robust accuracy under a registered
attack (PGD-40 now; AutoAttack and AA+MT plug in through ``register_attack``)."""

from robustgen.evaluate.attacks import get_attack, list_attacks, register_attack
from robustgen.evaluate.cascade import AttackStage, run_cascade
from robustgen.evaluate.robust import evaluate_robustness

__all__ = ["AttackStage", "evaluate_robustness", "get_attack", "list_attacks", "register_attack", "run_cascade"]
