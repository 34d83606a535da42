"""Class-conditional Gaussian generator (Gowal et al. 2021, App. D).

Per class: flatten the images to [0, 1], PCA to ``num_components`` (200) directions, take the
mean and covariance (ddof=1) of the PCA coefficients; to sample, draw from that Gaussian, invert
the PCA, clip to [0, 1] and quantise to uint8. This is the authors' sklearn route
(``PCA(200).fit_transform`` + ``np.cov``) computed as a covariance (or Gram matrix) plus a partial
symmetric eigendecomposition (LAPACK, one BLAS thread: on shared cores a threaded eigh or QR
can run 10-100x slower), about 4 s per CIFAR class (5000 x 3072) on 2 busy cores. Above 4096
dimensions the top eigenvectors come from block subspace iteration with Rayleigh-Ritz instead
(converged to a residual of 1e-9 of the top eigenvalue, the exact PCA to ~1e-10), whose cost
grows as d^2 rather than d^3.

Randomness (per-sample seeds, as in EDM): the standard-normal noise of class ``c`` comes in
chunks of ``NOISE_CHUNK`` rows, chunk ``m`` drawn from ``np.random.default_rng([seed, c, m])``;
sample ``j`` of class ``c`` is therefore the same whatever the total count, the other classes'
counts or how the work is split.

One sampler, ``sample_gaussian_range(fit, start, stop, seed=...)`` / ``GaussianRangeSampler``,
gives any index range of one infinite global sequence, for sharded, resumable generation at
paper scale. Global sample ``i`` has class ``c = i % K`` and is noise row ``j = i // K`` of
class ``c``, so the first N samples are class-balanced (``balanced_class_counts``). Rows are
computed in float32 in fixed blocks of ``RANGE_BLOCK`` rows aligned to ``j``, so sample ``i`` is
byte-identical whatever range, shard size or restart produced it (on the same machine and
BLAS; another CPU may round a rare pixel differently).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg

from robustgen.data.npz import validate_images
from robustgen.generate import register_generator
from robustgen.runtime.errors import RobustgenError

__all__ = [
    "NOISE_CHUNK",
    "GaussianFit",
    "GaussianGenerator",
    "GaussianRangeSampler",
    "RANGE_BLOCK",
    "balanced_class_counts",
    "fit_class_conditional_gaussian",
    "sample_gaussian_range",
]

# Rows of standard-normal noise per RNG stream; part of the sample identity, do not change.
NOISE_CHUNK = 4096
# Rows per computation block of the range sampler; divides NOISE_CHUNK. Part of the sample
# identity of ``sample_gaussian_range``: do not change.
RANGE_BLOCK = 1024


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
    validate_images(images, source="training images", allow_empty=True)
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise RobustgenError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
    if num_classes < 1:
        raise RobustgenError(f"num_classes must be >= 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise RobustgenError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def _top_eigenvectors(a: np.ndarray, k: int, *, method: str = "auto") -> np.ndarray:
    """Top-k eigenvectors [m, k] of a symmetric PSD matrix ``a`` [m, m], ascending eigenvalues.

    ``method``: "exact" (LAPACK partial eigh), "subspace" (block subspace iteration with
    Rayleigh-Ritz, seeded, falls back to a full eigh if it does not converge) or "auto"
    (subspace iteration when m > 4096 and the block of 2k columns is at most half of m).
    """
    m = a.shape[0]
    block = min(m, k + max(k, 64))
    if method == "auto":
        method = "subspace" if m > 4096 and 2 * block <= m else "exact"
    if method == "subspace":
        v = _subspace_iteration(a, k, block)
        if v is not None:
            return v
        # not converged: a full divide-and-conquer eigh is slow but always fine
        with _single_threaded_lapack():
            _, v = scipy.linalg.eigh(a, driver="evd")
        return v[:, m - k:]
    if method != "exact":
        raise ValueError(f"unknown eigen method {method!r}")
    with _single_threaded_lapack():
        _, v = scipy.linalg.eigh(a, subset_by_index=[m - k, m - 1])
    return v


def _subspace_iteration(a: np.ndarray, k: int, block: int, *, tol: float = 1e-9,
                        max_iter: int = 100) -> np.ndarray | None:
    """Block subspace iteration with Rayleigh-Ritz; None unless every top-k Ritz residual
    ||a v - theta v|| is below ``tol`` times the top eigenvalue."""
    m = a.shape[0]
    # seeded start: the fit is deterministic
    y = a @ np.random.default_rng(0).standard_normal((m, block))
    for _ in range(max_iter):
        with _single_threaded_lapack():
            q, _ = np.linalg.qr(y)
        y = a @ q  # [m, block]
        h = q.T @ y
        with _single_threaded_lapack():
            theta, u = np.linalg.eigh((h + h.T) * 0.5)  # ascending
        u = u[:, block - k:]
        v = q @ u
        resid = np.linalg.norm(y @ u - v * theta[block - k:], axis=0)
        if resid.max() <= tol * max(theta[-1], np.finfo(np.float64).tiny):
            return v
        # two powers per orthonormalisation: QR is a third of the cost of an iteration
        y = a @ y
    return None


_CONTROLLER = None


def _single_threaded_lapack():
    """Context: one BLAS thread. LAPACK's QR / eigh on these sizes gain nothing from threads and
    lose up to 100x when the cores are shared (threads spin-waiting for each other)."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _pca_directions(xc: np.ndarray, k: int, *, method: str = "auto") -> np.ndarray:
    """Top-k principal directions of centred data ``xc`` [n, d] -> [d, k], descending variance.

    Eigendecomposition of the smaller of the covariance X^T X [d, d] and the Gram matrix
    X X^T [n, n] (same nonzero spectrum; V = X^T U, re-orthonormalised). Sign convention as
    sklearn's PCA (svd_flip on components): the largest-magnitude entry of each direction > 0.
    """
    n, d = xc.shape
    if d <= n:
        # [d, d]
        v = _top_eigenvectors(xc.T @ xc, k, method=method)
    else:
        # [n, n]; QR gives orthonormal columns even where the spectrum is (numerically) zero
        u = _top_eigenvectors(xc @ xc.T, k, method=method)
        q, r = np.linalg.qr(xc.T @ u)
        v = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    # every route returns ascending eigenvalues
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


