"""Samplers for eps-prediction diffusion models (Ho et al. 2020; Song et al. 2021; Lu et al. 2022;
Karras et al. 2022), as functions of a UNet, its schedule and per-sample noise generators.

* ``ddpm``: ancestral sampling (Ho et al. Alg. 2), diffusers ``DDPMScheduler``, 1000 steps by default;
* ``ddim``: deterministic DDIM (eta = 0), diffusers ``DDIMScheduler``;
* ``dpm-solver++``: second-order multistep DPM-Solver++, diffusers ``DPMSolverMultistepScheduler``;
* ``edm-heun``: Karras et al. 2022 Alg. 1 (Heun's 2nd order ODE solver, rho = 7 noise levels,
  no churn) on the denoiser D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma)) of the
  VP-trained UNet (``VPDenoiser``; t(sigma) interpolates the training timesteps in log sigma);
  an EDM network (``edm_net``), a denoiser itself, is called directly on EDM's noise levels
  (0.002 to 80). ``steps`` noise levels cost 2 * steps - 1 UNet evaluations.

Named settings (``SAMPLER_SETTINGS``) fix a solver and its steps as published: ``wang2023`` is
the EDM Heun schedule with 20 noise levels (39 UNet calls) that Wang et al. 2023 sampled their
20M-50M CIFAR images with; ``karras2022`` is EDM's own CIFAR-10 setting (18 levels, 35 calls).

Speed (``sample_diffusion``): bf16 autocast of the UNet on CUDA, channels_last inputs, and a
compiled UNet passed as ``model`` (``models.inference.prepare_for_inference``); the solver
arithmetic stays float32. ``auto_batch_size`` picks the batch from the GPU's free memory.

Per-sample seeds (EDM): sample i draws all its noise (x_T, and the ancestral noise of every DDPM
step) from its own CPU ``torch.Generator`` seeded by (seed, i) (``sample_generators``), so its
noise is identical whatever the batch, device or restart. Images are then equal up to the
floating-point effects of batch composition (and bitwise equal under the same batching).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch

from robustgen.runtime.errors import RobustgenError

__all__ = ["SAMPLERS", "SAMPLER_SETTINGS", "VPDenoiser", "auto_batch_size", "edm_heun_sample", "edm_sigma_steps",
           "per_sample_noise", "resolve_sampler", "sample_diffusion", "sample_generators", "to_uint8_nhwc"]

SAMPLERS = ("ddpm", "ddim", "dpm-solver++", "edm-heun")
# name -> (solver, steps), as published (see the module doc)
SAMPLER_SETTINGS = {"wang2023": ("edm-heun", 20), "karras2022": ("edm-heun", 18)}


EDM_SIGMA_RANGE = (0.002, 80.0)  # Karras et al. 2022 Sec. 3 / edm generate.py: the noise levels sampled


def resolve_sampler(name: str, steps: int) -> tuple[str, int]:
    """(solver, steps) of a solver name (with ``steps``) or of a named setting (its own steps)."""
    if name in SAMPLER_SETTINGS:
        return SAMPLER_SETTINGS[name]
    if name not in SAMPLERS:
        raise RobustgenError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS + tuple(SAMPLER_SETTINGS))})")
    return name, int(steps)


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by a hash of (seed, index) (numpy SeedSequence)."""
    gens = []
    for i in indices:
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(2, np.uint32)
        gens.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return gens


def per_sample_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...],
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(generators), *shape] standard normal, row i from ``generators[i]`` (float32)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


