"""Typed, frozen configuration of a robustgen run.

Defaults are the authors' CIFAR-10 recipe (paper Sec. 3.3, App. A and App. D); the
presets in ``configs/`` and ``--set a.b=c`` overrides change them. Every key is checked once,
here, at the edge: unknown keys, wrong types and out-of-range values raise a one-line
``RobustgenError`` naming the key and the file.

One module on purpose (over 400 lines): a key's type, default, unit and range check are read
together, and a new key is one edit here.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from robustgen.errors import RobustgenError

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "digits_generator"


@dataclass(frozen=True)
class SourceConfig:
    """One source of training images in ``data.sources``."""

    path: str  # "train" (the real split), "generated" (the run's labelled samples, or --generated) or a store folder / .npz
    weight: float  # its share of every batch (weights are normalised; rows per batch are exact)
    classes: Optional[list] = None  # keep only images labelled with these classes (paper Fig. 4b/4c)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"  # registry name (digits, cifar10, cifar100, svhn, tinyimagenet, imagenet), npz:PATH or folder:PATH
    data_root: Optional[str] = None  # folder with local copies / download target
    download: bool = True  # torchvision datasets: download when missing (needs network)
    val_size: int = 1024  # training images held out (seeded) for model selection
    crop_padding: int = 4  # random-crop zero padding in pixels (0 disables cropping)
    flip: bool = True  # random horizontal flips
    split_seed: int = 0  # seed of the validation split (and of the digits train/test split)
    # Real training images kept (seeded, stratified, after validation is removed); the rest are
    # withheld: no stage trains on them, the `heldout` generator serves them. null: keep all.
    train_size: Optional[int] = None
    # datasets of image files (folder:PATH, tinyimagenet, imagenet; robustgen.data.folder):
    image_size: Optional[int] = None  # pixels: shorter side resized to this, centre square crop; null: the files' size
    decode_workers: int = 0  # threads decoding image files (0: one per CPU core)
    in_memory_gib: float = 8.0  # GiB: a split decoding to more is decoded per batch instead of held in RAM
    # Several sources mixed per batch, e.g. [{path: train, weight: 0.3}, {path: generated, weight: 0.7}];
    # empty: train.alpha of the real split and 1 - alpha of the generated data. train.alpha must
    # equal the real split's share here.
    sources: list[SourceConfig] = field(default_factory=list)


@dataclass(frozen=True)
class ThreatConfig:
    norm: str = "linf"  # linf or l2
    eps: float = 8 / 255  # radius in [0,1] pixel units; fractions such as 8/255 are accepted


@dataclass(frozen=True)
class ClassifierConfig:
    """The non-robust classifier f_NR used as pseudo-labeller (standard training)."""

    arch: str = "wrn-28-10"
    activation: str = "silu"
    checkpoint: Optional[str] = None  # use this trained robustgen checkpoint instead of training
    epochs: float = 100.0  # passes over the real train split
    batch_size: int = 256
    lr_per_256: float = 0.1  # peak lr = lr_per_256 * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not applied to BatchNorm parameters
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class DDPMConfig:
    """The ``ddpm`` generator (Ho et al. 2020; robustgen.generate.diffusion): train a diffusers UNet
    on the train split, or load a pretrained one, then sample it with a chosen solver."""

    unet: str = "digits-small"  # UNet preset: digits-small (8x8 digits, CPU minutes) or ho-cifar10 (35.7M params)
    class_conditional: bool = True  # class embedding, sample i has class i % K; false: pseudo-label the samples
    pretrained: Optional[str] = None  # diffusers folder or hub id (google/ddpm-cifar10-32); null: train here
    train_steps: int = 3000  # optimiser steps (Ho et al. CIFAR-10: 800000)
    batch_size: int = 64  # training images per step (Ho et al.: 128)
    lr: float = 1e-3  # Adam learning rate after warm-up (Ho et al.: 2e-4)
    warmup_steps: int = 200  # linear learning-rate warm-up, in steps (Ho et al.: 5000)
    ema_decay: float = 0.999  # EMA of the weights, used for sampling (Ho et al.: 0.9999)
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    dropout: Optional[float] = None  # UNet dropout probability; null: the preset's (ho-cifar10 0.1, digits 0)
    flip: bool = False  # random horizontal flips of the training images (CIFAR: true; digits: false)
    # non-leaking augmentation (Karras et al. 2022; class-conditional training): shift an image by up to
    # this many pixels with probability augment_p, the shift given to the UNet as a condition; samples are
    # drawn un-shifted. 0: none
    augment_shift: int = 0
    augment_p: float = 0.5
    # eps: Ho et al.'s eps-prediction loss; edm: Karras et al. 2022's preconditioning and loss (sigma_data 0.5,
    # ln sigma ~ N(-1.2, 1.2^2)), sampled by every solver through the VP schedule
    objective: str = "eps"
    # classifier-free guidance (Ho & Salimans 2022): train on a null class with this probability, then
    # sample eps_u + (1 + guidance)(eps_c - eps_u); 0 and 0: the plain conditional model
    label_dropout: float = 0.0
    guidance: float = 0.0
    train_seed: int = 0  # initial weights and every training draw
    checkpoint_every_steps: int = 500  # resumable training state, in steps
    sampler: str = "dpm-solver++"  # ddpm (ancestral), ddim, dpm-solver++, edm-heun, or a named setting:
    #   wang2023 (edm-heun, 20 levels, as Wang et al. 2023) or karras2022 (edm-heun, 18): these fix the steps
    sampling_steps: int = 20  # solver steps (ddpm: 1000 as Ho et al.; edm-heun: 2 * steps - 1 UNet calls)
    sample_batch_size: int = 256  # images per UNet call when sampling; samples are bitwise reproducible per
    #   value; 0: the largest power of two that fits the GPU's free memory, chosen once and kept in the fit
    precision: str = "fp32"  # fp32 or bf16 (autocast of the UNet on CUDA, training and sampling; CPU: fp32)
    # same: a pretrained model's classes are the data's; by-name: data class c conditions on the model
    # class of the same name (class_names.json of the pretrained folder), e.g. TinyImageNet's 200 wnids
    class_map: str = "same"
    channels_last: bool = False  # sampling: NHWC UNet weights and inputs
    compile: bool = False  # sampling: torch.compile the UNet (with CUDA graphs on CUDA)


@dataclass(frozen=True)
class PluginConfig:
    """A pretrained generator behind a Python entry point (``generate/plugin.py`` has the protocol)."""

    entry_point: Optional[str] = None  # "package.module:factory" or "path/to/file.py:factory"
    checkpoint: Optional[str] = None  # its weights file, passed to the factory (identified in the cache key)
    options: dict = field(default_factory=dict)  # further keyword arguments of the factory
    batch_size: int = 256  # images per call of the plug-in's sample()


@dataclass(frozen=True)
class GeneratorConfig:
    name: str = "gaussian"  # a registered generator
    num_samples: int = 1_000_000  # images to generate (the paper: 100K per CIFAR-10 class)
    pca_components: int = 200  # gaussian: PCA dimension per class (App. D)
    seed: int = 0
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)  # ddpm: diffusion model settings
    plugin: PluginConfig = field(default_factory=PluginConfig)  # plugin: a pretrained generator from your code


@dataclass(frozen=True)
class LabelConfig:
    mode: str = "argmax"  # argmax: f_NR's pseudo-label (the paper); condition: the conditioning class (Wang et al.)
    top_k_per_class: Optional[int] = None  # keep the k most confident samples per class (App. D)
    top_fraction_per_class: Optional[float] = None  # keep this fraction of each class, most confident first (Wang et al.: 0.2)
    balanced: bool = False  # then keep the same number of every class (the smallest class's)
    # App. D class balance: keep exactly this many of every class, the most confident (1M = 100K per
    # CIFAR-10 class); generator.num_samples must oversample so every class has that many. Excludes the three above.
    per_class: Optional[int] = None
    # which samples top_k / per_class keep: confidence, the most confident (App. D for BigGAN and VDVAE);
    # first, the first generated of each class (App. D for DDPM and the Gaussian: "sample until each class
    # has N", no further filtering)
    per_class_order: str = "confidence"
    # filters applied before the rules above (issue 23): keep only samples whose f_NR label is the class
    # they were generated for (argmax mode, class-conditional generators) ...
    agree_with_condition: bool = False
    # ... and drop near copies of the kept real images (metrics.diagnostics: closer to one than a third
    # of the validation images' median distance to them)
    drop_near_copies: bool = False
    batch_size: int = 1024  # images per classifier call
    precision: str = "fp32"  # fp32 or bf16 (autocast of f_NR on CUDA; recorded in the labeller id)
    channels_last: bool = False  # NHWC layout of f_NR and its inputs
    compile: bool = False  # torch.compile f_NR


@dataclass(frozen=True)
class InnerAttackConfig:
    """The training attack (inner maximisation)."""

    steps: int = 10
    step_rule: str = "adam"  # adam (authors) or sign (ports; for L2 the normalised gradient)
    adam_lr: list = field(default_factory=lambda: [0.1, 0.01])  # Adam learning rates ...
    adam_lr_boundaries: list = field(default_factory=lambda: [5])  # ... switched at these steps
    sign_step_size: Optional[float] = None  # sign steps: size in norm units (null: eps / 4 = 2/255 at 8/255)
    init: str = "uniform"  # uniform in the ball (authors), normal (x + 0.001 N(0,1), reference TRADES) or zero


@dataclass(frozen=True)
class TrainConfig:
    """Adversarial training of the robust model (paper App. A)."""

    arch: str = "wrn-28-10"
    activation: str = "silu"
    seed: Optional[int] = None  # adversarial training's seed (init, batches, attack starts); null: the run's seed
    loss: str = "trades"  # trades or pgd_at (Madry)
    beta: float = 6.0  # TRADES trade-off
    alpha: float = 0.3  # fraction of real images in every batch (paper Eq. 3); 1 = no generated data
    batch_size: int = 1024
    epochs: float = 400.0  # in units of epoch_size samples
    epoch_size: Optional[int] = None  # samples per epoch (null: the real train split's size); the paper: 50000
    lr_per_256: float = 0.1  # peak lr = lr_per_256 * batch_size / 256 (0.4 at batch 1024)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to BatchNorm parameters
    warmup_epochs: float = 10.0
    label_smoothing_generated: float = 0.1
    label_smoothing_real: float = 0.0
    generated_sampling: str = "with_replacement"  # or permutation
    # train on the first N rows of the run's labelled generated set only (None: all of it); paper Fig. 6
    # varies the number of generated samples at a fixed store, so one sampling serves every point
    generated_rows: Optional[int] = None
    # a training augmentation after crop and flip (data/augment.py): none, mixup, cutmix (Rebuffi et al. 2021:
    # with weight averaging, train.ema_decay), cutout, autoaugment, randaugment; soft labels for the mixes
    augment: str = "none"
    # real / generated rows counted per group of this many images, the whole batch made of groups
    # (the authors: 10 real of every 32-image TPU core, 320 of 1024); null: round(alpha * batch)
    mix_group_size: Optional[int] = None
    ema_decay: float = 0.995
    inner: InnerAttackConfig = field(default_factory=InnerAttackConfig)
    eval_every_epochs: float = 10.0  # PGD-40 model selection on the validation split
    # at each selection point also measure clean and PGD-40 accuracy on this many real training images
    # (the robust generalisation gap, in metrics.jsonl and history.json); 0: off
    monitor_train_images: int = 256
    # train this many models per setting (train.seed + RUN_SEED_STRIDE * k) and keep the best on the
    # validation split (paper Sec. 4: the better of two runs); only the kept one is evaluated on the test split
    runs: int = 1
    checkpoint_every_epochs: float = 1.0  # resumable training state
    precision: str = "fp32"  # fp32 or bf16 (autocast for training; attacks for reported numbers stay fp32; on a CPU bf16 is measured at start-up and dropped, with a warning, where slower)
    channels_last: Optional[bool] = None  # NHWC layout for training; null: the faster layout, measured at start-up (train/speed.py)
    compile: bool = False  # torch.compile the model for training (on a CPU measured at start-up and dropped, with a warning, where slower)
    micro_batches: int = 1  # gradient accumulation: chunks per device and step (BN statistics per chunk)
    # BatchNorm statistics per group of this many images of each chunk, in the attack, clean and
    # adversarial passes (ghost BatchNorm; the authors: 1024 over 32 cores = 32); null: the whole chunk
    bn_group_size: Optional[int] = None
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over all devices (SyncBatchNorm); false: per device, as the authors
    log_every_steps: int = 50


@dataclass(frozen=True)
class EvalConfig:
    attack: str = "pgd40"  # a registered evaluation attack
    n: Optional[int] = None  # n test images (null: all); warns when they miss classes of the split
    # first: the first n (RobustBench's convention); stratified: n // K of every class, a seeded draw
    # (class-sorted folders such as ImageNet val)
    selection: str = "first"
    batch_size: int = 500
    seed: int = 0
    # the points evaluated: "test" (the dataset's test split) or "generated:PATH", a store folder or
    # .npz of generated images with their labels (paper Figs. 4 and 6: accuracy on generated data)
    split: str = "test"


@dataclass(frozen=True)
class LoggingConfig:
    """Where training metrics go besides each training stage's ``metrics.jsonl`` (robustgen.tracking);
    none of it changes results or stage fingerprints."""

    tensorboard: bool = False  # event files in each training stage's tensorboard/ (pip install robustgen[tensorboard])
    wandb: bool = False  # a Weights & Biases run per training stage (robustgen[wandb])
    mlflow: bool = False  # an MLflow run per training stage (robustgen[mlflow])
    project: str = "robustgen"  # W&B project / MLflow experiment


@dataclass(frozen=True)
class ArmConfig:
    """One more robust model that ``robustgen run`` trains next to the configured one, with the
    same steps, threat and labelling but another generator's data."""

    generator: str  # a registered generator; heldout: the real images withheld by data.train_size (the perfect-generator reference)
    alpha: Optional[float] = None  # its fraction of real images per batch (null: train.alpha)
    label: Optional[LabelConfig] = None  # its own label settings (the defaults plus the keys given); null: label.*


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, ...
    baseline: bool = True  # robustgen run: also train alpha = 1 (no generated data) with the same steps
    arms: list[ArmConfig] = field(default_factory=list)  # robustgen run: more models, e.g. [{generator: heldout}]
    data: DataConfig = field(default_factory=DataConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------- parsing
_FRACTION = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def parse_number(value: Any, *, key: str, source: str) -> float:
    """A float from a number or a fraction string such as '8/255' (exact fractions, never 0.031)."""
    if isinstance(value, bool):
        raise RobustgenError(f"{source}: {key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _FRACTION.match(value)
        try:
            if match:
                return float(match.group(1)) / float(match.group(2))
            return float(value)
        except (ValueError, ZeroDivisionError):
            pass
    raise RobustgenError(f"{source}: {key} must be a number or a fraction like 8/255, got {value!r}")


def _coerce(value: Any, annotation: Any, *, key: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key=key, source=source)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, prefix=key + ".", source=source)
    if value is None:
        raise RobustgenError(f"{source}: {key} must not be null")
    if annotation is bool:
        if not isinstance(value, bool):
            raise RobustgenError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise RobustgenError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        return parse_number(value, key=key, source=source)
    if annotation is str:
        if not isinstance(value, str):
            raise RobustgenError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if annotation is dict or origin is dict:  # free-form keyword arguments (generator.plugin.options)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RobustgenError(f"{source}: {key} must be a mapping with string keys, got {value!r}")
        return dict(value)
    if annotation is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise RobustgenError(f"{source}: {key} must be a list, got {value!r}")
        item = (typing.get_args(annotation) or (None,))[0]
        if dataclasses.is_dataclass(item):  # a list of sections, e.g. data.sources
            return [_build(item, v, prefix=f"{key}[{i}].", source=source) for i, v in enumerate(value)]
        # integers stay integers (step boundaries, class indices), so a config that goes through
        # replace() / config_to_dict keeps the same values and the same stage fingerprints
        return [v if isinstance(v, int) and not isinstance(v, bool) else parse_number(v, key=key, source=source)
                for v in value]
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _build(cls: type, values: Any, *, prefix: str, source: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RobustgenError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RobustgenError(
            f"{source}: unknown config key '{prefix}{unknown[0]}' (known under '{prefix or '.'}': {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], key=prefix + k, source=source) for k, v in values.items()}
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_in(tree: dict, dotted: str, value: Any, *, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise RobustgenError(f"{source}: cannot set '{dotted}': '{k}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise RobustgenError(f"--set {item!r}: expected key=value, e.g. train.alpha=0.3")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if preset.is_file():
        return preset
    known = ", ".join(list_presets())
    raise RobustgenError(f"config not found: {name_or_path} (not a file, nor a preset: {known})")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


_ABBREVIATIONS = ("al.", "e.g.", "i.e.", "Sec.", "App.", "Fig.", "Tab.", "vs.", "cf.")


def preset_description(name: str, limit: int = 160) -> str:
    """The first sentence of a preset's header comment, on one line."""
    words = []
    for line in resolve_preset(name).read_text().splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        words += line.lstrip("# ").split()
    sentence = []
    for word in words:
        sentence.append(word)
        if word[-1] in ".?" and not word.endswith(_ABBREVIATIONS):
            break
    text = " ".join(sentence)
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise RobustgenError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise RobustgenError(f"{path}: invalid YAML ({first})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise RobustgenError(f"{path}: a config must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                changes: dict[str, Any] | None = None) -> RunConfig:
    """The resolved config: a preset name or YAML path (default: the embedded digits demo), then
    ``changes`` (dotted key -> value, e.g. a CLI option's), then ``key=value`` overrides (``--set``),
    then validation."""
    path = resolve_preset(config or DEFAULT_PRESET)
    tree = read_yaml(path)
    source = str(path) if config else f"the default preset {DEFAULT_PRESET}"
    given = {}  # what the command line set: dotted key -> how the user wrote it
    for key, value in (changes or {}).items():
        _set_in(tree, key, value, source="command line")
        given[key] = f"{key}={value} (command-line option)"
    for item in overrides:
        key, value = parse_override(item)
        _set_in(tree, key, value, source=f"--set {key}")
        given[key] = f"--set {item}"
    try:
        return config_from_dict(tree, source=source)
    except RobustgenError as e:
        if not given:
            raise
        try:  # the preset alone is valid: the error is in what the command line set, so name that
            config_from_dict(read_yaml(path), source=source)
        except RobustgenError:
            raise e from None
        message = str(e).removeprefix(f"{source}: ")
        named = [text for key, text in given.items() if key in message] or list(given.values())
        raise RobustgenError(f"{'; '.join(named)}: {message}") from None


def config_from_dict(tree: dict, *, source: str = "config") -> RunConfig:
    cfg = _build(RunConfig, tree, prefix="", source=source)
    validate(cfg, source=source)
    return cfg


def replace(cfg, **changes):
    """dataclasses.replace with dotted keys: replace(cfg, **{'train.alpha': 1.0})."""
    tree = config_to_dict(cfg)
    for dotted, value in changes.items():
        _set_in(tree, dotted, value, source="replace")
    return config_from_dict(tree, source="replace")


def _check(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise RobustgenError(f"{source}: {message}")


def validate(cfg: RunConfig, *, source: str) -> None:
    from robustgen.attacks.pgd import INITS, NORMS, STEP_RULES
    from robustgen.models import is_known_arch, list_models

    t, c, th = cfg.train, cfg.classifier, cfg.threat
    _check(th.norm in NORMS, source, f"threat.norm must be one of {NORMS}, got {th.norm!r}")
    _check(th.eps >= 0, source, f"threat.eps must be >= 0, got {th.eps}")
    _check(th.norm != "linf" or th.eps <= 1, source, f"threat.eps {th.eps} > 1 is meaningless for images in [0,1]")
    _check(0.0 <= t.alpha <= 1.0, source, f"train.alpha must be in [0, 1], got {t.alpha}")
    _validate_sources(cfg, source)
    _check(t.seed is None or t.seed >= 0, source, f"train.seed must be >= 0 or null, got {t.seed}")
    _check(t.runs >= 1, source, f"train.runs must be >= 1, got {t.runs}")
    _check(t.monitor_train_images >= 0, source, f"train.monitor_train_images must be >= 0, got {t.monitor_train_images}")
    for key, arch in (("train.arch", t.arch), ("classifier.arch", c.arch)):
        _check(is_known_arch(arch), source, f"{key}: unknown architecture {arch!r} (known: {', '.join(list_models())})")
    for key, act in (("train.activation", t.activation), ("classifier.activation", c.activation)):
        _check(act in ("silu", "relu"), source, f"{key} must be silu or relu, got {act!r}")
    _check(t.loss in ("trades", "pgd_at"), source, f"train.loss must be trades or pgd_at, got {t.loss!r}")
    _check(t.inner.step_rule in STEP_RULES, source, f"train.inner.step_rule must be one of {STEP_RULES}")
    _check(t.inner.init in INITS, source, f"train.inner.init must be one of {INITS}")
    _check(len(t.inner.adam_lr) == len(t.inner.adam_lr_boundaries) + 1, source,
           "train.inner.adam_lr needs exactly one more value than train.inner.adam_lr_boundaries")
    _check(t.generated_rows is None or t.generated_rows > 0, source, "train.generated_rows must be > 0 or null")
    from robustgen.data.augment import TRAIN_AUGMENTATIONS

    _check(t.augment in TRAIN_AUGMENTATIONS, source,
           f"train.augment must be one of {', '.join(TRAIN_AUGMENTATIONS)}, got {t.augment!r}")
    _check(t.generated_sampling in ("with_replacement", "permutation"), source,
           "train.generated_sampling must be with_replacement or permutation")
    _check(cfg.eval.split == "test" or (cfg.eval.split.startswith("generated:") and len(cfg.eval.split) > 10),
           source, f"eval.split must be test or generated:PATH (a store or .npz), got {cfg.eval.split!r}")
    _check(t.mix_group_size is None or (t.mix_group_size >= 1 and t.batch_size % t.mix_group_size == 0), source,
           f"train.mix_group_size must divide train.batch_size {t.batch_size}, got {t.mix_group_size}")
    _check(t.precision in ("fp32", "bf16"), source, f"train.precision must be fp32 or bf16, got {t.precision!r}")
    _check(cfg.label.precision in ("fp32", "bf16"), source,
           f"label.precision must be fp32 or bf16, got {cfg.label.precision!r}")
    for key, value in (("train.batch_size", t.batch_size), ("classifier.batch_size", c.batch_size),
                       ("eval.batch_size", cfg.eval.batch_size), ("label.batch_size", cfg.label.batch_size),
                       ("train.log_every_steps", t.log_every_steps),
                       ("train.micro_batches", t.micro_batches)):
        _check(value > 0, source, f"{key} must be > 0, got {value}")
    for key, value in (("train.epochs", t.epochs), ("classifier.epochs", c.epochs),
                       ("train.eval_every_epochs", t.eval_every_epochs),
                       ("train.checkpoint_every_epochs", t.checkpoint_every_epochs)):
        _check(value > 0, source, f"{key} must be > 0, got {value}")
    for key, value in (("train.warmup_epochs", t.warmup_epochs), ("classifier.warmup_epochs", c.warmup_epochs),
                       ("train.beta", t.beta), ("train.weight_decay", t.weight_decay),
                       ("classifier.weight_decay", c.weight_decay), ("train.inner.steps", t.inner.steps),
                       ("data.val_size", cfg.data.val_size), ("data.crop_padding", cfg.data.crop_padding)):
        _check(value >= 0, source, f"{key} must be >= 0, got {value}")
    for key, value in (("train.label_smoothing_generated", t.label_smoothing_generated),
                       ("train.label_smoothing_real", t.label_smoothing_real),
                       ("classifier.label_smoothing", c.label_smoothing), ("train.ema_decay", t.ema_decay)):
        _check(0.0 <= value <= 1.0, source, f"{key} must be in [0, 1], got {value}")
    _check(t.epoch_size is None or t.epoch_size > 0, source, "train.epoch_size must be > 0 or null")
    _check(cfg.data.train_size is None or cfg.data.train_size > 0, source, "data.train_size must be > 0 or null")
    _check(t.bn_group_size is None or t.bn_group_size >= 2, source, "train.bn_group_size must be >= 2 or null")
    _check(t.bn_group_size is None or not t.sync_bn, source, "train.bn_group_size and train.sync_bn exclude each other")
    _check(t.bn_group_size is None or t.batch_size % t.bn_group_size == 0, source,
           f"train.bn_group_size {t.bn_group_size} must divide train.batch_size {t.batch_size}")
    _check(is_baseline(t.alpha) or cfg.generator.num_samples > 0, source,
           "train.alpha < 1 needs generated data: generator.num_samples must be > 0")
    _check(cfg.generator.num_samples >= 0, source, "generator.num_samples must be >= 0")
    _check(cfg.generator.pca_components > 0, source, "generator.pca_components must be > 0")
    _validate_ddpm(cfg.generator.ddpm, source)
    plug = cfg.generator.plugin
    _check(cfg.generator.name != "plugin" or (plug.entry_point or "").count(":") == 1, source,
           f"generator.plugin.entry_point must be 'module:factory' or 'file.py:factory', got {plug.entry_point!r}")
    _check(plug.batch_size > 0, source, "generator.plugin.batch_size must be > 0")
    _validate_label(cfg.label, "label", source)
    for i, arm in enumerate(cfg.arms):
        if arm.label is not None:
            _validate_label(arm.label, f"arms[{i}].label", source)
    _check(cfg.eval.n is None or cfg.eval.n > 0, source, "eval.n must be > 0 or null")
    _check(cfg.data.dataset.startswith(("npz:", "folder:")) or cfg.data.dataset in _dataset_names(), source,
           f"data.dataset: unknown dataset {cfg.data.dataset!r} (known: {', '.join(_dataset_names())}, npz:PATH, folder:PATH)")
    _check(cfg.data.image_size is None or cfg.data.image_size > 0, source, "data.image_size must be > 0 or null")
    _check(cfg.data.decode_workers >= 0 and cfg.data.in_memory_gib >= 0, source,
           "data.decode_workers and data.in_memory_gib must be >= 0")
    from robustgen.evaluate import list_attacks
    from robustgen.generate import list_generators

    _check(cfg.label.per_class_order in ("confidence", "first"), source,
           f"label.per_class_order must be confidence or first, got {cfg.label.per_class_order!r}")
    _check(cfg.eval.selection in ("first", "stratified"), source,
           f"eval.selection must be first or stratified, got {cfg.eval.selection!r}")
    _check(cfg.eval.attack in list_attacks(), source,
           f"eval.attack: unknown attack {cfg.eval.attack!r} (known: {', '.join(list_attacks())})")
    _check(cfg.generator.name in list_generators(), source,
           f"generator.name: unknown generator {cfg.generator.name!r} (known: {', '.join(list_generators())})")
    for i, arm in enumerate(cfg.arms):
        _check(arm.generator in list_generators(), source,
               f"arms[{i}].generator: unknown generator {arm.generator!r} (known: {', '.join(list_generators())})")
        arm_alpha = t.alpha if arm.alpha is None else arm.alpha
        _check(0.0 <= arm_alpha < 1.0, source, f"arms[{i}]: its alpha (arms[{i}].alpha, else train.alpha) must be in "
                                               f"[0, 1), got {arm_alpha:g}")
    _check(not (cfg.arms and cfg.data.sources), source, "arms and data.sources cannot be combined")


def _validate_label(lab: LabelConfig, key: str, source: str) -> None:
    _check(lab.top_k_per_class is None or lab.top_k_per_class > 0, source, f"{key}.top_k_per_class must be > 0 or null")
    _check(lab.per_class is None or lab.per_class > 0, source, f"{key}.per_class must be > 0 or null")
    _check(lab.per_class is None or (lab.top_k_per_class is None and lab.top_fraction_per_class is None
                                     and not lab.balanced), source,
           f"{key}.per_class excludes {key}.top_k_per_class, {key}.top_fraction_per_class and {key}.balanced")
    _check(lab.mode in ("argmax", "condition"), source, f"{key}.mode must be argmax or condition, got {lab.mode!r}")
    f = lab.top_fraction_per_class
    _check(f is None or 0 < f <= 1, source, f"{key}.top_fraction_per_class must be in (0, 1] or null, got {f}")
    _check(not (lab.agree_with_condition and lab.mode != "argmax"), source,
           f"{key}.agree_with_condition compares f_NR's argmax with the conditioning class: it needs {key}.mode argmax")


def _validate_ddpm(d: DDPMConfig, source: str) -> None:
    from robustgen.generate.diffusion.samplers import SAMPLER_SETTINGS, SAMPLERS
    from robustgen.generate.diffusion.unet import unet_preset_names

    _check(d.unet in unet_preset_names(), source,
           f"generator.ddpm.unet: unknown UNet preset {d.unet!r} (known: {', '.join(unet_preset_names())})")
    known = SAMPLERS + tuple(SAMPLER_SETTINGS)
    _check(d.sampler in known, source, f"generator.ddpm.sampler must be one of {', '.join(known)}, got {d.sampler!r}")
    _check(d.precision in ("fp32", "bf16"), source, f"generator.ddpm.precision must be fp32 or bf16, got {d.precision!r}")
    _check(d.pretrained is None or d.pretrained.strip() != "", source, "generator.ddpm.pretrained must be a path, a hub id or null")
    for key in ("train_steps", "batch_size", "sampling_steps", "checkpoint_every_steps"):
        _check(getattr(d, key) > 0, source, f"generator.ddpm.{key} must be > 0, got {getattr(d, key)}")
    _check(d.sample_batch_size >= 0, source,
           f"generator.ddpm.sample_batch_size must be > 0, or 0 (by memory), got {d.sample_batch_size}")
    _check(d.lr > 0, source, f"generator.ddpm.lr must be > 0, got {d.lr}")
    _check(d.warmup_steps >= 0 and d.grad_clip >= 0, source, "generator.ddpm.warmup_steps and grad_clip must be >= 0")
    _check(0.0 <= d.ema_decay < 1.0, source, f"generator.ddpm.ema_decay must be in [0, 1), got {d.ema_decay}")
    _check(d.dropout is None or 0.0 <= d.dropout < 1.0, source, "generator.ddpm.dropout must be in [0, 1) or null")
    _check(d.class_map in ("same", "by-name"), source, f"generator.ddpm.class_map must be same or by-name, got {d.class_map!r}")
    _check(d.augment_shift >= 0 and 0.0 <= d.augment_p <= 1.0, source,
           "generator.ddpm.augment_shift must be >= 0 and generator.ddpm.augment_p in [0, 1]")
    _check(not d.augment_shift or (d.class_conditional and d.pretrained is None), source,
           "generator.ddpm.augment_shift trains a class-conditional UNet here (class_conditional: true, no pretrained): "
           "the shift reaches it through the class embedding")
    _check(d.objective in ("eps", "edm"), source, f"generator.ddpm.objective must be eps or edm, got {d.objective!r}")
    _check(0.0 <= d.label_dropout < 1.0 and d.guidance >= 0, source,
           "generator.ddpm.label_dropout must be in [0, 1) and generator.ddpm.guidance >= 0")
    _check(not d.label_dropout or (d.class_conditional and d.pretrained is None), source,
           "generator.ddpm.label_dropout trains a null class of a class-conditional UNet here "
           "(class_conditional: true, no pretrained)")
    _check(not d.guidance or d.label_dropout, source,
           "generator.ddpm.guidance needs generator.ddpm.label_dropout > 0 (the null class it guides against)")
    _check(d.objective == "eps" or d.pretrained is None, source,
           "generator.ddpm.objective: edm trains a UNet here; a pretrained DDPM predicts eps")


def is_baseline(alpha: float) -> bool:
    """alpha = 1: every batch is real data, no generated images (the baseline every mix is
    compared with)."""
    return float(alpha) == 1.0


def real_share(sources: list) -> float:
    """The real split's share of every batch under ``data.sources`` (weights normalised)."""
    total = sum(src.weight for src in sources)
    return sum(src.weight for src in sources if src.path == "train") / total


def _validate_sources(cfg: RunConfig, source: str) -> None:
    sources = cfg.data.sources
    if not sources:
        return
    for i, src in enumerate(sources):
        key = f"data.sources[{i}]"
        _check(src.weight >= 0, source, f"{key}.weight must be >= 0, got {src.weight}")
        _check(src.path.strip() != "", source, f"{key}.path must name train, generated, a store folder or an .npz")
        _check(src.classes is None or (len(src.classes) > 0 and all(float(c).is_integer() and c >= 0 for c in src.classes)),
               source, f"{key}.classes must be a non-empty list of class indices or null")
        _check(src.path != "train" or src.classes is None, source, f"{key}: class filters apply to generated sources only")
    _check(sum(src.weight for src in sources) > 0, source, "data.sources: the weights must not all be 0")
    _check(sum(src.path == "train" for src in sources) <= 1, source, "data.sources: list the real split (train) once")
    share = real_share(sources)
    _check(abs(share - cfg.train.alpha) <= 1e-9, source,
           f"data.sources gives the real split a share of {share:.6g} but train.alpha is {cfg.train.alpha:g}; "
           f"set train.alpha={share:.6g}")


def _dataset_names() -> list[str]:
    from robustgen.data import list_datasets

    return [d for d in list_datasets() if ":" not in d]
