"""LPIPS features for Alg. 1 (paper Table 4): the squared L2 distance of two feature vectors is
their LPIPS distance; measure --features lpips works offline once torchvision's VGG16 file is
placed, and names the missing file in one line otherwise. The tests write random VGG16 weights."""

import json

import numpy as np
import pytest
import torch

from robustgen.runtime.errors import RobustgenError


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16().features  # random init; only the convolutions LPIPS reads
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_squared_feature_distances_are_lpips_distances(vgg16_file):
    from robustgen.metrics.features import get_extractor

    ex = get_extractor("lpips", weights_path=vgg16_file)
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randint(0, 256, (3, 32, 32, 3), generator=g, dtype=torch.uint8) for _ in range(2))
    fa, logits = ex(a)
    fb, _ = ex(b)
    assert fa.shape == (3, 124_928) and logits.shape == (3, 0)  # the paper's 124,928 activations at 32x32
    to_unit = lambda x: x.permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    reference = ex.lpips(to_unit(a), to_unit(b)).flatten()  # the lpips package's own distance
    assert torch.allclose(((fa - fb) ** 2).sum(1), reference, rtol=1e-4)
    gray, _ = ex(a[..., :1])  # grayscale: the channel repeated
    assert torch.allclose(gray, ex(a[..., :1].expand(-1, -1, -1, 3))[0])
    with pytest.raises(RobustgenError, match="at least 16x16"):
        ex(a[:, :8, :8])


def _npz_dataset(folder):
    from robustgen.data import write_npz

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_npz(folder / f"{split}.npz", image=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                  label=np.arange(40) % 10)
    write_npz(folder / "gen.npz", image=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), label=np.arange(40) % 10)


def test_measure_with_lpips_features_offline(vgg16_file, tmp_path, capsys, monkeypatch):
    from robustgen.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # nothing cached, no download
    _npz_dataset(tmp_path)
    base = ["measure", "--set", f"data.dataset=npz:{tmp_path}", "--generated", f"gen={tmp_path / 'gen.npz'}",
            "--features", "lpips", "--n", "30", "--pca", "10", "--quiet", "--no-download"]
    main([*base, "--lpips-weights", str(vgg16_file), "--out", str(tmp_path / "m.json")])
    result = json.loads((tmp_path / "m.json").read_text())
    row = result["rows"]["gen"]
    assert result["extractor"].startswith("lpips-vgg") and result["feature_dim"] == 124_928
    assert row["train"] + row["test"] + row["self"] == pytest.approx(1) and "fid" not in row
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # FID / IS need Inception
        main([*base, "--lpips-weights", str(vgg16_file), "--metrics", "complementarity,fid"])
    assert e.value.code == 2 and "serve complementarity only, not fid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # no weights placed: the file to place, in one line
        main(base)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "vgg16-397923af.pth" in err and "--lpips-weights" in err and "\n" not in err


def test_pca_with_more_dimensions_than_samples_equals_the_covariance_pca():
    """LPIPS features have more dimensions than samples: the PCA goes through the Gram matrix and
    must give the covariance's principal directions."""
    from robustgen.metrics.complementarity import pca_fit

    x = torch.randn(30, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[:, :3] *= torch.tensor([9.0, 5.0, 3.0], dtype=torch.float64)  # well-separated leading directions
    mean, comps = pca_fit(x, 5)
    xc = x - x.mean(0)
    w, v = torch.linalg.eigh(xc.T @ xc / 29)
    v = v[:, torch.argsort(w, descending=True)[:5]]
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    assert torch.allclose(comps, v, atol=1e-8) and torch.allclose(mean, x.mean(0))
