"""PNG figures: sweeps, accuracy vs samples, training curves, loss landscapes."""

import pytest
import torch

from robustgen.metrics.landscape import landscape_grid, loss_landscape, rademacher_direction
from robustgen.report.plots import (plot_accuracy_vs_samples, plot_loss_landscapes, plot_sweep, plot_training_curves,
                                    read_history)
from robustgen.runtime.errors import RobustgenError

PNG = b"\x89PNG\r\n\x1a\n"


def _valid_png(path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG
    with Image.open(path) as im:
        im.verify()
    return data


def test_sweep_and_samples_plots_write_pngs(tmp_path):
    rows = [{"generator": g, "alpha": a, "seed": s, "clean_accuracy": 0.9 - 0.1 * a,
             "robust_accuracy": 0.5 + 0.1 * a + 0.01 * s, "generated_samples": n}
            for g in ("gaussian", "ddpm") for a, n in ((0.3, 1000), (0.5, 10_000)) for s in (0, 1)]
    _valid_png(tmp_path / plot_accuracy_vs_samples(rows, tmp_path / "n.png").split("/")[-1])
    summary = [{"point": f"alpha{a}", "model": f"{g}-alpha{a}", "generator": g, "seeds": 2,
                "robust_accuracy_mean": 0.5 + 0.1 * a, "robust_accuracy_se": 0.01, "clean_accuracy_mean": 0.9,
                "clean_accuracy_se": float("nan")} for g in ("gaussian", "ddpm") for a in (0.3, 0.5)]
    numeric = {"alpha0.3": {"train.alpha": "0.3"}, "alpha0.5": {"train.alpha": "0.5"}}
    _valid_png(tmp_path / plot_sweep(summary, tmp_path / "a.png", points=numeric, title="t").split("/")[-1])
    named = {"alpha0.3": {"train.alpha": "0.3", "arch": "a"}, "alpha0.5": {"train.alpha": "0.5", "arch": "b"}}
    _valid_png(tmp_path / plot_sweep(summary, tmp_path / "b.png", points=named).split("/")[-1])
    with pytest.raises(RobustgenError, match="no records"):
        plot_sweep([], tmp_path / "x.png", points=numeric)
    with pytest.raises(RobustgenError, match="lack robust_accuracy_mean"):
        plot_sweep([{"point": "p", "model": "m", "clean_accuracy_mean": 1}], tmp_path / "x.png", points=numeric)


def test_training_curves_from_a_history_file(tmp_path):
    from robustgen.runtime.io import write_json

    history = [{"step": s, "samples": 128 * s, "loss": 2.0 / s, "lr": 0.1} for s in range(1, 20)]
    history += [{"step": 10, "samples": 1280, "model": m, "score": 0.4, "val_clean_accuracy": 0.9,
                 "val_robust_accuracy": 0.4} for m in ("raw", "ema")]
    write_json(tmp_path / "history.json", history)
    _valid_png(tmp_path / plot_training_curves(read_history(tmp_path), tmp_path / "c.png").split("/")[-1])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RobustgenError, match="bad.json: not a training history"):
        read_history(tmp_path / "bad.json")


def test_report_curves_cli(tmp_path, capsys):
    from robustgen.cli import main
    from robustgen.runtime.io import write_json

    write_json(tmp_path / "history.json", [{"step": 1, "samples": 1, "loss": 1.0, "lr": 0.1}])
    main(["report", "curves", str(tmp_path), "--out", str(tmp_path / "c.png")])
    _valid_png(tmp_path / "c.png")
    with pytest.raises(SystemExit) as e:
        main(["report", "curves", str(tmp_path / "nope"), "--out", str(tmp_path / "c.png")])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err


class _Linear(torch.nn.Module):
    """logits = W x: the margin is linear in the input, so the landscape is a plane."""

    def __init__(self, d, k=3):
        super().__init__()
        self.w = torch.nn.Linear(d, k, bias=False)

    def forward(self, x):
        return self.w(x.flatten(1))


def test_landscape_grid_is_the_margin_along_both_directions():
    torch.manual_seed(0)
    model = _Linear(12)
    x = torch.rand(2, 3, 2, 2) * 0.5 + 0.25
    y = torch.tensor([0, 2])
    d_u, d_v = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    u, v = torch.linspace(-0.1, 0.1, 5), torch.linspace(-0.1, 0.1, 3)
    grid = landscape_grid(model, x, y, d_u, d_v, u, v, batch_size=4, clip=False)
    assert grid.shape == (2, 5, 3)
    with torch.no_grad():
        z = model(x[1:] + u[4] * d_u[1:] + v[0] * d_v[1:])[0]
    assert grid[1, 4, 0].item() == pytest.approx((z[2] - z[:2].max()).item(), abs=1e-5)
    r = rademacher_direction((2, 3, 2, 2), norm="linf")
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(rademacher_direction((1, 12), norm="l2").norm(), torch.tensor(1.0))


def test_loss_landscape_dips_along_the_pgd_direction_and_plots(tmp_path):
    torch.manual_seed(0)
    model = _Linear(12)
    x = torch.rand(2, 3, 2, 2) * 0.5 + 0.25
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.1
    land = loss_landscape(model, x, y, norm="linf", eps=eps, steps=5, extent=1.0)
    loss = land["loss"]
    assert loss.shape == (2, 5, 5) and (land["clean_margin"] > 0).all()
    # the margin falls faster along +u (the attack's direction) than along +v (random)
    assert (loss[:, 4, 2] < loss[:, 2, 4]).all() and (loss[:, 4, 2] < loss[:, 2, 2]).all()
    _valid_png(tmp_path / plot_loss_landscapes(land, tmp_path / "l.png").split("/")[-1])
    with pytest.raises(RobustgenError):
        loss_landscape(model, x, y, norm="l3", eps=eps)
