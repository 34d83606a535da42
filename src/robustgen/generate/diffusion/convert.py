"""Convert OpenAI guided-diffusion checkpoints (Dhariwal & Nichol 2021, github.com/openai/
guided-diffusion) to a diffusers folder (``unet/`` + ``scheduler/``) that ``generator.ddpm.pretrained``
loads: the class-conditional ImageNet DDPMs the paper samples for TinyImageNet (64x64, restricted
to its 200 classes) and ImageNet (256x256) (Sec. 6, Table 2, footnote 9; App. B).

guided-diffusion's ``UNetModel`` with ``resblock_updown`` and ``use_scale_shift_norm`` is the
diffusers ``UNet2DModel`` with ResNet down/up-samplers (``downsample_type="resnet"``),
``resnet_time_scale_shift="scale_shift"``, a class embedding added to the time embedding and
attention blocks of ``num_head_channels`` channels per head; the layers map one to one
(``convert_state_dict``). Its 1-D qkv convolutions become the q/k/v linear layers: with
``use_new_attention_order`` (the 64x64 model) the output rows are [q | k | v] of all heads,
in the legacy order (the 256x256 model) they are [q_h | k_h | v_h] per head h. Learned-variance
models (``learn_sigma``) output 6 channels: eps, then the variance interpolation, which diffusers'
DDPM scheduler uses with ``variance_type="learned_range"``; the other samplers read eps only.

The class order of the ImageNet models is the sorted WordNet ids (guided-diffusion's
``image_datasets.py``); ``class_names`` (e.g. the 1000 wnids of the ImageNet train folder, one per
line) is written to ``class_names.json`` so a TinyImageNet run conditions on its own 200 classes
(``generator.ddpm.class_map: by-name``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from robustgen.runtime.errors import RobustgenError

__all__ = ["GUIDED_DIFFUSION_PRESETS", "GuidedDiffusionConfig", "convert_guided_diffusion", "convert_state_dict",
           "scheduler_config", "unet_config"]


@dataclass(frozen=True)
class GuidedDiffusionConfig:
    """The guided-diffusion ``create_model`` / ``create_gaussian_diffusion`` flags that fix the layout."""

    image_size: int
    model_channels: int  # --num_channels
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]  # as on the command line: 32,16,8 -> attention at image_size // r
    num_head_channels: int
    num_classes: int | None  # None: unconditional
    learn_sigma: bool
    use_new_attention_order: bool
    diffusion_steps: int
    noise_schedule: str  # linear or cosine
    in_channels: int = 3


# The README flags of the two class-conditional ImageNet checkpoints (64x64_diffusion.pt,
# 256x256_diffusion.pt); channel_mult is script_util's default for the image size.
GUIDED_DIFFUSION_PRESETS = {
    "imagenet64-cond": GuidedDiffusionConfig(
        image_size=64, model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(32, 16, 8), num_head_channels=64, num_classes=1000, learn_sigma=True,
        use_new_attention_order=True, diffusion_steps=4000, noise_schedule="cosine"),
    "imagenet256-cond": GuidedDiffusionConfig(
        image_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(32, 16, 8), num_head_channels=64, num_classes=1000, learn_sigma=True,
        use_new_attention_order=False, diffusion_steps=1000, noise_schedule="linear"),
}


def _attention_levels(gd: GuidedDiffusionConfig) -> list[bool]:
    downsample_rates = {gd.image_size // r for r in gd.attention_resolutions}
    return [2 ** level in downsample_rates for level in range(len(gd.channel_mult))]


def unet_config(gd: GuidedDiffusionConfig) -> dict:
    """``UNet2DModel`` keyword arguments of the same network."""
    attn = _attention_levels(gd)
    return dict(
        sample_size=gd.image_size, in_channels=gd.in_channels,
        out_channels=gd.in_channels * (2 if gd.learn_sigma else 1), layers_per_block=gd.num_res_blocks,
        block_out_channels=tuple(gd.model_channels * m for m in gd.channel_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)),
        downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
        attention_head_dim=gd.num_head_channels, attn_norm_num_groups=32, norm_num_groups=32, norm_eps=1e-5,
        num_class_embeds=gd.num_classes, flip_sin_to_cos=True, freq_shift=0)


def scheduler_config(gd: GuidedDiffusionConfig) -> dict:
    """The DDPM schedule: guided-diffusion's linear betas (0.0001 to 0.02, scaled by 1000 / T) or
    its cosine schedule (Nichol & Dhariwal; diffusers' ``squaredcos_cap_v2``); denoised x_0 clipped."""
    if gd.noise_schedule == "linear":
        scale = 1000 / gd.diffusion_steps
        schedule = dict(beta_schedule="linear", beta_start=scale * 0.0001, beta_end=scale * 0.02)
    elif gd.noise_schedule == "cosine":
        schedule = dict(beta_schedule="squaredcos_cap_v2")
    else:
        raise RobustgenError(f"unknown guided-diffusion noise schedule {gd.noise_schedule!r}")
    return dict(num_train_timesteps=gd.diffusion_steps, **schedule, prediction_type="epsilon", clip_sample=True,
                variance_type="learned_range" if gd.learn_sigma else "fixed_small")


class _Mapper:
    """Moves tensors from the guided-diffusion state dict to diffusers names, checking every key."""

    def __init__(self, state: dict, source: str):
        self.state, self.source, self.out, self.used = state, source, {}, set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise RobustgenError(f"{self.source}: missing key {key!r}: not a guided-diffusion UNet of this configuration")
        self.used.add(key)
        return self.state[key].float()

    def copy(self, new: str, old: str) -> None:
        for p in ("weight", "bias"):
            self.out[f"{new}.{p}"] = self.take(f"{old}.{p}")

    def resnet(self, new: str, old: str, *, skip: bool) -> None:
        for n, o in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                     ("norm2", "out_layers.0"), ("conv2", "out_layers.3")):
            self.copy(f"{new}.{n}", f"{old}.{o}")
        if skip:
            self.copy(f"{new}.conv_shortcut", f"{old}.skip_connection")

    def attention(self, new: str, old: str, *, head_channels: int, new_order: bool) -> None:
        self.copy(f"{new}.group_norm", f"{old}.norm")
        w, b = self.take(f"{old}.qkv.weight")[..., 0], self.take(f"{old}.qkv.bias")  # [3C, C], [3C]
        c = w.shape[1]
        heads, d = c // head_channels, head_channels
        # output row of (part, head, dim): new order [part, head, dim], legacy [head, part, dim]
        w = w.view(3, heads, d, c) if new_order else w.view(heads, 3, d, c).transpose(0, 1)
        b = b.view(3, heads, d) if new_order else b.view(heads, 3, d).transpose(0, 1)
        for part, name in enumerate(("to_q", "to_k", "to_v")):
            self.out[f"{new}.{name}.weight"] = w[part].reshape(c, c).contiguous()
            self.out[f"{new}.{name}.bias"] = b[part].reshape(c).contiguous()
        self.out[f"{new}.to_out.0.weight"] = self.take(f"{old}.proj_out.weight")[..., 0]
        self.out[f"{new}.to_out.0.bias"] = self.take(f"{old}.proj_out.bias")


