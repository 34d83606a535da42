"""``report.md`` of a run: the results table and the generated-sample grid (paper Fig. 12)."""

from __future__ import annotations

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
    """One honest sentence comparing each model with the alpha = 1 baseline."""
    base = next((m for m in models if m["alpha"] == 1.0), None)
    others = [m for m in models if m is not base]
    if base is None or not others:
        return ""
    lines = []
    for m in others:
        d_rob = 100 * (m["robust_accuracy"] - base["robust_accuracy"])
        d_clean = 100 * (m["clean_accuracy"] - base["clean_accuracy"])
        word = "improves on" if d_rob > 0 else ("matches" if d_rob == 0 else "is worse than")
        lines.append(f"- `{m['name']}` {word} the baseline's robust accuracy by {d_rob:+.2f} points "
                     f"(clean {d_clean:+.2f} points), with the same number of steps. One seed, "
                     f"n = {m['n_eval']}: a difference of a point or two is within noise.")
    return "\n".join(lines)


def write_report(out: Path, results: dict, *, samples_path: Path | None, class_names: Sequence[str]) -> None:
    from robustgen.data import read_npz
    from robustgen.report.grid import save_sample_grid

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
        arrays = read_npz(samples_path)
        save_sample_grid(out / "samples.png", arrays["image"], arrays["label"], class_names=class_names,
                         per_class=10, seed=0, title="generated samples (one row per class)")
        lines += ["Generated samples, one row per class:", "", "![samples](samples.png)", ""]
    text = "\n".join(lines)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
