"""The ``ddpm`` generator: train (or load) a DDPM on the train split and sample it by index range.

Fitting trains a diffusers UNet (``unet.py`` presets) with ``train.py`` and keeps its EMA
weights, or loads a pretrained diffusers checkpoint (``pretrained``: folder or hub id). The fit
holds the sampling settings too (sampler, steps, batch size, precision), since they decide the
images; it is saved as one safetensors file (weights + JSON metadata, no pickle).

Global sample i has conditioning class i % K (class-conditional UNet; the first N samples are
class-balanced) or none (unconditional: labels come from pseudo-labelling). A model with more
classes than the data (an ImageNet DDPM for TinyImageNet, paper Sec. 6) is restricted to the
data's classes with ``class_map="by-name"``: data class c conditions on the model class of the
same name (the pretrained folder's ``class_names.json``, e.g. WordNet ids), and the sample's
label is c. Sample i's noise
comes from its own generator (``samplers.sample_generators(seed, [i])``). Samples are computed
in fixed batches of ``sample_batch_size`` aligned to the global index, so sample i is bitwise
the same whatever range, shard size or restart produced it (same machine and device).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from robustgen.generate import register_generator
from robustgen.generate.diffusion.edm import EDMEpsModel, GuidedModel
from robustgen.generate.diffusion.samplers import (auto_batch_size, resolve_sampler, sample_diffusion,
                                                   sample_generators, to_uint8_nhwc)
from robustgen.models.inference import InferenceOptions, prepare_for_inference
from robustgen.runtime import preempt
from robustgen.runtime.distributed import in_process_group
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import new_digest, update_arrays

__all__ = ["DDPMFit", "DDPMGenerator", "DDPMRangeSampler", "fit_ddpm"]

_META_KEY = "robustgen_ddpm"


@dataclass
class DDPMFit:
    """A trained or loaded DDPM plus how to sample it."""

    unet: torch.nn.Module  # diffusers UNet2DModel, eval mode, EMA weights
    scheduler_config: dict  # DDPMScheduler config (the training schedule)
    num_classes: int  # classes of the data set (conditions lie in [0, num_classes))
    class_conditional: bool
    image_shape: tuple[int, int, int]  # (H, W, C)
    sampler: str = "dpm-solver++"
    steps: int = 20
    batch_size: int = 256
    precision: str = "fp32"
    channels_last: bool = False  # NHWC UNet and inputs when sampling
    compile: bool = False  # torch.compile the UNet for sampling (CUDA graphs on CUDA)
    setting: str | None = None  # the named sampler setting (wang2023, ...) that chose sampler and steps
    info: dict = field(default_factory=dict)  # training summary / source
    condition_classes: list | None = None  # model class of each data class (class_map by-name); None: the same
    objective: str = "eps"  # what the UNet predicts: eps (Ho et al.) or the EDM-preconditioned output
    guidance: float = 0.0  # classifier-free guidance weight w (needs null_class)
    null_class: int | None = None  # embedding index of the null class (trained with label_dropout)

    def to(self, device) -> "DDPMFit":
        self.unet.to(torch.device(device))
        return self


def _fingerprint(images: np.ndarray, labels, cfg: dict) -> str:
    h = new_digest(json.dumps(cfg, sort_keys=True, default=str).encode())
    update_arrays(h, images, labels)
    return h.hexdigest()


def fit_ddpm(train_images: np.ndarray, train_labels: np.ndarray, *, num_classes: int, unet: str = "digits-small",
             class_conditional: bool = True, pretrained: str | None = None, train_steps: int = 3000,
             batch_size: int = 64, lr: float = 1e-3, warmup_steps: int = 200, ema_decay: float = 0.999,
             grad_clip: float = 1.0, dropout: float | None = None, flip: bool = False, train_seed: int = 0,
             sampler: str = "dpm-solver++", sampling_steps: int = 20, sample_batch_size: int = 256,
             precision: str = "fp32", channels_last: bool = False, compile: bool = False,
             checkpoint_every_steps: int = 500, class_map: str = "same", augment_shift: int = 0,
             augment_p: float = 0.5, objective: str = "eps", label_dropout: float = 0.0, guidance: float = 0.0,
             class_names=None, device: str = "cpu", work_dir=None, progress: bool = False,
             stop_after: int | None = None) -> DDPMFit:
    """Train a DDPM on uint8 NHWC ``train_images`` (or load ``pretrained``); see the module doc."""
    from robustgen.generate.diffusion.train import DDPMTrainSettings, train_ddpm
    from robustgen.generate.diffusion.unet import alphas_cumprod, build_unet, ho_scheduler_config

    # only the shape is read when loading a pretrained model (images may be decoded on demand)
    if getattr(train_images, "dtype", None) != np.uint8 or getattr(train_images, "ndim", None) != 4:
        raise RobustgenError(f"expected uint8 NHWC images, got {getattr(train_images, 'dtype', type(train_images))} "
                             f"{getattr(train_images, 'shape', '')}")
    solver, solver_steps = resolve_sampler(sampler, sampling_steps)
    if precision not in ("fp32", "bf16"):
        raise RobustgenError(f"precision must be fp32 or bf16, got {precision!r}")
    h, w, c = (int(v) for v in train_images.shape[1:])
    if h != w:
        raise RobustgenError(f"the DDPM UNets take square images, got {h}x{w}")
    device = torch.device(device)
    sample_settings = dict(sampler=solver, steps=solver_steps, batch_size=int(sample_batch_size),
                           precision=precision, channels_last=bool(channels_last), compile=bool(compile),
                           setting=sampler if solver != sampler else None)
    _check_options(objective=objective, guidance=guidance, label_dropout=label_dropout, pretrained=pretrained,
                   augment_shift=augment_shift, class_conditional=class_conditional)
    if pretrained:
        return _with_batch_size(_load_pretrained_fit(pretrained, class_conditional=class_conditional,
                                                     class_map=class_map, class_names=class_names,
                                                     num_classes=num_classes, shape=(h, w, c), device=device,
                                                     sample_settings=sample_settings))
    train_images = np.asarray(train_images)
    labels = np.asarray(train_labels, dtype=np.int64) if class_conditional else None
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise RobustgenError(f"labels must lie in [0, {num_classes})")
    from robustgen.generate.diffusion.train import num_shifts

    embeds = num_classes * (num_shifts(augment_shift) if augment_shift else 1)  # class x shift conditions
    null_class = embeds if label_dropout else None  # one more embedding: the null class
    embeds += 1 if label_dropout else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(train_seed))
        model = build_unet(unet, image_size=h, in_channels=c, num_classes=embeds if class_conditional else None,
                           dropout=dropout)
    sched = ho_scheduler_config()
    augment = dict(augment_shift=int(augment_shift), augment_p=float(augment_p), num_classes=int(num_classes)) \
        if augment_shift else {}
    settings = DDPMTrainSettings(steps=int(train_steps), batch_size=int(batch_size), lr=float(lr),
                                 warmup_steps=int(warmup_steps), ema_decay=float(ema_decay),
                                 grad_clip=float(grad_clip), flip=bool(flip), seed=int(train_seed),
                                 bf16=precision == "bf16", checkpoint_every_steps=int(checkpoint_every_steps),
                                 objective=objective, label_dropout=float(label_dropout),
                                 null_class=-1 if null_class is None else null_class, **augment)
    # the resume key of a fit without an option is the one it had before the option existed
    unset = (() if augment else ("augment_shift", "augment_p", "num_classes")) + \
        (("objective",) if objective == "eps" else ()) + (() if label_dropout else ("label_dropout", "null_class"))
    keyed = {k: v for k, v in settings.__dict__.items() if k not in unset}
    fp = _fingerprint(train_images, labels, {"unet": unet, "dropout": dropout, "settings": keyed,
                                            "conditional": bool(class_conditional), "K": num_classes})
    summary = train_ddpm(model, train_images, labels, alphas_cumprod=alphas_cumprod(sched), settings=settings,
                         device=device, work_dir=work_dir, fingerprint=fp, progress=progress, stop_after=stop_after)
    model.load_state_dict(summary.pop("ema_state"), strict=False)
    model.eval().requires_grad_(False)
    return _with_batch_size(DDPMFit(model, sched, num_classes, bool(class_conditional), (h, w, c),
                                    info={"unet": unet, **summary}, objective=objective, guidance=float(guidance),
                                    null_class=null_class, **sample_settings))


def _check_options(*, objective: str, guidance: float, label_dropout: float, pretrained, augment_shift: int,
                   class_conditional: bool) -> None:
    if objective not in ("eps", "edm"):
        raise RobustgenError(f"objective must be eps or edm, got {objective!r}")
    if guidance and not label_dropout:
        raise RobustgenError("guidance needs a UNet trained with label_dropout > 0 (its null class)")
    if pretrained and (objective != "eps" or label_dropout):
        raise RobustgenError("a pretrained DDPM is an eps-prediction model without a null class "
                             "(objective: eps, label_dropout: 0)")
    if pretrained:
        return
    if augment_shift and not class_conditional:
        raise RobustgenError("generator.ddpm.augment_shift needs class_conditional: true (the shift reaches the "
                             "UNet through its class embedding)")
    if label_dropout and not class_conditional:
        raise RobustgenError("generator.ddpm.label_dropout needs class_conditional: true (it trains a null class)")


def _load_pretrained_fit(pretrained: str, *, class_conditional: bool, class_map: str, class_names, num_classes: int,
                         shape: tuple, device, sample_settings: dict) -> DDPMFit:
    """A pretrained DDPM (diffusers folder or hub id) checked against the data's classes and image shape."""
    from robustgen.generate.diffusion.unet import load_pretrained, unet_num_classes

    h, w, c = shape
    model, sched = load_pretrained(pretrained)
    k = unet_num_classes(model)
    if (k is not None) != bool(class_conditional):
        raise RobustgenError(f"{pretrained}: the model is {'class-conditional' if k else 'unconditional'} "
                             f"but generator.ddpm.class_conditional is {class_conditional}")
    condition_classes = None
    if class_map == "by-name" and k is not None:
        condition_classes = _classes_by_name(pretrained, class_names, num_classes)
    elif k is not None and k != num_classes:
        raise RobustgenError(f"{pretrained}: the model has {k} classes but the data {num_classes} "
                             f"(generator.ddpm.class_map=by-name restricts it to the data's classes)")
    size = model.config.sample_size
    size = size if isinstance(size, int) else size[0]
    if (size, model.config.in_channels) != (h, c):
        raise RobustgenError(f"{pretrained}: the model makes {size}x{size}x{model.config.in_channels} images "
                             f"but the data are {h}x{w}x{c}")
    return DDPMFit(model.to(device), sched, num_classes, bool(class_conditional), (h, w, c),
                   info={"pretrained": str(pretrained)}, condition_classes=condition_classes, **sample_settings)


