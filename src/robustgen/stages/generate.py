"""Stage 2: fit the generator on the real train split and sample into a store (paper Sec. 3.3, Sec. 4).

Sharded and resumable (``generate.sample_to_store.generate_store``): a killed job resumes at its first
incomplete shard. The generator's training state (a DDPM's checkpoints) lives in
``STORE/generator-work``. A store is the one on-disk form of generated data; ``robustgen store
import`` / ``export`` convert from / to the released .npz layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustgen.config import RunConfig
from robustgen.config import require
from robustgen.data import ImageDataset
from robustgen.data.store.format import DEFAULT_SHARD_SIZE
from robustgen.generate import generator_fit_kwargs, get_generator
from robustgen.generate.sample_to_store import generate_store
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.errors import RobustgenError
from robustgen.stages.common import Splits, stage_fingerprint

__all__ = ["fingerprint", "fit_data", "run"]


def check_names(cfg: RunConfig, source: str) -> None:
    """The generators (the run's and its arms') are registered, the UNet preset and the sampler
    known (before any work starts)."""
    from robustgen.generate import list_generators
    from robustgen.generate.diffusion.samplers import SAMPLER_SETTINGS, SAMPLERS
    from robustgen.generate.diffusion.unet import unet_preset_names

    known = ", ".join(list_generators())
    require(cfg.generator.name in list_generators(), source,
            f"generator.name: unknown generator {cfg.generator.name!r} (known: {known})")
    for i, arm in enumerate(cfg.arms):
        require(arm.generator in list_generators(), source,
                f"arms[{i}].generator: unknown generator {arm.generator!r} (known: {known})")
    d = cfg.generator.ddpm
    require(d.unet in unet_preset_names(), source,
            f"generator.ddpm.unet: unknown UNet preset {d.unet!r} (known: {', '.join(unet_preset_names())})")
    samplers = SAMPLERS + tuple(SAMPLER_SETTINGS)
    require(d.sampler in samplers, source, f"generator.ddpm.sampler must be one of {', '.join(samplers)}, got {d.sampler!r}")

def fingerprint(cfg: RunConfig, data_fp: str) -> str:
    """Only what this generator reads, so another generator's settings change nothing (local weights
    by their files' names, sizes and times: a re-converted model or changed checkpoint is sampled again)."""
    g = cfg.generator
    parts = [data_fp, g.name, g.num_samples, g.seed, generator_fit_kwargs(g)]
    # weights read from local files: a pretrained DDPM folder, a plug-in's checkpoint
    weights = (g.ddpm.pretrained if g.name == "ddpm" else g.plugin.checkpoint if g.name == "plugin" else None)
    path = Path(weights).expanduser() if weights else None
    if path is not None and path.exists():
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        parts.append([(f.name if f == path else str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                      for f in files])
    return stage_fingerprint("generate", "generate-store", *parts)


def _fits_on_heldout(cfg: RunConfig) -> bool:
    return getattr(get_generator(cfg.generator.name), "fits_on", "train") == "heldout"


def fit_data(cfg: RunConfig, splits: Splits) -> ImageDataset:
    """The images the configured generator is fitted on: the real split, or for a generator that
    fits on held-out images (``heldout``) the images ``data.train_size`` held-out."""
    if not _fits_on_heldout(cfg):
        return splits.train
    if splits.heldout is None or len(splits.heldout) == 0:
        raise RobustgenError(f"generator {cfg.generator.name!r} serves held-out real images: set data.train_size "
                             f"below the {len(splits.train)} real training images")
    return splits.heldout


def run(cfg: RunConfig, train: ImageDataset, store_dir: Path, *, device: torch.device, progress: bool = True,
        shard_size: int = DEFAULT_SHARD_SIZE, verify_existing: bool = True, ctx: DistContext = DistContext()) -> dict:
    """Fit ``generator.name`` once on ``train`` (``fit_data``), then write ``generator.num_samples``
    images with per-sample seeds into ``store_dir``, shard by shard. Under torchrun (``ctx``) the
    ranks share the shards."""
    g = cfg.generator
    # a generator of held-out real images serves each of them at most once
    num_samples = min(g.num_samples, len(train)) if _fits_on_heldout(cfg) else g.num_samples
    return generate_store(store_dir, generator=g.name, train_images=train.images, train_labels=train.labels,
                          num_classes=train.num_classes, num_samples=num_samples, seed=g.seed,
                          fit_config=generator_fit_kwargs(g), class_names=train.class_names,
                          data_name=cfg.data.dataset, shard_size=shard_size, progress=progress,
                          verify_existing=verify_existing,
                          fit_options={"device": str(device), "work_dir": Path(store_dir) / "generator-work",
                                       "progress": progress, "class_names": train.class_names}, ctx=ctx)
