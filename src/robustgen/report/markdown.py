"""``report.md`` of a run: the results table and the generated-sample grid (paper Fig. 12)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from robustgen.checkpoint import atomic_write


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def results_table(models: list[dict]) -> str:
    rows = ["| model | alpha | generated samples | clean accuracy | robust accuracy | attack | n | wall time |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for m in models:
        rows.append(f"| {m['name']} | {m['alpha']:g} | {m['generated_samples']:,} | {_pct(m['clean_accuracy'])} | "
                    f"{_pct(m['robust_accuracy'])} | {m['attack']} ({m['norm']}, eps {m['eps']:.4g}) | "
                    f"{m['n_eval']} | {m['wall_time_s']:.0f} s |")
    return "\n".join(rows)


def verdict(models: list[dict]) -> str:
    """How each model compares with the alpha = 1 baseline, against the evaluation's sampling noise."""
    base = next((m for m in models if m["alpha"] == 1.0), None)
    others = [m for m in models if m is not base]
    if base is None or not others:
        return ""
    lines = []
    for m in others:
        d_rob = 100 * (m["robust_accuracy"] - base["robust_accuracy"])
        d_clean = 100 * (m["clean_accuracy"] - base["clean_accuracy"])
        # binomial standard error of a difference of two accuracies on n points each
        se = 100 * math.sqrt(sum(r * (1 - r) / max(x["n_eval"], 1)
                                 for x in (m, base) for r in [x["robust_accuracy"]]))
        if abs(d_rob) <= 2 * se:
            word = "within noise of"
        else:
            word = "better than" if d_rob > 0 else "worse than"
        lines.append(f"- `{m['name']}` is {word} the baseline: robust accuracy {d_rob:+.2f} points, clean "
                     f"{d_clean:+.2f} points, same number of steps (one seed; two standard errors of the "
                     f"difference on n = {m['n_eval']} are {2 * se:.1f} points).")
    return "\n".join(lines)


def write_report(out: Path, results: dict, *, samples_path: Path | None,
                 figures: Sequence[tuple[str, str]] = ()) -> None:
    """report.md: results table, verdict, labelling summary, the grid of ``samples_path`` (a store
    or .npz) and ``figures``
    ((caption, PNG path relative to ``out``) pairs)."""
    from robustgen.report.grid import save_store_grid

    lines = [f"# robustgen run: {results['dataset']}", "",
             f"Threat model: {results['threat']['norm']}, eps = {results['threat']['eps']:.6g}. "
             f"Device: {results['device']}. Total wall time {results['wall_time_s']:.0f} s.", "",
             results_table(results["models"]), "", verdict(results["models"]), ""]
    if results.get("labeling"):
        lab = results["labeling"]
        lines += [f"Pseudo-labels: {lab['num_labeled']:,} generated images, mean f_NR confidence "
                  f"{lab['mean_confidence']:.3f}" + (f", agreement with the generator's class "
                  f"{lab['agreement_with_condition']:.3f}" if "agreement_with_condition" in lab else "") + ".", ""]
    if samples_path is not None and samples_path.exists():
        save_store_grid(out / "samples.png", samples_path, per_class=10, seed=0,
                        title="generated samples with their training labels (one row per class)")
        source = "from f_NR" if results.get("labeling") else "the generator's conditioning classes"
        lines += [f"Generated samples as training sees them (labels {source}), one row per class:", "",
                  "![samples](samples.png)", ""]
    for caption, path in figures:
        lines += [f"{caption}:", "", f"![{Path(path).stem}]({path})", ""]
    text = "\n".join(lines)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
