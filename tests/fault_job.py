"""A small job with every kind of writer, for the randomized kill/resume test (test_faults.py):
sharded generation into a store, a hard-linked store labelled shard by shard with a selection,
adversarial training from it (state, best/last weights, history) and a resumable evaluation.

    python tests/fault_job.py OUT

Run again after a kill, it resumes; the final files are a pure function of the code and the data.
"""

import sys
from pathlib import Path

import torch

from robustgen.checkpoint import load_model
from robustgen.data import load_dataset
from robustgen.data.store.link import link_store
from robustgen.evaluate import evaluate_robustness
from robustgen.generate.sample_to_store import generate_store
from robustgen.label.label_store import label_store, select_store
from robustgen.models import create_model
from robustgen.runtime.io import write_json
from robustgen.train.loop import LoopSettings, train_loop
from robustgen.train.mixing.sources import open_source
from robustgen.train.steps import TrainingAttack, trades_step_loss

SPEC = {"arch": "small-cnn", "num_classes": 10, "in_channels": 1, "activation": "silu", "image_size": 8}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    data = load_dataset("digits", "train")
    images, labels = data.images[:300], data.labels[:300]
    generate_store(out / "gen", generator="gaussian", train_images=images, train_labels=labels, num_classes=10,
                   num_samples=400, seed=0, shard_size=50, progress=False)
    link_store(out / "gen", out / "lab")
    torch.manual_seed(1)
    labeller = create_model("small-cnn", num_classes=10, in_channels=1).eval()
    label_store(out / "lab", labeller, labeller={"id": "seeded-small-cnn"}, batch_size=50, progress=False)
    select_store(out / "lab", top_k=30)

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    settings = LoopSettings(batch_size=32, total_steps=10, warmup_steps=2, peak_lr=0.05, source_weights=(0.5, 0.5), ema_decay=0.9,
                            checkpoint_every_steps=1, eval_every_steps=3, log_every_steps=2, crop_padding=1, seed=3)

    def evaluate(variants, step):
        return {k: {"score": evaluate_robustness(m, images[:32], labels[:32], attack="pgd40", norm="linf", eps=0.1,
                                                 batch_size=32, seed=step)["robust_accuracy"]}
                for k, m in variants.items()}

    train_loop(model, settings=settings, real=data, generated=[open_source(out / "lab", verify_images=True)],
               step_loss=trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=2), beta=6.0),
               evaluate=evaluate, out_dir=out / "train", device=torch.device("cpu"), spec=SPEC, extra_meta={},
               fingerprint="fault-job", progress=False)
    best = load_model(out / "train" / "best.safetensors")
    result = evaluate_robustness(best, images[:64], labels[:64], attack="pgd40", norm="linf", eps=0.1, batch_size=16,
                                 state_path=out / "eval.partial.pt", state_key="fault-job")
    write_json(out / "eval.json", {k: v for k, v in result.items() if k != "time_s"
                                   and not k.endswith("stages")})
    (out / "eval.partial.pt").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
