"""Adversarial loss landscapes around test points (paper App. C, Fig. 11).

The input is moved in the plane spanned by the worst perturbation PGD-40 finds (u direction) and a
random Rademacher direction (v direction); the value is the margin z_y - max_{i != y} z_i, negative
where the model misclassifies. A smooth surface that dips below zero along u, and not along v,
is the picture of a model without gradient masking.

    x(u, v) = clip_[0,1]( x + u * d_adv + v * d_rand )

Directions are unit vectors of the threat model's norm: for Linf, d_adv = (x_adv - x) / ||x_adv - x||_inf
and d_rand in {-1, +1}^d; for L2 both are scaled to unit L2 norm. So u = eps is the attack's own
perturbation (up to the clip) and the axes are in the units of eps.
"""

from __future__ import annotations

import torch
from torch import nn

from robustgen.attacks.pgd import frozen_parameters, margin, misclassified, pgd40_schedule, projected_gradient_attack
from robustgen.runtime.errors import RobustgenError

__all__ = ["pgd_direction", "rademacher_direction", "loss_landscape"]


def _unit(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.flatten(1)
    scale = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
    return d / scale.clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))


def pgd_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                  seed: int = 0) -> torch.Tensor:
    """Unit-norm direction of the PGD-40 perturbation (the authors' model-selection attack: margin
    loss, Adam lr 0.1, 0.01 from step 20, 1e-4 from step 30, uniform start), [B, C, H, W]."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    with frozen_parameters(model):
        x_adv = projected_gradient_attack(model, x, lambda z: margin(z, y), norm=norm, eps=eps, steps=40,
                                          step_rule="adam", step_size=pgd40_schedule(0.1), init="uniform",
                                          success_fn=misclassified(y), generator=g).x_adv
    return _unit(x_adv - x, norm)


def rademacher_direction(shape, *, norm: str, seed: int = 0, device=None) -> torch.Tensor:
    """Random signs, [B, C, H, W], scaled to unit norm."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    d = torch.randint(0, 2, tuple(shape), generator=g).float().mul_(2).sub_(1)
    return _unit(d, norm).to(device)


@torch.no_grad()
def landscape_grid(model: nn.Module, x: torch.Tensor, y: torch.Tensor, d_u: torch.Tensor, d_v: torch.Tensor,
                   u: torch.Tensor, v: torch.Tensor, *, batch_size: int = 512, clip: bool = True) -> torch.Tensor:
    """Margin z_y - max_{i != y} z_i at x + u_a d_u + v_b d_v for every point and (a, b) -> [B, U, V].
    Pure in its inputs: the model is called as is (put it in eval mode first)."""
    b, *img = x.shape
    uu, vv = torch.meshgrid(u.to(x), v.to(x), indexing="ij")  # [U, V]
    coeff = torch.stack([uu.flatten(), vv.flatten()], dim=1)  # [U*V, 2]
    out = torch.empty(b, coeff.shape[0], device=x.device)
    for i in range(b):
        for s in range(0, coeff.shape[0], batch_size):
            c = coeff[s:s + batch_size]
            pts = x[i] + c[:, 0].view(-1, 1, 1, 1) * d_u[i] + c[:, 1].view(-1, 1, 1, 1) * d_v[i]  # [n, C, H, W]
            if clip:
                pts = pts.clamp(0, 1)
            labels = y[i].expand(pts.shape[0])
            out[i, s:s + batch_size] = -margin(model(pts), labels)
    return out.view(b, u.numel(), v.numel())


def loss_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                   extent: float = 2.0, steps: int = 21, seed: int = 0, batch_size: int = 512,
                   clip: bool = True) -> dict:
    """Fig. 11 for the points x [B, C, H, W] in [0, 1] with labels y [B]: u and v each in
    linspace(-extent * eps, extent * eps, steps). Returns numpy arrays {u [U], v [V], loss [B, U, V]}
    and the clean / PGD margins for reference. The model runs in eval mode (restored after)."""
    if norm not in ("linf", "l2") or eps <= 0 or steps < 2 or extent <= 0:
        raise RobustgenError(f"loss landscape: bad settings norm={norm} eps={eps} steps={steps} extent={extent}")
    if x.dim() != 4 or y.shape != (x.shape[0],):
        raise RobustgenError(f"loss landscape: expected x [B, C, H, W] and y [B], "
                             f"got {tuple(x.shape)} / {tuple(y.shape)}")
    was_training = model.training
    model.eval()
    try:
        d_u = pgd_direction(model, x, y, norm=norm, eps=eps, seed=seed)
        d_v = rademacher_direction(x.shape, norm=norm, seed=seed + 1, device=x.device)
        grid = torch.linspace(-extent * eps, extent * eps, steps, device=x.device)
        loss = landscape_grid(model, x, y, d_u, d_v, grid, grid, batch_size=batch_size, clip=clip)
    finally:
        model.train(was_training)
    g = grid.cpu().numpy()
    return {"u": g, "v": g.copy(), "loss": loss.cpu().numpy(), "norm": norm, "eps": float(eps),
            "clean_margin": loss[:, steps // 2, steps // 2].cpu().numpy() if steps % 2 else None}
