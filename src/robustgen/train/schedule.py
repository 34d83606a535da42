"""Pure schedules of the optimisation step (paper App. A), so a resumed run needs no state."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps`` (optax.warmup_cosine_decay_schedule with init_value 0, as the authors)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay(step: int, *, decay: float) -> float:
    """TF-style ramp min(decay, (1 + t) / (10 + t)) of the authors' weight averaging."""
    return min(decay, (1.0 + step) / (10.0 + step))


def scaled_lr(batch_size: int, *, lr_per_256: float) -> float:
    """The linear scaling rule lr = lr_per_256 * B / 256 (0.1 * 1024 / 256 = 0.4 for the paper)."""
    return lr_per_256 * batch_size / 256
