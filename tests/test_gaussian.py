"""Class-conditional Gaussian generator (paper App. D): fit, sampler moments, determinism, registry."""

import io

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from robustgen.generate import GENERATORS, get_generator, list_generators
from robustgen.generate.gaussian import (
    NOISE_CHUNK,
    GaussianFit,
    balanced_class_counts,
    fit_class_conditional_gaussian,
    sample_gaussian_range,
)
from robustgen.runtime.errors import RobustgenError


def _digits():
    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    return images, d.target.astype(np.int64)


def _synthetic(num_classes=3, n=400, shape=(4, 4, 3), rank=6, seed=0):
    """Low-rank + isotropic structure around mid-grey, far from the clip bounds."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    images, labels = [], []
    for c in range(num_classes):
        mean = rng.uniform(100, 155, d)
        basis = rng.normal(size=(d, rank)) * rng.uniform(2, 6, rank)
        x = mean + rng.normal(size=(n, rank)) @ basis.T + rng.normal(scale=3.0, size=(n, d))
        images.append(np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(n, *shape))
        labels.append(np.full(n, c, np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _project(fit, c, images):
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return (x - fit.means_image[c]) @ fit.components[c]


def test_sampler_reproduces_latent_mean_and_covariance():
    images, labels = _synthetic()
    fit = fit_class_conditional_gaussian(images, labels, num_classes=3, num_components=20)
    per_class = 20000
    samples, sample_labels = sample_gaussian_range(fit, 0, 3 * per_class, seed=1)
    assert np.bincount(sample_labels).tolist() == [per_class] * 3
    for c in range(3):
        y = _project(fit, c, samples[sample_labels == c])
        cov = fit.latent_cov[c]
        std = np.sqrt(np.diag(cov))
        assert np.all(np.abs(y.mean(0) - fit.latent_mean[c]) < 0.05 * std.max())
        rel = np.linalg.norm(np.cov(y, rowvar=False) - cov) / np.linalg.norm(cov)
        assert rel < 0.05, (c, rel)


def test_latent_statistics_are_the_authors_pca_and_cov():
    images, labels = _synthetic(num_classes=1, n=300)
    fit = fit_class_conditional_gaussian(images, labels, num_classes=1, num_components=10)
    y = _project(fit, 0, images)
    np.testing.assert_allclose(fit.latent_mean[0], y.mean(0), atol=1e-12)
    np.testing.assert_allclose(fit.latent_cov[0], np.cov(y.T), rtol=1e-10, atol=1e-14)
    v = fit.components[0]
    np.testing.assert_allclose(v.T @ v, np.eye(10), atol=1e-10)
    # descending variance, near-diagonal covariance
    var = np.diag(fit.latent_cov[0])
    assert np.all(np.diff(var) <= 1e-12)
    off = fit.latent_cov[0] - np.diag(var)
    assert np.abs(off).max() < 1e-9 * var.max()


@pytest.mark.parametrize(
    "case",
    ["covariance_route", "gram_route"],  # n > d uses X^T X [d, d]; n <= d uses X X^T [n, n]
)
def test_fit_matches_sklearn_pca_and_np_cov(case):
    if case == "covariance_route":
        images, labels = _digits()
        images, labels = images[labels == 0], labels[labels == 0]  # 178 x 64
        k = 20
    else:
        rng = np.random.default_rng(3)
        images = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)  # 20 x 48
        labels = np.zeros(20, np.int64)
        k = 19
    num_components = 200 if case == "gram_route" else k  # gram route: k limited by n - 1
    fit = fit_class_conditional_gaussian(images, labels, num_classes=1, num_components=num_components)
    assert fit.components[0].shape[1] == k
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    pca = PCA(n_components=k, svd_solver="full")
    y_sk = pca.fit_transform(x)
    v_sk = pca.components_.T
    np.testing.assert_allclose(fit.means_image[0], pca.mean_, atol=1e-12)
    # same subspace and directions up to sign
    np.testing.assert_allclose(np.abs(fit.components[0].T @ v_sk), np.eye(k), atol=1e-6)
    signs = np.sign(np.sum(fit.components[0] * v_sk, axis=0))
    np.testing.assert_allclose(fit.components[0] * signs, v_sk, atol=1e-6)
    # latent statistics equal up to the sign flips
    flip = np.outer(signs, signs)
    np.testing.assert_allclose(fit.latent_cov[0] * flip, np.cov(y_sk.T), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(fit.latent_mean[0] * signs, y_sk.mean(0), atol=1e-10)
    # same reconstruction as PCA.inverse_transform(PCA.transform(x))
    recon = fit.means_image[0] + _project(fit, 0, images) @ fit.components[0].T
    np.testing.assert_allclose(recon, pca.inverse_transform(y_sk), atol=1e-9)


def test_num_components_reduced_for_small_classes_and_dimensions():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (55, 2, 2, 1), dtype=np.uint8)  # d = 4
    labels = np.array([0] * 50 + [1] * 5, np.int64)
    fit = fit_class_conditional_gaussian(images, labels, num_classes=2)
    assert fit.components[0].shape == (4, 4)  # min(200, 49, d=4)
    assert fit.components[1].shape == (4, 4)  # min(200, 4, 4)
    images = rng.integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)  # d = 48
    labels = np.array([0] * 10 + [1] * 3, np.int64)
    fit = fit_class_conditional_gaussian(images, labels, num_classes=2)
    assert [v.shape[1] for v in fit.components] == [9, 2]
    assert [m.shape for m in fit.latent_mean] == [(9,), (2,)]
    assert [m.shape for m in fit.latent_cov] == [(9, 9), (2, 2)]
    # a class of 2 images -> one component, covariance still a matrix
    fit = fit_class_conditional_gaussian(images[:2], np.zeros(2, np.int64), num_classes=1)
    assert fit.latent_cov[0].shape == (1, 1)
    sample_gaussian_range(fit, 0, 5, seed=0)


def test_fit_rejects_tiny_classes_and_bad_input():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 2, 2, 1), dtype=np.uint8)
    with pytest.raises(RobustgenError, match="class 1 has 1"):
        fit_class_conditional_gaussian(images, np.array([0, 0, 0, 0, 1]), num_classes=2)
    with pytest.raises(RobustgenError, match="class 2 has 0"):
        fit_class_conditional_gaussian(images, np.array([0, 0, 1, 1, 1]), num_classes=3)
    with pytest.raises(RobustgenError, match="uint8"):
        fit_class_conditional_gaussian(images.astype(np.float32), np.zeros(5), num_classes=1)
    with pytest.raises(RobustgenError, match="labels"):
        fit_class_conditional_gaussian(images, np.array([0, 0, 1, 1, 5]), num_classes=2)


def test_sample_dtype_shape_range_and_balance():
    images, labels = _digits()
    fit = fit_class_conditional_gaussian(images, labels, num_classes=10)
    out, out_labels = sample_gaussian_range(fit, 0, 23, seed=0)
    assert out.dtype == np.uint8 and out.shape == (23, 8, 8, 1)
    assert out_labels.dtype == np.int64 and out_labels.shape == (23,)
    assert np.bincount(out_labels, minlength=10).tolist() == [3, 3, 3] + [2] * 7
    assert balanced_class_counts(23, 10) == [3, 3, 3] + [2] * 7
    # digits live at the bounds: clipping is exercised and the range is the full uint8 range
    many, _ = sample_gaussian_range(fit, 0, 2000, seed=0)
    assert many.min() == 0 and many.max() == 255
    # sample i is of class i % K
    _, interleaved = sample_gaussian_range(fit, 95, 200, seed=0)
    np.testing.assert_array_equal(interleaved, np.arange(95, 200) % 10)
    empty, empty_labels = sample_gaussian_range(fit, 0, 0, seed=0)
    assert empty.shape == (0, 8, 8, 1) and empty_labels.shape == (0,)


def test_sampling_is_deterministic_per_sample():
    images, labels = _synthetic(num_classes=2, n=50)
    fit = fit_class_conditional_gaussian(images, labels, num_classes=2, num_components=8)
    a, la = sample_gaussian_range(fit, 0, 40, seed=7)
    b, lb = sample_gaussian_range(fit, 0, 40, seed=7)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    c, _ = sample_gaussian_range(fit, 0, 40, seed=8)
    assert a.tobytes() != c.tobytes()
    # sample i does not depend on the range that produced it, across a noise-chunk boundary
    n0 = 2 * NOISE_CHUNK + 10
    big, _ = sample_gaussian_range(fit, 0, n0, seed=7)
    small, _ = sample_gaussian_range(fit, n0 - 30, n0, seed=7)
    assert big[n0 - 30:].tobytes() == small.tobytes()
    with pytest.raises(RobustgenError, match="seed"):
        sample_gaussian_range(fit, 0, 3, seed=-1)


def test_state_dict_round_trip():
    images, labels = _synthetic(num_classes=2, n=30)
    labels[:28] = 0  # class 1 has 2 images -> k = 1
    fit = fit_class_conditional_gaussian(images, labels, num_classes=2, num_components=8)
    state = fit.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = GaussianFit.from_state_dict(dict(f))
    assert loaded.num_classes == 2 and loaded.image_shape == (4, 4, 3)
    for name in ("means_image", "components", "latent_mean", "latent_cov"):
        for x, y in zip(getattr(fit, name), getattr(loaded, name)):
            np.testing.assert_array_equal(x, y)
    a, _ = sample_gaussian_range(fit, 0, 9, seed=3)
    b, _ = sample_gaussian_range(loaded, 0, 9, seed=3)
    assert a.tobytes() == b.tobytes()
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    again = GaussianFit.from_state_dict(safetensors_numpy.load(safetensors_numpy.save(state)))
    np.testing.assert_array_equal(again.latent_cov[1], fit.latent_cov[1])
    del state["class1.components"]
    with pytest.raises(RobustgenError, match="class1.components"):
        GaussianFit.from_state_dict(state)


def test_registry_exposes_gaussian():
    assert "gaussian" in list_generators()
    assert list_generators() == sorted(GENERATORS)
    gen = get_generator("gaussian")
    images, labels = _digits()
    fitted = gen.fit(images, labels, num_classes=10, num_components=16)
    out, out_labels = gen.sample(fitted, 30, seed=0)
    assert out.shape == (30, 8, 8, 1) and np.bincount(out_labels).tolist() == [3] * 10
    with pytest.raises(RobustgenError, match="unknown generator"):
        get_generator("no-such-generator")
