"""Typed results, from the stages to ``results.json``, the report and the sweep.

A stage's result keeps the stage's own words (``TrainingResult.wall_time_s`` is the training's
time, ``EvalResult.n`` the number of test images). ``ModelResult``, one trained and evaluated
model and one row of ``results.json``, is composed from them in one place
(``ModelResult.from_stages``); from there on every reader (the report, the CLI, the sweep's
records) uses its names. Each type writes itself as JSON with ``to_dict`` (fields in
declaration order) and reads a stage's cached JSON back with ``from_dict`` (``None`` when the
JSON is of another shape, so a stage cached by an older version is recomputed, never misread).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["ClassifierResult", "EvalResult", "ModelResult", "RunResults", "TrainingResult"]

T = TypeVar("T")


class _JSON:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], d: Any) -> T | None:
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        # a field added later with a default may be missing from files written before it
        if not isinstance(d, dict) or not required <= set(d) <= {f.name for f in fields}:
            return None
        return cls(**d)


@dataclass(frozen=True)
class ClassifierResult(_JSON):
    """f_NR's training (``metrics.json`` of the classifier stage)."""

    test_accuracy: float  # clean accuracy on the test split
    steps: int
    wall_time_s: float  # training time
    checkpoint: str  # best.safetensors


@dataclass(frozen=True)
class TrainingResult(_JSON):
    """Adversarial training (``summary.json`` of a training stage)."""

    name: str
    alpha: float  # share of real images per batch
    steps: int
    batch_size: int
    generated_samples: int  # images in the generated sources
    sources: list  # [{"name", "images", "weight"}], the real split first
    step_options: dict  # precision / channels-last / compile chosen by train.speed
    selection: dict | None  # the selected checkpoint: step, raw or EMA weights, validation accuracies
    wall_time_s: float  # training time
    resumed_from_step: int
    checkpoint: str  # best.safetensors


@dataclass(frozen=True)
class EvalResult(_JSON):
    """Clean and robust accuracy of one checkpoint (``eval.json``)."""

    checkpoint: str
    dataset: str
    attack: str
    norm: str
    eps: float
    seed: int
    n: int  # test images evaluated
    clean_accuracy: float
    robust_accuracy: float  # per-point worst case over the attack's stages
    stages: list  # per attack stage: accuracy and cost (paper Table 3 layout)
    max_perturbation: float
    time_s: float  # evaluation time
    robust_points: str  # one character per test image: "1" robust, "0" not
    robust_accuracy_after: dict  # accuracy after each inner cascade's last stage
    sanity: dict  # warnings, and the test vs training-log clean accuracy check


@dataclass(frozen=True)
class ModelResult(_JSON):
    """One trained and evaluated robust model: a row of ``results.json``."""

    name: str
    alpha: float
    generator: str | None  # whose generated data it trained on (None: real data only)
    generated_samples: int
    clean_accuracy: float
    robust_accuracy: float
    attack: str
    norm: str
    eps: float
    n_eval: int
    max_perturbation: float
    steps: int
    batch_size: int
    selected: dict | None
    train_time_s: float
    eval_time_s: float
    wall_time_s: float  # training + evaluation
    checkpoint: str
    robust_points: str | None
    # train.runs > 1: every run's seed and validation score, and which was kept (the paper's protocol)
    runs: list = dataclasses.field(default_factory=list)
    # a cascade of cascades (worst-of-aa-and-aa+mt): each inner cascade's own robust accuracy
    robust_accuracy_after: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_stages(cls, train: TrainingResult, ev: EvalResult, *, generator: str | None) -> "ModelResult":
        return cls(name=train.name, alpha=train.alpha, generator=generator, generated_samples=train.generated_samples,
                   clean_accuracy=ev.clean_accuracy, robust_accuracy=ev.robust_accuracy, attack=ev.attack,
                   norm=ev.norm, eps=ev.eps, n_eval=ev.n, max_perturbation=ev.max_perturbation, steps=train.steps,
                   batch_size=train.batch_size, selected=train.selection, train_time_s=train.wall_time_s,
                   eval_time_s=ev.time_s, wall_time_s=round(train.wall_time_s + ev.time_s, 2),
                   checkpoint=train.checkpoint, robust_points=ev.robust_points,
                   robust_accuracy_after=dict(ev.robust_accuracy_after))


@dataclass(frozen=True)
class RunResults(_JSON):
    """``results.json`` of ``robustgen run``."""

    version: str
    dataset: str
    device: str
    threat: dict  # {"norm", "eps"}
    models: list[ModelResult]
    labeling: dict | None  # the configured generator's label summary (None: no f_NR labelling)
    labeling_by_generator: dict  # generator -> its label summary (None: labels are the conditioning classes)
    wall_time_s: float
    config: dict  # the resolved config
    # generator -> near copies, label agreement, complementarity vs the kept / validation images
    diagnostics_by_generator: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "RunResults | None":
        run = super().from_dict(d)
        if run is None:
            return None
        models = [m if isinstance(m, ModelResult) else ModelResult.from_dict(m) for m in run.models]
        return None if None in models else dataclasses.replace(run, models=models)
