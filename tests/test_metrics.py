"""Metrics of generated data: chunked nearest neighbours, paper Alg. 1 sanity cases, FID / IS / KID
against reference computations, feature extractors (no download, ever), the measure verb."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from robustgen.metrics import (balanced_sample, complementarity_coverage, extract_features, fid_from_features,
                               frechet_distance, get_extractor, inception_score, kernel_inception_distance,
                               nearest_neighbors)
from robustgen.metrics.complementarity import format_table, pca_fit
from robustgen.metrics.features import ClassifierExtractor, list_extractors
from robustgen.runtime.errors import RobustgenError


# --------------------------------------------------------------------------- nearest neighbours
@pytest.mark.parametrize("block", [3, 64, 10_000])
def test_chunked_nearest_neighbours_equal_brute_force(block):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(23, 6, generator=g, dtype=torch.float64)
    r = torch.randn(41, 6, generator=g, dtype=torch.float64)
    d, i = nearest_neighbors(q, r, block_size=block)
    full = ((q[:, None] - r[None]) ** 2).sum(-1)
    assert torch.equal(i, full.argmin(1))
    assert torch.allclose(d, full.min(1).values)
    # the same set, excluding each point itself
    d, i = nearest_neighbors(q, q, exclude_self=True, block_size=block)
    full = ((q[:, None] - q[None]) ** 2).sum(-1).fill_diagonal_(float("inf"))
    assert torch.equal(i, full.argmin(1)) and torch.allclose(d, full.min(1).values)


def test_nearest_neighbours_ties_go_to_the_first_row_and_blocks_stay_bounded():
    r = torch.tensor([[0.0], [1.0], [1.0], [5.0]], dtype=torch.float64)
    _, i = nearest_neighbors(torch.tensor([[1.0]], dtype=torch.float64), r, block_size=1)
    assert i.item() == 1
    with pytest.raises(RobustgenError, match="exclude_self"):
        nearest_neighbors(r, r[:2], exclude_self=True)


# --------------------------------------------------------------------------- Alg. 1
def _clusters(n, seed, dim=20, centers=8):
    """Points around a few fixed cluster centres: a data set with structure (like real features)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(123).normal(size=(centers, dim)) * 4
    return c[rng.integers(0, centers, n)] + rng.normal(size=(n, dim))


def test_a_generator_that_copies_the_train_set_is_100_percent_train():
    train, test = _clusters(300, 0), _clusters(300, 1)
    r = complementarity_coverage(train, test, train.copy(), pca_components=10)
    assert (r.train, r.test, r.self) == (1.0, 0.0, 0.0)
    assert r.coverage_train == 1.0 and 0 < r.coverage_test < 1
    # copies with a little noise: still nearest to the train set
    r = complementarity_coverage(train, test, train + 1e-3, pca_components=10)
    assert r.train > 0.99 and r.test < 0.01


def test_random_halves_of_one_data_set_are_close_to_uniform():
    data = _clusters(1800, 2)
    perm = np.random.default_rng(0).permutation(1800)
    train, test, gen = data[perm[:600]], data[perm[600:1200]], data[perm[1200:]]
    r = complementarity_coverage(train, test, gen, pca_components=20)
    for share in (r.train, r.test, r.self):
        assert abs(share - 1 / 3) < 0.06, r
    assert abs(r.train + r.test + r.self - 1) < 1e-12
    # coverage of a held-out half is about that of the train set over the test set
    assert abs(r.coverage_train - r.coverage_test) < 0.1


def test_a_collapsed_generator_is_all_self_with_low_coverage():
    train, test = _clusters(200, 3), _clusters(200, 4)
    gen = np.repeat(_clusters(10, 5), 20, axis=0) + 1e-4 * np.random.default_rng(0).normal(size=(200, 20))
    r = complementarity_coverage(train, test, gen, pca_components=10)
    assert r.self == 1.0 and r.coverage_train <= 10 / 200 and r.coverage_test <= 10 / 200


def test_complementarity_is_the_same_on_torch_and_numpy_input_and_any_block_size():
    train, test, gen = _clusters(150, 6), _clusters(150, 7), _clusters(150, 8)
    a = complementarity_coverage(train, test, gen, pca_components=5)
    b = complementarity_coverage(torch.tensor(train), torch.tensor(test), torch.tensor(gen), pca_components=5,
                                 block_size=500)
    assert a == b


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x = _clusters(200, 9)
    mean, comps = pca_fit(torch.tensor(x), 5)
    ref = PCA(5, svd_solver="full").fit(x)
    proj = (torch.tensor(x) - mean) @ comps
    assert np.allclose(np.abs(proj.numpy()), np.abs(ref.transform(x)), atol=1e-8)


