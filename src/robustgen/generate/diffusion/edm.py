"""The EDM training objective and preconditioning (Karras et al. 2022, arXiv 2206.00364, Table 1
"ours" column), and classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598).

EDM: the UNet F is wrapped as the denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with
sigma_data = 0.5, c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
c_in = 1 / sqrt(s^2 + sd^2), and trained at ln sigma ~ N(P_mean = -1.2, P_std = 1.2) with the loss
weight lambda = 1 / c_out^2, which makes it the plain MSE of F against
(x0 - c_skip x) / c_out. The diffusers UNets embed a timestep built for 0..1000, so
c_noise = 250 ln sigma (EDM's ln(sigma) / 4 times the 1000 timesteps).

An EDM-trained UNet is sampled by every solver (``samplers``) through ``EDMEpsModel``: the eps of
the VP schedule the solvers step on, eps(x_vp, t) = (x - D(x; sigma_t)) / sigma_t with
x = x_vp sqrt(1 + sigma_t^2), sigma_t interpolated in log sigma as ``samplers.VPDenoiser`` does.

Guidance: the conditional UNet is also trained on a null class (the label replaced with
probability ``label_dropout``); sampling then takes eps_u + (1 + w)(eps_c - eps_u) (w = 0: the
conditional model).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

__all__ = ["EDM_P_MEAN", "EDM_P_STD", "EDM_SIGMA_DATA", "EDMEpsModel", "GuidedModel", "edm_coefficients",
           "edm_loss", "eps_from_denoiser", "vp_log_sigmas", "vp_sigma_at"]

EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA = -1.2, 1.2, 0.5  # Karras et al. Table 1 (CIFAR-10)
NOISE_SCALE = 250.0  # c_noise = NOISE_SCALE * ln(sigma): EDM's ln(sigma) / 4 on a 0..1000 timestep scale


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) of noise levels ``sigma`` (any shape; pure)."""
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    return c_skip, c_out, c_in, NOISE_SCALE * sigma.log()


def edm_denoise(unet, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
    """D(x; sigma) of the preconditioned ``unet`` (sigma: [B]); float32."""
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in edm_coefficients(sigma.float()))
    out = unet(c_in * x, c_noise.flatten(), class_labels=class_labels).sample.float()
    return c_skip * x + c_out * out


def edm_loss(unet, x0: torch.Tensor, log_sigma: torch.Tensor, noise: torch.Tensor,
             class_labels: torch.Tensor | None) -> torch.Tensor:
    """Karras et al. Eq. 8 with lambda = 1 / c_out^2: || F(c_in x; c_noise) - (x0 - c_skip x) / c_out ||^2, mean."""
    sigma = log_sigma.to(device=x0.device, dtype=torch.float32).exp()
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in edm_coefficients(sigma))
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    target = (x0 - c_skip * x) / c_out
    return F.mse_loss(unet(c_in * x, c_noise.flatten(), class_labels=class_labels).sample.float(), target)


def vp_log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log sigma_t = log sqrt((1 - abar_t) / abar_t) of a discrete VP schedule, float64 [T], increasing in t."""
    a = alphas_cumprod.to(torch.float64)
    return 0.5 * torch.log((1 - a) / a)


def vp_sigma_at(log_sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sigma_t at (fractional) timesteps ``t``, linear in log sigma between integer timesteps (the
    inverse of ``samplers.VPDenoiser.timestep``), in ``log_sigmas``' dtype."""
    t = t.to(log_sigmas.dtype).clamp(0, len(log_sigmas) - 1)
    lo = t.floor().long().clamp(max=len(log_sigmas) - 2)
    w = t - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()


def eps_from_denoiser(x_vp: torch.Tensor, sigma: torch.Tensor, denoise) -> torch.Tensor:
    """The VP eps a denoiser implies: (x - D(x; sigma)) / sigma at x = x_vp sqrt(1 + sigma^2); sigma [B]."""
    s = sigma.view(-1, 1, 1, 1)
    x = x_vp.float() * (1 + s ** 2).sqrt()
    return (x - denoise(x, sigma)) / s


class EDMEpsModel:
    """An EDM-trained ``unet`` seen as an eps-prediction UNet of the discrete VP schedule
    ``alphas_cumprod`` (timesteps possibly fractional), called like a diffusers UNet."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor):
        self.unet = unet
        self.log_sigmas = vp_log_sigmas(alphas_cumprod.cpu())  # [T], increasing in t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t (float64, on the CPU) at timesteps ``t``."""
        return vp_sigma_at(self.log_sigmas, t.detach().cpu())

    def __call__(self, x_vp: torch.Tensor, t: torch.Tensor, class_labels=None):
        sigma = self.sigma(t.reshape(-1).expand(x_vp.shape[0])).to(device=x_vp.device, dtype=torch.float32)
        return SimpleNamespace(sample=eps_from_denoiser(x_vp, sigma,
                                                        lambda x, s: edm_denoise(self.unet, x, s, class_labels)))


class GuidedModel:
    """Classifier-free guidance of a UNet trained with a null class: eps_u + (1 + w)(eps_c - eps_u)."""

    def __init__(self, model, *, null_class: int, guidance: float):
        self.model, self.null_class, self.guidance = model, int(null_class), float(guidance)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, class_labels=None):
        cond = self.model(x, t, class_labels=class_labels).sample.float()
        null = torch.full_like(class_labels, self.null_class)
        uncond = self.model(x, t, class_labels=null).sample.float()
        return SimpleNamespace(sample=uncond + (1 + self.guidance) * (cond - uncond))
