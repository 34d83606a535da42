"""Generator diagnostics: does a generated set copy the real images it was fitted on, are its
labels right, and does it add anything (issue 23; paper App. B, Table 1, Alg. 1)?

Measured only against the *kept* real training images (what the generator saw) and the
*validation* split (fresh real images of the same distribution), never the test split:

* **near copies**: each sample's nearest kept image in pixel space (RMS distance, pixels in
  [0, 1]). The scale is the median nearest-kept distance of the validation images (how far a fresh
  real image lies from the kept set); a sample closer than ``copy_ratio`` (default 1/3) of that
  scale is a near copy. Exact copies score 100%; held-out real images score about 0% (the
  validation split's own share is reported as the calibration). ``novelty`` = median sample
  distance / the scale: 1 is as novel as fresh real data, 0 is a copy of the training set.
* **labels**: the share of samples whose f_NR label agrees with the class they were conditioned
  on, and f_NR's mean confidence (from the labelled store).
* **complementarity and coverage** (Alg. 1) with the kept images as "train" and the validation
  images as "test", in a feature space (f_NR's penultimate layer on digits, Inception on CIFAR):
  N = the smaller real set's size, averaged over ``repeats`` class-balanced draws of N samples.
  An ideal generator gives 1/3 kept / 1/3 val / 1/3 self; a copier puts everything on "kept".
* **KID / FID** of the samples against the validation images in the same features.

    report = diagnose(open_image_set("runs/x/stages/label-.../store"), kept, val,
                      extractor=get_extractor("classifier:runs/fnr/best.safetensors"))
    print(format_diagnostics({"ddpm": report}))
"""

from __future__ import annotations

import time

import numpy as np
import torch

from robustgen.metrics.complementarity import balanced_sample, complementarity_coverage, nearest_neighbors
from robustgen.metrics.features import FeatureExtractor, extract_features, gather_rows
from robustgen.metrics.fid import fid_from_features, kernel_inception_distance
from robustgen.runtime.errors import RobustgenError

__all__ = ["COPY_RATIO", "HISTOGRAM_EDGES", "nearest_distances", "copy_threshold", "near_copy_rows", "copy_statistics",
           "label_statistics",
           "diagnose", "format_diagnostics"]

COPY_RATIO = 1 / 3  # a near copy: closer to a kept image than a third of a fresh real image's distance
# histogram of (distance to the nearest kept image) / (the validation split's median distance)
HISTOGRAM_EDGES = (0.0, 0.1, 0.2, 0.333, 0.5, 0.75, 1.0, 1.5, np.inf)


@torch.no_grad()
def nearest_distances(queries: np.ndarray, refs: np.ndarray, *, device: str | torch.device = "cpu") -> np.ndarray:
    """RMS pixel distance (pixels in [0, 1]) of each uint8 query image to its nearest ``refs`` image,
    computed in float64 on ``device``."""
    q = torch.from_numpy(np.asarray(queries).reshape(len(queries), -1)).to(device).double() / 255
    r = torch.from_numpy(np.asarray(refs).reshape(len(refs), -1)).to(device).double() / 255
    if q.shape[1] != r.shape[1]:
        raise RobustgenError(f"nearest distances: images of {q.shape[1]} and {r.shape[1]} values")
    d2, _ = nearest_neighbors(q, r)
    return (d2 / q.shape[1]).sqrt().cpu().numpy()


def copy_threshold(val_d: np.ndarray, copy_ratio: float = COPY_RATIO) -> tuple[float, float]:
    """(scale, threshold): the validation images' median distance to the kept set, and the
    distance under which a sample is a near copy (pure)."""
    if not 0 < copy_ratio < 1:
        raise RobustgenError(f"copy_ratio must be in (0, 1), got {copy_ratio}")
    scale = float(np.median(val_d))
    if scale <= 0:
        raise RobustgenError("the validation images copy the kept ones (median distance 0): no scale for copies")
    return scale, copy_ratio * scale


