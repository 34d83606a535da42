from robustgen.report.markdown import results_table, verdict
from robustgen.results import ModelResult


def _m(name, alpha, rob, clean=0.9, n=1000, robust_points=None):
    return ModelResult(name=name, alpha=alpha, generator=None if alpha == 1 else "gaussian", robust_accuracy=rob,
                       clean_accuracy=clean, n_eval=n, generated_samples=0 if alpha == 1 else 100, attack="pgd40",
                       norm="linf", eps=0.2, max_perturbation=0.2, steps=10, batch_size=8, selected=None,
                       train_time_s=0.5, eval_time_s=0.5, wall_time_s=1.0, checkpoint="m.safetensors",
                       robust_points=robust_points)


def test_verdict_compares_with_the_baseline_honestly():
    assert "within two standard errors" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.51)])
    assert "does not help" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.51)])
    assert "beats" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.60)])
    assert "worse than" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.40)])
    assert verdict([_m("gen", 0.8, 0.4)]) == ""


def test_verdict_pairs_the_test_points_when_it_has_them():
    # 100 points: the generator arm wins 8 and loses 1 -> +7 points; paired SE from the 9 changes
    base = _m("baseline", 1.0, 0.50, n=100, robust_points="1" * 50 + "0" * 50)
    gen = _m("gen", 0.8, 0.57, n=100, robust_points="0" + "1" * 49 + "1" * 8 + "0" * 42)
    text = verdict([base, gen])
    d = [-1] + [0] * 49 + [1] * 8 + [0] * 42
    mean = sum(d) / 100
    se = (sum((x - mean) ** 2 for x in d) / 99) ** 0.5 / 10
    assert f"{100 * mean:+.2f} ± {100 * se:.2f} points" in text and "paired over the test points" in text
    assert "beats" in text  # +7 > 2 x 3.0: unpaired binomial errors (2 SE = 14 points) could not tell


def test_table_has_a_row_per_model():
    import dataclasses

    worst = dataclasses.replace(_m("gen", 0.8, 0.4), attack="worst-of-aa-and-aa+mt",
                                robust_accuracy_after={"autoattack": 0.42, "aa+mt": 0.41})
    table = results_table([_m("baseline", 1.0, 0.5), worst])
    assert "| baseline | 1 | 0 | 90.00% | 50.00% |" in table and "| gen | 0.8 | 100 |" in table
    assert "| 40.00%; autoattack alone 42.00%; aa+mt alone 41.00% | worst-of-aa-and-aa+mt" in table


def test_paired_differences_and_their_standard_errors():
    import math

    import pytest

    from robustgen.metrics.paired import paired_point_difference, paired_seed_difference

    d, se = paired_point_difference("1100", "1010")  # per point: 0, +1, -1, 0
    assert d == 0.0 and se == pytest.approx(math.sqrt(2 / 3) / 2)
    mean, se, k = paired_seed_difference([0.52, 0.55, 0.50], [0.45, 0.47, 0.46])
    assert k == 3 and mean == pytest.approx((0.07 + 0.08 + 0.04) / 3)
    assert se == pytest.approx(0.01 * math.sqrt(13 / 3) / math.sqrt(3))  # sample std of 7, 8, 4 is sqrt(13/3)
    assert math.isnan(paired_seed_difference([0.5], [0.4])[1])
    with pytest.raises(ValueError):
        paired_point_difference("10", "1")
def test_report_shows_class_counts_before_and_after_the_selection(tmp_path):
    from robustgen.report.markdown import write_report
    from robustgen.results import RunResults

    labeling = {"num_labeled": 20, "mean_confidence": 0.9, "counts_before": [12, 15], "counts_per_class": [10, 10]}
    results = RunResults(version="0", dataset="digits", threat={"norm": "linf", "eps": 0.2}, device="cpu",
                         wall_time_s=1.0, models=[_m("gen", 0.8, 0.4)], config={"generator": {"name": "gaussian"}},
                         labeling=labeling, labeling_by_generator={"gaussian": labeling})
    write_report(tmp_path, results, samples_path=None)
    text = (tmp_path / "report.md").read_text()
    assert "| labelled (f_NR) | 12 | 15 |" in text and "| kept for training | 10 | 10 |" in text


def test_model_result_is_composed_from_the_stage_results_once():
    from robustgen.results import EvalResult, TrainingResult

    train = TrainingResult(name="gen", alpha=0.8, steps=10, batch_size=8, generated_samples=100, sources=[],
                           step_options={}, selection={"step": 10}, wall_time_s=3.25, resumed_from_step=0,
                           checkpoint="c.safetensors")
    ev = EvalResult(checkpoint="c.safetensors", dataset="digits", attack="pgd40", norm="linf", eps=0.2, seed=0, n=60,
                    clean_accuracy=0.9, robust_accuracy=0.5, stages=[], max_perturbation=0.2, time_s=1.5,
                    robust_points="10" * 30, robust_accuracy_after={}, sanity={"warnings": []})
    m = ModelResult.from_stages(train, ev, generator="gaussian")
    assert (m.n_eval, m.train_time_s, m.eval_time_s, m.wall_time_s) == (60, 3.25, 1.5, 4.75)
    assert m.selected == {"step": 10} and m.robust_points == ev.robust_points and m.generator == "gaussian"
    assert m.robust_accuracy_after == {}
    # a stage result read back from its JSON; one of another shape (an older version's) is None
    assert TrainingResult.from_dict(train.to_dict()) == train
    assert EvalResult.from_dict({**ev.to_dict(), "extra": 1}) is None
