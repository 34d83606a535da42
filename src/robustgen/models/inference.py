"""The device path of batched inference (pseudo-labelling with f_NR, paper Sec. 3.3; sampling the
diffusion UNet, Sec. 4): bfloat16 autocast, channels_last memory layout and torch.compile, as
options. Autocast to bf16 is applied on CUDA only (on CPUs without bf16 units it is slower than
float32); ``effective_bf16`` says what a job actually ran, so it can be recorded with its output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InferenceOptions", "autocast", "effective_bf16", "prepare_for_inference", "to_memory_format"]


@dataclass(frozen=True)
class InferenceOptions:
    bf16: bool = False  # bfloat16 autocast of the model (CUDA only); the outputs are float32
    channels_last: bool = False  # NHWC memory layout of weights and inputs (tensor cores prefer it)
    compile: bool = False  # torch.compile the model (fused kernels; the first batches pay the compile)
    cuda_graphs: bool = False  # with compile: mode="reduce-overhead" (CUDA graphs; fixed batch shapes)


def effective_bf16(options: InferenceOptions, device: torch.device | str) -> bool:
    return bool(options.bf16) and torch.device(device).type == "cuda"


def autocast(options: InferenceOptions, device: torch.device | str):
    """bf16 autocast on CUDA when asked, else nothing."""
    if effective_bf16(options, device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(x: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last and x.ndim == 4 else x


def prepare_for_inference(model: nn.Module, options: InferenceOptions) -> nn.Module:
    """``model`` in eval mode with the layout and compilation asked for; the module returned is
    the one to call (a compiled wrapper shares the original's parameters)."""
    model.eval()
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if options.compile:
        mode = "reduce-overhead" if options.cuda_graphs else None
        return torch.compile(model, mode=mode, dynamic=False)
    return model
