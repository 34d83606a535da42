"""Diffusion generators (Ho et al. 2020 DDPM, as used by Gowal et al. 2021 Sec. 4; fast samplers of
Song et al. 2021, Lu et al. 2022 and Karras et al. 2022): diffusers UNets trained here or loaded
pretrained, sampled with per-sample seeds, registered as the ``ddpm`` generator.

* ``unet``: UNet presets (``ho-cifar10``, ``digits-small``), Ho et al.'s schedule, diffusers loader;
* ``train``: the DDPM training loop (EMA, resumable checkpoints);
* ``samplers``: DDPM ancestral, DDIM, DPM-Solver++ and EDM Heun, per-sample noise;
* ``adapter``: the registry adapter (fit / sample / range_sampler / save_fit / load_fit);
* ``edm_net`` / ``edm_pickle``: EDM's networks and the code-free reader of their pickles.
"""

from robustgen.generate.diffusion.adapter import DDPMFit, DDPMGenerator, DDPMRangeSampler, fit_ddpm
from robustgen.generate.diffusion.samplers import SAMPLERS

__all__ = ["DDPMFit", "DDPMGenerator", "DDPMRangeSampler", "SAMPLERS", "fit_ddpm"]
