"""Worker for tests/test_distributed_jobs.py: sharded generation, labelling and evaluation of the
digits data, launched plain (one process) or by torchrun (gloo on CPU).

usage: python dist_jobs_worker.py OUT CLASSIFIER [KILL]

OUT/store is generated (Gaussian, 10 shards) and then labelled in place; rank 0 writes
OUT/generated.json (the store's file hashes when generation first completes) and OUT/eval.json (per-point robust
flags and the numbers of a PGD-40 + APGD-CE cascade). KILL = JOB:N makes the last rank exit
(status 3, as if killed) after its N-th shard (generate, label) or attacked batch (eval);
KILL = JOB:N:term sends it SIGTERM there instead (a preemption that reached one rank): every rank
then writes OUT/exit-RANK.txt (its exit status and message) and exits.
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from robustgen.checkpoint import load_model
from robustgen.data import load_dataset
from robustgen.data.store import MANIFEST
from robustgen.evaluate import AttackStage, get_attack, run_cascade
from robustgen.generate.sample_to_store import generate_store
from robustgen.label.label_store import label_store
from robustgen.runtime import preempt
from robustgen.runtime.distributed import context_from_env
from robustgen.runtime.fingerprint import file_sha256

NUM_SAMPLES, SHARD_SIZE, EVAL_N, EVAL_BATCH, EPS = 560, 60, 24, 6, 0.1


def store_hashes(store: Path) -> dict:
    manifest = json.loads((store / MANIFEST).read_text())
    return {f["name"]: file_sha256(store / f["name"]) for e in manifest["shards"] for f in e["files"].values()}


def main() -> None:
    out, classifier = Path(sys.argv[1]), Path(sys.argv[2])
    kill_job, kill_after, how = (sys.argv[3].split(":") + [None, None])[:3] if len(sys.argv) > 3 else (None,) * 3
    torch.set_num_threads(1)
    ctx, device = context_from_env(torch.device("cpu"))
    preempt.install()
    try:
        jobs(out, classifier, ctx, device, kill_job, kill_after, how)
    except preempt.Preempted as e:  # what the CLI does: exit 75, saying where it stopped
        (out / f"exit-{ctx.rank}.txt").write_text(f"{preempt.EXIT_PREEMPTED} {e}")
        sys.exit(preempt.EXIT_PREEMPTED)


def jobs(out: Path, classifier: Path, ctx, device, kill_job, kill_after, how) -> None:
    last = ctx.rank == ctx.world_size - 1
    count = {"n": 0}

    def maybe_die(job: str) -> None:
        if kill_job == job and last:
            count["n"] += 1
            if count["n"] == int(kill_after):
                if how == "term":
                    signal.raise_signal(signal.SIGTERM)
                else:
                    os._exit(3)  # no cleanup, like SIGKILL

    train = load_dataset("digits", "train")
    store = out / "store"
    generate_store(store, generator="gaussian", train_images=train.images, train_labels=train.labels,
                   num_classes=10, num_samples=NUM_SAMPLES, seed=3, fit_config={"num_components": 12},
                   shard_size=SHARD_SIZE, class_names=train.class_names, progress=False,
                   on_shard=lambda k: maybe_die("generate"), ctx=ctx)
    if ctx.is_main and not (out / "generated.json").exists():  # the store as generation left it
        (out / "generated.json").write_text(json.dumps(store_hashes(store), sort_keys=True))
    model = load_model(classifier)
    label_store(store, model, labeller={"id": "test"}, mode="argmax", batch_size=16, progress=False,
                on_shard=lambda k: maybe_die("label"), ctx=ctx)

    test = load_dataset("digits", "test")
    stages = get_attack("pgd40", norm="linf", eps=EPS) + get_attack("apgd-ce", norm="linf", eps=EPS)

    def dying(stage: AttackStage) -> AttackStage:
        def run(model, x, y, seed):
            maybe_die("eval")
            return stage.run(model, x, y, seed)
        return AttackStage(stage.name, run, stage.white_box)

    result = run_cascade(model, test.images[:EVAL_N], test.labels[:EVAL_N], [dying(s) for s in stages], norm="linf",
                         eps=EPS, batch_size=EVAL_BATCH, device=device, seed=5, state_path=out / "eval.partial.pt",
                         state_key="test", ctx=ctx)
    if ctx.is_main:
        numbers = {"clean_accuracy": result["clean_accuracy"], "robust_accuracy": result["robust_accuracy"],
                   "max_perturbation": result["max_perturbation"],
                   "robust_mask": np.asarray(result["robust_mask"]).astype(int).tolist(),
                   "stages": [{k: v for k, v in s.items() if k not in ("time_s", "s_per_100_images")}
                              for s in result["stages"]]}
        (out / "eval.json").write_text(json.dumps(numbers, sort_keys=True))


if __name__ == "__main__":
    main()
