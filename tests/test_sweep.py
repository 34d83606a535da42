"""robustgen sweep: grids over any config key, the shared stage cache, the aggregated table
(mean ± SE, seed-paired gains), the figure and the dry run's cost."""

import dataclasses
import json
from types import SimpleNamespace

import pytest

from robustgen.presets import load_config
from robustgen.results import ModelResult
from robustgen.runtime.errors import RobustgenError
from robustgen.sweep import grid_points, parse_grid, point_configs, run_sweep, summarize


def test_grid_is_the_product_of_every_key_with_readable_point_names():
    grid = parse_grid(["data.train_size=50,75", "train.alpha=0.3,1.0", "arms=[{generator: heldout}],[]"])
    assert grid["arms"] == ["[{generator: heldout}]", "[]"]
    points = grid_points(grid)
    assert len(points) == 8 and points["train_size50-alpha0.3-arms_generator_heldout"] == {
        "data.train_size": "50", "train.alpha": "0.3", "arms": "[{generator: heldout}]"}
    assert grid_points({}) == {"config": {}}
    for bad, needle in ((["train.alpha"], "KEY=V1,V2"), (["train.alpha=0.3", "train.alpha=0.5"], "given twice"),
                        (["train.alpha="], "no values")):
        with pytest.raises(RobustgenError, match=needle):
            parse_grid(bad)


def test_point_configs_apply_values_and_seeds_and_keep_the_configs_own_seed_unset():
    cfg = load_config("digits_demo")
    jobs = point_configs(cfg, grid_points(parse_grid(["train.alpha=0.3,1", "threat.eps=8/255"])), [0, 2])
    assert [(name, seed) for name, seed, _ in jobs] == [("alpha0.3-eps8_255", 0), ("alpha1-eps8_255", 0),
                                                        ("alpha0.3-eps8_255", 2), ("alpha1-eps8_255", 2)]
    first, last = jobs[0][2], jobs[-1][2]
    assert first.train.alpha == 0.3 and first.threat.eps == pytest.approx(8 / 255)
    assert first.train.seed is None and last.train.seed == 2  # seed 0 is the run's own: a plain run's stages
    whole = point_configs(cfg, {"p": {}}, [1], seed_key="seed")[0][2]
    assert whole.seed == 1 and whole.train.seed is None
    with pytest.raises(RobustgenError, match="sweep point p: .*train.alpha"):
        point_configs(cfg, {"p": {"train.alpha": "2"}}, [0])
    with pytest.raises(RobustgenError, match="varies one of"):
        point_configs(cfg, {"p": {}}, [0], seed_key="eval.seed")


def _fake_run(calls):
    """Stands in for pipeline.run: a baseline and a generated-data model, robust accuracy rising
    with train_size and the seed."""

    def run(cfg, out):
        seed = cfg.train.seed if cfg.train.seed is not None else cfg.seed
        calls.append((cfg.data.train_size, seed, out))
        assert (out / "stages").resolve() == (out.parent.parent / "stages").resolve()
        model = ModelResult(name="gaussian-alpha0.8", alpha=0.8, generator="gaussian", clean_accuracy=0.9,
                            robust_accuracy=0.4 + cfg.data.train_size / 1000 + 0.01 * seed, generated_samples=100,
                            attack="pgd40", norm="linf", eps=0.2, n_eval=10, max_perturbation=0.2, steps=5,
                            batch_size=8, selected=None, train_time_s=1.0, eval_time_s=1.0, wall_time_s=2.0,
                            checkpoint="m.safetensors", robust_points=None)
        base = dataclasses.replace(model, name="baseline", alpha=1.0, generator=None,
                                   robust_accuracy=0.4 + 0.02 * seed * seed)
        return SimpleNamespace(models=[base, model])

    return run


def test_sweep_aggregates_mean_se_and_seed_paired_gains_and_writes_table_and_figure(tmp_path):
    calls = []
    cfg = load_config("digits_demo")
    points = grid_points(parse_grid(["data.train_size=50,100"]))
    summary = run_sweep(cfg, tmp_path, points=points, seeds=[0, 1, 2], run_fn=_fake_run(calls), log=lambda m: None)
    assert [(n, s) for n, s, _ in calls] == [(50, 0), (100, 0), (50, 1), (100, 1), (50, 2), (100, 2)]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["records"]) == 12 and saved["points"] == points
    by = {(s["point"], s["model"]): s for s in summary["summary"]}
    gen = by[("train_size100", "gaussian-alpha0.8")]
    assert gen["robust_accuracy_mean"] == pytest.approx(0.51) and gen["robust_accuracy_se"] == pytest.approx(
        0.01 / 3 ** 0.5)
    # paired: 0.1 + 0.01 s - 0.02 s^2 for s = 0, 1, 2 -> 0.1, 0.09, 0.04
    assert gen["robust_accuracy_gain"] == pytest.approx(0.0766667, abs=1e-6) and gen["paired_seeds"] == 3
    assert gen["robust_accuracy_gain_se"] == pytest.approx(0.0185592, abs=1e-6)
    assert by[("train_size100", "baseline")]["robust_accuracy_gain"] is None
    table = (tmp_path / "sweep.md").read_text()
    assert "| train_size100 | data.train_size=100 | gaussian-alpha0.8 | 3 | 90.00 ± 0.00 | 51.00 ± 0.58 | +7.67 ± 1.86 |" in table
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "points" / "train_size50-seed2" / "stages").is_symlink()


