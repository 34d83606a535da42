"""Generator diagnostics (issue 23): near copies, novelty, label agreement and complementarity
against the kept and validation images; the diagnose verb, the pipeline's table, the study's rule."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustgen.presets import load_config
from robustgen.metrics.diagnostics import copy_statistics, diagnose, format_diagnostics, label_statistics
from robustgen.metrics.features import ClassifierExtractor
from robustgen.metrics.measure import ImageSet
from robustgen.runtime.errors import RobustgenError
from robustgen.stages import load_splits


@pytest.fixture(scope="module")
def splits():
    """The default demo's splits: 75 kept digits, 200 validation, 540 test, 982 withheld."""
    return load_splits(load_config("digits_oracle", []))


def _pixels(device=torch.device("cpu")):
    from robustgen.models import create_model

    torch.manual_seed(0)
    return ClassifierExtractor(create_model("small-cnn", num_classes=10, in_channels=1), name="random small-cnn",
                               device=device)


def test_exact_copies_score_100_percent_and_held_out_real_digits_about_0(splits):
    rows = np.arange(3000) % len(splits.train)
    copies = diagnose(ImageSet("copies", splits.train.images[rows], splits.train.labels[rows]), splits.train,
                      splits.val)
    assert copies["near_copy_share"] == 1.0 and copies["exact_copy_share"] == 1.0 and copies["novelty"] == 0.0
    assert copies["histogram"]["counts"][0] == 3000
    for held_out in (splits.test, splits.heldout):  # real digits the generator never saw
        real = diagnose(ImageSet("real", held_out.images, held_out.labels), splits.train, splits.val)
        assert real["near_copy_share"] <= 0.01 and real["exact_copy_share"] == 0.0
        assert 0.8 <= real["novelty"] <= 1.2
        assert sum(real["histogram"]["counts"]) == len(held_out)
    assert copies["val_near_copy_share"] == real["val_near_copy_share"] <= 0.01  # the calibration


def test_a_copy_with_small_noise_is_a_near_copy_but_not_an_exact_one(splits):
    rng = np.random.default_rng(0)
    noisy = np.clip(splits.train.images.astype(int) + rng.integers(-6, 7, splits.train.images.shape), 0, 255)
    d = diagnose(ImageSet("noisy", noisy.astype(np.uint8), splits.train.labels), splits.train, splits.val)
    assert d["near_copy_share"] == 1.0 and d["exact_copy_share"] < 0.5 and 0 < d["novelty"] < 0.333


def test_copy_statistics_are_pure_and_check_their_inputs():
    val = np.array([1.0, 2.0, 3.0])  # median 2: threshold 2/3 at ratio 1/3
    s = copy_statistics(np.array([0.0, 0.5, 0.7, 2.0]), val)
    assert s["near_copy_share"] == 0.5 and s["distance_scale"] == 2.0 and s["novelty"] == pytest.approx(0.6 / 2)
    assert s["exact_copy_share"] == 0.25 and sum(s["histogram"]["counts"]) == 4
    assert copy_statistics(np.array([0.5]), val, copy_ratio=0.2)["near_copy_share"] == 0.0
    with pytest.raises(RobustgenError, match="copy_ratio"):
        copy_statistics(val, val, copy_ratio=1.5)
    with pytest.raises(RobustgenError, match="median distance 0"):
        copy_statistics(val, np.zeros(3))


def test_label_statistics():
    assert label_statistics(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]), np.array([0.5, 1.0, 1.0, 0.5])) == \
        {"label_agreement": 0.5, "confidence": 0.75}
    assert label_statistics(np.array([0, 1]), None, None) == {}