class GaussianRangeSampler:
    """Index ranges of the global sample sequence of ``fit`` under ``seed`` (see the module doc).

    ``sample(start, stop)`` -> (uint8 [stop - start, H, W, C], int64 classes). Keeps small
    caches (noise chunks, finished blocks at range edges, ``cache_bytes`` each) so consecutive
    ranges share the work at their boundary; the output never depends on them.
    """

    def __init__(self, fit: GaussianFit, *, seed: int, cache_bytes: int = 128 << 20):
        if not 0 <= int(seed) < 2**63:
            raise RobustgenError(f"seed must be a non-negative integer, got {seed}")
        self.fit, self.seed = fit, int(seed)
        self.image_shape = tuple(fit.image_shape)
        self._d = int(np.prod(self.image_shape))
        # per class, float32: factor^T [k, k], latent mean [k], components^T [k, d], image mean [d]
        self._params = [
            (_noise_factor(fit.latent_cov[c]).T.astype(np.float32), fit.latent_mean[c].astype(np.float32),
             np.ascontiguousarray(fit.components[c].T, dtype=np.float32), fit.means_image[c].astype(np.float32))
            for c in range(fit.num_classes)
        ]
        self._cache_bytes = int(cache_bytes)
        self._noise: OrderedDict = OrderedDict()
        self._blocks: OrderedDict = OrderedDict()

    def _cached(self, cache: OrderedDict, key, make):
        value = cache.get(key)
        if value is None:
            value = make()
            cache[key] = value
            while len(cache) > 1 and sum(v.nbytes for v in cache.values()) > self._cache_bytes:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return value

    def _block(self, c: int, b: int) -> np.ndarray:
        """Rows j in [b * RANGE_BLOCK, (b + 1) * RANGE_BLOCK) of class ``c`` -> uint8 [RANGE_BLOCK, d]."""
        factor_t, latent_mean, components_t, mean = self._params[c]
        m, offset = divmod(b * RANGE_BLOCK, NOISE_CHUNK)
        chunk = self._cached(self._noise, (c, m), lambda: np.random.default_rng(
            [self.seed, c, m]).standard_normal((NOISE_CHUNK, factor_t.shape[0])))
        eps = chunk[offset:offset + RANGE_BLOCK].astype(np.float32)
        # [RANGE_BLOCK, k] z ~ N(latent_mean, latent_cov); [RANGE_BLOCK, d] inverse PCA
        x = (eps @ factor_t + latent_mean) @ components_t
        x += mean
        np.clip(x, 0.0, 1.0, out=x)
        x *= 255.0
        np.rint(x, out=x)
        return x.astype(np.uint8)

    def sample(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop:
            raise RobustgenError(f"sample range must satisfy 0 <= start <= stop, got [{start}, {stop})")
        K, n = self.fit.num_classes, stop - start
        images = np.empty((n, self._d), dtype=np.uint8)
        labels = np.arange(start, stop, dtype=np.int64) % K
        for c in range(K):
            first = start + (c - start) % K  # first global index of class c in the range
            if first >= stop:
                continue
            j0, count = first // K, len(range(first, stop, K))
            rows = np.arange(first - start, n, K)  # output rows, in j order
            for b in range(j0 // RANGE_BLOCK, -(-(j0 + count) // RANGE_BLOCK)):
                lo, hi = max(j0, b * RANGE_BLOCK), min(j0 + count, (b + 1) * RANGE_BLOCK)
                edge = lo > b * RANGE_BLOCK or hi < (b + 1) * RANGE_BLOCK
                # blocks cut by the range edge are cached: the next range needs their other part
                block = (self._cached(self._blocks, (c, b), lambda: self._block(c, b)) if edge
                         else self._block(c, b))
                images[rows[lo - j0:hi - j0]] = block[lo - b * RANGE_BLOCK:hi - b * RANGE_BLOCK]
        return images.reshape(n, *self.image_shape), labels


    def sample_indices(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Samples at arbitrary global indices (e.g. only some classes' rows: class ``i % K``),
        byte-identical to the same indices of ``sample(start, stop)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and idx.min() < 0:
            raise RobustgenError("sample indices must be non-negative")
        K = self.fit.num_classes
        images = np.empty((idx.size, self._d), dtype=np.uint8)
        classes, rows = idx % K, idx // K
        for c, b in sorted(set(zip(classes.tolist(), (rows // RANGE_BLOCK).tolist()))):
            where = np.nonzero((classes == c) & (rows // RANGE_BLOCK == b))[0]
            images[where] = self._block(c, b)[rows[where] - b * RANGE_BLOCK]
        return images.reshape(idx.size, *self.image_shape), classes


def sample_gaussian_range(fit: GaussianFit, start: int, stop: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``start .. stop - 1`` of the global sequence (class ``i % K``) -> (uint8 NHWC, int64 classes)."""
    return GaussianRangeSampler(fit, seed=seed).sample(start, stop)


@register_generator("gaussian")
class GaussianGenerator:
    """Registry adapter: ``fit(train_images, train_labels, *, num_classes, num_components)``,
    ``sample``, and for sharded generation ``range_sampler``, ``save_fit``, ``load_fit``."""

    @staticmethod
    def fit_kwargs(generator_config) -> dict:
        return {"num_components": generator_config.pca_components}

    @staticmethod
    def fit(
        train_images: np.ndarray, train_labels: np.ndarray, *, num_classes: int, num_components: int = 200
    ) -> GaussianFit:
        # images decoded on demand from files (data.folder) are decoded here, all at once
        return fit_class_conditional_gaussian(
            np.asarray(train_images), train_labels, num_classes=num_classes, num_components=num_components
        )

    @staticmethod
    def sample(fitted: GaussianFit, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` samples of the global sequence (class ``i % K``)."""
        return sample_gaussian_range(fitted, 0, n, seed=seed)

    # Resumable, sharded generation (``robustgen.generate.sample_to_store``) needs the three below.
    @staticmethod
    def range_sampler(fitted: GaussianFit, *, seed: int) -> GaussianRangeSampler:
        """An object whose ``sample(start, stop)`` is a pure function of (fit, seed, index)."""
        return GaussianRangeSampler(fitted, seed=seed)

    @staticmethod
    def save_fit(fitted: GaussianFit, path) -> None:
        from robustgen.data.npz import write_npz

        write_npz(path, **fitted.state_dict())

    @staticmethod
    def load_fit(path) -> GaussianFit:
        from robustgen.data.npz import read_npz

        return GaussianFit.from_state_dict(read_npz(Path(path), keys_required=()))
