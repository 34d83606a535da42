"""What a long cluster run meets (docs/reliability.md): folder locks, preemption signals, NaN/inf
losses and weights. Faults are injected with signals, subprocesses and step functions."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from robustgen.data import ImageDataset
from robustgen.models import create_model
from robustgen.runtime import preempt
from robustgen.runtime.errors import NonFiniteError, RobustgenError
from robustgen.runtime.locks import FolderLock, LockHeld
from robustgen.train.loop import LoopSettings, train_loop
from robustgen.train.mixing.sources import ArraySource
from robustgen.train.steps import TrainingAttack, trades_step_loss

SPEC = {"arch": "small-cnn", "num_classes": 4, "in_channels": 1, "activation": "silu", "image_size": 8}
# a run that trains and evaluates the baseline only, on few steps
QUICK_RUN = ["--set", "data.val_size=64", "--set", "train.alpha=1", "--set", "train.epochs=1",
             "--set", "train.batch_size=128", "--set", "train.inner.steps=1", "--set", "train.eval_every_epochs=1",
             "--set", "eval.n=40", "--set", "eval.batch_size=40", "--set", "train.log_every_steps=2"]


pytestmark = pytest.mark.usefixtures("preemption_handlers_restored")  # conftest.py


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


# --------------------------------------------------------------------------- locks
def _holder(folder, seconds):
    """A process owning ``folder`` for ``seconds``; returns once it holds the lock."""
    code = ("import sys, time; from robustgen.runtime.locks import FolderLock\n"
            "with FolderLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            env=_env())
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_second_owner_is_told_who_holds_the_folder_and_wait_waits(tmp_path):
    proc = _holder(tmp_path, 3)
    try:
        with pytest.raises(LockHeld, match=rf"in use by another process, pid {proc.pid} on host "
                                           rf"{socket.gethostname()}.*--wait"):
            FolderLock(tmp_path).acquire()
        messages = []
        t0 = time.perf_counter()
        with FolderLock(tmp_path, wait=True, log=messages.append) as lock:
            assert lock.held and time.perf_counter() - t0 > 0.5
            owner = json.loads((tmp_path / ".lock").read_text())
            assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert len(messages) == 1 and f"waiting for pid {proc.pid}" in messages[0]
        assert (tmp_path / ".lock").read_text() == ""  # released: nobody owns the folder
    finally:
        proc.kill()
        proc.wait()


def test_stale_locks_are_taken_over_with_a_message(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / ".lock"
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": time.time()}))
    messages = []
    with FolderLock(tmp_path, log=messages.append):
        pass
    assert len(messages) == 1 and f"taking over the lock of pid {dead.pid}" in messages[0] \
        and "no longer running" in messages[0]
    # another host: its heartbeat (the file's mtime) decides
    lock_file.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "since": time.time()}))
    with pytest.raises(LockHeld, match="pid 1 on host node-elsewhere"):
        FolderLock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(lock_file, (old, old))
    messages.clear()
    with FolderLock(tmp_path, log=messages.append):
        pass
    assert "node-elsewhere" in messages[0] and "no heartbeat for" in messages[0]


def test_heartbeat_refreshes_the_lock_file(tmp_path):
    with FolderLock(tmp_path, heartbeat_s=0.1):
        old = time.time() - 3600
        os.utime(tmp_path / ".lock", (old, old))
        time.sleep(0.5)
        assert time.time() - (tmp_path / ".lock").stat().st_mtime < 5


def test_two_runs_4s_apart_second_exits_2_naming_the_first(tmp_path):
    """The reproduction of issue 14: a double-submitted ``robustgen run --out X``."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "robustgen.cli", "run", "digits_demo", "--out", str(out), "--quiet", *QUICK_RUN]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    time.sleep(4)
    second = subprocess.run(cmd, capture_output=True, env=_env(), timeout=600)
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-2000:]
    err = second.stderr.decode().strip()
    assert second.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"in use by another process, pid {first.pid} on host {socket.gethostname()}" in err
    assert (out / "results.json").is_file()


