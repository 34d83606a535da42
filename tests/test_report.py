from robustgen.report.markdown import results_table, verdict


def _m(name, alpha, rob, clean=0.9, n=1000):
    return {"name": name, "alpha": alpha, "robust_accuracy": rob, "clean_accuracy": clean, "n_eval": n,
            "generated_samples": 0 if alpha == 1 else 100, "attack": "pgd40", "norm": "linf", "eps": 0.2,
            "wall_time_s": 1.0}


def test_verdict_compares_with_the_baseline_honestly():
    assert "within noise" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.51)])
    assert "better than" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.60)])
    assert "worse than" in verdict([_m("baseline", 1.0, 0.50), _m("gen", 0.8, 0.40)])
    assert verdict([_m("gen", 0.8, 0.4)]) == ""


def test_table_has_a_row_per_model():
    table = results_table([_m("baseline", 1.0, 0.5), _m("gen", 0.8, 0.4)])
    assert "| baseline | 1 | 0 | 90.00% | 50.00% |" in table and "| gen | 0.8 | 100 |" in table


def test_report_shows_class_counts_before_and_after_the_selection(tmp_path):
    from robustgen.report.markdown import write_report

    results = {"dataset": "digits", "threat": {"norm": "linf", "eps": 0.2}, "device": "cpu", "wall_time_s": 1.0,
               "models": [_m("gen", 0.8, 0.4)],
               "labeling": {"num_labeled": 20, "mean_confidence": 0.9, "counts_before": [12, 15],
                            "counts_per_class": [10, 10]}}
    write_report(tmp_path, results, samples_path=None)
    text = (tmp_path / "report.md").read_text()
    assert "| labelled (f_NR) | 12 | 15 |" in text and "| kept for training | 10 | 10 |" in text
