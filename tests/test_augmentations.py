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
