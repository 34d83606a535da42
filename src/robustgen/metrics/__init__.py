"""Measuring generated data before training on it (paper Sec. 5, App. D, Table 1): feature
extractors (Inception pool3, a classifier's penultimate layer), FID / IS / KID, complementarity
and coverage (Alg. 1), and loss landscapes (Fig. 11)."""

from robustgen.metrics.complementarity import (ComplementarityResult, balanced_sample, complementarity_coverage,
                                               format_table, nearest_neighbors)
from robustgen.metrics.features import extract_features, get_extractor, list_extractors, register_extractor
from robustgen.metrics.fid import (feature_statistics, fid_from_features, frechet_distance, inception_score,
                                   kernel_inception_distance)

__all__ = [
    "ComplementarityResult", "balanced_sample", "complementarity_coverage", "format_table", "nearest_neighbors",
    "extract_features", "get_extractor", "list_extractors", "register_extractor", "feature_statistics",
    "fid_from_features", "frechet_distance", "inception_score", "kernel_inception_distance",
]
