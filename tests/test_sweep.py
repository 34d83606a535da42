"""robustgen sweep: the grid, the shared stage cache, the summary and the figure."""

import dataclasses
import json
from types import SimpleNamespace

import pytest

from robustgen.config import load_config
from robustgen.errors import RobustgenError
from robustgen.results import ModelResult
from robustgen.sweep import grid_points, run_sweep, summarize


def test_grid_has_alpha_1_once_per_seed():
    pts = grid_points([0.5, 1, 0.8], ["gaussian", "ddpm"], [0, 1])
    assert pts.count(("gaussian", 1.0, 0)) == 1 and not any(g == "ddpm" and a == 1 for g, a, _ in pts)
    assert len(pts) == 2 * (1 + 2 * 2)
    with pytest.raises(RobustgenError, match="alphas"):
        grid_points([1.5], ["gaussian"], [0])


def _fake_run(calls):
    """Stands in for pipeline.run: accuracy rises with alpha, a baseline model when configured."""

    def run(cfg, out):
        seed = cfg.train.seed if cfg.train.seed is not None else cfg.seed
        calls.append((cfg.generator.name, cfg.train.alpha, seed, out))
        assert (out / "stages").resolve() == (out.parent.parent / "stages").resolve()
        model = ModelResult(name="m", alpha=cfg.train.alpha, generator="gaussian", clean_accuracy=0.9 + 0.01 * seed,
                            robust_accuracy=0.3 + 0.2 * cfg.train.alpha + 0.01 * seed, generated_samples=100,
                            attack="pgd40", norm="linf", eps=0.2, n_eval=10, max_perturbation=0.2, steps=5,
                            batch_size=8, selected=None, train_time_s=1.0, eval_time_s=1.0, wall_time_s=2.0,
                            checkpoint="m.safetensors", robust_points=None)
        models = [model]
        if cfg.baseline and cfg.train.alpha < 1:
            models.insert(0, dataclasses.replace(model, alpha=1.0, robust_accuracy=0.5 + 0.01 * seed))
        return SimpleNamespace(models=models)

    return run


def test_seeds_vary_adversarial_training_or_the_whole_run(tmp_path):
    calls = []
    cfg = load_config("digits_demo")
    run_sweep(cfg, tmp_path / "a", alphas=[0.5], generators=["gaussian"], seeds=[3], run_fn=_fake_run(calls),
              log=lambda m: None)
    run_sweep(cfg, tmp_path / "b", alphas=[0.5], generators=["gaussian"], seeds=[4], seed_key="seed",
              run_fn=_fake_run(calls), log=lambda m: None)
    assert [s for _, _, s, _ in calls] == [3, 4]
    with pytest.raises(RobustgenError, match="varies one of"):
        run_sweep(cfg, tmp_path / "c", alphas=[0.5], generators=["gaussian"], seeds=[0], seed_key="eval.seed",
                  run_fn=_fake_run(calls), log=lambda m: None)


def test_sweep_collects_every_model_and_writes_json_table_and_figure(tmp_path):
    calls = []
    cfg = load_config("digits_demo")
    summary = run_sweep(cfg, tmp_path, alphas=[0.5, 1.0], generators=["gaussian"], seeds=[0, 1],
                        run_fn=_fake_run(calls), log=lambda m: None)
    assert [(g, a, s) for g, a, s, _ in calls] == [("gaussian", 1.0, 0), ("gaussian", 0.5, 0),
                                                   ("gaussian", 1.0, 1), ("gaussian", 0.5, 1)]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["records"]) == 4 and {r["generator"] for r in saved["records"]} == {"none", "gaussian"}
    by = {(s["generator"], s["alpha"]): s for s in summary["summary"]}
    assert by[("gaussian", 0.5)]["robust_mean"] == pytest.approx(0.405)
    assert by[("gaussian", 0.5)]["robust_std"] == pytest.approx(0.005)
    assert by[("gaussian", 1.0)]["seeds"] == 2
    assert "| gaussian | 0.5 | 2 |" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "alpha_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "points" / "gaussian-alpha0.5-seed1" / "stages").is_symlink()


def test_alpha_1_models_join_every_generator():
    rows = [{"generator": "none", "alpha": 1.0, "seed": 0, "clean_accuracy": 0.9, "robust_accuracy": 0.5},
            {"generator": "a", "alpha": 0.5, "seed": 0, "clean_accuracy": 0.9, "robust_accuracy": 0.6},
            {"generator": "b", "alpha": 0.5, "seed": 0, "clean_accuracy": 0.9, "robust_accuracy": 0.4}]
    s = summarize(rows, ["a", "b"])
    assert {(r["generator"], r["alpha"]) for r in s} == {("a", 1.0), ("b", 1.0), ("a", 0.5), ("b", 0.5)}


def test_sweep_cli_rejects_bad_grids_in_one_line(tmp_path, capsys):
    from robustgen.cli import main

    for args, needle in ((["--alphas", "0.5,x"], "--alphas"), (["--alphas", "2"], "alphas must be in [0, 1]"),
                         (["--generators", "nope"], "unknown generator"), (["--seeds", "a"], "--seeds")):
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--out", str(tmp_path / "s"), *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and needle in err and "\n" not in err, err


@pytest.mark.slow
def test_a_real_sweep_shares_the_classifier_and_samples_and_reruns_for_free(tmp_path):
    """Tiny digits runs: 2 alphas x 2 training seeds -> one classifier, one generate and one label
    stage for all four models; a second sweep computes nothing."""
    cfg = load_config("digits_demo", ["classifier.epochs=1", "train.epochs=1", "train.warmup_epochs=0",
                             "train.eval_every_epochs=1", "generator.num_samples=200", "eval.n=50",
                             "data.val_size=50", "baseline=false"])
    first = run_sweep(cfg, tmp_path, alphas=[0.5, 0.8], generators=["gaussian"], seeds=[0, 1], progress=False,
                      log=lambda m: None)
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "stages").iterdir())
    assert stages.count("classifier") == 1 and stages.count("generate") == 1 and stages.count("label") == 1
    assert stages.count("train") == 4
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*/manifest.json")}
    second = run_sweep(cfg, tmp_path, alphas=[0.5, 0.8], generators=["gaussian"], seeds=[0, 1], progress=False,
                       log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*/manifest.json")} == mtimes
    assert first["records"] == second["records"]