# --------------------------------------------------------------------------- preemption
def _dataset(n=96, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = (rng.random((n, 8, 8, 1)) * 60 + labels[:, None, None, None] * 50).astype(np.uint8)
    return ImageDataset(images=images, labels=labels.astype(np.int64), class_names=("a", "b", "c", "d"), name="toy")


def _train(out, total=9, *, hook=None, checkpoint_every=4, eval_every=3, log_every=2):
    """A short TRADES run; ``hook(call)`` runs before each step's loss and may return a factor for it."""
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=16, total_steps=total, warmup_steps=2, peak_lr=0.05, source_weights=(0.5, 0.5), ema_decay=0.9,
                     checkpoint_every_steps=checkpoint_every, eval_every_steps=eval_every, log_every_steps=log_every,
                     crop_padding=1, flip=True, seed=3)
    inner = trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=2), beta=6.0)
    calls = {"n": 0}

    def step_loss(attack_model, model, x, targets, generator):
        factor = hook(calls["n"], model) if hook is not None else None
        calls["n"] += 1
        loss = inner(attack_model, model, x, targets, generator)
        return loss if factor is None else loss * factor

    def evaluate(variants, step):
        return {k: {"score": -step if k == "raw" else -step - 0.5} for k in variants}  # the first eval stays best

    result = train_loop(model, settings=s, real=_dataset(), generated=[ArraySource.from_dataset(_dataset(40, 1))],
                        step_loss=step_loss, evaluate=evaluate, out_dir=out, device=torch.device("cpu"), spec=SPEC,
                        extra_meta={}, fingerprint="fp", progress=False)
    return model, result


def _signal_at(call, signum):
    def hook(n, model):
        if n == call:
            signal.raise_signal(signum)
    return hook


def test_training_stops_at_the_next_step_on_a_signal_and_resumes_identically(tmp_path):
    signum = signal.SIGTERM  # SIGUSR1 takes the same path (tested on labelling below)
    from robustgen.checkpoint import load_state

    full, full_result = _train(tmp_path / "full")
    preempt.install()
    with pytest.raises(preempt.Preempted, match=rf"stopped by {signal.Signals(signum).name} .* at step 6/9"):
        _train(tmp_path / "cut", hook=_signal_at(5, signum))  # signal during step 6 (call 5)
    assert load_state(tmp_path / "cut" / "state.pt")["step"] == 6  # saved at the step boundary, not at 4
    preempt.reset()
    resumed, result = _train(tmp_path / "cut")
    assert result.resumed_from == 6
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert result.history == full_result.history  # the loss log too (the log window in progress is saved)

    # metrics.jsonl: a kill after the checkpoint leaves records the resumed run redoes; they are
    # dropped, so the resumed file has each step once, the same records as the uninterrupted run
    from robustgen.tracking import read_metrics

    def rows(folder):
        return [(r["step"], r.get("model"), r.get("loss"), r.get("lr"), r.get("score"))
                for r in read_metrics(folder / "metrics.jsonl")]

    cut, stale = tmp_path / "cut2", {"step": 8, "loss": 123.0, "lr": 0.0}
    preempt.install()
    with pytest.raises(preempt.Preempted):
        _train(cut, hook=_signal_at(5, signum))
    preempt.reset()
    with open(cut / "metrics.jsonl", "a") as f:  # written after the checkpoint by a run then SIGKILLed
        f.write(json.dumps(stale) + "\n" + '{"step": 9, "lo')  # the last line cut mid-write
    _train(cut)
    assert rows(cut) == rows(tmp_path / "full") and len(rows(cut)) == len(set(rows(cut)))
    steps = [r[0] for r in rows(cut) if r[1] is None]
    assert steps == [2, 4, 6, 8, 9]  # every log point once, in order


def test_signal_outside_a_resumable_loop_stops_at_once():
    preempt.install()
    with pytest.raises(preempt.Preempted, match="outside a resumable step"):
        signal.raise_signal(signal.SIGTERM)
        time.sleep(1)


