"""The networks of EDM (Karras et al. 2022, arXiv 2206.00364; github.com/NVlabs/edm,
``training/networks.py``), written here so their released network pickles load as state dicts:
the DDPM++ / NCSN++ UNet (``SongUNet``, the CIFAR-10 models and Wang et al. 2023's generators) and
the ADM UNet (``DhariwalUNet``, ImageNet-64), behind the VP, VE or EDM preconditioning.

Parameter and buffer names are EDM's (``model.enc.32x32_block0.conv0.weight``), so the tensors of
a pickle (``edm_pickle``) load strictly into these modules; the arithmetic follows EDM's forward
passes (FIR resampling with ``resample_filter``, scaled skip connections, single-head attention
with a float32 softmax). ``EDMNetworkUNet`` puts a network behind the interface the samplers use
for diffusers UNets: ``forward(x_vp, t)`` is the eps of the discrete VP schedule the ODE and
ancestral solvers step on (eps = (x - D(x; sigma_t)) / sigma_t at x = x_vp sqrt(1 + sigma_t^2),
as ``edm.EDMEpsModel``), and ``forward(x, sigma=...)`` is the denoiser D(x; sigma) itself, which
the ``edm-heun`` sampler calls directly with EDM's own noise levels (0.002 to 80, rho 7).
Differences from EDM's code: fp16 execution (``use_fp16``) is replaced by robustgen's bf16
autocast option; sampling runs in float32 where EDM's sampler keeps x in float64.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustgen.generate.diffusion.edm import eps_from_denoiser, vp_log_sigmas, vp_sigma_at
from robustgen.runtime.errors import RobustgenError

__all__ = ["EDM_NETWORK_PRESETS", "EDMNetwork", "EDMNetworkUNet", "UNetConfig", "edm_unet", "vp_sigma_inv"]

# EDM's training configurations of the released CIFAR-10 networks (train.py --arch=ddpmpp --precond=vp/edm,
# --cond=1), with the conditioning and preconditioning of the network: kwargs of EDMNetwork
EDM_NETWORK_PRESETS = {
    "edm-ddpmpp-cifar10": dict(precond="VPPrecond", img_resolution=32, img_channels=3, label_dim=10,
                               model_type="SongUNet", model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
                               attn_resolutions=[16], dropout=0.13, augment_dim=9, embedding_type="positional",
                               encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                               resample_filter=[1, 1]),
}


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """A convolution (``kernel`` 0: none) after a FIR up- or down-sampling by 2 (EDM's Conv2d)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), fused_resample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        if self.weight is not None:
            nn.init.xavier_uniform_(self.weight)
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        self.register_buffer("resample_filter", (torch.outer(f, f) / f.sum() ** 2)[None, None] if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                                   padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if self.bias is None else x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


class GroupNorm(nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = min(num_groups, num_channels // min_channels_per_group), eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block with the embedding as a bias (or scale and shift), optional FIR resampling and
    attention (EDM's UNetBlock)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, up=False, down=False,
                 attention=False, num_heads=None, channels_per_head=64, dropout=0.0, skip_scale=1.0, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (orig if self.skip is None else self.skip(orig))) * self.skip_scale
        if self.num_heads:
            n, c = x.shape[0] * self.num_heads, x.shape[1] // self.num_heads
            q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, -1).unbind(2)
            w = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(c)).softmax(dim=2).to(q.dtype)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = (self.proj(a.reshape(*x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        x = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _decoder_levels(dec: nn.ModuleDict, img_resolution, channel_mult, model_channels, num_blocks, cout, skips, block,
                    attention):
    """EDM's decoder, deepest level first: two middle blocks (the first with attention) or an
    up-sampling block, then ``num_blocks + 1`` blocks each taking one encoder skip (``attention(idx,
    res)`` says which attend); yields (level, resolution, channels) after each level, so a caller
    can add its per-level modules in EDM's order."""
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
            dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
        else:
            dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
        for idx in range(num_blocks + 1):
            cin, cout = cout + skips.pop(), model_channels * mult
            dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attention(idx, res), **block)
        yield level, res, cout


class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier, residual) of Song et al.
    2021 as EDM writes them."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10,
                 label_dropout=0, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1)):
        super().__init__()
        if embedding_type not in ("fourier", "positional") or encoder_type not in ("standard", "skip", "residual") \
                or decoder_type not in ("standard", "skip"):
            raise RobustgenError(f"SongUNet: unknown embedding / encoder / decoder type "
                                 f"{embedding_type!r} / {encoder_type!r} / {decoder_type!r}")
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                                   resample_filter=resample_filter, fused_resample=True)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]
        self.dec = nn.ModuleDict()
        levels = _decoder_levels(self.dec, img_resolution, channel_mult, model_channels, num_blocks, cout, skips, block,
                                 attention=lambda idx, res: idx == num_blocks and res in attn_resolutions)
        for level, res, cout in levels:
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # EDM swaps sin and cos here
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """The ADM UNet of Dhariwal & Nichol 2021 as EDM writes it (its ImageNet-64 model)."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3, attn_resolutions=(32, 16, 8),
                 dropout=0.10, label_dropout=0):
        super().__init__()
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for b in self.enc.values()]
        self.dec = nn.ModuleDict()
        levels = _decoder_levels(self.dec, img_resolution, channel_mult, model_channels, num_blocks, cout, skips, block,
                                 attention=lambda idx, res: res in attn_resolutions)
        cout = [channels for *_, channels in levels][-1]  # the levels are added as they are walked
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def vp_sigma_inv(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """t(sigma) of EDM's continuous VP schedule sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return ((beta_min ** 2 + 2 * beta_d * (1 + sigma ** 2).log()).sqrt() - beta_min) / beta_d