def _with_batch_size(fit: DDPMFit) -> DDPMFit:
    """``sample_batch_size: 0`` is chosen here, once, from the device's memory, and saved with the fit
    (the batch decides the images' bits, so every rank and every resumed job must use the same)."""
    if fit.batch_size < 1:
        fit.batch_size = auto_batch_size(fit.unet, class_conditional=fit.class_conditional,
                                         bf16=fit.precision == "bf16", channels_last=fit.channels_last)
        fit.info["batch_size_chosen_by_memory"] = fit.batch_size
    return fit


def _classes_by_name(pretrained: str, class_names, num_classes: int) -> list[int]:
    """The model class of each data class, matched by name through ``pretrained/class_names.json``."""
    from pathlib import Path

    path = Path(str(pretrained)).expanduser() / "class_names.json"
    if not path.is_file():
        raise RobustgenError(f"{path}: file not found (generator.ddpm.class_map=by-name needs the model's class "
                             f"names; robustgen convert-guided-diffusion --class-names writes it)")
    if class_names is None or len(class_names) != num_classes:
        raise RobustgenError("generator.ddpm.class_map=by-name needs the data's class names")
    index = {str(n): i for i, n in enumerate(json.loads(path.read_text()))}
    missing = [str(n) for n in class_names if str(n) not in index]
    if missing:
        raise RobustgenError(f"{path}: {len(missing)} of the data's classes are not among the model's "
                             f"(first: {missing[0]!r})")
    return [index[str(n)] for n in class_names]