def test_balanced_sample_spreads_over_classes():
    labels = np.repeat(np.arange(4), [50, 50, 50, 5])
    idx = balanced_sample(labels, 20, seed=0)
    assert len(np.unique(idx)) == 20 and np.bincount(labels[idx]).tolist() == [5, 5, 5, 5]
    assert np.bincount(labels[balanced_sample(labels, 40, seed=0)]).tolist() == [12, 12, 11, 5]
    idx = balanced_sample(labels, 100, seed=0)  # the small class gives what it has
    assert np.bincount(labels[idx]).tolist()[3] == 5 and idx.size == 100
    assert np.array_equal(balanced_sample(labels, 40, seed=1), balanced_sample(labels, 40, seed=1))
    with pytest.raises(RobustgenError):
        balanced_sample(labels, 1000, seed=0)


def test_table_has_the_layout_of_paper_table_1():
    table = format_table({"ddpm": {"train": 0.2929, "test": 0.2917, "self": 0.4154, "coverage_train": 0.4907,
                                   "coverage_test": 0.491, "fid": 3.15, "is": [9.5, 0.14]}})
    assert "| ddpm | 29.29% | 29.17% | 41.54% | 49.07% | 49.10% | 3.15 | 9.5 ± 0.14 |" in table


# --------------------------------------------------------------------------- FID / IS / KID
def _pytorch_fid_reference(f1, f2):
    """The pytorch-fid computation (scipy sqrtm of the covariance product)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_fid_matches_reference_implementations():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(400, 16))
    f2 = rng.normal(size=(300, 16)) * 1.3 + 0.5
    fid = fid_from_features(f1, f2)
    assert fid == pytest.approx(_pytorch_fid_reference(f1, f2), rel=1e-6)
    # 1-d closed form: (mu1 - mu2)^2 + (s1 - s2)^2
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1 + 1)
    import torch_fidelity.metric_fid as m
    tf = m.fid_statistics_to_metric(m.fid_features_to_statistics(torch.tensor(f1)),
                                    m.fid_features_to_statistics(torch.tensor(f2)), verbose=False)
    assert fid == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    f = np.random.default_rng(1).normal(size=(500, 32))
    assert abs(fid_from_features(f, f)) < 1e-6
    assert fid_from_features(f, f + 1.0) == pytest.approx(32.0, rel=1e-6)
    # singular covariances (fewer samples than dimensions) stay finite and >= 0
    g = np.random.default_rng(2).normal(size=(20, 64))
    assert fid_from_features(g, g) == pytest.approx(0, abs=1e-4)


def test_inception_score_matches_torch_fidelity():
    # one-hot confident and uniform over classes: IS = number of classes
    onehot = np.eye(10)[np.arange(1000) % 10] * 100
    assert inception_score(onehot, splits=1)[0] == pytest.approx(10, rel=1e-6)
    import torch_fidelity.metric_isc as m
    z = np.random.default_rng(3).normal(size=(500, 10)) * 3
    mean, std = inception_score(z, splits=10)
    ref = m.isc_features_to_metric(torch.tensor(z), splits=10)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-6)


def test_kid_matches_torch_fidelity_and_is_zero_mean_for_one_distribution():
    from torch_fidelity.metric_kid import kid_features_to_metric
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.3
    mean, std = kernel_inception_distance(f1, f2, subsets=10, subset_size=100, seed=7)
    ref = kid_features_to_metric(torch.tensor(f1), torch.tensor(f2), kid_subsets=10, kid_subset_size=100,
                                 rng_seed=7, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    same = kernel_inception_distance(f1, rng.normal(size=(300, 8)), subsets=20, subset_size=100)
    assert abs(same[0]) < 3 * same[1] + 1e-3 and mean > 0.01
    with pytest.raises(RobustgenError, match="subset_size"):
        kernel_inception_distance(f1, f2, subset_size=1000)


# --------------------------------------------------------------------------- feature extractors
def test_registry_lists_the_extractors_and_rejects_unknown_names():
    assert list_extractors() == ["classifier", "inception", "lpips"]
    with pytest.raises(RobustgenError, match="unknown feature extractor"):
        get_extractor("vgg")
    with pytest.raises(RobustgenError, match="classifier:PATH"):
        get_extractor("classifier")


def test_classifier_features_are_the_input_of_the_final_linear_layer(tiny_images):
    from robustgen.models import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=3)
    torch.nn.init.normal_(model.logits.weight)
    ex = ClassifierExtractor(model, name="small-cnn", device=torch.device("cpu"))
    images, _ = tiny_images
    feats, logits = extract_features(ex, images, batch_size=10)
    assert feats.shape == (64, 64) and logits.shape == (64, 4) and feats.dtype == np.float32
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = model(x)
    assert np.allclose(logits, ref.numpy(), atol=1e-5)
    # logits = features @ W^T + b: the hook caught the penultimate layer
    w, b = model.logits.weight.detach().numpy(), model.logits.bias.detach().numpy()
    assert np.allclose(feats @ w.T + b, logits, atol=1e-4)
    # batching does not change anything; indices pick rows
    f2, _ = extract_features(ex, images, batch_size=64, indices=np.array([3, 5]))
    assert np.allclose(f2, feats[[3, 5]], atol=1e-5)


def test_classifier_extractor_loads_a_robustgen_checkpoint_and_a_plain_state_dict(tmp_path, tiny_images):
    from robustgen.checkpoint import model_spec, save_model
    from robustgen.models import create_model

    model = create_model("small-cnn", num_classes=4, in_channels=3)
    path = tmp_path / "m.safetensors"
    save_model(path, model, spec=model_spec(arch="small-cnn", num_classes=4, in_channels=3, activation="silu",
                                            image_size=8))
    ex = get_extractor(f"classifier:{path}")
    assert extract_features(ex, tiny_images[0][:4])[0].shape == (4, 64)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    ex = get_extractor(f"classifier:{plain}", arch="small-cnn", num_classes=4)
    assert "small-cnn" in ex.name
    with pytest.raises(RobustgenError, match="plain.pt"):
        get_extractor(f"classifier:{plain}")  # a plain state dict needs its arch
    with pytest.raises(RobustgenError, match="not found"):
        get_extractor(f"classifier:{tmp_path / 'missing.pt'}", arch="small-cnn")


def test_inception_without_weights_fails_in_one_line_and_never_downloads(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(RobustgenError, match="Inception weights not found") as e:
        get_extractor("inception", download=False)
    assert "\n" not in str(e.value) and "--inception-weights" in str(e.value)
    with pytest.raises(RobustgenError, match="missing.pth: Inception weights file not found"):
        get_extractor("inception", weights_path=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(RobustgenError, match="do not match torch-fidelity's InceptionV3"):
        get_extractor("inception", weights_path=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(RobustgenError, match="not loadable"):
        get_extractor("inception", weights_path=junk)


@pytest.mark.slow
def test_inception_extractor_runs_on_a_local_weights_file(tmp_path, monkeypatch):
    """torch-fidelity's InceptionV3 with random weights saved as a local file: 2048-d pool3 features."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    net = tfi.FeatureExtractorInceptionV3("x", ["2048"])
    monkeypatch.undo()
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    ex = get_extractor("inception", weights_path=weights)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    feats, logits = extract_features(ex, images, batch_size=2)
    assert feats.shape == (3, 2048) and logits.shape == (3, 1008) and np.isfinite(feats).all()
    gray, _ = extract_features(ex, images[..., :1])
    assert gray.shape == (3, 2048)


