"""The ``heldout`` generator (the oracle arm): withheld real images never reach the real split,
validation or f_NR's training data, and they are labelled by f_NR unless true labels are asked for."""

import json

import numpy as np
import pytest
import torch

from robustgen import pipeline
from robustgen.checkpoint import load_model
from robustgen.presets import load_config
from robustgen.data import ImageDataset, holdout_split, write_npz
from robustgen.data.store import Store
from robustgen.label import predict_probabilities
from robustgen.runtime.errors import RobustgenError
from robustgen.stages import train as adversarial_stage
from robustgen.stages import classifier as classifier_stage
from robustgen.stages import load_splits
from robustgen.stages.generate import fit_data


def _unique_dataset(folder, n_train=300, n_test=60, classes=4):
    """An npz dataset whose every image carries its own id in its first two pixels (no duplicates),
    with a class-dependent brightness so that a classifier learns something."""
    rng = np.random.default_rng(0)

    def make(n, first_id):
        labels = np.arange(n) % classes
        images = rng.integers(0, 40, (n, 8, 8, 1)).astype(np.uint8) + (50 * labels)[:, None, None, None].astype(np.uint8)
        ids = np.arange(first_id, first_id + n)
        images[:, 0, 0, 0], images[:, 0, 1, 0] = ids // 256, ids % 256
        return {"image": images, "label": labels.astype(np.int64)}

    write_npz(folder / "train.npz", **make(n_train, 0))
    write_npz(folder / "test.npz", **make(n_test, n_train))
    return f"npz:{folder}"


def _ids(images) -> set:
    images = np.asarray(images)
    return set((images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0].astype(int)).tolist())


TINY = ["data.val_size=40", "data.train_size=100", "data.crop_padding=0", "classifier.epochs=2",
        "classifier.batch_size=32", "train.epochs=1", "train.batch_size=32", "train.inner.steps=2",
        "train.eval_every_epochs=1", "train.log_every_steps=5", "eval.n=20", "eval.batch_size=20",
        "generator.num_samples=1000", "train.alpha=0.5", "arms=[{generator: heldout}]", "train.epoch_size=null",
        "eval.attack=pgd40"]


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    ds = ImageDataset(images, labels, ("a", "b", "c"), "toy")
    kept, held = holdout_split(ds, 30, seed=1)
    assert len(kept) == 30 and len(held) == 70
    assert np.bincount(kept.labels).tolist() == [15, 9, 6]  # each class keeps its share
    assert not set(kept.images.ravel()) & set(held.images.ravel())
    again, _ = holdout_split(ds, 30, seed=1)
    other, _ = holdout_split(ds, 30, seed=2)
    assert np.array_equal(again.images, kept.images) and not np.array_equal(other.images, kept.images)
    with pytest.raises(RobustgenError, match="train_size 101"):
        holdout_split(ds, 101, seed=0)


def test_withheld_images_are_in_no_other_split(tmp_path):
    cfg = load_config("digits_demo", [f"data.dataset={_unique_dataset(tmp_path)}", *TINY])
    s = load_splits(cfg)
    train, val, test, held = (_ids(d.images) for d in (s.train, s.val, s.test, s.heldout))
    assert len(train) == 100 and len(val) == 40 and len(held) == 300 - 40 - 100
    assert not train & held and not val & held and not test & held and not train & val
    assert fit_data(cfg, s) is s.train  # gaussian fits on the real split
    oracle = load_config("digits_demo", [f"data.dataset={_unique_dataset(tmp_path)}", *TINY, "generator.name=heldout"])
    assert fit_data(oracle, s) is s.heldout


def test_heldout_generator_needs_withheld_images(tmp_path):
    cfg = load_config("digits_demo", [f"data.dataset={_unique_dataset(tmp_path)}", "data.val_size=40", "generator.name=heldout"])
    with pytest.raises(RobustgenError, match="data.train_size"):
        fit_data(cfg, load_splits(cfg))


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """A run with the Gaussian generator and a heldout arm; records what f_NR and training see."""
    folder = tmp_path_factory.mktemp("data")
    cfg = load_config("digits_demo", [f"data.dataset={_unique_dataset(folder)}", *TINY])
    seen = {}
    mp = pytest.MonkeyPatch()
    real_classifier, real_robust = classifier_stage.run, adversarial_stage.run

    def classifier(cfg, splits, *a, **k):
        seen["classifier"] = (_ids(splits.train.images), _ids(splits.val.images))
        return real_classifier(cfg, splits, *a, **k)

    def robust(variant, splits, generated, *a, **k):
        seen.setdefault("robust", []).append((k.get("name"), _ids(splits.train.images), _ids(splits.val.images)))
        return real_robust(variant, splits, generated, *a, **k)

    mp.setattr(classifier_stage, "run", classifier)
    mp.setattr(adversarial_stage, "run", robust)
    try:
        out = tmp_path_factory.mktemp("run")
        results = pipeline.run(cfg, out, progress=False).to_dict()
    finally:
        mp.undo()
    return cfg, out, results, seen


