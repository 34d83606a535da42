"""Class-conditional Gaussian generator (Gowal et al. 2021, App. D).

Per class: flatten the images to [0, 1], PCA to ``num_components`` (200) directions, take the
mean and covariance (ddof=1) of the PCA coefficients; to sample, draw from that Gaussian, invert
the PCA, clip to [0, 1] and quantise to uint8. This is the authors' sklearn route
(``PCA(200).fit_transform`` + ``np.cov``) computed as a covariance (or Gram matrix) plus a partial
symmetric eigendecomposition, which fits a CIFAR class (5000 x 3072) in about two seconds.

Randomness (per-sample seeds, as in EDM): the standard-normal noise of class ``c`` comes in
chunks of ``NOISE_CHUNK`` rows, chunk ``m`` drawn from ``np.random.default_rng([seed, c, m])``;
sample ``j`` of class ``c`` is therefore the same whatever the total count, the other classes'
counts or how the work is split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from robustgen.errors import RobustgenError
from robustgen.generate import register_generator

__all__ = [
    "NOISE_CHUNK",
    "GaussianFit",
    "GaussianGenerator",
    "balanced_class_counts",
    "fit_class_conditional_gaussian",
    "sample_class_conditional_gaussian",
]

# Rows of standard-normal noise per RNG stream; part of the sample identity, do not change.
NOISE_CHUNK = 4096
# Stream for the output permutation; class streams are [seed, c, m] with c < 2**32 - 1.
_SHUFFLE_STREAM = (2**32 - 1, 2**32 - 1)


@dataclass
class GaussianFit:
    """Per-class parameters of the fitted Gaussians (float64); list index = class."""

    means_image: list[np.ndarray]  # [d] each: class mean of the flattened [0, 1] images
    components: list[np.ndarray]  # [d, k_c]: orthonormal PCA directions, descending variance
    latent_mean: list[np.ndarray]  # [k_c]: mean of the PCA coefficients (~0)
    latent_cov: list[np.ndarray]  # [k_c, k_c]: covariance of the coefficients, ddof=1
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat dict of arrays, loadable without pickle (safetensors / npz)."""
        out: dict[str, np.ndarray] = {
            "num_classes": np.asarray([self.num_classes], dtype=np.int64),
            "image_shape": np.asarray(self.image_shape, dtype=np.int64),
        }
        for c in range(self.num_classes):
            out[f"class{c}.means_image"] = np.ascontiguousarray(self.means_image[c], np.float64)
            out[f"class{c}.components"] = np.ascontiguousarray(self.components[c], np.float64)
            out[f"class{c}.latent_mean"] = np.ascontiguousarray(self.latent_mean[c], np.float64)
            out[f"class{c}.latent_cov"] = np.ascontiguousarray(self.latent_cov[c], np.float64)
        return out

    @classmethod
    def from_state_dict(cls, d) -> "GaussianFit":
        try:
            num_classes = int(np.asarray(d["num_classes"]).reshape(-1)[0])
            image_shape = tuple(int(v) for v in np.asarray(d["image_shape"]).reshape(-1))
            fields = {
                name: [np.asarray(d[f"class{c}.{name}"], dtype=np.float64) for c in range(num_classes)]
                for name in ("means_image", "components", "latent_mean", "latent_cov")
            }
        except KeyError as e:
            raise RobustgenError(f"Gaussian fit state is missing key {e.args[0]!r}") from None
        if len(image_shape) != 3:
            raise RobustgenError(f"Gaussian fit state has image_shape {image_shape}; expected (H, W, C)")
        fit = cls(image_shape=image_shape, num_classes=num_classes, **fields)
        d_flat = int(np.prod(image_shape))
        for c in range(num_classes):
            k = fit.components[c].shape[1] if fit.components[c].ndim == 2 else -1
            if (
                fit.means_image[c].shape != (d_flat,)
                or fit.components[c].shape != (d_flat, k)
                or fit.latent_mean[c].shape != (k,)
                or fit.latent_cov[c].shape != (k, k)
            ):
                raise RobustgenError(f"Gaussian fit state has inconsistent shapes for class {c}")
        return fit


