"""The five stages of the method (paper Sec. 3.3, Fig. 2) as library functions over files.

    classifier:  train f_NR on the real train split           -> best.safetensors, metrics.json
    generate:    fit the generator on the train split, sample -> a store (images, conditioning classes)
    label:       pseudo-label the samples with f_NR, select   -> a store sharing those images
    diagnose:    near copies, label agreement, complementarity -> the stage manifest's result
    adversarial: TRADES on alpha-mixed batches                -> best/last.safetensors, history.json, summary.json
    evaluate:    clean + robust accuracy on the test split    -> eval.json

Each stage module owns its settings (built once from ``RunConfig``), its ``fingerprint`` and its
``run``; the CLI verbs and ``pipeline`` both call them, so the two cannot drift apart.
``common`` holds what they share (splits, device, fresh models, model selection). No math here.
"""

from robustgen.config import RunConfig
from robustgen.stages import classifier, diagnose, evaluate, generate, label, train
from robustgen.stages.common import (Splits, build_model, check_dataset, clean_accuracy, data_fingerprint, load_splits,
                                     load_test_split, resolve_device, robust_seed)

__all__ = ["Splits", "build_model", "check_names", "classifier", "clean_accuracy", "data_fingerprint",
           "diagnose", "evaluate", "generate", "label", "load_splits", "load_test_split", "resolve_device", "robust_seed", "train"]


def check_names(cfg: RunConfig, *, source: str) -> None:
    """Every registry name the config uses, checked by the stage that uses it; ``robustgen.presets``
    runs this after the config's own checks, before any work."""
    check_dataset(cfg, source)
    for stage in (classifier, train, generate, evaluate):
        stage.check_names(cfg, source)
