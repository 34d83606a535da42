"""The config's sections: typed, frozen dataclasses, one per stage, with each key's default and
unit. Defaults are the authors' CIFAR-10 recipe (paper Sec. 3.3, App. A and App. D)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

DEFAULT_ALPHA = 0.3  # train.alpha when neither it nor data.sources says: the authors' default for DDPM data


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
    val_size: int = 1024  # training images set aside (seeded) as the validation split, for model selection
    crop_padding: int = 4  # random-crop zero padding in pixels (0 disables cropping)
    flip: bool = True  # random horizontal flips
    split_seed: int = 0  # seed of the validation split (and of the digits train/test split)
    # Real training images kept (seeded, stratified, after validation is removed); the rest are
    # held out: no stage trains on them, the `heldout` generator serves them. null: keep all.
    train_size: Optional[int] = None
    # datasets of image files (folder:PATH, tinyimagenet, imagenet; robustgen.data.folder):
    image_size: Optional[int] = None  # pixels: shorter side resized to this, centre square crop; null: the files' size
    decode_workers: int = 0  # threads decoding image files (0: one per CPU core)
    in_memory_gib: float = 8.0  # GiB: a split decoding to more is decoded per batch instead of held in RAM
    # Several sources mixed per batch, e.g. [{path: train, weight: 0.3}, {path: generated, weight: 0.7}];
    # empty: train.alpha of the real split and 1 - alpha of the generated data. The real split's
    # share here is train.alpha (which may be left unset, or must agree).
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
    # fraction of real images in every batch (paper Eq. 3); 1 = no generated data; null: the real
    # split's share in data.sources when given (stated once, there), else DEFAULT_ALPHA
    alpha: Optional[float] = None
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

    generator: str  # a registered generator; heldout: the real images held out by data.train_size (the perfect-generator reference)
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

    def __post_init__(self):
        if self.train.alpha is None:  # the one place the real share is decided (see TrainConfig.alpha)
            alpha = real_share(self.data.sources) if self.data.sources else DEFAULT_ALPHA
            object.__setattr__(self, "train", dataclasses.replace(self.train, alpha=alpha))


def is_baseline(alpha: float) -> bool:
    """alpha = 1: every batch is real data, no generated images (the baseline every mix is
    compared with)."""
    return float(alpha) == 1.0


def real_share(sources: list) -> float:
    """The real split's share of every batch under ``data.sources`` (weights normalised)."""
    total = sum(src.weight for src in sources)
    return sum(src.weight for src in sources if src.path == "train") / total