def _check_images_labels(images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise RobustgenError(
            f"expected uint8 NHWC images, got {getattr(images, 'dtype', type(images))} "
            f"with shape {getattr(images, 'shape', None)}"
        )
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise RobustgenError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
    if num_classes < 1:
        raise RobustgenError(f"num_classes must be >= 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise RobustgenError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def _pca_directions(xc: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal directions of centred data ``xc`` [n, d] -> [d, k], descending variance.

    Eigendecomposition of the smaller of the covariance X^T X [d, d] and the Gram matrix
    X X^T [n, n] (same nonzero spectrum; V = X^T U, re-orthonormalised). Sign convention as
    sklearn's PCA (svd_flip on components): the largest-magnitude entry of each direction > 0.
    """
    n, d = xc.shape
    if d <= n:
        # [d, d]
        _, v = scipy.linalg.eigh(xc.T @ xc, subset_by_index=[d - k, d - 1])
    else:
        # [n, n]; QR gives orthonormal columns even where the spectrum is (numerically) zero
        _, u = scipy.linalg.eigh(xc @ xc.T, subset_by_index=[n - k, n - 1])
        q, r = np.linalg.qr(xc.T @ u)
        v = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    # eigh sorts ascending
    v = np.ascontiguousarray(v[:, ::-1])
    peak = v[np.abs(v).argmax(axis=0), np.arange(k)]
    return v * np.where(peak < 0, -1.0, 1.0)


def fit_class_conditional_gaussian(
    images: np.ndarray, labels: np.ndarray, *, num_classes: int, num_components: int = 200
) -> GaussianFit:
    """Fit one Gaussian per class in a PCA subspace of the flattened [0, 1] images.

    ``k_c = min(num_components, n_c - 1, d)``: fewer components when a class has fewer samples
    or dimensions. Raises RobustgenError for a class with fewer than 2 samples.
    """
    _check_images_labels(images, labels, num_classes)
    if num_components < 1:
        raise RobustgenError(f"num_components must be >= 1, got {num_components}")
    labels = np.asarray(labels)
    n_total, h, w, ch = images.shape
    d = h * w * ch
    fit = GaussianFit([], [], [], [], image_shape=(h, w, ch), num_classes=num_classes)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n = idx.size
        if n < 2:
            raise RobustgenError(f"class {c} has {n} training images; the Gaussian fit needs at least 2")
        # [n, d] in [0, 1], float64
        x = images[idx].reshape(n, d).astype(np.float64)
        x *= 1.0 / 255.0
        mu = x.mean(axis=0)
        x -= mu
        k = min(num_components, n - 1, d)
        v = _pca_directions(x, k)
        # PCA coefficients [n, k]; mean and covariance exactly as the authors (np.cov, ddof=1)
        y = x @ v
        fit.means_image.append(mu)
        fit.components.append(v)
        fit.latent_mean.append(y.mean(axis=0))
        fit.latent_cov.append(np.atleast_2d(np.cov(y, rowvar=False)))
    return fit


def balanced_class_counts(num_samples: int, num_classes: int) -> list[int]:
    """``num_samples // K`` per class, plus one for the first ``num_samples % K`` classes."""
    base, extra = divmod(num_samples, num_classes)
    return [base + (c < extra) for c in range(num_classes)]


def _noise_factor(cov: np.ndarray) -> np.ndarray:
    """A [k, k] with A A^T = cov for a PSD ``cov`` (eigh, clamped eigenvalues; never fails)."""
    evals, evecs = np.linalg.eigh(cov)
    return evecs * np.sqrt(np.clip(evals, 0.0, None))


def sample_class_conditional_gaussian(
    fit: GaussianFit,
    num_samples: int,
    *,
    seed: int,
    shuffle: bool = True,
    class_counts: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_samples`` images -> (uint8 [N, H, W, C], int64 conditioning labels [N]).

    Classes are balanced unless ``class_counts`` (one count per class, summing to
    ``num_samples``) is given. The output is ordered by class, then sample index, unless
    ``shuffle``, which applies a permutation derived from ``seed``.
    """
    K = fit.num_classes
    if num_samples < 0:
        raise RobustgenError(f"num_samples must be >= 0, got {num_samples}")
    if not 0 <= int(seed) < 2**63:
        raise RobustgenError(f"seed must be a non-negative integer, got {seed}")
    seed = int(seed)
    if class_counts is None:
        counts = balanced_class_counts(num_samples, K)
    else:
        counts = [int(n) for n in class_counts]
        if len(counts) != K or min(counts, default=0) < 0 or sum(counts) != num_samples:
            raise RobustgenError(
                f"class_counts must be {K} non-negative counts summing to num_samples={num_samples}, "
                f"got {list(class_counts)}"
            )
    h, w, ch = fit.image_shape
    images = np.empty((num_samples, h, w, ch), dtype=np.uint8)
    flat = images.reshape(num_samples, h * w * ch)
    # class-ordered row r lands at position[r]; shuffled output = ordered[perm], scattered in place
    labels = np.repeat(np.arange(K, dtype=np.int64), counts)
    position = np.arange(num_samples)
    if shuffle and num_samples > 1:
        perm = np.random.default_rng([seed, *_SHUFFLE_STREAM]).permutation(num_samples)
        position[perm] = np.arange(num_samples)
        labels = labels[perm]
    start = 0
    for c, count in enumerate(counts):
        if count == 0:
            continue
        v, mu = fit.components[c], fit.means_image[c]
        factor = _noise_factor(fit.latent_cov[c])
        # one noise chunk at a time bounds the float64 working set to [NOISE_CHUNK, d]
        for m in range(-(-count // NOISE_CHUNK)):
            rows = min(NOISE_CHUNK, count - m * NOISE_CHUNK)
            eps = np.random.default_rng([seed, c, m]).standard_normal((NOISE_CHUNK, v.shape[1]))[:rows]
            # [rows, k]: z ~ N(latent_mean, latent_cov)
            z = fit.latent_mean[c] + eps @ factor.T
            # [rows, d]: inverse PCA, clip to [0, 1], quantise
            x = z @ v.T
            x += mu
            np.clip(x, 0.0, 1.0, out=x)
            x *= 255.0
            np.rint(x, out=x)
            flat[position[start : start + rows]] = x
            start += rows
    return images, labels


@register_generator("gaussian")
class GaussianGenerator:
    """Registry adapter: ``fit(train_images, train_labels, *, num_classes, num_components)``."""

    @staticmethod
    def fit(
        train_images: np.ndarray, train_labels: np.ndarray, *, num_classes: int, num_components: int = 200
    ) -> GaussianFit:
        return fit_class_conditional_gaussian(
            train_images, train_labels, num_classes=num_classes, num_components=num_components
        )

    @staticmethod
    def sample(fitted: GaussianFit, n: int, *, seed: int, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return sample_class_conditional_gaussian(fitted, n, seed=seed, shuffle=shuffle)
