"""Pseudo-labelling and per-class filtering of generated images (paper Sec. 4, App. D)."""

from robustgen.label.pseudo import assign_labels, predict_probabilities, pseudo_label, top_k_per_class
from robustgen.label.select import keep_counts, select_per_class

__all__ = ["assign_labels", "keep_counts", "predict_probabilities", "pseudo_label", "select_per_class", "top_k_per_class"]