def test_cli_exits_75_on_sigterm_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "robustgen.cli", "run", "digits_demo", "--out", str(out), "--quiet", *QUICK_RUN,
           "--set", "train.epochs=4", "--set", "train.checkpoint_every_epochs=0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 300
    while not list(out.glob("stages/train-*/state.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the first checkpoint: the loop runs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == preempt.EXIT_PREEMPTED
    err = proc.stderr.read().decode().strip().splitlines()
    assert err[-1].startswith("robustgen: stopped by SIGTERM in train[baseline] at step") and "state in" in err[-1] \
        and err[-1].endswith("run the same command again to resume"), err[-1]
    assert not (out / "results.json").exists() and (out / ".lock").read_text() == ""
    rerun = subprocess.run(cmd, capture_output=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    (summary,) = out.glob("stages/train-*/summary.json")
    assert json.loads(summary.read_text())["resumed_from_step"] > 0


def test_store_jobs_and_evaluation_stop_on_a_signal_and_resume_identically(tmp_path):
    from robustgen.data.store import Store
    from robustgen.evaluate import evaluate_robustness
    from robustgen.generate.sample_to_store import generate_store
    from robustgen.label.label_store import label_store

    data = _dataset()
    kw = dict(generator="gaussian", train_images=data.images, train_labels=data.labels, num_classes=4,
              num_samples=50, seed=0, shard_size=10, progress=False)
    generate_store(tmp_path / "ref", **kw)
    preempt.install()
    with pytest.raises(preempt.Preempted, match="after shard 1"):
        generate_store(tmp_path / "cut", **kw, on_shard=lambda k: k == 1 and signal.raise_signal(signal.SIGTERM))
    preempt.reset()
    assert generate_store(tmp_path / "cut", **kw)["skipped"] == 20
    ref, cut = Store(tmp_path / "ref"), Store(tmp_path / "cut")
    assert np.array_equal(ref.gather(np.arange(50)), cut.gather(np.arange(50)))

    model = create_model("small-cnn", num_classes=4, in_channels=1).eval()
    label_store(tmp_path / "ref", model, labeller={"id": "m"}, batch_size=8, progress=False)
    with pytest.raises(preempt.Preempted, match="while labelling .*, after shard 2"):
        label_store(tmp_path / "cut", model, labeller={"id": "m"}, batch_size=8, progress=False,
                    on_shard=lambda k: k == 2 and signal.raise_signal(signal.SIGUSR1))
    preempt.reset()
    assert label_store(tmp_path / "cut", model, labeller={"id": "m"}, batch_size=8, progress=False)["skipped"] == 30
    assert np.array_equal(Store(tmp_path / "ref").confidences, Store(tmp_path / "cut").confidences)

    args = dict(attack="pgd40", norm="linf", eps=0.1, batch_size=16, seed=0, state_key="k")
    full = evaluate_robustness(model, data.images, data.labels, **args)
    calls = {"n": 0}
    forward = model.forward

    def counting(x):  # a signal during the attack on the second batch
        calls["n"] += 1
        if calls["n"] == 60:
            signal.raise_signal(signal.SIGTERM)
        return forward(x)

    model.forward = counting
    with pytest.raises(preempt.Preempted, match="evaluating"):
        evaluate_robustness(model, data.images, data.labels, **args, state_path=tmp_path / "eval.pt")
    model.forward = forward
    preempt.reset()
    resumed = evaluate_robustness(model, data.images, data.labels, **args, state_path=tmp_path / "eval.pt")
    assert (resumed["clean_accuracy"], resumed["robust_accuracy"]) == (full["clean_accuracy"], full["robust_accuracy"])


def test_ddpm_training_stops_on_a_signal_and_resumes_identically(tmp_path):
    from robustgen.data import load_dataset
    from robustgen.generate.diffusion.adapter import fit_ddpm

    d = load_dataset("digits", "train")
    images, labels = d.images[:64], d.labels[:64]
    tiny = dict(unet="tiny", train_steps=4, batch_size=8, warmup_steps=2, sampling_steps=3, sample_batch_size=4,
                checkpoint_every_steps=100)
    full = fit_ddpm(images, labels, num_classes=10, **tiny)
    import robustgen.generate.diffusion.train as ddpm_train

    real_loss = ddpm_train.ddpm_loss
    calls = {"n": 0}

    def loss_with_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGTERM)
        return real_loss(*a, **k)

    preempt.install()
    ddpm_train.ddpm_loss = loss_with_signal
    try:
        with pytest.raises(preempt.Preempted, match="in ddpm training at step 2/4"):
            fit_ddpm(images, labels, num_classes=10, **tiny, work_dir=tmp_path)
    finally:
        ddpm_train.ddpm_loss = real_loss
    preempt.reset()
    resumed = fit_ddpm(images, labels, num_classes=10, **tiny, work_dir=tmp_path)
    assert resumed.info["resumed_from"] == 2
    a, b = full.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- NaN / inf
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from robustgen.checkpoint import load_state, read_model_file

    out = tmp_path / "t"
    # NaN from step 7 (call 6) on; checkpoints at 4 and 8, evaluations at 3, 6, 9, logs every 2
    with pytest.raises(NonFiniteError, match=r"loss became nan/inf at step 7; .*state.pt at step 4; "
                                             r"best.safetensors \(step 3\) is untouched") as e:
        _train(out, hook=lambda n, model: float("nan") if n >= 6 else None)
    assert "\n" not in str(e.value)
    state = load_state(out / "state.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())
    weights, info = read_model_file(out / "best.safetensors")
    assert info["selection"]["step"] == 3 and all(torch.isfinite(v).all() for v in weights.values())
    assert not (out / "last.safetensors").exists()


def test_nonfinite_weights_with_a_finite_loss_are_caught_at_the_next_boundary(tmp_path):
    def corrupt(n, model):
        if n == 4:  # during step 5: a BatchNorm running mean (unused by the training loss) turns inf
            with torch.no_grad():
                next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.fill_(float("inf"))

    with pytest.raises(NonFiniteError, match=r"weights became nan/inf by step 6; .*state.pt at step 4"):
        _train(tmp_path / "t", hook=corrupt, log_every=100)


def test_ddpm_nan_loss_stops_naming_the_step(tmp_path, monkeypatch):
    from robustgen.data import load_dataset
    from robustgen.generate.diffusion import train as ddpm_train
    from robustgen.generate.diffusion.adapter import fit_ddpm

    d = load_dataset("digits", "train")
    real_loss = ddpm_train.ddpm_loss
    calls = {"n": 0}

    def nan_at_3(*a, **k):
        calls["n"] += 1
        loss = real_loss(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ddpm_train, "ddpm_loss", nan_at_3)
    with pytest.raises(NonFiniteError, match=r"ddpm: the loss became nan at step 3; .*at step 2"):
        fit_ddpm(d.images[:64], d.labels[:64], num_classes=10, unet="tiny", train_steps=4, batch_size=8,
                 warmup_steps=2, sampling_steps=3, sample_batch_size=4, checkpoint_every_steps=2, work_dir=tmp_path)


def test_lock_and_nan_errors_are_robustgen_errors():
    assert issubclass(LockHeld, RobustgenError) and issubclass(NonFiniteError, RobustgenError)


# --------------------------------------------------------------------------- integrity on reuse
def _flip_byte(path, offset=-1):
    time.sleep(0.01)  # a new mtime for the process's hash cache, as any later corruption would have
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_image_shard_is_never_read(tmp_path):
    from robustgen.data.store import Store
    from robustgen.data.store.writer import StoreWriter

    data = _dataset(40)
    with StoreWriter.create(tmp_path / "s", image_shape=(8, 8, 1), num_classes=4, shard_size=16) as w:
        w.append(data.images, data.labels)
    assert np.array_equal(Store(tmp_path / "s", verify_images=True).gather(np.arange(40)), data.images)
    _flip_byte(tmp_path / "s" / "images-00001.npy")
    store = Store(tmp_path / "s", verify_images=True)  # opens (layout is fine); the hash runs behind
    assert np.array_equal(store.gather(np.arange(16)), data.images[:16])  # shard 0 is intact
    with pytest.raises(RobustgenError, match=r"images-00001.npy: sha256 does not match the manifest .* not used"):
        store.gather(np.array([3, 20]))
    # training reads generated stores this way
    from robustgen.stages.train import read_generated

    source = read_generated(tmp_path / "s", 4, (8, 8, 1))
    with pytest.raises(RobustgenError, match="images-00001.npy: sha256"):
        _train_on(tmp_path / "t", source)


def _train_on(out, source):
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=16, total_steps=2, warmup_steps=0, peak_lr=0.05, source_weights=(0.5, 0.5), crop_padding=0, flip=False)
    return train_loop(model, settings=s, real=_dataset(), generated=[source], step_loss=_plain_loss, evaluate=None,
                      out_dir=out, device=torch.device("cpu"), spec=SPEC, extra_meta={}, fingerprint="fp",
                      progress=False)


def _plain_loss(attack_model, model, x, targets, generator):
    return -(targets * torch.log_softmax(model(x.float() / 255), 1)).sum(1).mean()


def test_reused_stage_with_corrupt_outputs_is_recomputed(tmp_path):
    from robustgen.pipeline import Stage

    calls = []

    def compute(folder):
        calls.append(1)
        (folder / "out.txt").write_text("result")
        (folder / "sub").mkdir(exist_ok=True)
        (folder / "sub" / "w.safetensors").write_bytes(b"weights")
        (folder / "state.pt").write_bytes(b"state")
        return {"value": len(calls)}

    stage = Stage(tmp_path, "s", "fp")
    assert stage.run(compute, {}) == {"value": 1}
    assert stage.run(compute, {}) == {"value": 1} and len(calls) == 1  # reused
    manifest = json.loads(stage.manifest_path.read_text())
    assert set(manifest["outputs"]) == {"out.txt", "sub/w.safetensors", "state.pt"}
    _flip_byte(stage.dir / "sub" / "w.safetensors")
    assert stage.run(compute, {}) == {"value": 2}  # recomputed, the corrupt file never used
    (stage.dir / "out.txt").unlink()
    assert stage.run(compute, {}) == {"value": 3}


@pytest.mark.slow
def test_corrupt_generated_shard_in_a_run_folder_is_regenerated(tmp_path, capfd):
    """A bit flipped in a generated image shard of a finished run: the generate and label stages
    are redone (that shard only), training and evaluation are reused, results are identical."""
    from robustgen.cli import main

    out = tmp_path / "run"
    args = ["run", "digits_demo", "--out", str(out), "--quiet", *QUICK_RUN, "--set", "train.alpha=0.5", "--set", "baseline=false",
            "--set", "classifier.epochs=1", "--set", "generator.num_samples=300"]
    main(args)
    first = json.loads((out / "results.json").read_text())
    (shard,) = [p for p in out.glob("stages/generate-*/store/images-00000.npy")]
    _flip_byte(shard, offset=-5)
    capfd.readouterr()
    main(args)
    err = capfd.readouterr().err
    assert "generate: store/images-00000.npy in" in err and "recomputing the stage" in err
    assert "label: store/images-00000.npy in" in err
    assert "train-gaussian-alpha0.5: reusing" in err
    again = json.loads((out / "results.json").read_text())
    strip = lambda r: [{k: v for k, v in m.items() if not k.endswith("time_s")} for m in r["models"]]  # noqa: E731
    assert strip(again) == strip(first)
    from robustgen.data.store.inspect import verify_store

    for store in out.glob("stages/*/store"):
        assert verify_store(store) == []


# --------------------------------------------------------------------------- full disk
def _enospc(*a, **k):
    raise OSError(28, "No space left on device")


def test_full_disk_at_a_checkpoint_keeps_the_previous_state_and_resumes_identically(tmp_path, monkeypatch):
    from robustgen.runtime.io import DiskFullError

    full, _ = _train(tmp_path / "full", checkpoint_every=2)
    real_save = torch.save
    calls = {"n": 0}

    def save_until_full(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 6:
            _enospc()
        calls["n"] += 1
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(DiskFullError, match=r"state.pt: no space left on the device \(\d+\.\d KiB needed, .* free\); "
                                            r"the previous state.pt is intact") as e:
        _train(tmp_path / "cut", checkpoint_every=2)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch, "save", real_save)
    from robustgen.checkpoint import load_state

    assert load_state(tmp_path / "cut" / "state.pt")["step"] == 4
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.endswith(".tmp")]
    resumed, result = _train(tmp_path / "cut", checkpoint_every=2)  # space freed
    assert result.resumed_from == 4
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


def test_full_disk_while_writing_a_shard_resumes_to_identical_bytes(tmp_path, monkeypatch):
    from robustgen.data.store.inspect import verify_store
    from robustgen.generate.sample_to_store import generate_store
    from robustgen.runtime.io import DiskFullError

    data = _dataset()
    kw = dict(generator="gaussian", train_images=data.images, train_labels=data.labels, num_classes=4,
              num_samples=50, seed=0, shard_size=10, progress=False)
    generate_store(tmp_path / "ref", **kw)
    real_fsync = os.fsync

    def fsync_until_full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".images-00002.npy."):
            _enospc()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    with pytest.raises(DiskFullError, match=r"images-00002.npy: no space left on the device \(\d+ bytes needed, .*\); "
                                            r"no partial images-00002.npy is left"):
        generate_store(tmp_path / "cut", **kw)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert len(json.loads((tmp_path / "cut" / "manifest.json").read_text())["shards"]) == 2
    assert generate_store(tmp_path / "cut", **kw)["skipped"] == 20
    assert verify_store(tmp_path / "cut") == [] and not list((tmp_path / "cut").glob(".*.tmp"))
    for p in (tmp_path / "ref").glob("*.npy"):
        assert (tmp_path / "cut" / p.name).read_bytes() == p.read_bytes()


