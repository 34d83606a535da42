"""UNet presets for DDPM (Ho et al. 2020) and loading diffusers-format checkpoints.

* ``ho-cifar10``: Ho et al.'s CIFAR-10 UNet (35.7M parameters; channels 128-256-256-256, two
  residual blocks per resolution, self-attention at 16x16, dropout 0.1), the architecture of
  ``google/ddpm-cifar10-32`` and of the DDPM samples the paper trains on.
* ``digits-small``: a 0.9M-parameter UNet for the embedded 8x8 digits (channels 32-64, two
  blocks per resolution, no attention) that trains on one CPU thread in minutes (3000 steps of
  64 images: ~7 minutes on a shared 2-core CPU);
* ``guided-diffusion-imagenet64`` / ``-imagenet256``: the architectures of guided-diffusion's
  class-conditional ImageNet checkpoints (``convert.py``), named by presets that load them;
* ``cifar-small``: 6.5M parameters (64-128-128, attention at 16x16, dropout 0.1) for 32x32
  generators fitted on a few thousand images in GPU minutes;
* ``tiny``: 8-16 channels, for tests.

Every UNet is a diffusers ``UNet2DModel`` predicting the noise eps; ``num_class_embeds`` adds a
class embedding to the time embedding (class-conditional). The diffusion schedule is Ho et al.'s:
1000 steps, betas linear from 1e-4 to 0.02 (``ho_scheduler_config``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustgen.runtime.errors import RobustgenError, first_line

__all__ = ["UNET_PRESETS", "build_unet", "ho_scheduler_config", "load_pretrained", "unet_num_classes",
           "unet_preset_names"]

def _guided_diffusion_unet(preset: str) -> dict:
    from robustgen.generate.diffusion.convert import GUIDED_DIFFUSION_PRESETS, unet_config

    return unet_config(GUIDED_DIFFUSION_PRESETS[preset])


# Keyword arguments of diffusers.UNet2DModel; sample_size / channels / classes come from the data.
UNET_PRESETS: dict[str, dict] = {
    "ho-cifar10": dict(
        block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        attention_head_dim=None, dropout=0.1),
    "digits-small": dict(
        block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, dropout=0.0),
    # the class-conditional ImageNet UNets of openai/guided-diffusion (convert.py), 64x64 and 256x256
    **{f"guided-diffusion-{name}": {k: v for k, v in _guided_diffusion_unet(preset).items()
                                    if k not in ("sample_size", "in_channels", "out_channels", "num_class_embeds")}
       for name, preset in (("imagenet64", "imagenet64-cond"), ("imagenet256", "imagenet256-cond"))},
    # a 6.5M-parameter CIFAR-size UNet (64-128-128, attention at 16x16) that trains in GPU minutes,
    # for generators fitted on a few thousand kept images (cifar10_generator_preact-resnet-18)
    "cifar-small": dict(
        block_out_channels=(64, 128, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, attention_head_dim=None, dropout=0.1),
    # for tests and smoke runs: seconds, not minutes
    "tiny": dict(
        block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, dropout=0.0),
}


def unet_preset_names() -> list[str]:
    """Every UNet preset ``build_unet`` knows: the diffusers ones and EDM's networks."""
    from robustgen.generate.diffusion.edm_net import EDM_NETWORK_PRESETS

    return sorted([*UNET_PRESETS, *EDM_NETWORK_PRESETS])


def ho_scheduler_config(num_train_timesteps: int = 1000) -> dict:
    """Ho et al.'s VP schedule as a diffusers DDPMScheduler config (linear betas, fixed-small variance)."""
    return {"num_train_timesteps": num_train_timesteps, "beta_start": 1e-4, "beta_end": 0.02,
            "beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": True,
            "prediction_type": "epsilon"}


