"""Attacks as objects, in the torchattacks style: ``atk = PGD(model, norm="linf", eps=8/255)``, then
``x_adv = atk(x, y)`` on float NCHW tensors in [0, 1] (RobustBench's and AutoAttack's convention).

Each object runs the code robustgen's own evaluation runs (``robustgen.attacks.suites``): the
authors' PGD-40, MultiTargeted with AA+MT's settings (the one attack of the paper no library
ships), APGD-CE / APGD-T from ``pyautoattack``, and any registered cascade (``AutoAttack``, with
``attack="aa+mt"``, ``"worst-of-aa-and-aa+mt"``, ...) through the evaluation cascade (``attacks.cascade``). During a
call the model is in eval mode with frozen parameters (input gradients only) and is restored
after; the result is checked to lie in the eps-ball and [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgen.attacks.multitargeted import multitargeted_attack
from robustgen.attacks.pgd import (NORMS, frozen_parameters, margin, misclassified, perturbation_norm,
                                   projected_gradient_attack, scaled_piecewise_constant, within_ball)
from robustgen.runtime.errors import RobustgenError

__all__ = ["APGD", "APGDT", "Attack", "AutoAttack", "MultiTargeted", "PGD", "check_images_labels"]


class Attack:
    """Base class: ``atk(x, y) -> x_adv`` with x float [B, C, H, W] in [0, 1] and y int64 [B]."""

    def __init__(self, model: nn.Module, *, norm: str = "linf", eps: float = 8 / 255, seed: int = 0):
        if norm not in NORMS:
            raise RobustgenError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not eps > 0:
            raise RobustgenError(f"eps must be positive, got {eps}")
        self.model, self.norm, self.eps, self.seed = model, norm, float(eps), int(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = check_images_labels(x, y)
        was_training = self.model.training
        self.model.eval()
        try:  # input gradients even when called under torch.no_grad()
            with frozen_parameters(self.model), torch.enable_grad():
                x_adv = self.perturb(x, y).detach()
        finally:
            self.model.train(was_training)
        dist = perturbation_norm(x_adv, x, norm=self.norm)
        if not bool(within_ball(dist, self.eps).all()) or bool((x_adv < 0).any() | (x_adv > 1).any()):
            raise RobustgenError(f"{type(self).__name__} returned points outside the {self.norm} eps-ball or [0, 1]")
        return x_adv

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _generator(self, x: torch.Tensor) -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(self.seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:.6g}, seed={self.seed})"


def check_images_labels(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as float32, y as int64 on x's device) after checking x is float [N, C, H, W] in [0, 1]
    with one label per image (one-line errors)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise RobustgenError(f"x must be a float tensor [N, C, H, W] in [0, 1], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    y = torch.as_tensor(y, device=x.device).long()
    if y.shape != (x.shape[0],):
        raise RobustgenError(f"y must hold one label per image: {tuple(y.shape)} labels for {x.shape[0]} images")
    if bool((x < 0).any() | (x > 1).any()):
        raise RobustgenError("x must lie in [0, 1] (normalise inside the model, as RobustBench models do)")
    return x.detach().float(), y


class PGD(Attack):
    """The authors' PGD (paper App. A, model selection): Adam on the margin loss from a uniform
    start, lr ``step_size`` scaled by 0.1 at half and by a further 0.01 at three quarters of the
    steps (with 40 steps: 0.1, 0.01, 1e-4 from steps 0, 20, 30, the authors' PGD-40); every iterate is
    checked and a point keeps its first misclassified one."""

    def __init__(self, model, *, norm="linf", eps=8 / 255, steps: int = 40, step_size: float = 0.1,
                 restarts: int = 1, seed: int = 0):
        super().__init__(model, norm=norm, eps=eps, seed=seed)
        if steps < 1 or restarts < 1:
            raise RobustgenError(f"steps and restarts must be at least 1, got {steps} and {restarts}")
        self.steps, self.step_size, self.restarts = int(steps), float(step_size), int(restarts)

    def perturb(self, x, y):
        schedule = scaled_piecewise_constant(self.step_size, {self.steps // 2: 0.1, (3 * self.steps) // 4: 0.01})
        generator = self._generator(x)
        x_adv, todo = x.clone(), torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):  # later restarts attack only the points still standing
            result = projected_gradient_attack(self.model, x[todo], lambda z: margin(z, y[todo]), norm=self.norm,
                                               eps=self.eps, steps=self.steps, step_rule="adam", step_size=schedule,
                                               init="uniform", success_fn=misclassified(y[todo]), generator=generator)
            x_adv[todo] = result.x_adv
            todo = todo[~result.success]
            if todo.numel() == 0:
                break
        return x_adv


class MultiTargeted(Attack):
    """MultiTargeted (Gowal et al. 2019) with AA+MT's settings by default: ``restarts`` x ``targets``
    runs of ``steps`` steps on the margin z_t - z_y, the targets ranked by clean margin
    (``robustgen.attacks.multitargeted``). Points not broken are returned unchanged."""

    def __init__(self, model, *, norm="linf", eps=8 / 255, restarts: int = 10, targets: int | None = 9,
                 steps: int = 200, seed: int = 0):
        super().__init__(model, norm=norm, eps=eps, seed=seed)
        self.restarts, self.targets, self.steps = int(restarts), targets, int(steps)

    def perturb(self, x, y):
        return multitargeted_attack(self.model, x, y, norm=self.norm, eps=self.eps, restarts=self.restarts,
                                    targets=self.targets, steps=self.steps, generator=self._generator(x))[0]


class APGD(Attack):
    """APGD (Croce & Hein 2020) from ``pyautoattack`` on the cross-entropy (``loss="ce"``) or DLR loss."""

    def __init__(self, model, *, norm="linf", eps=8 / 255, loss: str = "ce", restarts: int = 1, steps: int = 100,
                 seed: int = 0):
        super().__init__(model, norm=norm, eps=eps, seed=seed)
        if loss not in ("ce", "dlr"):
            raise RobustgenError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        self.loss, self.restarts, self.steps = loss, int(restarts), int(steps)

    def perturb(self, x, y):
        from robustgen.attacks import autoattack as aa

        return aa.apgd(self.model, x, y, norm=self.norm, eps=self.eps, seed=self.seed, loss=self.loss,
                       restarts=self.restarts, steps=self.steps)


class APGDT(Attack):
    """APGD-T on the targeted DLR loss, one run per target class (AutoAttack standard: 9)."""

    def __init__(self, model, *, norm="linf", eps=8 / 255, target_classes: int = 9, steps: int = 100, seed: int = 0):
        super().__init__(model, norm=norm, eps=eps, seed=seed)
        self.target_classes, self.steps = int(target_classes), int(steps)

    def perturb(self, x, y):
        from robustgen.attacks import autoattack as aa

        return aa.apgd_targeted(self.model, x, y, norm=self.norm, eps=self.eps, seed=self.seed,
                                target_classes=self.target_classes, steps=self.steps)


class AutoAttack(Attack):
    """A registered cascade (``attack``: "autoattack" = AutoAttack standard, "aa+mt",
    "worst-of-aa-and-aa+mt", "apgd-ce+apgd-t", ...; ``robustgen.attacks.suites.list_attacks()``): each
    point gets the first candidate that fools the model, else stays as it is. The numbers of the
    same run come from ``robustgen.evaluate(..., return_adversarial=True)``."""

    def __init__(self, model, *, norm="linf", eps=8 / 255, attack: str = "autoattack", batch_size: int = 500,
                 seed: int = 0):
        super().__init__(model, norm=norm, eps=eps, seed=seed)
        from robustgen.attacks.suites import list_attacks

        if attack not in list_attacks():
            raise RobustgenError(f"unknown attack {attack!r} (known: {', '.join(list_attacks())})")
        self.attack, self.batch_size = attack, int(batch_size)

    def perturb(self, x, y):
        from robustgen.attacks.cascade import run_cascade
        from robustgen.attacks.suites import get_attack

        stages = get_attack(self.attack, norm=self.norm, eps=self.eps)
        result = run_cascade(self.model, x, y, stages, norm=self.norm, eps=self.eps, batch_size=self.batch_size,
                             device=x.device, seed=self.seed, keep_adversarial=True)
        return result["adversarial"].to(x.device)