def test_complementarity_sees_copies_on_the_kept_side_and_real_data_spread(splits):
    ex = _pixels()
    rows = np.arange(1000) % len(splits.train)
    copies = diagnose(ImageSet("c", splits.train.images[rows], splits.train.labels[rows]), splits.train, splits.val,
                      extractor=ex, repeats=3)
    real = diagnose(ImageSet("r", splits.heldout.images, splits.heldout.labels), splits.train, splits.val,
                    extractor=ex, repeats=3)
    c, r = copies["complementarity"], real["complementarity"]
    # duplicates within a draw of copies tie with their kept image up to float rounding
    assert c["kept"] >= 0.95 and c["n"] == len(splits.train) and c["repeats"] == 3
    assert r["kept"] < 0.5 and r["val"] > 0.15 and c["kept"] + c["val"] + c["self"] == pytest.approx(1)
    assert copies["kid_val"][0] > real["kid_val"][0] and copies["fid_val"] > real["fid_val"]
    table = format_diagnostics({"copies": copies, "real": real})
    assert "| copies | 1000 | 100.0% | 0.00 |" in table and "the validation images themselves score" in table


def test_diagnose_is_deterministic_and_subsamples_class_balanced(splits):
    images = splits.heldout.images
    s = ImageSet("r", images, splits.heldout.labels, conditions=splits.heldout.labels,
                 confidences=np.full(len(images), 0.9, np.float32))
    a = diagnose(s, splits.train, splits.val, extractor=_pixels(), n=200, repeats=2)
    b = diagnose(s, splits.train, splits.val, extractor=_pixels(), n=200, repeats=2)
    a.pop("time_s"), b.pop("time_s")
    assert a == b and a["n"] == 200 and a["label_agreement"] == 1.0 and a["confidence"] == pytest.approx(0.9)
    with pytest.raises(RobustgenError, match="differ"):
        diagnose(ImageSet("x", np.zeros((10, 4, 4, 1), np.uint8)), splits.train, splits.val)


