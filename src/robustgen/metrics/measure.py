"""Measure generated sets against the real train / test splits: paper Table 1 for several
sources at once (complementarity and coverage, Alg. 1; FID, IS, KID).

    result = measure(train, test, {"gaussian": store, "ddpm": "cifar10_ddpm.npz"},
                     extractor=get_extractor("inception"), n=10_000)
    print(result["markdown"])

Every set is sub-sampled to ``n`` rows (class-balanced when it has labels, seeded), its features
extracted once, and each metric computed on those features: complementarity / coverage exactly as
Alg. 1; FID and KID against the ``reference`` split's n samples; IS from the extractor's logits.
The paper computes FID / IS on 50K samples; with ``n`` < 50K the FID is biased upwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustgen.metrics.complementarity import (balanced_sample, complementarity_coverage, coverage, format_table,
                                               nearest_neighbors, project_reference)
from robustgen.metrics.features import FeatureExtractor, extract_features
from robustgen.metrics.fid import fid_from_features, inception_score, kernel_inception_distance
from robustgen.runtime.errors import RobustgenError

__all__ = ["METRICS", "ImageSet", "open_image_set", "measure"]

METRICS = ("complementarity", "fid", "is", "kid")


@dataclass
class ImageSet:
    """Rows of uint8 NHWC images: ``images`` is an array or has ``gather(indices)`` (a Store);
    a labelled store also gives the conditioning classes and f_NR's confidences."""
    name: str
    images: object
    labels: np.ndarray | None = None
    conditions: np.ndarray | None = None
    confidences: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def open_image_set(path, name: str | None = None) -> ImageSet:
    """A store folder or an .npz in the released layout (image uint8 NHWC [, label])."""
    from robustgen.data.npz import read_npz
    from robustgen.data.store import Store, is_store

    path = Path(path)
    name = name or path.stem
    if is_store(path):
        store = Store(path)
        return ImageSet(name, store, store.labels, store.conditions, store.confidences)
    if path.is_dir():
        raise RobustgenError(f"{path}: not a store (no manifest.json) and not an .npz file")
    arrays = read_npz(path, keys_required=("image",), keys=("label",))
    return ImageSet(name, arrays["image"], arrays.get("label"))


def _features(extractor: FeatureExtractor, s: ImageSet, n: int | None, seed: int, batch_size: int,
              progress: bool) -> tuple[np.ndarray, np.ndarray]:
    if n is not None and n > len(s):
        raise RobustgenError(f"{s.name}: {len(s)} images, fewer than the {n} requested (lower --n)")
    rows = None if n is None or n == len(s) else balanced_sample(s.labels, n, seed=seed, total=len(s))
    return extract_features(extractor, s.images, indices=rows, batch_size=batch_size, progress=progress)


def measure(train: ImageSet, test: ImageSet, sources: dict[str, ImageSet], *, extractor: FeatureExtractor,
            n: int | None = 10_000, metrics=("complementarity",), reference: str = "train", seed: int = 0,
            batch_size: int = 256, pca_components: int | None = 100, block_size: int = 1 << 22,
            kid_subset_size: int = 1000, progress: bool = False) -> dict:
    """Table 1 rows for ``sources`` -> {"rows": {name: metrics}, "markdown", "reference_coverage", ...}.

    ``n``: samples per set (None: every image of each set, all sets then need equal sizes for
    Alg. 1's N). ``reference``: the split FID / KID compare against ("train" or "test")."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise RobustgenError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if reference not in ("train", "test"):
        raise RobustgenError(f"reference must be train or test, got {reference!r}")
    if not sources:
        raise RobustgenError("nothing to measure: give at least one generated set")
    t0 = time.perf_counter()
    device = extractor.device
    served = getattr(extractor, "metrics", METRICS)
    if set(metrics) - set(served):
        raise RobustgenError(f"{extractor.name} features serve {', '.join(served)} only, not "
                             f"{', '.join(m for m in metrics if m not in served)} (use --features inception for those)")
    needs_test = "complementarity" in metrics or reference == "test"
    if needs_test and n is not None and n > len(test):  # Alg. 1 compares N images of every set
        raise RobustgenError(f"{test.name}: {len(test)} images, fewer than the {n} requested; complementarity and "
                             f"--reference test need N test images (paper: N = 10K): lower --n, or measure "
                             f"FID / IS / KID against the train split alone (--metrics fid,is,kid)")
    f_train, _ = _features(extractor, train, n, seed, batch_size, progress)
    # the test split is read only where it is used: FID at the paper's 50K needs more images than it has
    f_test = _features(extractor, test, n, seed + 1, batch_size, progress)[0] if needs_test else None
    t_ref = time.perf_counter() - t0
    out: dict = {"extractor": extractor.name, "n": n, "pca_components": pca_components, "reference": reference,
                 "seed": seed, "feature_dim": int(f_train.shape[1]), "rows": {}}
    projected = None
    if "complementarity" in metrics:
        projected = project_reference(f_train, f_test, pca_components=pca_components, device=device)
        _, tr, te = projected
        # The train set's coverage of the test set (paper footnote 16: 52.27% on CIFAR-10), and back.
        _, i = nearest_neighbors(tr, te, block_size=block_size)
        _, j = nearest_neighbors(te, tr, block_size=block_size)
        out["train_covers_test"] = coverage(i, te.shape[0])
        out["test_covers_train"] = coverage(j, tr.shape[0])
    ref_feats = f_train if reference == "train" else f_test
    for name, s in sources.items():
        t1 = time.perf_counter()
        f_gen, logits = _features(extractor, s, n, seed + 2, batch_size, progress)
        row: dict = {"n": int(len(f_gen))}
        if "complementarity" in metrics:
            row.update(complementarity_coverage(None, None, f_gen, block_size=block_size,
                                                _projected=projected).as_dict())
        if "fid" in metrics:
            row["fid"] = fid_from_features(f_gen, ref_feats)
        if "kid" in metrics:
            size = min(kid_subset_size, len(f_gen), len(ref_feats))
            row["kid"] = list(kernel_inception_distance(f_gen, ref_feats, subset_size=size, seed=seed))
        if "is" in metrics:
            row["is"] = list(inception_score(logits, splits=min(10, len(logits))))
        row["time_s"] = round(time.perf_counter() - t1, 2)
        out["rows"][name] = row
    out["reference_time_s"] = round(t_ref, 2)
    out["wall_time_s"] = round(time.perf_counter() - t0, 2)
    # project_reference keeps all dimensions when pca_components >= the feature dimension
    pca_used = pca_components is not None and pca_components < out["feature_dim"]
    pca_note = (f", PCA to {pca_components} fitted on train + test" if pca_used
                else ", no PCA (no more dimensions than components)")
    notes = [f"Features: {extractor.name} ({out['feature_dim']}-d"
             + (pca_note if "complementarity" in metrics and pca_components else "")
             + f"); N = {n if n is not None else 'all'} per set, seed {seed}."]
    if "train_covers_test" in out:
        notes.append(f"The train sample covers {100 * out['train_covers_test']:.2f}% of the test sample "
                     f"and the test sample {100 * out['test_covers_train']:.2f}% of the train sample "
                     f"(paper, Inception, N = 10K: 52.27% / 52.08%).")
    if "fid" in metrics or "kid" in metrics:
        notes.append(f"FID / KID against the {reference} sample.")
    out["markdown"] = format_table(out["rows"], notes=notes)
    return out