# --------------------------------------------------------------------------- EDM (Karras et al. 2022)
def edm_sigma_steps(num_steps: int, *, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. Eq. 5: ``num_steps`` noise levels from sigma_max to sigma_min, then 0 -> float64 [N + 1]."""
    if num_steps < 1:
        raise RobustgenError(f"edm-heun needs at least 1 step, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    frac = i / max(num_steps - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def edm_heun_sample(denoiser: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor, *,
                    sigmas: torch.Tensor) -> torch.Tensor:
    """Karras et al. Alg. 1 (deterministic Heun): x_0 ~ sigma_0 * noise, Euler step plus a trapezoidal
    correction wherever the next sigma is > 0. ``denoiser(x, sigma)`` -> D(x; sigma); float32 math."""
    x = noise.to(torch.float32) * float(sigmas[0])
    for s_cur, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        d_cur = (x - denoiser(x, s_cur)) / s_cur  # dx/dsigma
        x_next = x + (s_next - s_cur) * d_cur
        if s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x


class VPDenoiser:
    """D(x; sigma) of an eps-prediction UNet trained with the discrete VP schedule alpha-bar_t (Karras
    et al. Table 1, VP column): x_VP = x / sqrt(1 + sigma^2), sigma_t = sqrt((1 - abar_t) / abar_t),
    fractional timestep t(sigma) by linear interpolation in log sigma."""

    def __init__(self, eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], alphas_cumprod: torch.Tensor):
        from robustgen.generate.diffusion.edm import vp_log_sigmas

        self.eps_model = eps_model
        self.log_sigmas = vp_log_sigmas(alphas_cumprod.cpu())  # [T], increasing in t
        self.sigma_min = float(self.log_sigmas[0].exp())
        self.sigma_max = float(self.log_sigmas[-1].exp())

    def timestep(self, sigma: float) -> float:
        ls = torch.tensor(np.log(sigma), dtype=torch.float64).clamp(self.log_sigmas[0], self.log_sigmas[-1])
        hi = int(torch.searchsorted(self.log_sigmas, ls).clamp(1, len(self.log_sigmas) - 1))
        lo = hi - 1
        w = (ls - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return float(lo + w)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), self.timestep(sigma), dtype=torch.float32, device=x.device)
        eps = self.eps_model(x / (1.0 + sigma ** 2) ** 0.5, t)
        return x - sigma * eps


# --------------------------------------------------------------------------- all samplers
def _scheduler(name: str, config: dict):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm-solver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise RobustgenError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")


@torch.no_grad()
def sample_diffusion(unet, scheduler_config: dict, *, generators: Sequence[torch.Generator],
                     class_labels: torch.Tensor | None, sampler: str, steps: int, bf16: bool = False,
                     channels_last: bool = False, model: Callable | None = None) -> torch.Tensor:
    """Images in [-1, 1], float32 [B, C, H, W] on the UNet's device, one per generator.

    ``class_labels``: int64 [B] conditioning classes, or None for an unconditional UNet.
    ``bf16``: autocast the UNet to bfloat16 (CUDA only); the sampler arithmetic stays float32.
    ``channels_last``: give the UNet NHWC-strided inputs (its weights converted by the caller).
    ``model``: what to call instead of ``unet`` (e.g. its ``torch.compile`` wrapper).
    """
    if sampler not in SAMPLERS:
        raise RobustgenError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if steps < 1:
        raise RobustgenError(f"sampling steps must be >= 1, got {steps}")
    device = next(unet.parameters()).device
    c, size = unet.config.in_channels, unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    if class_labels is not None:
        class_labels = class_labels.to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
                else contextlib.nullcontext())

    run = unet if model is None else model

    def model_output(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = run(x, t, class_labels=class_labels).sample
        return out.float()

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # learned-variance models (guided-diffusion) output [eps, variance]: the ODE solvers read eps
        return model_output(x, t)[:, :c]

    learned_variance = scheduler_config.get("variance_type") in ("learned", "learned_range")

    x = per_sample_noise(generators, (c, size, size), device)  # [B, C, H, W]
    if sampler == "edm-heun" and getattr(unet, "native_denoiser", False):
        # an EDM network is a denoiser: EDM's sampler on its own noise levels (edm/generate.py: 0.002 to 80,
        # within the network's range, rho 7)
        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = run(x, None, class_labels=class_labels, sigma=torch.full((x.shape[0],), sigma, device=device))
            return out.sample.float()

        sigmas = edm_sigma_steps(steps, sigma_min=max(EDM_SIGMA_RANGE[0], unet.network.sigma_min),
                                 sigma_max=min(EDM_SIGMA_RANGE[1], unet.network.sigma_max))
        return edm_heun_sample(denoise, x, sigmas=sigmas).clamp(-1, 1)
    if sampler == "edm-heun":
        from robustgen.generate.diffusion.unet import alphas_cumprod

        den = VPDenoiser(eps_model, alphas_cumprod(scheduler_config))
        sigmas = edm_sigma_steps(steps, sigma_min=den.sigma_min, sigma_max=den.sigma_max)
        # the VP model sees x / sqrt(1 + sigma^2); x_T ~ N(0, 1) there is sigma_max * noise here
        return edm_heun_sample(den, x, sigmas=sigmas).clamp(-1, 1)
    sched = _scheduler(sampler, scheduler_config)
    sched.set_timesteps(steps, device=device)
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        # ancestral DDPM steps of a learned-variance model take its variance output too
        step_model = model_output if sampler == "ddpm" and learned_variance else eps_model
        eps = step_model(model_in, t.expand(x.shape[0]).to(device))
        kwargs = {"generator": list(generators)} if sampler == "ddpm" else {}
        x = sched.step(eps, t, x, **kwargs).prev_sample
    return x.clamp(-1, 1)


def auto_batch_size(unet, *, class_conditional: bool, bf16: bool, channels_last: bool = False,
                    memory_fraction: float = 0.8, largest: int = 4096, cpu_default: int = 256) -> int:
    """The largest power of two of images per UNet call whose activations fit in ``memory_fraction``
    of the GPU memory free now (peak memory of one call measured at 16 and 32 images, extrapolated
    linearly); ``cpu_default`` on a CPU. A fit records the value, so it is chosen once per store."""
    device = next(unet.parameters()).device
    if device.type != "cuda":
        return int(cpu_default)
    c, size = unet.config.in_channels, unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    peaks = []
    for b in (16, 32):
        x = torch.randn(b, c, size, size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.zeros(b, dtype=torch.long, device=device) if class_conditional else None
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            unet(x, torch.full((b,), 500, device=device), class_labels=labels)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_image = max((peaks[1] - peaks[0]) / 16, 1.0)
    fixed = max(peaks[0] - 16 * per_image, 0.0)
    free = torch.cuda.mem_get_info(device)[0] * memory_fraction
    # the solver keeps a few [B, C, H, W] float32 states besides the UNet's activations
    per_image += 8 * c * size * size * 4
    b = 1
    while b * 2 <= largest and fixed + b * 2 * per_image <= free:
        b *= 2
    return b


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [B, C, H, W] -> uint8 [B, H, W, C] (round half to even after scaling to 0..255)."""
    return ((x.float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
