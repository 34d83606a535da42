"""A compact re-implementation of guided-diffusion's UNetModel forward pass (openai/guided-diffusion,
unet.py: ResBlock with up/down and scale-shift norm, AttentionBlock with legacy or new qkv order,
TimestepEmbedSequential input/middle/output blocks, class embedding), with its parameter names,
so tests can check the converter against the original layout without downloading anything."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, up=False, down=False):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_ch), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        if self.up or self.down:
            h = self.in_layers[:-1](x)
            resample = (lambda z: F.interpolate(z, scale_factor=2, mode="nearest")) if self.up else \
                (lambda z: F.avg_pool2d(z, 2, 2))
            h, x = resample(h), resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, head_channels, new_order):
        super().__init__()
        self.heads, self.new_order = ch // head_channels, new_order
        self.norm = nn.GroupNorm(32, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x, emb=None):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, H = qkv.shape[-1], self.heads
        d = c // H
        if self.new_order:  # QKVAttention
            q, k, v = (z.reshape(b * H, d, length) for z in qkv.chunk(3, dim=1))
        else:  # QKVAttentionLegacy
            q, k, v = qkv.reshape(b * H, 3 * d, length).split(d, dim=1)
        scale = 1 / math.sqrt(math.sqrt(d))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class Seq(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, gd):
        super().__init__()
        mc, ted = gd.model_channels, gd.model_channels * 4
        attention_ds = {gd.image_size // r for r in gd.attention_resolutions}
        attn = lambda ch: AttentionBlock(ch, gd.num_head_channels, gd.use_new_attention_order)  # noqa: E731
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        self.label_emb = nn.Embedding(gd.num_classes, ted) if gd.num_classes else None
        ch = input_ch = gd.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(gd.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(gd.channel_mult):
            for _ in range(gd.num_res_blocks):
                layers = [ResBlock(ch, ted, mult * mc)]
                ch = mult * mc
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if level != len(gd.channel_mult) - 1:
                self.input_blocks.append(Seq(ResBlock(ch, ted, ch, down=True)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq(ResBlock(ch, ted, ch), attn(ch), ResBlock(ch, ted, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(gd.channel_mult))[::-1]:
            for i in range(gd.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), ted, mc * mult)]
                ch = mc * mult
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == gd.num_res_blocks:
                    layers.append(ResBlock(ch, ted, ch, up=True))
                    ds //= 2
                self.output_blocks.append(Seq(*layers))
        out_ch = gd.in_channels * (2 if gd.learn_sigma else 1)
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(input_ch, out_ch, 3, padding=1))
        self.model_channels = mc

    def forward(self, x, timesteps, y=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
