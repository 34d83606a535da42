"""CUDA-only checks (marked gpu, skipped without a GPU): the training step never syncs the host."""

import numpy as np
import pytest
import torch

from robustgen.data import ImageDataset
from robustgen.models import create_model
from robustgen.train.loop import LoopSettings, train_loop
from robustgen.train.mixing.sources import ArraySource
from robustgen.train.steps import TrainingAttack, trades_step_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int64)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), labels


def test_training_steps_never_sync_the_host(tmp_path):
    """Between the first step and the last, the whole loop (prefetched batches, crop/flip, TRADES
    attack and loss in bf16, channels_last, backward over 2 micro-batches, SGD, EMA) runs with
    torch.cuda.set_sync_debug_mode("error"): any host sync raises."""
    images, labels = _data(96, 0)
    real = ImageDataset(images=images, labels=labels, class_names=tuple("abcd"), name="toy")
    generated = [ArraySource(*_data(200, 1), num_classes=4)]
    model = create_model("small-cnn", num_classes=4, in_channels=1).cuda().to(memory_format=torch.channels_last)
    total, micro = 6, 2
    s = LoopSettings(batch_size=32, total_steps=total, warmup_steps=2, peak_lr=0.05, source_weights=(0.5, 0.5), ema_decay=0.9,
                     log_every_steps=total, crop_padding=1, flip=True, channels_last=True, micro_batches=micro)
    inner = trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=3), beta=6.0, bf16=True)
    calls = {"n": 0}

    def step_loss(attack_model, train_model, x, targets, generator):
        n = calls["n"]
        calls["n"] += 1
        loss = inner(attack_model, train_model, x, targets, generator)
        if n == 0:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif n == total * micro - 1:  # the final log point and checkpoint sync on purpose
            torch.cuda.set_sync_debug_mode("default")
        return loss

    try:
        result = train_loop(model, settings=s, real=real, generated=generated, step_loss=step_loss, evaluate=None,
                            out_dir=tmp_path, device=torch.device("cuda"), spec={"num_classes": 4}, extra_meta={},
                            fingerprint="sync", progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert calls["n"] == total * micro
    assert np.isfinite([h["loss"] for h in result.history if "loss" in h]).all()