def near_copy_rows(images, kept_images: np.ndarray, val_images: np.ndarray, *, copy_ratio: float = COPY_RATIO,
                   chunk: int = 8192, device: str | torch.device = "cpu") -> np.ndarray:
    """Bool mask: which rows of ``images`` (an array or a Store) are near copies of a kept image,
    by ``copy_threshold``; read ``chunk`` rows at a time."""
    _, threshold = copy_threshold(nearest_distances(val_images, kept_images, device=device), copy_ratio)
    n = len(images)
    return np.concatenate([nearest_distances(gather_rows(images, np.arange(lo, min(lo + chunk, n))), kept_images,
                                             device=device) < threshold
                           for lo in range(0, n, chunk)]) if n else np.zeros(0, bool)


def copy_statistics(generated_d: np.ndarray, val_d: np.ndarray, *, copy_ratio: float = COPY_RATIO) -> dict:
    """Near-copy share, novelty and the distance histogram from nearest-kept distances of the
    generated samples and of the validation images (pure)."""
    scale, threshold = copy_threshold(val_d, copy_ratio)
    counts, _ = np.histogram(np.asarray(generated_d) / scale, bins=np.asarray(HISTOGRAM_EDGES))
    return {"near_copy_share": float(np.mean(generated_d < threshold)),
            "exact_copy_share": float(np.mean(generated_d < 0.5 / 255)),  # every pixel within rounding
            "novelty": float(np.median(generated_d)) / scale,
            "val_near_copy_share": float(np.mean(val_d < threshold)),  # calibration: held-out real data
            "distance_scale": scale, "copy_threshold": threshold, "copy_ratio": copy_ratio,
            "histogram": {"edges": [float(e) for e in HISTOGRAM_EDGES], "counts": counts.tolist()}}


def label_statistics(labels: np.ndarray | None, conditions: np.ndarray | None,
                     confidences: np.ndarray | None) -> dict:
    """f_NR's agreement with the conditioning class and its confidence, where the store has them."""
    out: dict = {}
    if labels is not None and conditions is not None:
        out["label_agreement"] = float(np.mean(np.asarray(labels) == np.asarray(conditions)))
    if confidences is not None:
        out["confidence"] = float(np.mean(confidences))
    return out


def diagnose(generated, kept, val, *, extractor: FeatureExtractor | None = None, n: int | None = 5000,
             copy_ratio: float = COPY_RATIO, repeats: int = 20, seed: int = 0, batch_size: int = 1024,
             device: str | torch.device | None = None) -> dict:
    """Diagnostics of one generated set (an ``ImageSet``: images, labels, conditions, confidences)
    against the kept real images and the validation images (``ImageDataset``s or ``ImageSet``s).

    ``n``: samples used (class-balanced, seeded; None or more than the set: all). ``extractor``:
    the features of complementarity / KID / FID (None: pixel and label diagnostics only).
    ``device``: where the pixel distances run (default: the extractor's, else the CPU)."""
    t0 = time.perf_counter()
    total = len(generated)
    if total < 2 or len(kept) < 2 or len(val) < 2:
        raise RobustgenError(f"diagnostics need >= 2 images in each set (generated {total}, kept {len(kept)}, "
                             f"validation {len(val)})")
    labels = getattr(generated, "labels", None)
    rows = (np.arange(total) if n is None or n >= total else balanced_sample(labels, n, seed=seed, total=total))
    images = gather_rows(generated.images, rows)
    kept_images, val_images = np.asarray(kept.images), np.asarray(val.images)
    device = device if device is not None else extractor.device if extractor is not None else "cpu"
    if images.shape[1:] != kept_images.shape[1:] or val_images.shape[1:] != kept_images.shape[1:]:
        raise RobustgenError(f"diagnostics: generated images {images.shape[1:]}, kept {kept_images.shape[1:]}, "
                             f"validation {val_images.shape[1:]} differ")
    pick = lambda a: None if a is None else np.asarray(a)[rows]  # noqa: E731
    out = {"n": int(rows.size), "n_kept": len(kept), "n_val": len(val),
           **copy_statistics(nearest_distances(images, kept_images, device=device),
                             nearest_distances(val_images, kept_images, device=device), copy_ratio=copy_ratio),
           **label_statistics(pick(labels), pick(getattr(generated, "conditions", None)),
                              pick(getattr(generated, "confidences", None)))}
    if extractor is not None:
        f_gen, _ = extract_features(extractor, images, batch_size=batch_size)
        f_kept, _ = extract_features(extractor, kept_images, batch_size=batch_size)
        f_val, _ = extract_features(extractor, val_images, batch_size=batch_size)
        out.update(_feature_statistics(f_gen, f_kept, f_val, pick(labels), np.asarray(kept.labels),
                                       np.asarray(val.labels), repeats=repeats, seed=seed))
        out["features"] = extractor.name
    out["time_s"] = round(time.perf_counter() - t0, 2)
    return out


