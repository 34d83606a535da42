"""DDP through torchrun on 2 CPU processes (gloo) against one process with the same global batch.

With per-device BatchNorm (the authors' choice) two ranks of B/2 images compute exactly what one
process computes with 2 micro-batches of B/2 (gradient accumulation): the losses and weights
must agree to float32 round-off (tolerance 1e-5 relative on the losses, 1e-5 absolute on the
weights), and a DDP run killed and resumed must equal an uninterrupted one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Each test launches torchrun process groups (gloo over loopback), tens of seconds apiece; one run
# out of about ten here ended with exit status 1 before training, so they stay out of the default
# run: `pytest -m slow tests/test_distributed.py`.
pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(out: Path, micro: int, steps: int, *, procs: int, stop_after: int | None = None) -> int:
    """Exit status of the worker; its output is kept in OUT.log for failures."""
    args = [str(out), str(micro), str(steps)] + ([str(stop_after)] if stop_after is not None else [])
    if procs == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(WORKER), *args]
    # gloo over loopback: the host name may resolve to an interface the sandbox does not route
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    for attempt in range(2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        out.parent.joinpath(f"{out.name}.attempt{attempt}.log").write_text(done.stdout + done.stderr)
        transient = any(m in done.stderr for m in ("Address already in use", "Connection refused", "Connection reset",
                                                    "RendezvousConnectionError", "RendezvousTimeoutError"))
        if done.returncode == 0 or not transient:
            break  # a second try only for launcher/network hiccups, never for a training failure
    if done.returncode != 0 and stop_after is None:
        print(done.stderr[-3000:])
    return done.returncode


def _weights(out: Path) -> dict:
    state = torch.load(out / "final.pt", weights_only=True)
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def test_two_ranks_match_one_process_with_micro_batches(tmp_path):
    assert _run(tmp_path / "one", micro=2, steps=5, procs=1) == 0
    assert _run(tmp_path / "ddp", micro=1, steps=5, procs=2) == 0
    a = json.loads((tmp_path / "one" / "losses.json").read_text())
    b = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    assert len(a) == len(b) == 5
    assert a == pytest.approx(b, rel=1e-5)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "ddp")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_resumed_ddp_run_equals_uninterrupted(tmp_path):
    assert _run(tmp_path / "full", micro=1, steps=6, procs=2) == 0
    assert _run(tmp_path / "cut", micro=1, steps=6, procs=2, stop_after=3) != 0
    assert (tmp_path / "cut" / "state.pt").exists() and not (tmp_path / "cut" / "final.pt").exists()
    assert _run(tmp_path / "cut", micro=1, steps=6, procs=2) == 0
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_run_pipeline_under_torchrun(tmp_path):
    tiny = ["data.val_size=64", "classifier.epochs=1", "generator.num_samples=300", "train.epochs=2",
            "train.batch_size=64", "train.inner.steps=2", "eval.n=60"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "robustgen.cli",
           "run", "digits_demo", "--out", str(tmp_path), "--quiet", *[a for t in tiny for a in ("--set", t)]]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 reports
    results = json.loads((tmp_path / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["baseline", "gaussian-alpha0.8"]
