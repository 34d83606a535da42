"""Weighted multi-source batches: exact counts, the documented index math, gathering rows, Prefetcher."""

import numpy as np
import pytest
import torch

from robustgen.data.store import Store
from robustgen.data.store.writer import StoreWriter
from robustgen.runtime.errors import RobustgenError
from robustgen.train.mixing.indices import WeightedIndices, source_counts
from robustgen.train.mixing.sources import ArraySource, Prefetcher, gather_rows, host_buffer, open_source


def test_source_counts_hand_cases():
    assert source_counts(10, [1, 1, 1]) == (4, 3, 3)
    assert source_counts(3, [0.5, 0.5]) == (2, 1)
    assert source_counts(1024, [0.3, 0.7]) == (307, 717)
    assert source_counts(7, [0, 1]) == (0, 7)
    assert source_counts(5, [2, 2, 1]) == (2, 2, 1)
    assert source_counts(2, [1, 1, 1]) == (1, 1, 0)
    for bad in ([], [0, 0], [-1, 2], [float("nan"), 1]):
        with pytest.raises(RobustgenError, match="weights"):
            source_counts(8, bad)
    with pytest.raises(RobustgenError, match="batch size"):
        source_counts(0, [1])


def test_source_counts_per_group_are_the_authors_per_core_mix():
    # the authors count real rows per 32-image TPU core: 10 of 32 at alpha 0.3, 320 of 1024 (not 307)
    assert source_counts(1024, [0.3, 0.7], group_size=32) == (320, 704)
    assert source_counts(1024, [0.8, 0.2], group_size=32) == (832, 192)
    assert source_counts(64, [0.3, 0.7], group_size=64) == source_counts(64, [0.3, 0.7])
    with pytest.raises(RobustgenError, match="must divide the batch size 1000"):
        source_counts(1000, [0.3, 0.7], group_size=32)
    from robustgen.presets import load_config

    assert load_config("cifar10_linf_wrn-28-10").train.mix_group_size == 32
    with pytest.raises(RobustgenError, match="train.mix_group_size must divide"):
        load_config("digits_demo", ["train.mix_group_size=100"])


def test_source_counts_sum_to_batch_and_match_alpha_mixing():
    rng = np.random.default_rng(0)
    for _ in range(500):
        B = int(rng.integers(1, 2000))
        w = rng.random(int(rng.integers(1, 6))) * (rng.random() < 0.9)
        if w.sum() == 0:
            continue
        counts = source_counts(B, w)
        assert sum(counts) == B and min(counts) >= 0
        assert all(abs(c - wi / w.sum() * B) < 1 + 1e-9 for c, wi in zip(counts, w))
    for B in (1, 2, 3, 7, 64, 100, 128, 1000, 1024):
        for alpha in np.round(np.linspace(0, 1, 41), 3):
            n_real = int(np.floor(float(alpha) * B + 0.5))  # alpha-mixing: round(alpha * B) real rows
            assert source_counts(B, [alpha, 1 - alpha]) == (n_real, B - n_real), (B, alpha)