def test_diagnose_cli_on_a_store_and_an_npz(tmp_path, capsys):
    from robustgen.cli import main
    from robustgen.data.npz import write_npz
    from robustgen.data.store.writer import StoreWriter

    s = load_splits(load_config("digits_oracle", []))
    with StoreWriter.create(tmp_path / "copies", image_shape=(8, 8, 1), num_classes=10, shard_size=100) as w:
        w.append(s.train.images, s.train.labels)
    write_npz(tmp_path / "real.npz", image=s.heldout.images, label=s.heldout.labels)
    out = tmp_path / "d.json"
    main(["diagnose", "digits_oracle", "--generated", str(tmp_path / "copies"),
          "--generated", f"real={tmp_path / 'real.npz'}", "--n", "300", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| copies | 75 | 100.0% |" in printed and "| real | 300 | 0.0% |" in printed
    result = json.loads(out.read_text())
    assert set(result) == {"copies", "real"} and "complementarity" not in result["real"]
    assert out.with_suffix(".md").read_text().startswith("| set |")
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--generated", str(tmp_path / "missing.npz")])
    assert e.value.code == 2 and "missing.npz" in capsys.readouterr().err


def test_results_written_before_the_diagnostics_still_load():
    from robustgen.results import RunResults

    old = {"version": "0.1.0", "dataset": "digits", "device": "cpu", "threat": {"norm": "linf", "eps": 0.2},
           "models": [], "labeling": None, "labeling_by_generator": {}, "wall_time_s": 1.0, "config": {}}
    assert RunResults.from_dict(old).diagnostics_by_generator == {}
    assert RunResults.from_dict({**old, "unknown": 1}) is None
    assert RunResults.from_dict({k: v for k, v in old.items() if k != "models"}) is None


# --------------------------------------------------------------------------- the study's pre-registered rule
@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import generator_study

    return generator_study


def _d(copies, kept, confidence=0.9, agreement=0.9):
    d = {"near_copy_share": copies, "confidence": confidence, "complementarity": {"kept": kept}}
    return d if agreement is None else {**d, "label_agreement": agreement}


def test_the_rule_picks_the_fewest_copies_among_variants_with_good_labels(study):
    chosen, reasons = study.choose({"ddpm": _d(0.5, 0.9), "ddpm-dropout0.1": _d(0.2, 0.5),
                                    "ddpm-steps1000": _d(0.05, 0.4, agreement=0.7),  # labels too bad
                                    "ddpm-uncond": _d(0.3, 0.3, agreement=None)})
    assert chosen == "ddpm-dropout0.1" and any("ddpm-steps1000: not eligible" in r for r in reasons)
    # within 2 points of the lowest copy share, the lowest "kept" complementarity wins
    assert study.choose({"ddpm": _d(0.5, 0.9), "ddpm-dropout0.1": _d(0.20, 0.5),
                         "ddpm-uncond": _d(0.21, 0.3, agreement=None)})[0] == "ddpm-uncond"
    assert study.choose({"ddpm": _d(0.5, 0.9), "ddpm-uncond": _d(0.1, 0.3, confidence=0.5)})[0] is None


def test_diagnostics_appear_in_the_run_report(tmp_path):
    from robustgen.pipeline import generated_data, run

    cfg = load_config("digits_oracle", ["classifier.epochs=2", "generator.num_samples=200", "train.epochs=1",
                                        "train.batch_size=64", "train.inner.steps=1", "eval.n=20",
                                        "eval.attack=pgd40", "arms=[]"])
    data = generated_data(cfg, tmp_path, progress=False)
    assert set(data) == {"gaussian"} and data["gaussian"]["diagnostics"]["n"] == 200
    results = run(cfg, tmp_path, progress=False)
    assert results.diagnostics_by_generator["gaussian"] == data["gaussian"]["diagnostics"]  # the cached stage
    report = (tmp_path / "report.md").read_text()
    assert "| gaussian | 200 |" in report and "never the test split" in report


# --------------------------------------------------------------------------- filters, per arm (issue 23, item 3)
def _labelled_store(path, images, labels, conditions, confidences):
    from robustgen.data.store.writer import StoreWriter

    with StoreWriter.create(path, image_shape=images.shape[1:], num_classes=10, shard_size=40) as w:
        w.append(images, labels, conditions=conditions, confidences=confidences)
    return path


def test_filters_drop_disagreeing_labels_and_near_copies_before_the_per_class_rules(tmp_path, splits):
    from robustgen.config import LabelConfig
    from robustgen.data.store import Store
    from robustgen.label.label_store import select_store
    from robustgen.stages.label import filter_rows

    # 75 copies of the kept digits, then 75 withheld real digits; every third label disagrees
    images = np.concatenate([splits.train.images, splits.heldout.images[:75]])
    conditions = np.concatenate([splits.train.labels, splits.heldout.labels[:75]])
    labels = np.where(np.arange(150) % 3 == 0, (conditions + 1) % 10, conditions)
    confidences = np.linspace(0.5, 1.0, 150).astype(np.float32)
    store = _labelled_store(tmp_path / "s", images, labels, conditions, confidences)
    keep, dropped = filter_rows(store, LabelConfig(agree_with_condition=True, drop_near_copies=True), splits)
    assert dropped == {"disagree_with_condition": 50, "near_copies": 75}
    assert np.array_equal(keep, (np.arange(150) >= 75) & (np.arange(150) % 3 != 0))
    assert filter_rows(store, LabelConfig(), splits) == (None, {})
    selected = select_store(store, top_k=2, eligible=keep, filters=dropped)
    s = Store(store)
    assert set(s.selection) <= set(np.flatnonzero(keep)) and max(selected["counts_per_class"]) <= 2
    assert selected["counts_before"] == np.bincount(labels, minlength=10).tolist()
    assert s.manifest["selection"]["rule"]["filters"] == dropped
    # filters alone (no rule) select every row they keep
    assert select_store(store, eligible=keep)["selected"] == int(keep.sum())
    # App. D for DDPM / Gaussian: the first generated of each class, not the most confident
    # (confidences rise with the row here, so the two orders keep disjoint rows)
    first = select_store(store, top_k=2, order="first")
    rows = Store(store).selection
    for c in range(10):
        members = np.flatnonzero(labels == c)
        assert set(members[:2]) <= set(rows) and first["counts_per_class"][c] == min(2, members.size)
    assert Store(store).manifest["selection"]["rule"]["order"] == "first"
    select_store(store, top_k=2)  # the default: the most confident, here the last rows of each class
    assert set(Store(store).selection) == {r for c in range(10) for r in np.flatnonzero(labels == c)[-2:]}
    with pytest.raises(RobustgenError, match="needs the kept real images"):
        filter_rows(store, LabelConfig(drop_near_copies=True), None)
    plain = _labelled_store(tmp_path / "p", images, labels, None, confidences)
    with pytest.raises(RobustgenError, match="needs conditioning classes"):
        filter_rows(plain, LabelConfig(agree_with_condition=True))


def test_an_arm_has_its_own_label_settings_and_shares_the_samples(tmp_path):
    from robustgen.data.store import Store
    from robustgen.pipeline import generated_data, model_variants

    cfg = load_config("digits_oracle", ["classifier.epochs=2", "generator.num_samples=300",
                                        "arms=[{generator: gaussian, alpha: 0.5, label: {agree_with_condition: true}},"
                                        " {generator: heldout, label: {drop_near_copies: true}}]"])
    names = [n for n, _ in model_variants(cfg)]
    assert names == ["baseline", "gaussian-alpha0.8", "gaussian[agree_with_condition=True]-alpha0.5",
                     "heldout[drop_near_copies=True]-alpha0.8"]
    data = generated_data(cfg, tmp_path, progress=False)
    assert set(data) == {"gaussian", "gaussian[agree_with_condition=True]", "heldout[drop_near_copies=True]"}
    assert len(list((tmp_path / "stages").glob("generate-*"))) == 2  # one gaussian sample set for both arms
    agree = Store(data["gaussian[agree_with_condition=True]"]["store"])
    assert np.array_equal(agree.labels, agree.conditions) and len(agree) < 300
    assert data["gaussian[agree_with_condition=True]"]["labeling"]["dropped"]["disagree_with_condition"] == 300 - len(agree)
    assert len(Store(data["gaussian"]["store"])) == 300  # the run's own label settings: no filter
    assert data["heldout[drop_near_copies=True]"]["labeling"]["dropped"] == {"near_copies": 0}  # real digits
    assert data["gaussian[agree_with_condition=True]"]["diagnostics"]["label_agreement"] == 1.0
    with pytest.raises(RobustgenError, match=r"arms\[0\].label.agree_with_condition .* needs arms\[0\].label.mode"):
        load_config("digits_oracle", ["arms=[{generator: gaussian, label: {mode: condition, agree_with_condition: true}}]"])


def test_regime_map_points_are_sweep_points_with_their_arms(study):
    import regime_map as rm

    assert rm.arm_spec("ddpm-steps1000@0.5") == ("ddpm", 0.5, ("generator.ddpm.train_steps=1000",))
    assert rm.arm_spec("heldout") == ("heldout", 0.3, ())
    with pytest.raises(ValueError, match="one arm per run may change"):
        rm.point_config({}, ("ddpm", "ddpm-steps1000"), 0, "pgd40")
    cfg, _ = rm.point_config(rm.POINTS["real-75"], ("ddpm-steps1000@0.7",), 1, "pgd40")
    assert (cfg.generator.ddpm.train_steps, cfg.train.alpha, cfg.baseline, cfg.train.seed) == (1000, 0.7, False, 1)
    assert cfg.classifier.epochs == round(32000 / 75) and cfg.data.train_size == 75
    both, _ = rm.point_config(rm.POINTS["centre"], ("baseline", "gaussian", "heldout"), 0, "pgd40")
    assert [(a.generator, a.alpha) for a in both.arms] == [("heldout", 0.3)] and both.train.seed is None


def test_the_default_demo_is_the_regime_map_job_where_the_generator_gains(study):
    # the demo's numbers are the map's eps-0.1 seed-0 job (ddpm-steps1000 and the oracle), only the
    # evaluation attack differs (its APGD stages; FAB-T and Square broke no point there)
    import regime_map as rm

    from robustgen.config import replace
    from robustgen.presets import load_config

    demo = load_config()
    job, _ = rm.point_config(rm.POINTS["eps-0.1"], ("baseline", "ddpm-steps1000", "heldout"), 0, "autoattack")
    assert replace(demo, **{"eval.attack": "autoattack"}) == job