def build_unet(preset: str, *, image_size: int, in_channels: int, num_classes: int | None,
               dropout: float | None = None):
    """A freshly initialised ``UNet2DModel`` of ``preset`` (``num_classes``: None = unconditional)."""
    from diffusers import UNet2DModel

    from robustgen.generate.diffusion.edm_net import EDM_NETWORK_PRESETS, edm_unet

    if preset in EDM_NETWORK_PRESETS:  # EDM's networks: the architecture of a converted pickle (cost, benchmarks)
        kwargs = {**EDM_NETWORK_PRESETS[preset], "img_resolution": image_size, "img_channels": in_channels,
                  "label_dim": num_classes or 0}
        return edm_unet(kwargs if dropout is None else {**kwargs, "dropout": float(dropout)})
    if preset not in UNET_PRESETS:
        raise RobustgenError(f"unknown UNet preset {preset!r} (known: {', '.join(unet_preset_names())})")
    kwargs = dict(UNET_PRESETS[preset])
    if dropout is not None:
        kwargs["dropout"] = float(dropout)
    levels = len(kwargs["block_out_channels"])
    if image_size % 2 ** (levels - 1):
        raise RobustgenError(f"UNet preset {preset!r} downsamples {levels - 1} times: image size {image_size} "
                             f"must be a multiple of {2 ** (levels - 1)}")
    return UNet2DModel(sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
                       num_class_embeds=num_classes, **kwargs)


def unet_num_classes(unet) -> int | None:
    """Number of conditioning classes of a UNet (None: unconditional)."""
    n = unet.config.get("num_class_embeds")
    return None if n is None else int(n)


def load_pretrained(source: str, *, local_files_only: bool = False):
    """(UNet2DModel in eval mode, scheduler config dict) from a diffusers-format folder or hub id, or
    (EDMNetworkUNet, Ho et al.'s schedule) from a folder ``robustgen convert-edm`` wrote.

    The UNet is read from ``unet/`` if present, else from the top level (older hub repos such as
    ``google/ddpm-cifar10-32`` keep both); the scheduler config likewise from ``scheduler/``, or Ho
    et al.'s schedule when there is none. Raises a one-line RobustgenError when the folder is
    missing, the hub cannot be reached (offline) or the files are not a diffusers UNet.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from robustgen.generate.diffusion.edm_pickle import is_edm_folder, load_edm_folder

    src = str(source)
    local = Path(src).expanduser()
    if is_edm_folder(local):  # an EDM network converted by robustgen convert-edm
        from robustgen.generate.diffusion.edm_net import EDMNetworkUNet

        config = ho_scheduler_config()
        return EDMNetworkUNet(load_edm_folder(local), alphas_cumprod(config)).eval(), config
    is_local = local.exists() or src.startswith((".", "/", "~")) or src.count("/") != 1
    if is_local and not local.is_dir():
        raise RobustgenError(f"pretrained diffusion model {src!r}: no such folder (give a diffusers folder or a "
                             f"hub id such as google/ddpm-cifar10-32)")
    where = str(local) if is_local else src

    def first_loadable(cls, subfolder: str, config_file: str):
        """``cls`` from ``subfolder/`` or else the top level; (object or None, errors seen)."""
        errors = []
        for sub in (subfolder, None):
            if is_local and not (local / (sub or "") / config_file).is_file():
                continue
            try:
                return cls.from_pretrained(where, subfolder=sub, local_files_only=local_files_only), errors
            except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError/hub errors
                errors.append(first_line(e))
        return None, errors

    unet, errors = first_loadable(UNet2DModel, "unet", "config.json")
    if unet is None:
        why = errors[-1] if errors else "no config.json in the folder or its unet/ subfolder"
        raise RobustgenError(f"cannot load a diffusers UNet from {src!r} (offline or missing?): {why}")
    scheduler, _ = first_loadable(DDPMScheduler, "scheduler", "scheduler_config.json")  # optional
    config = dict(scheduler.config) if scheduler is not None else ho_scheduler_config()
    unet.eval().requires_grad_(False)
    return unet, _plain_scheduler_config(config)


def _plain_scheduler_config(config: dict) -> dict:
    """The JSON-able DDPM fields of a scheduler config (drops diffusers' private ``_`` keys)."""
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "variance_type", "clip_sample",
            "prediction_type", "clip_sample_range", "trained_betas")
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k in keep}
    if out.get("prediction_type", "epsilon") != "epsilon":
        raise RobustgenError(f"only eps-prediction diffusion models are supported, got prediction_type "
                             f"{out['prediction_type']!r}")
    if out.get("trained_betas") is not None:
        out["trained_betas"] = [float(b) for b in out["trained_betas"]]
    return out


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """alpha-bar_t, t = 0..T-1, float64 [T], of a DDPM scheduler config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.to(torch.float64)