# --------------------------------------------------------------------------- measure (library and CLI)
def _digits_classifier(tmp_path):
    from robustgen.checkpoint import model_spec, save_model
    from robustgen.models import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    torch.nn.init.normal_(model.logits.weight, std=0.1)
    path = tmp_path / "f.safetensors"
    save_model(path, model, spec=model_spec(arch="small-cnn", num_classes=10, in_channels=1, activation="silu",
                                            image_size=8))
    return path


def test_measure_cli_writes_a_table_1_for_several_sources(tmp_path, capsys):
    from robustgen.cli import main
    from robustgen.data import load_dataset
    from robustgen.data.npz import write_npz

    train = load_dataset("digits", "train")
    copy = tmp_path / "copy.npz"
    write_npz(copy, image=train.images, label=train.labels)
    noise = tmp_path / "noise.npz"
    write_npz(noise, image=np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8),
              label=np.arange(300) % 10)
    out = tmp_path / "m.json"
    main(["measure", "--generated", f"copy={copy}", "--generated", str(noise), "--features",
          f"classifier:{_digits_classifier(tmp_path)}", "--n", "200", "--pca", "20", "--quiet", "--out", str(out),
          "--metrics", "complementarity,fid,is,kid"])
    printed = capsys.readouterr().out
    assert "| copy |" in printed and "| noise |" in printed and "penultimate layer" in printed
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"copy", "noise"} and result["n"] == 200
    assert 0 < result["train_covers_test"] <= 1
    copy_row = result["rows"]["copy"]
    assert copy_row["train"] + copy_row["test"] + copy_row["self"] == pytest.approx(1)
    assert result["rows"]["noise"]["fid"] > copy_row["fid"]
    assert out.with_suffix(".md").read_text().startswith("| setup |")