class DDPMRangeSampler:
    """``sample(start, stop)`` -> (uint8 [n, H, W, C], int64 classes or None) of the global sequence."""

    def __init__(self, fit: DDPMFit, *, seed: int):
        if not 0 <= int(seed) < 2**63:
            raise RobustgenError(f"seed must be a non-negative integer, got {seed}")
        self.fit, self.seed = fit, int(seed)
        self._edge: tuple[int, np.ndarray] | None = None  # last block cut by a range edge
        cuda = next(fit.unet.parameters()).device.type == "cuda"
        self.model = prepare_for_inference(fit.unet, InferenceOptions(
            channels_last=fit.channels_last, compile=fit.compile, cuda_graphs=fit.compile and cuda))
        if fit.objective == "edm":  # every solver steps on the VP schedule's eps (edm.py)
            from robustgen.generate.diffusion.unet import alphas_cumprod

            self.model = EDMEpsModel(self.model, alphas_cumprod(fit.scheduler_config))
        if fit.guidance:
            self.model = GuidedModel(self.model, null_class=fit.null_class, guidance=fit.guidance)

    def _block(self, b: int) -> np.ndarray:
        if self._edge is not None and self._edge[0] == b:
            return self._edge[1]
        return self._at(range(b * self.fit.batch_size, (b + 1) * self.fit.batch_size))

    def sample_indices(self, indices) -> tuple[np.ndarray, np.ndarray | None]:
        """Samples at arbitrary global indices (e.g. only some classes' rows: class ``i % K``): each
        from the noise of its own index, as in ``sample(start, stop)``."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        if any(i < 0 for i in idx):
            raise RobustgenError("sample indices must be non-negative")
        f, B = self.fit, self.fit.batch_size
        out = np.empty((len(idx), *f.image_shape), dtype=np.uint8)
        for lo in range(0, len(idx), B):
            out[lo:lo + B] = self._at(idx[lo:lo + B])
        conditions = np.asarray(idx, dtype=np.int64) % f.num_classes if f.class_conditional else None
        return out, conditions

    def _at(self, idx) -> np.ndarray:
        f = self.fit
        device = next(f.unet.parameters()).device
        model_class = f.condition_classes or list(range(f.num_classes))  # of each data class
        labels = (torch.tensor([model_class[i % f.num_classes] for i in idx], dtype=torch.long, device=device)
                  if f.class_conditional else None)
        x = sample_diffusion(f.unet, f.scheduler_config, generators=sample_generators(self.seed, idx),
                             class_labels=labels, sampler=f.sampler, steps=f.steps, bf16=f.precision == "bf16",
                             channels_last=f.channels_last, model=self.model)
        return to_uint8_nhwc(x)

    def sample(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop:
            raise RobustgenError(f"sample range must satisfy 0 <= start <= stop, got [{start}, {stop})")
        f, B = self.fit, self.fit.batch_size
        out = np.empty((stop - start, *f.image_shape), dtype=np.uint8)
        for b in range(start // B, -(-stop // B)):
            # a stop request drops this shard (redone on resume) rather than outlive the grace period;
            # under torchrun the ranks stop together after the round instead (generate.sample_to_store)
            if not in_process_group():
                preempt.stop_if_requested(f"while sampling images {start}..{stop - 1} (redone on resume)")
            lo, hi = max(start, b * B), min(stop, (b + 1) * B)
            block = self._block(b)
            if lo > b * B or hi < (b + 1) * B:
                self._edge = (b, block)  # the next range needs the rest of this block
            out[lo - start:hi - start] = block[lo - b * B:hi - b * B]
        conditions = np.arange(start, stop, dtype=np.int64) % f.num_classes if f.class_conditional else None
        return out, conditions


@register_generator("ddpm")
class DDPMGenerator:
    """Registry adapter (``robustgen.generate``): fit / sample, and range_sampler / save_fit / load_fit
    for sharded generation. ``runtime_options`` are passed by the runner but not fingerprinted."""

    fit_file = "generator_fit.safetensors"
    runtime_options = ("device", "work_dir", "progress", "class_names")

    @staticmethod
    def fit_kwargs(generator_config) -> dict:
        from dataclasses import asdict

        kwargs = asdict(generator_config.ddpm)
        # the stage key of a fit without an option is the one it had before the option existed
        if not kwargs["augment_shift"]:
            del kwargs["augment_shift"], kwargs["augment_p"]
        for key, absent in (("objective", "eps"), ("label_dropout", 0.0), ("guidance", 0.0)):
            if kwargs[key] == absent:
                del kwargs[key]
        return kwargs

    @staticmethod
    def fit(train_images, train_labels, *, num_classes: int, **cfg) -> DDPMFit:
        return fit_ddpm(train_images, train_labels, num_classes=num_classes, **cfg)

    @staticmethod
    def sample(fitted: DDPMFit, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        return DDPMRangeSampler(fitted, seed=seed).sample(0, n)

    @staticmethod
    def range_sampler(fitted: DDPMFit, *, seed: int) -> DDPMRangeSampler:
        return DDPMRangeSampler(fitted, seed=seed)

    @staticmethod
    def save_fit(fitted: DDPMFit, path) -> None:
        from safetensors.torch import save_file

        from robustgen.runtime.io import atomic_write

        state = {k: v.detach().contiguous().cpu() for k, v in fitted.unet.state_dict().items()}
        meta = {"unet_config": {k: v for k, v in dict(fitted.unet.config).items() if not k.startswith("_")},
                "scheduler_config": fitted.scheduler_config, "num_classes": fitted.num_classes,
                "class_conditional": fitted.class_conditional, "image_shape": list(fitted.image_shape),
                "sampler": fitted.sampler, "steps": fitted.steps, "batch_size": fitted.batch_size,
                "precision": fitted.precision, "channels_last": fitted.channels_last, "compile": fitted.compile,
                "setting": fitted.setting, "info": fitted.info, "condition_classes": fitted.condition_classes,
                "objective": fitted.objective, "guidance": fitted.guidance, "null_class": fitted.null_class}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={_META_KEY: json.dumps(meta, default=str)}))

    @staticmethod
    def load_fit(path, *, device: str = "cpu", **_runtime) -> DDPMFit:
        from diffusers import UNet2DModel
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        from robustgen.generate.diffusion.edm_net import edm_unet

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[_META_KEY])
            state = load_file(str(path))
            config = meta["unet_config"]
            unet = edm_unet(config["edm_network"], meta["scheduler_config"]) if "edm_network" in config \
                else UNet2DModel.from_config(config)
            unet.load_state_dict(state)
        except (KeyError, ValueError, OSError, RuntimeError, SafetensorError) as e:
            raise RobustgenError(f"{path}: not a readable DDPM fit ({type(e).__name__})") from None
        unet.eval().requires_grad_(False).to(torch.device(device))
        return DDPMFit(unet, meta["scheduler_config"], int(meta["num_classes"]), bool(meta["class_conditional"]),
                       tuple(meta["image_shape"]), sampler=meta["sampler"], steps=int(meta["steps"]),
                       batch_size=int(meta["batch_size"]), precision=meta["precision"],
                       channels_last=bool(meta.get("channels_last", False)), compile=bool(meta.get("compile", False)),
                       setting=meta.get("setting"), info=meta.get("info", {}),
                       condition_classes=meta.get("condition_classes"), objective=meta.get("objective", "eps"),
                       guidance=float(meta.get("guidance", 0.0)), null_class=meta.get("null_class"))