def test_too_little_free_space_is_reported_before_writing(tmp_path, monkeypatch):
    from robustgen.runtime import io
    from robustgen.runtime.io import DiskFullError, write_json

    write_json(tmp_path / "results.json", {"old": 1})
    monkeypatch.setattr(io, "_free_bytes", lambda folder: 10)
    with pytest.raises(DiskFullError, match=r"results.json: no space left on the device \(\d+ bytes needed, "
                                            r"10 bytes free\)"):
        write_json(tmp_path / "results.json", {"new": list(range(100))})
    assert json.loads((tmp_path / "results.json").read_text()) == {"old": 1}


# --------------------------------------------------------------------------- randomized kills
JOB = os.path.join(os.path.dirname(__file__), "fault_job.py")


def _read_fully(path):
    """Read a file as its consumer would; a partial file raises."""
    from safetensors.torch import load_file

    from robustgen.data.store.format import npy_layout

    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".npy":
        shape, dtype, offset, size = npy_layout(path)
        assert size == offset + int(np.prod(shape)) * dtype.itemsize, f"{size} bytes"
    elif path.suffix == ".safetensors":
        load_file(str(path))
    elif path.suffix == ".pt":
        torch.load(path, weights_only=True)
    elif path.suffix == ".npz":
        with np.load(path) as f:
            [f[k] for k in f.files]


