"""Datasets of image files (folder:PATH, tinyimagenet, imagenet): layouts, decoding, bad input,
and the training loop reading a split decoded on demand exactly like one held in memory."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from robustgen.data import load_dataset
from robustgen.data.folder import decode_image
from robustgen.runtime.errors import RobustgenError
from robustgen.train.mixing.sources import ArraySource


def _write_jpeg(path, rng, size=(16, 16), quality=95):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=quality)


def make_folder_tree(root, classes=("cat", "dog", "emu"), per_class=(6, 3), size=(16, 16), seed=0):
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg, ``per_class`` (train, test) each."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            for i in range(n):
                _write_jpeg(root / split / c / f"{c}_{i}.jpg", rng, size)
    return root


def make_tinyimagenet(root, wnids=("n02", "n01", "n03"), train_per_class=4, val_per_class=2, size=64, seed=0):
    """The TinyImageNet layout: wnids.txt (unsorted), train/<wnid>/images, val/images + val_annotations.txt."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(train_per_class):
            _write_jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", rng, (size, size))
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for k in range(val_per_class * len(wnids)):
        _write_jpeg(root / "val" / "images" / f"val_{k}.JPEG", rng, (size, size))
        lines.append(f"val_{k}.JPEG\t{wnids[k % len(wnids)]}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_folder_dataset_labels_by_sorted_class_and_decodes_the_files(tmp_path):
    root = make_folder_tree(tmp_path / "imgs")
    train = load_dataset(f"folder:{root}", "train")
    test = load_dataset(f"folder:{root}", "test")
    assert train.class_names == ("cat", "dog", "emu") and test.class_names == train.class_names
    assert train.images.shape == (18, 16, 16, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6 and len(test) == 9
    expected = np.asarray(Image.open(root / "train" / "dog" / "dog_2.jpg").convert("RGB"))
    np.testing.assert_array_equal(train.images[6 + 2], expected)


def test_split_larger_than_the_memory_budget_is_decoded_on_demand_with_the_same_pixels(tmp_path):
    root = make_folder_tree(tmp_path / "imgs")
    eager = load_dataset(f"folder:{root}", "train", in_memory_gib=1.0)
    lazy = load_dataset(f"folder:{root}", "train", in_memory_gib=0.0, decode_workers=2)
    assert isinstance(eager.images, np.ndarray) and lazy.decoded_on_demand
    assert lazy.image_shape == eager.image_shape and len(lazy) == len(eager)
    np.testing.assert_array_equal(lazy.images.gather(np.arange(18)[::-1]), eager.images[::-1])
    np.testing.assert_array_equal(np.asarray(lazy.images), eager.images)
    sub = lazy.subset([5, 1, 17])
    assert sub.decoded_on_demand and sub.labels.tolist() == [0, 0, 2]
    np.testing.assert_array_equal(sub.in_memory().images, eager.images[[5, 1, 17]])
    np.testing.assert_allclose(np.array(lazy.mean_std()), np.array(eager.mean_std()))
    from robustgen.runtime.fingerprint import array_fingerprint

    assert array_fingerprint(lazy.images) == array_fingerprint(lazy.images)
    assert array_fingerprint(lazy.images) != array_fingerprint(sub.images)


def test_image_size_resizes_the_shorter_side_and_centre_crops(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "wide.jpg"
    _write_jpeg(path, rng, size=(96, 48))
    img = decode_image(str(path), 32)
    assert img.shape == (32, 32, 3)
    full = Image.open(path).convert("RGB").resize((64, 32), Image.BILINEAR, reducing_gap=None)
    np.testing.assert_allclose(img.astype(int), np.asarray(full)[:, 16:48].astype(int), atol=40)
    # mixed sizes without image_size: one line naming the odd file
    root = make_folder_tree(tmp_path / "mixed")
    _write_jpeg(root / "train" / "dog" / "big.jpg", rng, size=(20, 20))
    with pytest.raises(RobustgenError, match=r"big\.jpg: image is 20x20.*data.image_size"):
        load_dataset(f"folder:{root}", "train")
    resized = load_dataset(f"folder:{root}", "train", image_size=12)
    assert resized.images.shape == (19, 12, 12, 3)


def test_tinyimagenet_layout_with_val_annotations(tmp_path):
    root = make_tinyimagenet(tmp_path / "tiny-imagenet-200")
    train = load_dataset("tinyimagenet", "train", data_root=str(tmp_path))
    test = load_dataset("tinyimagenet", "test", data_root=str(tmp_path))
    assert train.class_names == ("n01", "n02", "n03") and train.name == "tinyimagenet"
    assert train.images.shape == (12, 64, 64, 3) and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # val_k is annotated with wnids[k % 3] of ("n02", "n01", "n03") -> sorted indices 1, 0, 2
    assert test.labels.tolist() == [1, 0, 2, 1, 0, 2]
    expected = np.asarray(Image.open(root / "val" / "images" / "val_4.JPEG").convert("RGB"))
    np.testing.assert_array_equal(test.images[4], expected)


@pytest.mark.parametrize("case", ["no_annotations", "bad_annotation", "listed_missing", "corrupt_jpeg",
                                  "empty_class", "missing_class", "no_class_folders"])
def test_bad_image_folders_fail_with_one_line_naming_the_file(tmp_path, case):
    root = make_tinyimagenet(tmp_path / "t")
    split, spec = "train", "tinyimagenet"
    if case == "no_annotations":
        (root / "val" / "val_annotations.txt").unlink()
        split, match = "test", r"val_annotations\.txt: file not found"
    elif case == "bad_annotation":
        with open(root / "val" / "val_annotations.txt", "a") as f:
            f.write("val_0.JPEG\tn99\t0\t0\t1\t1\n")
        split, match = "test", r"val_annotations\.txt:7: expected"
    elif case == "listed_missing":
        (root / "val" / "images" / "val_3.JPEG").unlink()
        split, match = "test", r"val_3\.JPEG: file not found \(listed in .*val_annotations\.txt:4\)"
    elif case == "corrupt_jpeg":
        (root / "train" / "n01" / "images" / "n01_2.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
        match = r"n01_2\.JPEG: cannot decode image"
    elif case == "empty_class":
        for p in (root / "train" / "n03" / "images").iterdir():
            p.unlink()
        match = r"n03: empty class folder"
    elif case == "missing_class":
        import shutil

        shutil.rmtree(root / "train" / "n02")
        match = r"n02: class folder missing"
    else:
        spec, match = f"folder:{tmp_path / 'flat'}", r"flat: expected an image folder tree"
        (tmp_path / "flat").mkdir()
    with pytest.raises(RobustgenError, match=match) as e:
        load_dataset(spec, split, data_root=str(root))
    assert "\n" not in str(e.value)


def test_training_batches_from_files_equal_batches_from_memory(tmp_path):
    """The loop gathers a lazily decoded real split on the host: same images, labels and exact
    alpha mix as the device copy of the same split."""
    from robustgen.runtime.distributed import DistContext
    from robustgen.train.loop import LoopSettings
    from robustgen.train.mixing.batches import TrainingBatches

    root = make_folder_tree(tmp_path / "imgs", per_class=(10, 1))
    eager = load_dataset(f"folder:{root}", "train")
    lazy = load_dataset(f"folder:{root}", "train", in_memory_gib=0.0)
    rng = np.random.default_rng(3)
    generated = ArraySource(rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 40),
                            num_classes=3, name="gen")
    s = LoopSettings(batch_size=8, total_steps=4, warmup_steps=0, peak_lr=0.1, source_weights=(0.75, 0.25), micro_batches=2)
    a = TrainingBatches(eager, [generated], s, 3, torch.device("cpu"), DistContext())
    b = TrainingBatches(lazy, [generated], s, 3, torch.device("cpu"), DistContext())
    try:
        for step in range(4):
            chunks_b = b(step)
            for ca, cb in zip(a(step), chunks_b):
                assert torch.equal(ca.images, cb.images) and torch.equal(ca.targets, cb.targets)
                assert ca.weight == cb.weight
            # round(0.75 * 8) = 6 real rows (one-hot targets) and 2 generated ones (smoothed)
            one_hot = sum(int((c.targets.max(1).values == 1).sum()) for c in chunks_b)
            assert one_hot == 6
    finally:
        a.close()
        b.close()


def test_run_end_to_end_on_a_folder_of_jpegs_decoded_per_batch(tmp_path):
    """`robustgen run` on a JPEG tree the test writes, with the real split decoded per batch by
    the loop (data.in_memory_gib=0); labels are the generator's classes (label.mode=condition, no
    filter), so no f_NR is trained and training reads the generated store directly."""
    from robustgen.cli import main

    root = make_folder_tree(tmp_path / "imgs", per_class=(16, 4), size=(8, 8))
    sets = ["data.dataset=folder:" + str(root), "data.in_memory_gib=0", "data.val_size=6", "data.crop_padding=1",
            "baseline=false", "label.mode=condition", "train.arch=small-cnn",
            "generator.num_samples=60", "train.epochs=1",
            "train.batch_size=16", "train.inner.steps=2", "train.eval_every_epochs=1", "eval.n=12",
            "eval.batch_size=12", "train.log_every_steps=2"]
    main(["run", "digits_demo", "--out", str(tmp_path / "run"), "--quiet", *[a for s in sets for a in ("--set", s)]])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["gaussian-alpha0.8"]
    for m in results["models"]:
        assert m["n_eval"] == 12 and 0 <= m["robust_accuracy"] <= m["clean_accuracy"] <= 1
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "run" / "stages").iterdir())
    assert stages == ["eval", "generate", "train"] and results["labeling"] is None


@pytest.mark.parametrize("preset, unet", [("tinyimagenet_linf_wrn-28-10", "guided-diffusion-imagenet64"),
                                          ("imagenet_linf_resnet-152", "guided-diffusion-imagenet256")])
def test_presets_dry_run_print_the_cost_and_name_what_is_missing(preset, unet, tmp_path, capsys):
    """Without the data and the converted DDPM, the dry run still prints the recipe and the cost
    (published split sizes; no f_NR stages: labels are the conditioning classes), then fails
    naming the missing folders."""
    from robustgen.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", preset, "--dry-run", "--out", str(tmp_path / "run"), "--set", f"data.data_root={tmp_path}"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "cost estimate" in out and f"UNet {unet}" in out
    assert f"(measured: sampling {unet}" in out  # the sampling line uses that UNet's measured H200 rate
    assert "  classifier:" not in out and "  labelling:" not in out
    assert f"{tmp_path}: no " in err and "guided-diffusion-" in err


def test_folder_dataset_sizes_for_the_cost_estimate(tmp_path):
    from robustgen.presets import load_config
    from robustgen.preflight import data_shape

    root = make_folder_tree(tmp_path / "imgs", per_class=(5, 2), size=(16, 12))
    cfg = load_config("digits_demo", [f"data.dataset=folder:{root}", "data.image_size=8"])
    shape = data_shape(cfg)
    assert (shape.n_train, shape.n_test, shape.image_shape, shape.num_classes) == (15, 6, (8, 8, 3), 3)


@pytest.mark.parametrize("classes", [2, 3])
def test_dlr_stages_fall_back_to_cross_entropy_below_their_class_counts(classes):
    """The DLR losses need 3 (untargeted) and 4 (targeted) classes; with fewer, APGD-T and
    APGD-DLR use the cross-entropy with a warning instead of pyautoattack's IndexError."""
    import torch

    from robustgen.attacks import autoattack as aa
    from robustgen.models import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=classes, in_channels=1).eval()
    x = torch.rand(4, 1, 8, 8)
    y = model(x).argmax(1).detach()
    aa.collected_warnings(reset=True)
    for adv in (aa.apgd_targeted(model, x, y, norm="linf", eps=0.03, seed=0, steps=5),
                aa.apgd(model, x, y, norm="linf", eps=0.03, seed=0, loss="dlr", restarts=1, steps=5)):
        assert adv.shape == x.shape and float((adv - x).abs().max()) <= 0.03 + 1e-6
    warnings = aa.collected_warnings(reset=True)
    assert any("targeted DLR loss needs at least 4 classes" in w for w in warnings)
    assert any("DLR loss needs at least 3 classes" in w for w in warnings) == (classes == 2)


def test_a_three_class_folder_run_completes_with_autoattack(tmp_path):
    from robustgen.cli import main

    root = make_folder_tree(tmp_path / "imgs", per_class=(16, 4), size=(8, 8))
    sets = ["data.dataset=folder:" + str(root), "data.val_size=6", "data.crop_padding=1", "baseline=false",
            "label.mode=condition", "train.arch=small-cnn", "generator.num_samples=60", "train.epochs=1",
            "train.batch_size=16", "train.inner.steps=2", "train.eval_every_epochs=1", "eval.attack=autoattack",
            "eval.batch_size=12", "train.log_every_steps=2"]
    main(["run", "digits_demo", "--out", str(tmp_path / "run"), "--quiet", *[a for s in sets for a in ("--set", s)]])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (model,) = results["models"]  # pyautoattack's APGD-T raised IndexError here before
    assert model["attack"] == "autoattack" and model["n_eval"] == 12
    assert 0 <= model["robust_accuracy"] <= model["clean_accuracy"] <= 1
