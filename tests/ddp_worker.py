"""Worker for tests/test_distributed.py: a tiny TRADES run, launched plain or by torchrun.

usage: python ddp_worker.py OUT_DIR MICRO_BATCHES TOTAL_STEPS [STOP_AFTER]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from robustgen.data import ImageDataset
from robustgen.models import create_model
from robustgen.runtime.distributed import context_from_env
from robustgen.train.loop import LoopSettings, train_loop
from robustgen.train.mixing.sources import ArraySource
from robustgen.train.steps import TrainingAttack, trades_step_loss


def main() -> None:
    out, micro, total = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    ctx, device = context_from_env(torch.device("cpu"))
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 4
    images = (rng.random((120, 8, 8, 1)) * 60 + labels[:, None, None, None] * 50).astype(np.uint8)
    real = ImageDataset(images=images, labels=labels.astype(np.int64), class_names=tuple("abcd"), name="toy")
    gen = [ArraySource((rng.random((60, 8, 8, 1)) * 255).astype(np.uint8), rng.integers(0, 4, 60).astype(np.int64),
                       num_classes=4)]
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=24, total_steps=total, warmup_steps=2, peak_lr=0.05, source_weights=(0.5, 0.5), ema_decay=0.9,
                     checkpoint_every_steps=2, log_every_steps=1, crop_padding=1, flip=True, seed=3,
                     micro_batches=micro)
    inner = trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=2), beta=6.0)
    calls = {"n": 0}

    def step_loss(attack_model, model, x, targets, generator):
        if stop_after is not None and calls["n"] == stop_after * micro:
            sys.exit(3)  # "killed" after stop_after steps
        calls["n"] += 1
        return inner(attack_model, model, x, targets, generator)

    result = train_loop(model, settings=s, real=real, generated=gen, step_loss=step_loss, evaluate=None,
                        out_dir=out, device=device, spec={"arch": "small-cnn", "num_classes": 4, "in_channels": 1,
                                                          "activation": "silu", "image_size": 8},
                        extra_meta={}, fingerprint="ddp-test", ctx=ctx, progress=False)
    if ctx.is_main:
        torch.save({k: v for k, v in model.state_dict().items()}, out / "final.pt")
        (out / "losses.json").write_text(json.dumps([h["loss"] for h in result.history if "loss" in h]))


if __name__ == "__main__":
    main()
