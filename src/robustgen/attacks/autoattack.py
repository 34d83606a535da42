"""Stages backed by the official AutoAttack code (PyPI ``pyautoattack`` 0.2.0, paper App. A, Evaluation).

Each function attacks one batch and returns candidate adversarial examples; the cascade in
``attacks.cascade`` decides success, so these wrappers only deal with pyautoattack's sharp
edges: the device is always passed explicitly, every call re-seeds the global torch RNG (we
save and restore it around the call), and its messages go to the 'auto-attack' logger (we
collect warnings and surface them in the evaluation report).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
import torch.nn as nn

from robustgen.runtime.errors import RobustgenError

_NORMS = {"linf": "Linf", "l2": "L2"}
LOGGER_NAME = "auto-attack"


class _WarningCollector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


_collector = _WarningCollector()
logging.getLogger(LOGGER_NAME).addHandler(_collector)


def collected_warnings(reset: bool = False) -> list[str]:
    messages = list(_collector.messages)
    if reset:
        _collector.messages.clear()
    return messages


def _package():
    try:
        import pyautoattack  # noqa: F401
    except ImportError:  # pragma: no cover - declared dependency
        raise RobustgenError("AutoAttack stages need the 'pyautoattack' package (pip install pyautoattack)") from None
    return pyautoattack


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """pyautoattack calls torch.random.manual_seed inside every attack: keep the caller's RNG."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _warn(message: str) -> None:
    logging.getLogger(LOGGER_NAME).warning(message)  # surfaces in the evaluation's warnings


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, seed: int,
         loss: str, restarts: int, steps: int = 100) -> torch.Tensor:
    """APGD on the cross-entropy ('ce') or DLR ('dlr') loss (Croce & Hein 2020). The DLR loss
    needs the third largest logit: with 2 classes the cross-entropy is used instead (a warning)."""
    _package()
    from pyautoattack.autopgd_base import APGDAttack

    if loss == "dlr" and (classes := _classes(model, x)) < 3:
        _warn(f"apgd-dlr: the DLR loss needs at least 3 classes, the model has {classes}: "
              f"APGD on the cross-entropy instead")
        loss = "ce"

    attack = APGDAttack(model, n_iter=steps, norm=_NORMS[norm], n_restarts=restarts, eps=eps, seed=seed, loss=loss,
                        eot_iter=1, rho=0.75, verbose=False, device=x.device, logger=logging.getLogger(LOGGER_NAME))
    with preserved_rng(x.device):
        return attack.perturb(x.contiguous(), y)  # its L2 code calls .view on the input


def apgd_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, seed: int,
                  target_classes: int = 9, restarts: int = 1, steps: int = 100) -> torch.Tensor:
    """APGD-T on the targeted DLR loss, one run per target class (AutoAttack standard: 9)."""
    _package()
    from pyautoattack.autopgd_base import APGDAttack_targeted

    classes = _classes(model, x)
    attack = APGDAttack_targeted(model, n_iter=steps, norm=_NORMS[norm], n_restarts=restarts, eps=eps, seed=seed,
                                 eot_iter=1, rho=0.75, n_target_classes=min(target_classes, classes - 1),
                                 verbose=False, device=x.device, logger=logging.getLogger(LOGGER_NAME))
    if classes < 4:
        # the targeted DLR loss divides by the largest minus the 3rd and 4th largest logits, which 2 or 3
        # classes do not have (pyautoattack fails with an IndexError); its targeted cross-entropy, defined
        # but not enabled there, attacks each target class instead
        _warn(f"apgd-t: the targeted DLR loss needs at least 4 classes, the model has {classes}: "
              f"each target class is attacked with the targeted cross-entropy instead")
        attack.dlr_loss_targeted = attack.ce_loss_targeted
    with preserved_rng(x.device):
        return attack.perturb(x.contiguous(), y)  # its L2 code calls .view on the input


def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, seed: int,
                 target_classes: int = 9, steps: int = 100) -> torch.Tensor:
    """FAB-T (Croce & Hein 2020), AutoAttack standard settings."""
    _package()
    from pyautoattack.fab_pt import FABAttack_PT

    attack = FABAttack_PT(model, norm=_NORMS[norm], n_restarts=1, n_iter=steps, eps=eps, seed=seed, verbose=False,
                          device=x.device, targeted=True, n_target_classes=min(target_classes, _classes(model, x) - 1))
    with preserved_rng(x.device):
        return attack.perturb(x.contiguous(), y)  # its L2 code calls .view on the input


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, seed: int,
           queries: int = 5000) -> torch.Tensor:
    """Square Attack (Andriushchenko et al. 2020): score-based, black-box."""
    _package()
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, p_init=0.8, n_queries=queries, eps=eps, norm=_NORMS[norm], n_restarts=1, seed=seed,
                          verbose=False, device=x.device, resc_schedule=False)
    with preserved_rng(x.device):
        return attack.perturb(x.contiguous(), y)  # its L2 code calls .view on the input


def run_reference_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                             seed: int, attacks: list[str], batch_size: int, version: str = "custom",
                             restarts: int | None = None) -> float:
    """Robust accuracy from pyautoattack's own runner (used to cross-check our cascade)."""
    _package()
    from pyautoattack import AutoAttack

    runner = AutoAttack(model, attacks=attacks if version == "custom" else None, device=x.device, eps=eps,
                        norm=_NORMS[norm], seed=seed, version=version)
    if restarts is not None:
        runner.apgd.n_restarts = restarts
    with preserved_rng(x.device):
        x_adv, _ = runner.run_standard_evaluation(x.contiguous(), y, batch_size=batch_size)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])
