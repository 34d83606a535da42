"""Exponential moving average of the weights (paper App. A: decay 0.995; the TF-style ramp of the authors' code).

The averaged model keeps no BatchNorm statistics of its own: it uses the raw model's running
statistics, copied on every update, as the authors do."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from robustgen.train.schedule import ema_decay


class WeightAverage:
    def __init__(self, model: nn.Module, *, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend in ``model``'s weights with the decay for update number ``step`` (0-based)."""
        d = ema_decay(step, decay=self.decay)
        ema_params = list(self.model.parameters())
        raw_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, raw_params, 1.0 - d)
        for ema_buf, raw_buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(raw_buf)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