def test_measure_fid_at_more_images_than_the_test_split(tmp_path, capsys):
    """FID at the paper's size (50K against CIFAR-10's 50K train images) needs more images than the
    10K test split has: FID / IS against train work at any N up to the train size; complementarity,
    which compares N test images, says what to change in one line."""
    from robustgen.cli import main
    from robustgen.data import load_dataset
    from robustgen.data.npz import write_npz

    n_train, n_test = len(load_dataset("digits", "train")), len(load_dataset("digits", "test"))
    gen = tmp_path / "gen.npz"
    write_npz(gen, image=np.random.default_rng(0).integers(0, 256, (n_train, 8, 8, 1), dtype=np.uint8),
              label=np.arange(n_train) % 10)
    out = tmp_path / "m.json"
    classifier = f"classifier:{_digits_classifier(tmp_path)}"
    main(["measure", "--generated", str(gen), "--features", classifier, "--n", str(n_train), "--quiet",
          "--metrics", "fid,is", "--out", str(out)])
    row = json.loads(out.read_text())["rows"]["gen"]
    assert row["n"] == n_train > n_test and row["fid"] > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["measure", "--generated", str(gen), "--features", classifier, "--n", str(n_train), "--quiet",
              "--metrics", "complementarity,fid"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{n_test} images, fewer than the {n_train} requested" in err
    assert "--metrics fid,is,kid" in err and "\n" not in err.strip()


def test_measure_cli_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    from robustgen.cli import main

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(SystemExit) as e:
        main(["measure", "--generated", str(bad), "--features", f"classifier:{_digits_classifier(tmp_path)}",
              "--n", "50"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("robustgen: error:") and "bad.npz" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["measure", "--generated", str(bad), "--features", "inception", "--no-download",
              "--inception-weights", str(tmp_path / "nope.pth")])
    assert e.value.code == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_gives_the_cpu_results(tiny_images):
    from robustgen.models import create_model

    train, test, gen = _clusters(3000, 10, dim=64), _clusters(3000, 11, dim=64), _clusters(3000, 12, dim=64)
    cpu = complementarity_coverage(train, test, gen, pca_components=32)
    gpu = complementarity_coverage(torch.tensor(train).cuda(), torch.tensor(test).cuda(), torch.tensor(gen).cuda(),
                                   pca_components=32, block_size=1 << 16)
    assert gpu == cpu
    q, r = torch.randn(5000, 100, dtype=torch.float64), torch.randn(7000, 100, dtype=torch.float64)
    assert torch.equal(nearest_neighbors(q.cuda(), r.cuda(), block_size=1 << 20)[1].cpu(),
                       nearest_neighbors(q, r)[1])
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=3)
    torch.nn.init.normal_(model.logits.weight)
    f_cpu, z_cpu = extract_features(ClassifierExtractor(model, name="m", device=torch.device("cpu")), tiny_images[0])
    f_gpu, z_gpu = extract_features(ClassifierExtractor(model, name="m", device=torch.device("cuda")),
                                    tiny_images[0])
    assert np.allclose(f_cpu, f_gpu, atol=1e-3) and np.allclose(z_cpu, z_gpu, atol=1e-3)


def test_measure_reads_a_store_and_an_npz_alike(tmp_path):
    from robustgen.data.npz import write_npz
    from robustgen.data.store.writer import StoreWriter
    from robustgen.metrics.measure import ImageSet, measure, open_image_set

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8), np.arange(120) % 4
    with StoreWriter.create(tmp_path / "store", image_shape=(8, 8, 3), num_classes=4, shard_size=50) as w:
        w.append(images, labels)
    write_npz(tmp_path / "g.npz", image=images, label=labels)
    torch.manual_seed(0)
    from robustgen.models import create_model

    ex = ClassifierExtractor(create_model("small-cnn", num_classes=4, in_channels=3), name="m",
                             device=torch.device("cpu"))
    real = ImageSet("real", rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8), labels)
    sets = {"store": open_image_set(tmp_path / "store"), "npz": open_image_set(tmp_path / "g.npz")}
    r = measure(real, real, sets, extractor=ex, n=60, metrics=("complementarity", "fid"), pca_components=8)
    assert r["rows"]["store"] == {**r["rows"]["npz"], "time_s": r["rows"]["store"]["time_s"]}
    with pytest.raises(RobustgenError, match="fewer than the 500 requested"):
        measure(real, real, sets, extractor=ex, n=500)
    with pytest.raises(RobustgenError, match="not a store"):
        open_image_set(tmp_path)