def _walk(n, seed, stream, start, count):
    """Positions start.. of the concatenation of per-epoch permutations seeded by (seed, stream, epoch)."""
    epochs = np.concatenate([np.random.default_rng([seed, stream, e]).permutation(n)
                             for e in range((start + count) // n + 1)])
    return epochs[start:start + count]


@pytest.mark.parametrize("gen_sampling", ["with_replacement", "permutation"])
def test_weighted_indices_follow_the_documented_math(gen_sampling):
    wi = WeightedIndices([50, 333], [0.3, 0.7], batch_size=64, seed=5, sampling=("permutation", gen_sampling))
    assert wi.counts == (19, 45)
    for step in (0, 1, 2, 7, 100):
        real, gen = wi(step)
        np.testing.assert_array_equal(real, _walk(50, 5, 0, step * 19, 19))
        expected = (_walk(333, 5, 1, step * 45, 45) if gen_sampling == "permutation"
                    else np.random.default_rng([5, 1, step]).integers(0, 333, size=45, dtype=np.int64))
        np.testing.assert_array_equal(gen, expected)
        assert real.dtype == gen.dtype == np.int64


def test_weighted_indices_permutation_walks_every_row_once_per_epoch():
    wi = WeightedIndices([30, 1000, 7], [0.5, 0.3, 0.2], batch_size=10, seed=1, sampling="permutation")
    assert wi.counts == (5, 3, 2)
    rows = np.concatenate([wi(t)[0] for t in range(6)])  # 6 steps x 5 rows = one epoch of 30
    assert sorted(rows.tolist()) == list(range(30))
    np.testing.assert_array_equal(wi(3)[1], wi(3)[1])  # pure in step
    with pytest.raises(RobustgenError, match="source 1 is empty"):
        WeightedIndices([5, 0], [0.5, 0.5], batch_size=4, seed=0)
    WeightedIndices([5, 0], [1, 0], batch_size=4, seed=0)  # weight 0: may be empty


def _sources(tmp_path, k=4):
    rng = np.random.default_rng(0)
    real = ArraySource(rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8), rng.integers(0, k, 20),
                       num_classes=k, name="real")
    images, labels = rng.integers(0, 256, (57, 4, 4, 3), dtype=np.uint8), rng.integers(0, k, 57)
    with StoreWriter.create(tmp_path / "g", image_shape=(4, 4, 3), num_classes=k, shard_size=10) as w:
        w.append(images, labels)
    return real, Store(tmp_path / "g"), images, labels


def _batch(sources, indices, step):
    """Step ``step``'s rows of every source, gathered as the training loop does."""
    idx = indices(step)
    images = np.empty((sum(len(i) for i in idx), *sources[0].image_shape), np.uint8)
    labels = np.empty(len(images), np.int64)
    gather_rows(sources, idx, images, labels)
    return idx, images, labels


def test_gather_rows_from_an_array_and_a_store(tmp_path):
    real, gen, images, labels = _sources(tmp_path)
    indices = WeightedIndices([len(real), len(gen)], [0.25, 0.75], batch_size=16, seed=3,
                              sampling=("permutation", "with_replacement"))
    assert indices.counts == (4, 12)
    (ir, ig), b_images, b_labels = _batch([real, gen], indices, 5)
    np.testing.assert_array_equal(b_images[:4], real.images[ir])
    np.testing.assert_array_equal(b_images[4:], images[ig])
    np.testing.assert_array_equal(b_labels, np.concatenate([real.labels[ir], labels[ig]]))
    np.testing.assert_array_equal(_batch([real, gen], indices, 5)[1], b_images)


def test_prefetcher_yields_the_same_batches_in_order(tmp_path):
    real, gen, _, _ = _sources(tmp_path)
    indices = WeightedIndices([len(real), len(gen)], [0.5, 0.5], batch_size=8, seed=0)

    def fetch(step):
        images = host_buffer((8, *real.image_shape), np.uint8, pin_memory=False)
        labels = host_buffer((8,), np.int64, pin_memory=False)
        gather_rows([real, gen], indices(step), images.numpy(), labels.numpy())
        return step, images, labels

    with Prefetcher(fetch, start_step=3, stop_step=9, depth=2) as pf:
        got = list(pf)
    assert [step for step, _, _ in got] == list(range(3, 9))
    for step, images, labels in got:
        assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
        _, ref_images, ref_labels = _batch([real, gen], indices, step)
        np.testing.assert_array_equal(images.numpy(), ref_images)
        np.testing.assert_array_equal(labels.numpy(), ref_labels)
    # closing early does not hang; an endless prefetcher stops on close
    pf = Prefetcher(fetch, depth=2)
    assert next(pf)[0] == 0 and next(pf)[0] == 1
    pf.close()


def test_prefetcher_with_a_callable(tmp_path):
    from robustgen.train.mixing.sources import host_buffer

    _, gen, images, labels = _sources(tmp_path)
    indices = WeightedIndices([20, len(gen)], [0.25, 0.75], batch_size=8, seed=2,
                              sampling=("permutation", "with_replacement"))

    def fetch(step):
        _, rows = indices(step)
        buf = host_buffer((len(rows), *gen.image_shape), np.uint8, pin_memory=False)
        gen.gather(rows, out=buf.numpy())
        return rows, buf

    pf = Prefetcher(fetch, start_step=4, stop_step=7)
    got = list(pf)
    assert len(got) == 3 and pf.next_step == 7
    for step, (rows, buf) in zip(range(4, 7), got):
        np.testing.assert_array_equal(rows, indices(step)[1])
        np.testing.assert_array_equal(buf.numpy(), images[rows])


def test_prefetcher_raises_errors_from_the_thread():
    class Broken(ArraySource):
        def gather(self, indices, out=None):
            raise RobustgenError("disk on fire")

    rng = np.random.default_rng(0)
    src = Broken(rng.integers(0, 256, (5, 2, 2, 1), dtype=np.uint8), np.zeros(5, np.int64), num_classes=1)
    with Prefetcher(lambda step: src.gather(np.arange(2)), stop_step=3) as pf:
        with pytest.raises(RobustgenError, match="disk on fire"):
            next(pf)


def test_open_source(tmp_path):
    real, gen, _, _ = _sources(tmp_path)
    assert isinstance(open_source(tmp_path / "g", num_classes=4), Store)
    np.savez(tmp_path / "r.npz", image=real.images, label=real.labels)
    src = open_source(tmp_path / "r.npz", num_classes=4, image_shape=(4, 4, 3))
    assert isinstance(src, ArraySource) and len(src) == 20
    with pytest.raises(RobustgenError, match="4x4x3 but 8x8x3 are expected"):
        open_source(tmp_path / "r.npz", image_shape=(8, 8, 3))
    with pytest.raises(RobustgenError, match="not a robustgen store"):
        open_source(tmp_path)


def test_generated_rows_trains_on_the_first_rows_of_the_runs_samples(tmp_path):
    """Fig. 6's sample-count axis: train.generated_rows reads a prefix of one labelled store, so every
    count shares one sampling; unset, the training fingerprint is what it was before the option."""
    from robustgen.presets import load_config
    from robustgen.data import write_npz
    from robustgen.stages.train import fingerprint, training_sources
    from robustgen.stages.common import load_splits

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
    write_npz(tmp_path / "gen.npz", image=images, label=np.arange(50) % 10)
    cfg = load_config("digits_demo", ["train.generated_rows=20", "train.alpha=0.5"])
    splits = load_splits(cfg)
    (source,), weights = training_sources(cfg, splits, tmp_path / "gen.npz")
    assert len(source) == 20 and weights == (0.5, 0.5)
    assert np.array_equal(source.gather(np.arange(20)), images[:20]) and list(source.labels) == list(range(10)) * 2
    with pytest.raises(RobustgenError, match="generated_rows = 60, but the set holds 50 images"):
        training_sources(load_config("digits_demo", ["train.generated_rows=60"]), splits, tmp_path / "gen.npz")
    plain = load_config("digits_demo")
    assert fingerprint(plain, "d", "g") != fingerprint(cfg, "d", "g")
    assert fingerprint(plain, "d", "g") == fingerprint(load_config("digits_demo", ["train.generated_rows=null"]), "d", "g")
    # the real-only baseline reads no generated rows: one training for every sample count
    base = load_config("digits_demo", ["train.alpha=1"])
    assert fingerprint(base, "d", "g") == fingerprint(load_config("digits_demo", ["train.alpha=1", "train.generated_rows=20"]), "d", "g")
