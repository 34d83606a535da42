"""Generation, labelling and evaluation under torchrun (2 CPU processes, gloo over loopback) give
exactly what one process gives: the same store bytes after `store generate` and `store label`,
the same per-point robust flags and numbers from the evaluation cascade; a job killed on one rank
resumes with another number of ranks to the same result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustgen.checkpoint import model_spec, save_model
from robustgen.data import load_dataset
from robustgen.models import create_model

WORKER = Path(__file__).with_name("dist_jobs_worker.py")
_TRANSIENT = ("Address already in use", "Connection refused", "Connection reset", "RendezvousConnectionError",
              "RendezvousTimeoutError")


def _launch(out: Path, classifier: Path, *, procs: int, kill: str | None = None) -> int:
    """Exit status of the worker (plain for 1 process, torchrun otherwise); logs kept next to OUT."""
    args = [str(out), str(classifier)] + ([kill] if kill else [])
    cmd = ([sys.executable, str(WORKER), *args] if procs == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            str(WORKER), *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    for attempt in range(2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        out.parent.joinpath(f"{out.name}.{procs}p.attempt{attempt}.log").write_text(done.stdout + done.stderr)
        if done.returncode == 0 or not any(m in done.stderr for m in _TRANSIENT):
            break  # a second try only for launcher/network hiccups
    if done.returncode != 0 and kill is None:
        print(done.stderr[-3000:])
    return done.returncode


def _store_files(store: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(store.glob("*.npy"))}
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["generator"].pop("fit_time_s")  # the one wall time in a store's manifest
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A small CNN fitted to the digits for a few hundred steps: some test points robust, some not."""
    train = load_dataset("digits", "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: extra threads only wait on each other (on a busy CPU, 20x slower)
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("clf") / "model.safetensors"
    save_model(path, model.eval(), spec=model_spec(arch="small-cnn", num_classes=10, in_channels=1,
                                                   activation="silu", image_size=8))
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, classifier) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert _launch(out, classifier, procs=1) == 0
    return out


def _assert_same(a: Path, b: Path) -> None:
    assert json.loads((a / "generated.json").read_text()) == json.loads((b / "generated.json").read_text())
    fa, fb = _store_files(a / "store"), _store_files(b / "store")
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
    assert ea == eb


def test_two_ranks_generate_label_and_evaluate_exactly_like_one_process(tmp_path, classifier, one_process):
    ev = json.loads((one_process / "eval.json").read_text())
    assert 0 < ev["robust_accuracy"] < ev["clean_accuracy"]  # per-point flags that can disagree
    assert len(json.loads((one_process / "generated.json").read_text())) == 3 * 10  # images, labels, conditions of 10 shards
    assert _launch(tmp_path / "two", classifier, procs=2) == 0
    _assert_same(one_process, tmp_path / "two")
    assert not (tmp_path / "two" / "store" / "eval.partial.pt").exists()


@pytest.mark.slow
def test_jobs_killed_on_one_rank_resume_with_another_number_of_ranks(tmp_path, classifier, one_process):
    out = tmp_path / "cut"
    # generation dies on rank 1 of 2 after its second shard; then labelling dies in one process;
    # then evaluation dies on rank 2 of 3 at its first batch; a 2-process launch finishes the lot
    assert _launch(out, classifier, procs=2, kill="generate:2") != 0
    assert (out / "store" / "manifest.json").exists() and not (out / "generated.json").exists()
    assert _launch(out, classifier, procs=1, kill="label:3") != 0
    assert (out / "generated.json").exists() and not (out / "eval.json").exists()
    assert _launch(out, classifier, procs=3, kill="eval:1") != 0
    assert (out / "eval.partial.pt").exists() and not (out / "eval.json").exists()
    assert _launch(out, classifier, procs=2) == 0
    _assert_same(one_process, out)


@pytest.mark.slow
def test_a_stop_signal_on_one_rank_stops_every_rank_after_the_same_round(tmp_path, classifier, one_process):
    out = tmp_path / "term"

    def exits() -> list[str]:
        return [p.read_text() for p in sorted(out.glob("exit-*.txt"))]

    # SIGTERM reaches rank 1 of 2 after its second shard (shard 3): both ranks record round 2 and exit 75
    assert _launch(out, classifier, procs=2, kill="generate:2:term") != 0
    assert len(exits()) == 2 and all(t.startswith("75 stopped by SIGTERM while generating") and "after shard 3 "
                                     in t for t in exits()), exits()
    assert len(json.loads((out / "store" / "manifest.json").read_text())["shards"]) == 4
    # and during the evaluation, at rank 1's first attacked batch: both stop after that round, saved
    assert _launch(out, classifier, procs=2, kill="eval:1:term") != 0
    assert len(exits()) == 2 and all(t.startswith("75 stopped by SIGTERM while evaluating (pgd40, batch 2 of")
                                     for t in exits()), exits()
    assert (out / "eval.partial.pt").exists() and not (out / "eval.json").exists()
    assert _launch(out, classifier, procs=1) == 0  # one process finishes what two began
    _assert_same(one_process, out)


@pytest.mark.slow
def test_cli_store_generate_and_label_under_torchrun_match_one_process(tmp_path, classifier):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        store = tmp_path / name
        for verb in (["store", "generate", str(store), "digits_demo", "--num-samples", "500", "--shard-size", "100",
                      "--set", "generator.pca_components=10", "--quiet"],
                     ["store", "label", str(store), "--checkpoint", str(classifier), "--batch-size", "64",
                      "--device", "cpu", "--balanced", "--quiet"]):
            cmd = [sys.executable, *launcher, "-m", "robustgen.cli", *verb]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.count("\n}") == 1  # one JSON summary, from rank 0
    one, two = _store_files(tmp_path / "one"), _store_files(tmp_path / "two")
    assert sorted(one) == sorted(two) and "selection.npy" in one
    for name in one:
        assert one[name] == two[name], name
