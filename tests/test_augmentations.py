"""Data augmentations served as generators (paper Table 5): each is a pure function of (seed, index),
does what its method defines, and runs through store generate, measure and an arm of a run."""

import json

import numpy as np
import pytest

from robustgen.cli import main
from robustgen.data import load_dataset
from robustgen.generate import get_generator
from robustgen.generate.augmentations import AUGMENTATIONS, _cutmix, _cutout, _mixup


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", "train")
    return d.images[:300], d.labels[:300]


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_each_augmentation_is_a_pure_function_of_seed_and_index(kind, digits):
    adapter = get_generator(kind)
    fitted = adapter.fit(*digits, num_classes=10)
    images, labels = adapter.sample(fitted, 40, seed=3)
    assert images.shape == (40, 8, 8, 1) and images.dtype == np.uint8 and set(labels) <= set(range(10))
    part, part_labels = adapter.range_sampler(fitted, seed=3).sample(25, 40)  # any range, the same rows
    assert np.array_equal(part, images[25:]) and np.array_equal(part_labels, labels[25:])
    assert not np.array_equal(adapter.sample(fitted, 40, seed=4)[0], images)
    assert (images != digits[0][:40]).any()  # not the training images as they are


def test_mixup_cutout_and_cutmix_do_what_their_papers_define():
    zeros, full = (np.zeros((8, 8, 1), np.uint8), 0), (np.full((8, 8, 1), 200, np.uint8), 1)
    for seed in range(20):
        mixed, label = _mixup(np.random.default_rng(seed), zeros, full)
        share_b = float(mixed[0, 0, 0]) / 200  # 1 - lambda
        assert np.all(mixed == mixed[0, 0, 0]) and label == (1 if share_b > 0.5 else 0)
        cut, label = _cutout(np.random.default_rng(seed), full, zeros)
        holes = np.argwhere(cut[..., 0] == 0)
        assert label == 1 and 0 < len(holes) <= 16 and np.ptp(holes[:, 0]) < 4 and np.ptp(holes[:, 1]) < 4
        pasted, label = _cutmix(np.random.default_rng(seed), zeros, full)
        box = pasted[..., 0] == 200
        kept = 1 - box.mean()
        assert label == (0 if kept >= 0.5 else 1)
        if box.any():  # one rectangle of the other image
            rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
            assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()


def test_an_augmentation_is_measured_and_trained_on_like_a_generator(tmp_path, capsys):
    store = tmp_path / "cutmix"
    main(["store", "generate", str(store), "digits_demo", "--num-samples", "200", "--quiet",
          "--set", "generator.name=cutmix"])
    assert json.loads(capsys.readouterr().out)["num_samples"] == 200
    from test_metrics import _digits_classifier

    out = tmp_path / "m.json"
    main(["measure", "--generated", f"cutmix={store}", "--features", f"classifier:{_digits_classifier(tmp_path)}",
          "--n", "150", "--pca", "20", "--quiet", "--out", str(out), "--metrics", "complementarity"])
    row = json.loads(out.read_text())["rows"]["cutmix"]
    assert row["train"] + row["test"] + row["self"] == pytest.approx(1)
    tiny = ["data.val_size=64", "classifier.epochs=1", "generator.num_samples=200", "train.epochs=1",
            "train.batch_size=64", "train.inner.steps=2", "train.eval_every_epochs=1", "eval.n=40", "eval.attack=pgd40",
            "arms=[{generator: mixup, alpha: 0.5}]"]
    main(["run", "digits_demo", "--out", str(tmp_path / "run"), "--quiet", *[a for t in tiny for a in ("--set", t)]])
    names = [m["name"] for m in json.loads((tmp_path / "run" / "results.json").read_text())["models"]]
    assert names == ["baseline", "gaussian-alpha0.8", "mixup-alpha0.5"]


# --------------------------------------------------------------------------- as the training augmentation
def _batch(n=8, c=3, size=8):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, size, size, generator=g), torch.eye(10)[torch.arange(n) % 10]


def test_training_mixes_follow_their_definitions_with_soft_labels():
    import torch

    from robustgen.data.augment import mix_augment

    x, t = _batch()
    y, ty = mix_augment(x, t, "mixup", torch.Generator().manual_seed(1))
    for i in range(len(x)):  # x_i' = lam x_i + (1 - lam) x_p, with lam the target's weight on x_i's own class
        lam = float(ty[i, i % 10])
        p = int(ty[i].clone().index_fill_(0, torch.tensor([i % 10]), 0).argmax()) if lam < 1 else i
        partner = next(j for j in range(len(x)) if j % 10 == p and j != i) if lam < 1 else i
        assert torch.allclose(y[i], lam * x[i] + (1 - lam) * x[partner], atol=1e-6)
    y, ty = mix_augment(x, t, "cutmix", torch.Generator().manual_seed(1))
    for i in range(len(x)):  # pixels either own or one partner's; the target weights are the pixel shares
        own = (y[i] == x[i]).all(0).float().mean()
        assert float(ty[i, i % 10]) == pytest.approx(float(own), abs=1e-6) or torch.equal(y[i], x[i])
    assert torch.allclose(ty.sum(1), torch.ones(len(x)))
    y, ty = mix_augment(x, t, "cutout", torch.Generator().manual_seed(1))
    zeroed = (y == 0).all(1).flatten(1).float().sum(1)
    assert torch.equal(ty, t) and (zeroed > 0).all() and (zeroed <= 16).all()  # at most a 4x4 box of 8x8
    assert torch.equal(torch.where(y == 0, x, y), x)  # nothing else changed


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "cutout", "autoaugment", "randaugment"])
def test_training_augmentations_are_reproducible_and_keep_the_batch_shape(kind):
    import torch

    from robustgen.data.augment import mix_augment

    for channels in (1, 3):
        x, t = _batch(c=channels)
        a = mix_augment(x, t, kind, torch.Generator().manual_seed(3))
        b = mix_augment(x, t, kind, torch.Generator().manual_seed(3))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == x.shape
        assert 0 <= float(a[0].min()) and float(a[0].max()) <= 1


def test_a_run_trains_with_cutmix_and_weight_averaging(tmp_path):
    from robustgen.presets import load_config
    from robustgen.runtime.errors import RobustgenError

    tiny = ["data.val_size=64", "train.epochs=1", "train.batch_size=64", "train.inner.steps=2", "eval.n=40",
            "eval.attack=pgd40", "train.alpha=1", "baseline=false", "train.augment=cutmix", "train.ema_decay=0.999"]
    main(["run", "digits_demo", "--out", str(tmp_path / "run"), "--quiet", *[a for t in tiny for a in ("--set", t)]])
    (model,) = json.loads((tmp_path / "run" / "results.json").read_text())["models"]
    assert model["n_eval"] == 40 and 0 <= model["robust_accuracy"] <= model["clean_accuracy"] <= 1
    with pytest.raises(RobustgenError, match="train.augment must be one of none, mixup"):
        load_config("digits_demo", ["train.augment=mosaic"])