class EDMNetwork(nn.Module):
    """D(x; sigma) of a preconditioned EDM network: ``precond`` VPPrecond, VEPrecond or EDMPrecond
    (Karras et al. Table 1), ``model_type`` SongUNet or DhariwalUNet, the rest EDM's init kwargs."""

    PRECONDS = ("VPPrecond", "VEPrecond", "EDMPrecond")

    def __init__(self, *, precond: str, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, model_type: str = "SongUNet", sigma_min: float | None = None,
                 sigma_max: float | None = None, sigma_data: float = 0.5, beta_d: float = 19.9, beta_min: float = 0.1,
                 M: int = 1000, epsilon_t: float = 1e-5, **model_kwargs):
        super().__init__()
        if precond not in self.PRECONDS:
            raise RobustgenError(f"unknown EDM preconditioning {precond!r} (known: {', '.join(self.PRECONDS)})")
        models = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
        if model_type not in models:
            raise RobustgenError(f"unknown EDM model type {model_type!r} (known: {', '.join(models)})")
        self.init_kwargs = dict(precond=precond, img_resolution=img_resolution, img_channels=img_channels,
                                label_dim=label_dim, use_fp16=use_fp16, model_type=model_type, sigma_min=sigma_min,
                                sigma_max=sigma_max, sigma_data=sigma_data, beta_d=beta_d, beta_min=beta_min, M=M,
                                epsilon_t=epsilon_t, **model_kwargs)  # what rebuilds it (saved with a fit)
        self.precond, self.img_resolution, self.img_channels = precond, int(img_resolution), int(img_channels)
        self.label_dim, self.sigma_data = int(label_dim), float(sigma_data)
        self.beta_d, self.beta_min, self.M = float(beta_d), float(beta_min), int(M)
        if precond == "VPPrecond":  # the VP schedule's range unless given (plain floats: also on the meta device)
            vp = lambda t: math.sqrt(math.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1)  # noqa: E731
            sigma_min = vp(epsilon_t) if sigma_min is None else sigma_min
            sigma_max = vp(1.0) if sigma_max is None else sigma_max
        defaults = {"VEPrecond": (0.02, 100.0), "EDMPrecond": (0.0, float("inf")), "VPPrecond": (0, 0)}[precond]
        self.sigma_min = float(defaults[0] if sigma_min is None else sigma_min)
        self.sigma_max = float(defaults[1] if sigma_max is None else sigma_max)
        self.model = models[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                        out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma): x float [B, C, H, W], sigma [B] or a scalar, class_labels one-hot [B, label_dim]."""
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros(1, self.label_dim, device=x.device) if class_labels is None
                            else class_labels.float().reshape(-1, self.label_dim))
        if self.precond == "VPPrecond":
            c_skip, c_out, c_in = 1.0, -sigma, 1 / (sigma ** 2 + 1).sqrt()
            c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        elif self.precond == "VEPrecond":
            c_skip, c_out, c_in, c_noise = 1.0, sigma, 1.0, (0.5 * sigma).log()
        else:
            d2 = self.sigma_data ** 2
            c_skip, c_out = d2 / (sigma ** 2 + d2), sigma * self.sigma_data / (sigma ** 2 + d2).sqrt()
            c_in, c_noise = 1 / (d2 + sigma ** 2).sqrt(), sigma.log() / 4
        out = self.model(c_in * x, c_noise.flatten().float(), class_labels=class_labels)
        return c_skip * x + c_out * out.float()


class UNetConfig(dict):
    """The fields of a diffusers UNet config the samplers and fits read, as keys and attributes."""

    __getattr__ = dict.__getitem__


class EDMNetworkUNet(nn.Module):
    """An EDM network behind the diffusers-UNet interface of the samplers (see the module doc):
    ``config`` (sample_size, in_channels, num_class_embeds), eps of the VP schedule
    ``alphas_cumprod`` at timesteps t, or D(x; sigma) when ``sigma`` is given."""

    native_denoiser = True  # samplers.sample_diffusion: edm-heun calls D with EDM's own noise levels

    def __init__(self, network: EDMNetwork, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.network = network
        self.config = UNetConfig(sample_size=network.img_resolution, in_channels=network.img_channels,
                                 num_class_embeds=network.label_dim or None, edm_network=network.init_kwargs)
        # on the device, in float32 (and on the meta device too: the cost model counts FLOPs there)
        self.register_buffer("log_sigmas", vp_log_sigmas(alphas_cumprod).float(), persistent=False)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None, class_labels=None, sigma=None):
        onehot = None
        if self.network.label_dim and class_labels is not None:
            onehot = F.one_hot(class_labels.long(), self.network.label_dim).float()
        if sigma is not None:
            return SimpleNamespace(sample=self.network(x, sigma, onehot))
        sigma = vp_sigma_at(self.log_sigmas, timestep.reshape(-1).expand(x.shape[0]))
        return SimpleNamespace(sample=eps_from_denoiser(x, sigma, lambda xs, s: self.network(xs, s, onehot)))


def edm_unet(network_kwargs: dict, scheduler_config: dict | None = None) -> EDMNetworkUNet:
    """A freshly initialised EDMNetworkUNet of EDM init kwargs (``EDM_NETWORK_PRESETS`` or a fit's config),
    seen through Ho et al.'s discrete VP schedule unless ``scheduler_config`` is given."""
    from robustgen.generate.diffusion.unet import alphas_cumprod, ho_scheduler_config

    return EDMNetworkUNet(EDMNetwork(**network_kwargs), alphas_cumprod(scheduler_config or ho_scheduler_config()))