def _label_store(out, results, generator):
    return Store(results["labeling_by_generator"][generator]["path"])


def test_oracle_arm_trains_next_to_the_generator_and_baseline(oracle_run):
    cfg, out, results, seen = oracle_run
    assert [m["name"] for m in results["models"]] == ["baseline", "gaussian-alpha0.5", "heldout-alpha0.5"]
    assert [m["generator"] for m in results["models"]] == [None, "gaussian", "heldout"]
    assert len({m["steps"] for m in results["models"]}) == 1  # same number of steps for every arm
    assert results["models"][2]["generated_samples"] == 160  # every withheld image, once, despite num_samples
    for m in results["models"]:
        assert len(m["robust_points"]) == 20 and set(m["robust_points"]) <= {"0", "1"}
        assert m["robust_points"].count("1") == round(m["robust_accuracy"] * 20)
    assert "heldout-alpha0.5" in (out / "report.md").read_text()


def test_withheld_images_never_reach_f_nr_training_or_validation(oracle_run):
    cfg, out, results, seen = oracle_run
    held = _ids(load_splits(cfg).heldout.images)
    train_ids, val_ids = seen["classifier"]
    assert len(train_ids) == 100 and not train_ids & held and not val_ids & held
    assert [name for name, *_ in seen["robust"]] == ["baseline", "gaussian-alpha0.5", "heldout-alpha0.5"]
    for name, real_ids, val in seen["robust"]:
        assert real_ids == train_ids and not real_ids & held and not val & held
    store = _label_store(out, results, "heldout")
    served = store.gather(np.arange(len(store)))
    assert _ids(served) == held and len(served) == len(held)


def test_withheld_images_get_f_nr_labels_by_default(oracle_run):
    cfg, out, results, seen = oracle_run
    store = _label_store(out, results, "heldout")
    images = store.gather(np.arange(len(store)))
    fnr = load_model(next((out / "stages").glob("classifier-*")) / "best.safetensors")
    predicted = predict_probabilities(fnr, images, batch_size=64, device=torch.device("cpu")).argmax(1)
    assert np.array_equal(store.labels, predicted)
    truth = {i: int(y) for i, y in zip(np.arange(300), np.arange(300) % 4)}
    true_labels = np.array([truth[i] for i in sorted(_ids(images[k:k + 1]).pop() for k in range(len(images)))])
    assert np.array_equal(np.sort(store.conditions), np.sort(true_labels))  # true labels ride along as conditions
    assert not np.array_equal(store.labels, store.conditions)  # a 2-epoch f_NR is not perfect: the test can tell


def test_true_labels_only_when_asked(oracle_run, tmp_path):
    cfg, out, results, seen = oracle_run
    args = [f"data.dataset={cfg.data.dataset}", *TINY, "label.mode=condition", "baseline=false",
            "generator.name=heldout", "arms=[]"]
    results = pipeline.run(load_config("digits_demo", args), out, progress=False)  # reuses the samples
    # labels = the conditioning classes: no f_NR labelling, training reads the generated store itself
    assert results.labeling_by_generator == {"heldout": None}
    store = next(st for st in (Store(p / "store") for p in (out / "stages").glob("generate-*"))
                 if st.manifest["generator"]["name"] == "heldout")
    images = store.gather(np.arange(len(store)))
    ids = np.array([_ids(images[k:k + 1]).pop() for k in range(len(images))])
    assert np.array_equal(store.labels, ids % 4)
    assert json.loads((out / "results.json").read_text())["models"][0]["name"] == "heldout-alpha0.5"


def test_the_cost_estimate_trains_f_nr_on_the_kept_images_only():
    from robustgen.cost import estimate_cost

    def classifier_detail(train_size):
        cfg = load_config("cifar10_oracle_preact-resnet-18", [f"data.train_size={train_size}"])
        cost = estimate_cost(cfg, n_train=50000, n_test=10000, image_shape=(32, 32, 3), num_classes=10)
        return next(s.detail for s in cost.stages if s.stage == "classifier")

    # 30 passes of batch 256 over the 10,000 kept images, not over the 48,976 of the split
    assert classifier_detail(10000).startswith("preact-resnet-18, 1,172 steps x 256")
    assert classifier_detail(20000).startswith("preact-resnet-18, 2,344 steps x 256")
