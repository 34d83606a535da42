"""``report.md`` of a run: the results table and the generated-sample grid (paper Fig. 12)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from robustgen.config import is_baseline
from robustgen.results import ModelResult, RunResults
from robustgen.runtime.io import write_text


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def results_table(models: Sequence[ModelResult]) -> str:
    rows = ["| model | alpha | generated samples | clean accuracy | robust accuracy | attack | n | wall time |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for m in models:
        # the worst-of metric: each cascade's own number beside the per-point worst case
        each = "".join(f"; {name} alone {_pct(acc)}" for name, acc in m.robust_accuracy_after.items())
        rows.append(f"| {m.name} | {m.alpha:g} | {m.generated_samples:,} | {_pct(m.clean_accuracy)} | "
                    f"{_pct(m.robust_accuracy)}{each} | {m.attack} ({m.norm}, eps {m.eps:.4g}) | "
                    f"{m.n_eval} | {m.wall_time_s:.0f} s |")
    return "\n".join(rows)


def verdict(models: Sequence[ModelResult]) -> str:
    """How each model compares with the alpha = 1 baseline: the robust-accuracy difference on the
    same test points and its standard error (paired over the points when both models kept their
    per-point results, else two independent binomial errors)."""
    from robustgen.metrics.paired import paired_point_difference

    base = next((m for m in models if is_baseline(m.alpha)), None)
    others = [m for m in models if m is not base]
    if base is None or not others:
        return ""
    lines = []
    for m in others:
        d_clean = 100 * (m.clean_accuracy - base.clean_accuracy)
        if m.robust_points and base.robust_points and len(m.robust_points) == len(base.robust_points):
            d, se = paired_point_difference(m.robust_points, base.robust_points)
            d_rob, se, kind = 100 * d, 100 * se, "paired over the test points (McNemar-style)"
        else:
            d_rob = 100 * (m.robust_accuracy - base.robust_accuracy)
            se = 100 * math.sqrt(sum(x.robust_accuracy * (1 - x.robust_accuracy) / max(x.n_eval, 1)
                                     for x in (m, base)))
            kind = "two independent binomial errors"
        if abs(d_rob) <= 2 * se:
            word = "is within two standard errors of"
        else:
            word = "beats" if d_rob > 0 else "is worse than"
        source = "held-out real images (the perfect-generator reference)" if m.generator == "heldout" else \
            (f"`{m.generator}` samples" if m.generator else "its data")
        helps = "helps" if d_rob > 2 * se else "does not help here"
        lines.append(f"- `{m.name}` ({source}) {word} the baseline: robust accuracy {d_rob:+.2f} ± {se:.2f} points "
                     f"({m.attack}, n = {m.n_eval}; standard error {kind}), clean {d_clean:+.2f} points, same "
                     f"number of steps, one seed: the extra data {helps}.")
    return "\n".join(lines)


def write_report(out: Path, results: RunResults, *, samples_path: Path | None,
                 figures: Sequence[tuple[str, str]] = ()) -> None:
    """report.md: results table, verdict, labelling summary, the grid of ``samples_path`` (a store
    or .npz; None: the folder's samples.png if any) and ``figures``
    ((caption, PNG path relative to ``out``) pairs)."""
    from robustgen.report.grid import save_store_grid

    lines = [f"# robustgen run: {results.dataset}", "",
             f"Threat model: {results.threat['norm']}, eps = {results.threat['eps']:.6g}. "
             f"Device: {results.device}. Total wall time {results.wall_time_s:.0f} s.", "",
             results_table(results.models), "", verdict(results.models), ""]
    chosen = [(m.name, m.runs) for m in results.models if m.runs]
    if chosen:  # train.runs > 1: the paper's best-of-runs protocol
        lines += ["Each model is the best of its training runs on the validation split (PGD-40; train.runs), "
                  "as the paper's protocol; only the kept run is evaluated on the test split:", ""]
        lines += [f"- `{name}`: " + ", ".join(f"seed {r['seed']} {100 * r['val_score']:.2f}%"
                                            + (" (kept)" if r["kept"] else "") for r in runs) for name, runs in chosen]
        lines += [""]
    if results.models and results.models[0].attack != "pgd40":
        lines += [f"Model selection: PGD-40 on the validation split; reported robust accuracy: "
                  f"{results.models[0].attack} on the test split.", ""]
    labelings = results.labeling_by_generator or (
        {results.config["generator"]["name"]: results.labeling} if results.labeling else {})
    for name, lab in labelings.items():
        if lab is None:
            continue  # labels are the conditioning classes: no f_NR summary
        # for held-out real images the conditioning class is the true label: agreement = f_NR's label accuracy
        agree = "the true class" if name == "heldout" else "the generator's class"
        lines += [f"Pseudo-labels of `{name}`: {lab['num_labeled']:,} images, mean f_NR confidence "
                  f"{lab['mean_confidence']:.3f}" + (f", f_NR agrees with {agree} on "
                  f"{100 * lab['agreement_with_condition']:.1f}%" if "agreement_with_condition" in lab else "") + ".", ""]
        if "counts_before" in lab:  # class balance (App. D): per-class counts before and after the selection
            lines += ["| images per class | " + " | ".join(str(c) for c in range(len(lab["counts_before"]))) + " |",
                      "| --- |" + " --- |" * len(lab["counts_before"]),
                      "| labelled (f_NR) | " + " | ".join(f"{n:,}" for n in lab["counts_before"]) + " |",
                      "| kept for training | " + " | ".join(f"{n:,}" for n in lab["counts_per_class"]) + " |", ""]
    if results.diagnostics_by_generator:
        from robustgen.metrics.diagnostics import format_diagnostics

        lines += ["Generated data against the kept real images and the validation split (never the test split): "
                  "near copies of the kept images, f_NR's agreement with the conditioning class, "
                  "complementarity (paper Alg. 1) in f_NR's features:", "",
                  format_diagnostics(results.diagnostics_by_generator), ""]
    if samples_path is not None and samples_path.exists():
        save_store_grid(out / "samples.png", samples_path, per_class=10, seed=0,
                        title="generated samples with their training labels (one row per class)")
    if (out / "samples.png").exists():  # made now, or by the run whose report is rebuilt
        source = "from f_NR" if results.labeling else "the generator's conditioning classes"
        lines += [f"Generated samples as training sees them (labels {source}), one row per class:", "",
                  "![samples](samples.png)", ""]
    for caption, path in figures:
        lines += [f"{caption}:", "", f"![{Path(path).stem}]({path})", ""]
    text = "\n".join(lines)
    write_text(out / "report.md", text)
