"""The CLI end to end on a tiny config, stage reuse, load_model, and bad input handling."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import robustgen
from robustgen.cli import main

TINY = [
    "data.val_size=64", "classifier.epochs=1", "classifier.batch_size=64",
    "generator.num_samples=300", "train.epochs=1", "train.batch_size=64", "train.inner.steps=2",
    "train.eval_every_epochs=1", "eval.n=60", "eval.batch_size=60", "train.log_every_steps=5", "eval.attack=pgd40",
]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def run_cli(args, capsys=None):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    main(["run", "digits_demo", "--out", str(out), "--quiet", *_sets(TINY)])
    return out


def test_run_writes_results_report_and_grid(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names == ["baseline", "gaussian-alpha0.8"]
    for m in results["models"]:
        for key in ("name", "alpha", "clean_accuracy", "robust_accuracy", "attack", "n_eval"):
            assert key in m
        assert 0 <= m["robust_accuracy"] <= m["clean_accuracy"] <= 1
        assert m["n_eval"] == 60 and m["attack"] == "pgd40"
        assert m["max_perturbation"] <= 0.2 + 1e-6
    assert results["models"][0]["alpha"] == 1.0 and results["models"][1]["generated_samples"] == 300
    report = (tiny_run / "report.md").read_text()
    assert "| baseline | 1 |" in report and "samples.png" in report
    assert (tiny_run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in names:  # training curves and loss landscapes of every model, listed in the report
        for kind in ("curves", "landscape"):
            figure = f"figures/{name}-{kind}.png"
            assert figure in report and (tiny_run / figure).read_bytes()[:4] == b"\x89PNG"


def test_second_run_reuses_every_stage(tiny_run, capsys):
    before = sorted(p.name for p in (tiny_run / "stages").iterdir())
    main(["run", "digits_demo", "--out", str(tiny_run), "--quiet", *_sets(TINY)])
    err = capsys.readouterr().err
    assert "running" not in err and err.count("reusing") == len(before)
    # another alpha reuses the classifier, the samples and their labels
    main(["run", "digits_demo", "--out", str(tiny_run), "--quiet", *_sets(TINY + ["train.alpha=0.7", "baseline=false"])])
    err = capsys.readouterr().err
    assert "classifier: reusing" in err and "label: reusing" in err and "train-gaussian-alpha0.7: running" in err


def test_load_model_and_eval_verb(tiny_run, tmp_path, capsys):
    ckpt = str(next((tiny_run / "stages").glob("train-gaussian-alpha0.8-*")) / "best.safetensors")
    expected = json.loads(next((tiny_run / "stages").glob("eval-gaussian-alpha0.8-*/eval.json")).read_text())
    model = robustgen.load_model(ckpt)
    assert not model.training
    logits = model(torch.rand(3, 1, 8, 8))
    assert logits.shape == (3, 10)
    out = tmp_path / "eval.json"
    main(["eval", "--checkpoint", ckpt, "--attack", "pgd40", "--n", "60", "--eps", "0.2", "--out", str(out), "--quiet"])
    data = json.loads(out.read_text())
    assert data["n"] == 60 and data["robust_accuracy"] == pytest.approx(expected["robust_accuracy"])



def test_eval_warns_when_its_first_n_images_miss_classes(tiny_run, tmp_path, capsys):
    # released .npz files are often sorted by class: the first n test images are then a few classes
    from robustgen.data import write_npz

    ckpt = str(next((tiny_run / "stages").glob("train-gaussian-alpha0.8-*")) / "best.safetensors")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_npz(tmp_path / f"{split}.npz", image=rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8),
                  label=np.repeat(np.arange(10), 6))
    args = ["eval", "--checkpoint", ckpt, "--attack", "pgd40", "--eps", "0.2", "--quiet",
            "--set", f"data.dataset=npz:{tmp_path}"]
    main([*args, "--n", "12"])
    assert "takes the first 12 test images, which hold 2 of the test split's 10 classes" in capsys.readouterr().err
    main([*args, "--n", "60"])
    assert "warning" not in capsys.readouterr().err
    # a stratified subset of the class-sorted file: 12 images, every class (1 or 2 each), no warning
    main([*args, "--n", "12", "--set", "eval.selection=stratified", "--out", str(tmp_path / "s.json")])
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "s.json").read_text())["n"] == 12


def test_stratified_rows_cover_every_class_and_are_seeded():
    from robustgen.data.datasets import stratified_rows

    labels = np.repeat(np.arange(1000), 50)  # ImageNet val as a class-sorted folder
    rows = stratified_rows(labels, 5000, seed=0)
    assert len(rows) == 5000 and np.all(np.bincount(labels[rows], minlength=1000) == 5)
    assert np.array_equal(rows, np.sort(rows)) and np.array_equal(rows, stratified_rows(labels, 5000, seed=0))
    assert not np.array_equal(rows, stratified_rows(labels, 5000, seed=1))
    odd = stratified_rows(np.repeat(np.arange(3), [10, 2, 10]), 9, seed=0)  # a small class gives what it has
    assert len(odd) <= 9 and set(np.repeat(np.arange(3), [10, 2, 10])[odd]) == {0, 1, 2}

def test_classifier_verb_and_pipeline_compute_the_same_fingerprint(tiny_run, tmp_path, capsys):
    from robustgen.config import replace
    from robustgen.presets import load_config
    from robustgen.stages import classifier, data_fingerprint, load_splits

    main(["classifier", "digits_demo", "--out", str(tmp_path / "c"), "--quiet", *_sets(TINY)])
    verb_fp = torch.load(tmp_path / "c" / "state.pt", weights_only=True)["fingerprint"]
    stage = next((tiny_run / "stages").glob("classifier-*"))
    assert stage.name == f"classifier-{verb_fp}"
    assert torch.load(stage / "state.pt", weights_only=True)["fingerprint"] == verb_fp
    # augmentation is part of it: the verb refuses to resume a folder trained with other crops or flips
    cfg = load_config("digits_demo", TINY)
    data_fp = data_fingerprint(cfg, load_splits(cfg))
    for change in ({"data.crop_padding": cfg.data.crop_padding + 1}, {"data.flip": not cfg.data.flip}):
        assert classifier.fingerprint(replace(cfg, **change), data_fp) != verb_fp
    capsys.readouterr()
    assert run_cli(["classifier", "digits_demo", "--out", str(tmp_path / "c"), "--quiet",
                    *_sets(TINY + ["data.crop_padding=0"])]) == 2
    assert "different config" in capsys.readouterr().err


def _export(store, path):
    """A store in the released .npz layout, as numpy arrays."""
    main(["store", "export", str(store), str(path), "--quiet"])
    return np.load(path)


def test_store_generate_and_label_verbs(tiny_run, tmp_path):
    samples = tmp_path / "s"
    main(["store", "generate", str(samples), "digits_demo", "--num-samples", "50", "--quiet"])
    arrays = _export(samples, tmp_path / "s.npz")
    assert arrays["image"].shape == (50, 8, 8, 1) and arrays["image"].dtype == np.uint8
    clf = next((tiny_run / "stages").glob("classifier-*")) / "best.safetensors"
    labeled = tmp_path / "l"
    main(["store", "label", str(samples), "--out", str(labeled), "--checkpoint", str(clf), "--top-k", "2", "--quiet"])
    lab = _export(labeled, tmp_path / "l.npz")
    assert len(lab["label"]) <= 20 and np.bincount(lab["label"]).max() <= 2
    assert set(lab.files) >= {"image", "label", "confidence", "condition"}
    assert len(_export(samples, tmp_path / "again.npz")["image"]) == 50  # the generated store is left as it was


def test_store_label_condition_mode_and_per_class_filters(tiny_run, tmp_path):
    generated = next((tiny_run / "stages").glob("generate-*")) / "store"
    clf = next((tiny_run / "stages").glob("classifier-*")) / "best.safetensors"
    src = _export(generated, tmp_path / "samples.npz")
    out = tmp_path / "cond"
    main(["store", "label", str(generated), "--out", str(out), "--checkpoint", str(clf),
          "--condition-top-fraction", "0.2", "--quiet"])
    lab = _export(out, tmp_path / "cond.npz")
    assert np.array_equal(lab["label"], lab["condition"])  # label = the conditioning class (Wang et al.)
    counts = np.bincount(src["label"], minlength=10)
    assert np.bincount(lab["label"], minlength=10).tolist() == [int(np.floor(0.2 * n + 0.5)) for n in counts]
    # within each class the kept samples are the most confident in the conditioning class
    from robustgen.checkpoint import load_model
    from robustgen.label import predict_probabilities

    probs = predict_probabilities(load_model(clf), src["image"], batch_size=512, device=torch.device("cpu"))
    conf = probs[np.arange(len(src["label"])), src["label"]]
    for c in range(10):
        mine = np.sort(conf[src["label"] == c])[::-1]
        kept = np.sort(lab["confidence"][lab["label"] == c])[::-1]
        assert np.allclose(kept, mine[:len(kept)])
    balanced = tmp_path / "bal"
    main(["store", "label", str(generated), "--out", str(balanced), "--checkpoint", str(clf),
          "--condition-top-fraction", "1", "--balanced", "--quiet"])
    per_class = np.bincount(_export(balanced, tmp_path / "bal.npz")["label"], minlength=10)
    assert len(set(per_class.tolist())) == 1 and per_class[0] > 0


def test_store_label_on_unconditional_samples(tiny_run, tmp_path, capsys):
    clf = next((tiny_run / "stages").glob("classifier-*")) / "best.safetensors"
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "uncond.npz", image=images, label=np.zeros(40, np.int64))  # no conditioning classes
    main(["store", "import", str(tmp_path / "uncond.npz"), str(tmp_path / "uncond"), "--num-classes", "10", "--quiet"])
    main(["store", "label", str(tmp_path / "uncond"), "--out", str(tmp_path / "l"), "--checkpoint", str(clf),
          "--quiet"])
    lab = _export(tmp_path / "l", tmp_path / "l.npz")
    assert len(lab["label"]) == 40 and "condition" not in lab.files
    capsys.readouterr()
    assert run_cli(["store", "label", str(tmp_path / "uncond"), "--out", str(tmp_path / "c"), "--checkpoint", str(clf),
                    "--condition-top-fraction", "0.5", "--quiet"]) == 2
    assert "condition" in capsys.readouterr().err


def test_train_verb_reads_stores_and_weighted_sources(tiny_run, tmp_path, capsys):
    store = next((tiny_run / "stages").glob("label-*")) / "store"  # the run's labelled generated data
    labeled = tmp_path / "labeled.npz"
    main(["store", "export", str(store), str(labeled)])
    capsys.readouterr()
    mix = (f"data.sources=[{{path: train, weight: 0.5}}, {{path: generated, weight: 0.4}}, "
           f"{{path: {labeled}, weight: 0.1, classes: [0, 1]}}]")
    sets = _sets([*TINY, mix, "train.alpha=0.5"])
    main(["train", "digits_demo", "--generated", str(store), "--out", str(tmp_path / "t"), "--quiet", *sets])
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert [s["weight"] for s in summary["sources"]] == [0.5, 0.4, 0.1]
    assert summary["sources"][1]["name"] == str(store) and summary["sources"][2]["name"].endswith("[classes 0,1]")
    assert (tmp_path / "t" / "best.safetensors").is_file()
    # the real split's share and train.alpha must agree; a missing source is named
    assert run_cli(["train", "digits_demo", "--generated", str(store), "--out", str(tmp_path / "u"),
                    *_sets([*TINY, mix])]) == 2
    assert "set train.alpha=0.5" in capsys.readouterr().err
    missing = "data.sources=[{path: train, weight: 0.5}, {path: /nowhere/x.npz, weight: 0.5}]"
    assert run_cli(["train", "digits_demo", "--out", str(tmp_path / "v"), *_sets([*TINY, missing, "train.alpha=0.5"])]) == 2
    assert "/nowhere/x.npz" in capsys.readouterr().err


def test_dry_run_prints_plan_without_output(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    # the preset's store and checkpoints need GBs: the plan is printed whatever this disk holds
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("u", "total used free")(10**15, 0, 10**15))
    main(["run", "cifar10_linf_wrn-28-10", "--dry-run", "--out", str(tmp_path / "x")])
    text = capsys.readouterr().out
    assert "train[baseline]" in text and "alpha=0.3" in text
    assert not (tmp_path / "x").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "robustgen.cli", *args], capture_output=True, text=True)


def _bad_npz(tmp_path, **arrays):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    good = dict(image=np.zeros((20, 8, 8, 1), np.uint8), label=np.arange(20) % 2)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", **{**good, **arrays})
    return folder


@pytest.mark.parametrize("case", ["unknown_key", "alpha", "eps", "missing_npz", "corrupt_npz", "dtype", "shape",
                                  "label_range", "nan"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    args = ["run", "digits_demo", "--out", str(tmp_path / "out"), "--set", "data.val_size=4"]
    if case == "unknown_key":
        args += ["--set", "train.alpah=0.3"]
    elif case == "alpha":
        args += ["--set", "train.alpha=2"]
    elif case == "eps":
        args += ["--set", "threat.eps=-1/255"]
    elif case == "missing_npz":
        args += ["--set", f"data.dataset=npz:{tmp_path}/nothing.npz"]
    elif case == "corrupt_npz":
        (tmp_path / "train.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
        args += ["--set", f"data.dataset=npz:{tmp_path}/train.npz"]
    elif case == "dtype":
        args += ["--set", f"data.dataset=npz:{_bad_npz(tmp_path, image=np.zeros((20, 8, 8, 1), np.float32))}"]
    elif case == "shape":
        args += ["--set", f"data.dataset=npz:{_bad_npz(tmp_path, image=np.zeros((20, 8, 8), np.uint8))}"]
    elif case == "label_range":
        args += ["--set", f"data.dataset=npz:{_bad_npz(tmp_path, label=np.full(20, -3))}"]
    elif case == "nan":
        args += ["--set", f"data.dataset=npz:{_bad_npz(tmp_path, confidence=np.full(20, np.nan))}"]
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustgen: error: "), result.stderr
    assert "Traceback" not in result.stderr
    if case not in ("unknown_key", "alpha", "eps"):
        assert ".npz" in lines[0] or "nothing" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage")
    result = _cli("eval", "--checkpoint", str(bad))
    assert result.returncode == 2 and "model.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_eval_verb_runs_the_paper_attack_suite_resumably(tiny_run, tmp_path):
    ckpt = str(next((tiny_run / "stages").glob("train-baseline-*")) / "best.safetensors")
    out = tmp_path / "aa.json"
    main(["eval", "--checkpoint", ckpt, "--attack", "aa+mt", "--n", "20", "--out", str(out), "--quiet"])
    data = json.loads(out.read_text())
    assert [s["stage"] for s in data["stages"]] == ["apgd-ce", "apgd-dlr", "multitargeted"]
    assert data["robust_accuracy"] == data["stages"][-1]["robust_accuracy"] <= data["clean_accuracy"]
    # every point was checked against the eps-ball by the cascade (an error otherwise)
    assert data["max_perturbation"] <= 0.2 * (1 + 1e-5) + 1e-6 and "clean_vs_training_log" in data["sanity"]
    assert not (tmp_path / "aa.json.partial.pt").exists()


def test_export_and_external_checkpoint_eval(tiny_run, tmp_path):
    ckpt = str(next((tiny_run / "stages").glob("train-baseline-*")) / "best.safetensors")
    plain = tmp_path / "model.pt"
    main(["export", "--checkpoint", ckpt, "--out", str(plain)])
    side = json.loads((tmp_path / "model.pt.json").read_text())
    assert side["threat_model"] == "Linf" and side["arch"] == "small-cnn"
    out = tmp_path / "ext.json"
    main(["eval", "--checkpoint", str(plain), "--arch", "small-cnn", "--set", "data.dataset=digits",
          "--attack", "pgd40", "--eps", "0.2", "--n", "30", "--out", str(out), "--quiet"])
    ours = tmp_path / "ours.json"
    main(["eval", "--checkpoint", ckpt, "--attack", "pgd40", "--n", "30", "--out", str(ours), "--quiet"])
    assert json.loads(out.read_text())["robust_accuracy"] == json.loads(ours.read_text())["robust_accuracy"]


def test_changed_stage_code_recomputes_that_stage_and_the_later_ones_with_a_notice(tiny_run, tmp_path, capsys,
                                                                                    monkeypatch):
    import shutil

    import robustgen.pipeline as pipeline
    from robustgen.stages import code

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    # a comment-only edit leaves a module's digest, so nothing recomputes
    source = tmp_path / "m.py"
    source.write_text('"""doc"""\nX = 1  # why\n')
    same = code._file_digest(source, 0)
    source.write_text('"""other doc"""\n\nX = 1\n')
    assert code._file_digest(source, 1) == same
    source.write_text("X = 2\n")
    assert code._file_digest(source, 2) != same

    # simulate a pulled fix to PGD (the inner attack of training, and an evaluation attack)
    real = code.module_digests

    def patched(stage):
        digests = real(stage)
        return {**digests, "attacks/pgd.py": "0" * 12} if "attacks/pgd.py" in digests else digests

    monkeypatch.setattr(code, "module_digests", patched)
    monkeypatch.setattr(pipeline, "module_digests", patched)
    before = {p.name.rsplit("-", 1)[1] for p in (out / "stages").iterdir()}
    main(["run", "digits_demo", "--out", str(out), "--quiet", *_sets(TINY)])
    err = capsys.readouterr().err
    for stage in ("classifier", "generate", "label"):  # before training: untouched
        assert f"{stage}: reusing" in err
    for stage in ("train-baseline", "train-gaussian-alpha0.8", "eval-baseline", "eval-gaussian-alpha0.8"):
        assert f"{stage}: running" in err
    for stage in ("train-baseline", "train-gaussian-alpha0.8"):
        assert f"{stage}: recomputing: " in err and "its code changed since (attacks/pgd.py)" in err
    # the same settings and inputs (the code did not really change): the same weights
    manifests = [json.loads(p.read_text()) for p in (out / "stages").glob("train-baseline-*/manifest.json")]
    new = next(m for m in manifests if m["fingerprint"] not in before)
    old = next(m for m in manifests if m["fingerprint"] in before and m.get("key") == new["key"])
    assert new["outputs"]["best.safetensors"] == old["outputs"]["best.safetensors"]


# --------------------------------------------------------------------------- run folder: provenance, live metrics, portability
def test_run_folder_records_what_ran_and_can_move(tiny_run, tmp_path, capsys):
    import shutil

    import yaml

    from robustgen.tracking import read_metrics

    out = tmp_path / "copy"
    shutil.copytree(tiny_run, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["dataset"] == "digits" and config["train"]["epochs"] == 1
    command = json.loads((out / "command.json").read_text())
    assert command["config"] == "digits_demo" and "train.epochs=1" in command["overrides"]
    env = json.loads((out / "environment.json").read_text())
    assert env["libraries"]["torch"] and env["libraries"]["diffusers"] and env["host"] and env["device"] == "cpu"
    assert env["robustgen"] == robustgen.__version__ and env["python"]
    log = (out / "log.txt").read_text()
    assert "train-baseline: running in" in log and "baseline: clean" in log
    for stage in (out / "stages").glob("train-*"):
        records = read_metrics(stage / "metrics.jsonl")
        assert records and {"step", "loss", "loss_natural_ce", "loss_robust_kl", "lr", "img_per_s"} <= set(records[0])
        # TRADES' terms: loss = CE + beta KL (beta 6)
        assert records[0]["loss"] == pytest.approx(records[0]["loss_natural_ce"] + 6 * records[0]["loss_robust_kl"],
                                                   rel=1e-4)
        # model selection's validation metrics, and the same on training images (the robust gap)
        assert any({"score", "val_robust_accuracy", "train_robust_accuracy", "train_clean_accuracy"} <= set(r)
                   for r in records)
    # no JSON file of the folder names an absolute path into it
    for path in out.rglob("*.json"):
        text = path.read_text()
        assert str(tiny_run.resolve()) not in text and str(tiny_run) not in text, path

    # moved elsewhere: the report rebuilds, a checkpoint evaluates, a rerun reuses every stage
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(out), moved)
    (moved / "report.md").unlink()
    main(["report", "run", str(moved)])
    report = (moved / "report.md").read_text()
    results = json.loads((moved / "results.json").read_text())
    name = results["models"][0]["name"]
    assert f"| {name} |" in report and f"figures/{name}-curves.png" in report
    checkpoint = moved / results["models"][0]["checkpoint"]
    assert checkpoint.exists() and not Path(results["models"][0]["checkpoint"]).is_absolute()
    capsys.readouterr()
    main(["eval", "digits_demo", "--checkpoint", str(checkpoint), "--set", "eval.n=20", "--set", "eval.attack=pgd40",
          "--quiet"])
    assert "robust_accuracy" in capsys.readouterr().out


def test_tensorboard_mirrors_the_training_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    main(["run", "digits_demo", "--out", str(out), "--quiet", "--set", "logging.tensorboard=true",
          "--set", "baseline=false", *_sets(TINY)])
    folder = next((out / "stages").glob("train-gaussian-*")) / "tensorboard"
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/raw/score"} <= set(tags)
    jsonl = [r for r in json.loads("[" + ",".join((folder.parent / "metrics.jsonl").read_text().split("\n")[:-1]) + "]")
             if "loss" in r]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in jsonl]
    assert events.Scalars("train/loss")[0].value == pytest.approx(jsonl[0]["loss"], rel=1e-6)


def test_presets_and_config_show(capsys):
    from robustgen.presets import list_presets

    main(["presets"])
    text = capsys.readouterr().out
    assert all(f"{name}" in text for name in list_presets()) and "digits_generator (default)" in text
    main(["presets", "--json"])
    rows = json.loads(capsys.readouterr().out)
    demo = next(r for r in rows if r["default"])
    assert demo["dataset"] == "digits" and demo["gpu_hours"] > 0 and demo["description"].startswith("The default")
    main(["config", "show", "digits_demo", "--set", "train.alpha=0.6"])
    assert "alpha: 0.6" in capsys.readouterr().out
    assert run_cli(["config", "show", "--set", "train.alpha=7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustgen: error: --set train.alpha=7: train.alpha must be in [0, 1]") and ".yaml" not in err


def test_progress_is_a_heartbeat_off_a_terminal(capsys):
    from robustgen.runtime.progress import Heartbeat, progress_bar

    bar = progress_bar(total=10, desc="train[x]", unit="step")
    assert isinstance(bar, Heartbeat)  # pytest's stderr is not a terminal
    beat = Heartbeat(total=10, desc="train[x]", unit="step", interval=0.0)
    beat.set_postfix(loss="0.5")
    for _ in range(10):
        beat.update(1)
    beat.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 11 and lines[4].startswith("[robustgen] train[x]: 5/10 step (50%)")
    assert "step/s" in lines[4] and "ETA" in lines[4] and "loss=0.5" in lines[4] and "peak" in lines[4]
    quiet = Heartbeat(total=10, desc="q", interval=3600)
    for _ in range(10):
        quiet.update(1)
    quiet.close()
    assert capsys.readouterr().err == ""  # one line per interval: none in a short job


def test_runs_keep_the_best_of_several_trainings_on_validation(tiny_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(tiny_run, out)  # run 0 is the single run's stage: reused
    main(["run", "digits_demo", "--out", str(out), "--quiet", *_sets(TINY + ["baseline=false", "train.runs=3"])])
    err = capsys.readouterr().err
    assert "train-gaussian-alpha0.8: reusing" in err
    assert "train-gaussian-alpha0.8-run1: running" in err and "train-gaussian-alpha0.8-run2: running" in err
    (model,) = json.loads((out / "results.json").read_text())["models"]
    runs = model["runs"]
    assert [r["seed"] for r in runs] == [0, 100_003, 200_006] and sum(r["kept"] for r in runs) == 1
    kept = next(r for r in runs if r["kept"])
    scores = [r["val_score"] for r in runs]
    assert runs.index(kept) == scores.index(max(scores))  # the best; a tie goes to the earlier run
    assert model["selected"]["score"] == kept["val_score"]  # the evaluated checkpoint is the kept run's
    assert len(list((out / "stages").glob("eval-gaussian-alpha0.8-*"))) == 1 + (not runs[0]["kept"])
    assert "best of its training runs" in (out / "report.md").read_text()