def test_one_seed_has_no_standard_error():
    rows = [{"point": "p", "model": m, "seed": 0, "alpha": 1.0, "generator": "none", "clean_accuracy": 0.9,
             "robust_accuracy": r} for m, r in (("baseline", 0.5), ("x", 0.6))]
    s = {r["model"]: r for r in summarize(rows)}
    assert s["x"]["robust_accuracy_gain"] == pytest.approx(0.1) and s["x"]["robust_accuracy_gain_se"] != s["x"][
        "robust_accuracy_gain_se"]  # nan: one pair


def test_sweep_dry_run_prints_the_grid_and_its_cost_with_shared_stages_once(tmp_path, capsys):
    from robustgen.cli import main

    main(["sweep", "--grid", "data.train_size=50,75", "--grid", "train.alpha=0.3,1.0", "--seeds", "0,1",
          "--dry-run", "--out", str(tmp_path / "s")])  # returns: no problem found
    out = capsys.readouterr().out
    assert "grid: 4 point(s) x 2 seed(s) (train.seed) = 8 runs" in out
    assert "train_size75-alpha1.0 seed 1: data.train_size=75, train.alpha=1.0" in out and "preflight: ok" in out
    cost = next(line for line in out.splitlines() if line.startswith("cost:"))
    distinct, total = (float(cost.split("~")[1].split()[0]), float(cost.split("; ")[1].split()[0]))
    assert 0 < distinct < total  # the classifier, samples and baselines are shared between points
    assert not (tmp_path / "s").exists()


def test_sweep_cli_rejects_bad_grids_in_one_line(tmp_path, capsys):
    from robustgen.cli import main

    for args, needle in ((["--grid", "train.alpha"], "KEY=V1,V2"), (["--grid", "train.alpha=2"], "train.alpha"),
                         (["--grid", "generator.name=nope"], "nope"), (["--seeds", "a"], "--seeds")):
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--out", str(tmp_path / "s"), "--dry-run", *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and needle in err and "\n" not in err, err


def test_a_real_sweep_shares_the_classifier_and_samples_and_reruns_for_free(tmp_path):
    """Tiny digits runs: 2 alphas x 2 training seeds -> one classifier, one generate and one label
    stage for all four models; a second sweep computes nothing."""
    cfg = load_config("digits_demo", ["classifier.epochs=1", "train.epochs=1", "train.warmup_epochs=0",
                                      "train.eval_every_epochs=1", "generator.num_samples=200", "eval.n=50",
                                      "data.val_size=50", "baseline=false"])
    points = grid_points(parse_grid(["train.alpha=0.5,0.8"]))
    first = run_sweep(cfg, tmp_path, points=points, seeds=[0, 1], progress=False, log=lambda m: None)
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "stages").iterdir())
    assert stages.count("classifier") == 1 and stages.count("generate") == 1 and stages.count("label") == 1
    assert stages.count("train") == 4
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*/manifest.json")}
    second = run_sweep(cfg, tmp_path, points=points, seeds=[0, 1], progress=False, log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*/manifest.json")} == mtimes
    assert first["records"] == second["records"]


def test_accuracy_vs_sample_count_on_a_generated_test_split_is_one_command(tmp_path, capsys):
    """Paper Fig. 6 in one command: a grid over generator.num_samples, trained on generated data only
    (alpha 0), evaluated on generated images (eval.split: generated:STORE) made with another seed."""
    from robustgen.cli import main

    held = tmp_path / "generated-test"
    main(["store", "generate", str(held), "digits_demo", "--num-samples", "60", "--quiet", "--set",
          "generator.seed=99", "--set", "generator.pca_components=10"])
    capsys.readouterr()
    tiny = ["classifier.epochs=1", "train.epochs=1", "train.warmup_epochs=0", "train.eval_every_epochs=1",
            "data.val_size=50", "baseline=false", "train.alpha=0", "eval.attack=pgd40", f"eval.split=generated:{held}",
            "generator.pca_components=10"]
    main(["sweep", "digits_demo", *[a for t in tiny for a in ("--set", t)], "--grid",
          "generator.num_samples=100,1000", "--seeds", "0", "--out", str(tmp_path / "s"), "--quiet"])
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [(r["point"], r["n_eval"]) for r in summary["records"]] == [("num_samples100", 60), ("num_samples1000", 60)]
    ev = json.loads(next((tmp_path / "s" / "stages").glob("eval-*/eval.json")).read_text())
    assert ev["dataset"] == f"generated:{held}"
    # the same models on the real test split: only the evaluation runs again (the split is read there only)
    trains = sorted(p.name for p in (tmp_path / "s" / "stages").glob("train-*"))
    main(["sweep", "digits_demo", *[a for t in tiny[:-2] for a in ("--set", t)], "--set", "generator.pca_components=10",
          "--grid", "generator.num_samples=100,1000", "--seeds", "0", "--out", str(tmp_path / "s"), "--quiet"])
    assert sorted(p.name for p in (tmp_path / "s" / "stages").glob("train-*")) == trains
    assert len(list((tmp_path / "s" / "stages").glob("eval-*"))) == 4
    assert (tmp_path / "s" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RobustgenError, match="eval.split must be test or generated:PATH"):
        load_config("digits_demo", ["eval.split=validation"])