def convert_state_dict(state: dict, gd: GuidedDiffusionConfig, *, source: str = "checkpoint") -> dict:
    """The ``UNet2DModel`` state dict (float32) of a guided-diffusion ``UNetModel`` state dict."""
    m = _Mapper(state, source)
    attn = _attention_levels(gd)
    heads = dict(head_channels=gd.num_head_channels, new_order=gd.use_new_attention_order)
    m.copy("time_embedding.linear_1", "time_embed.0")
    m.copy("time_embedding.linear_2", "time_embed.2")
    if gd.num_classes is not None:
        m.out["class_embedding.weight"] = m.take("label_emb.weight")
    m.copy("conv_in", "input_blocks.0.0")
    block, channels = 1, gd.model_channels * gd.channel_mult[0]
    for level, mult in enumerate(gd.channel_mult):
        for j in range(gd.num_res_blocks):
            m.resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{block}.0",
                     skip=j == 0 and channels != gd.model_channels * mult)
            channels = gd.model_channels * mult
            if attn[level]:
                m.attention(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{block}.1", **heads)
            block += 1
        if level != len(gd.channel_mult) - 1:
            m.resnet(f"down_blocks.{level}.downsamplers.0", f"input_blocks.{block}.0", skip=False)
            block += 1
    m.resnet("mid_block.resnets.0", "middle_block.0", skip=False)
    m.attention("mid_block.attentions.0", "middle_block.1", **heads)
    m.resnet("mid_block.resnets.1", "middle_block.2", skip=False)
    block = 0
    for i, level in enumerate(reversed(range(len(gd.channel_mult)))):
        for j in range(gd.num_res_blocks + 1):
            m.resnet(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{block}.0", skip=True)
            if attn[level]:
                m.attention(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{block}.1", **heads)
            block += 1
        if level != 0:
            m.resnet(f"up_blocks.{i}.upsamplers.0", f"output_blocks.{block - 1}.{2 if attn[level] else 1}", skip=False)
    m.copy("conv_norm_out", "out.0")
    m.copy("conv_out", "out.2")
    unused = sorted(set(state) - m.used)
    if unused:
        raise RobustgenError(f"{source}: {len(unused)} keys not in this configuration (first: {unused[0]!r}); "
                             f"wrong preset?")
    return m.out


def convert_guided_diffusion(checkpoint: Path, out_dir: Path, gd: GuidedDiffusionConfig | str, *,
                             class_names_file: Path | None = None) -> Path:
    """Write ``out_dir/unet`` (UNet2DModel), ``out_dir/scheduler`` (DDPMScheduler) and, given a file
    of class names (one per line, in the model's class order), ``out_dir/class_names.json``."""
    from diffusers import DDPMScheduler, UNet2DModel

    if isinstance(gd, str):
        if gd not in GUIDED_DIFFUSION_PRESETS:
            raise RobustgenError(f"unknown guided-diffusion preset {gd!r} (known: {', '.join(GUIDED_DIFFUSION_PRESETS)})")
        gd = GUIDED_DIFFUSION_PRESETS[gd]
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RobustgenError(f"{checkpoint}: file not found") from None
    except Exception as e:  # truncated file, a pickle of more than tensors, ...
        raise RobustgenError(f"{checkpoint}: not a readable guided-diffusion state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RobustgenError(f"{checkpoint}: expected a state dict of tensors")
    names = None
    if class_names_file is not None:
        names = [line.split()[0] for line in Path(class_names_file).read_text().splitlines() if line.strip()]
        if gd.num_classes is None or len(names) != gd.num_classes:
            raise RobustgenError(f"{class_names_file}: {len(names)} class names for a model with "
                                 f"{gd.num_classes or 0} classes")
    converted = convert_state_dict(state, gd, source=str(checkpoint))
    with torch.device("meta"):  # no initialisation: every tensor comes from the checkpoint
        unet = UNet2DModel(**unet_config(gd))
    unet.load_state_dict(converted, assign=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet")
    DDPMScheduler(**scheduler_config(gd)).save_pretrained(out_dir / "scheduler")
    info = {"source": str(checkpoint), "guided_diffusion_config": asdict(gd)}
    if names is not None:
        (out_dir / "class_names.json").write_text(json.dumps(names))
    (out_dir / "converted_from.json").write_text(json.dumps(info, indent=1))
    return out_dir