def _feature_statistics(f_gen, f_kept, f_val, gen_labels, kept_labels, val_labels, *, repeats: int,
                        seed: int) -> dict:
    """Alg. 1 with N = the smaller real set, averaged over class-balanced draws; KID / FID vs val."""
    n = min(len(f_kept), len(f_val), len(f_gen))
    kept_p = f_kept[balanced_sample(kept_labels, n, seed=seed)]
    val_p = f_val[balanced_sample(val_labels, n, seed=seed + 1)]
    shares = []
    for r in range(max(1, repeats)):
        rows = balanced_sample(gen_labels, n, seed=seed + 2 + r, total=len(f_gen))
        # PCA to at most N - 1 components: Alg. 1's 100 where the sets are large enough
        res = complementarity_coverage(kept_p, val_p, f_gen[rows], pca_components=min(100, n - 1))
        shares.append([res.train, res.test, res.self, res.coverage_train, res.coverage_test])
    m = np.mean(shares, axis=0)
    size = min(1000, len(f_gen), len(f_val))
    return {"complementarity": {"kept": float(m[0]), "val": float(m[1]), "self": float(m[2]),
                                "coverage_kept": float(m[3]), "coverage_val": float(m[4]), "n": int(n),
                                "repeats": int(max(1, repeats))},
            "kid_val": list(kernel_inception_distance(f_gen, f_val, subset_size=size, seed=seed)),
            "fid_val": fid_from_features(f_gen, f_val)}


def format_diagnostics(reports: dict[str, dict], *, title: str | None = None) -> str:
    """Markdown: one row per generated set."""
    head = ["set", "n", "near copies", "novelty", "f_NR = condition", "f_NR confidence",
            "compl. kept / val / self", "coverage kept / val", "KID vs val", "FID vs val"]
    lines = [] if title is None else [f"**{title}**", ""]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for name, r in reports.items():
        c = r.get("complementarity")
        lines.append("| " + " | ".join([
            name, str(r["n"]), pct(r["near_copy_share"]), f"{r['novelty']:.2f}", pct(r.get("label_agreement")),
            pct(r.get("confidence")),
            "" if c is None else f"{100 * c['kept']:.0f} / {100 * c['val']:.0f} / {100 * c['self']:.0f}%",
            "" if c is None else f"{100 * c['coverage_kept']:.0f} / {100 * c['coverage_val']:.0f}%",
            "" if "kid_val" not in r else f"{r['kid_val'][0]:.4g}",
            "" if "fid_val" not in r else f"{r['fid_val']:.4g}"]) + " |")
    first = next(iter(reports.values()), None)
    if first is not None:
        lines += ["", f"Against the {first['n_kept']} kept real images and the {first['n_val']} validation images. "
                  f"Near copy: closer to a kept image (RMS pixel distance) than {first['copy_ratio']:.2g} of the "
                  f"validation images' median distance to the kept set ({first['distance_scale']:.3f}); the "
                  f"validation images themselves score {pct(first['val_near_copy_share'])}. Novelty: the samples' "
                  f"median distance / that median (1: as novel as fresh real data)."]
    return "\n".join(lines) + "\n"