class _Reader:
    """Reads every finished-looking file of a folder in a loop while a job writes it."""

    def __init__(self, folder):
        import threading

        self.folder, self.bad, self.reads = folder, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            for p in list(self.folder.rglob("*")) if self.folder.exists() else []:
                if any(part.startswith(".") for part in p.relative_to(self.folder).parts) or not p.is_file():
                    continue
                try:
                    _read_fully(p)
                    self.reads += 1
                except FileNotFoundError:
                    pass  # replaced or removed between listing and reading
                except Exception as e:  # a partial or corrupt file seen by a reader
                    if p.exists():
                        self.bad.append(f"{p}: {type(e).__name__}: {e}")
            time.sleep(0.01)

    def stop(self):
        self._stop.set()
        self._thread.join()


def _final_files(out):
    import hashlib

    names = [*out.glob("gen/*.npy"), *out.glob("lab/*.npy"), out / "train" / "best.safetensors",
             out / "train" / "last.safetensors", out / "train" / "history.json", out / "eval.json"]
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in names}


def kill_and_resume_trials(tmp_path, seeds, max_kills):
    """Run the job once untouched, then per seed: SIGKILL it at random times (1..max_kills runs),
    run it to the end, and compare its files with the untouched run's while a reader thread
    checks that no file is ever seen partial. Returns the number of identical trials."""
    import random

    cmd = [sys.executable, JOB]
    t0 = time.perf_counter()
    subprocess.run([*cmd, str(tmp_path / "ref")], check=True, env=_env(), timeout=900)
    duration = time.perf_counter() - t0
    reference = _final_files(tmp_path / "ref")
    identical = 0
    for seed in seeds:
        rng = random.Random(seed)
        out = tmp_path / f"trial-{seed}"
        reader = _Reader(out)
        try:
            for _ in range(rng.randint(1, max_kills)):
                proc = subprocess.Popen([*cmd, str(out)], env=_env(), stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.1, 1.0) * duration)
                proc.kill()
                proc.wait()
            done = subprocess.run([*cmd, str(out)], env=_env(), capture_output=True, timeout=900)
        finally:
            reader.stop()
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert reader.bad == [], reader.bad[:5]
        assert _final_files(out) == reference, f"seed {seed}"
        identical += 1
    print(f"kill/resume trials identical: {identical} of {len(seeds)} (job {duration:.1f} s)")
    return identical


def test_random_kills_resume_identically_and_no_partial_file_is_seen(tmp_path):
    assert kill_and_resume_trials(tmp_path, seeds=[0], max_kills=1) == 1


@pytest.mark.slow
def test_many_random_kills_resume_identically(tmp_path):
    seeds = list(range(int(os.environ.get("ROBUSTGEN_KILL_TRIALS", "20"))))
    assert kill_and_resume_trials(tmp_path, seeds=seeds, max_kills=3) == len(seeds)
