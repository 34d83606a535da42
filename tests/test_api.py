"""The Python API on float NCHW tensors: load_run, evaluate (equal to `robustgen eval`), attack
objects, load_generator, open_store, and the example notebook run end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import robustgen
from robustgen.cli import main
from robustgen.data import load_split
from robustgen.runtime.errors import RobustgenError

TINY = ["data.val_size=64", "classifier.epochs=1", "classifier.batch_size=64", "generator.num_samples=300",
        "train.epochs=1", "train.batch_size=64", "train.inner.steps=2", "train.eval_every_epochs=1", "eval.n=60",
        "eval.batch_size=60", "train.log_every_steps=5", "eval.attack=pgd40"]
EPS = 0.2  # digits_demo's threat.eps


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return robustgen.run("digits_demo", tmp_path_factory.mktemp("run"), overrides=TINY, progress=False)


@pytest.fixture(scope="module")
def points():
    """The first 40 digits test images as float NCHW in [0, 1] (what a notebook user holds)."""
    test = load_split(robustgen.load_config("digits_demo").data, "test")
    x = torch.from_numpy(test.images[:40]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(test.labels[:40])


def test_load_run_gives_results_config_and_models_by_arm(run):
    assert list(run.models) == ["baseline", "gaussian-alpha0.8"] == [r["name"] for r in run.table()]
    assert run.config.data.dataset == "digits" and run.config.generator.name == "gaussian"
    model = run.models["gaussian-alpha0.8"]
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert run.models["baseline"] is run.models["baseline"]  # loaded once
    with pytest.raises(KeyError, match="no model 'nope'"):
        run.models["nope"]
    with pytest.raises(RobustgenError, match="results.json: not found"):
        robustgen.load_run(run.path / "stages")


@pytest.mark.parametrize("attack", ["pgd40", "autoattack"])
def test_evaluate_on_tensors_equals_the_eval_verb(run, points, tmp_path, attack):
    x, y = points
    out = tmp_path / "eval.json"
    main(["eval", "--checkpoint", run.checkpoints["baseline"], "--attack", attack, "--n", "40", "--batch-size", "20",
          "--out", str(out), "--quiet"])
    cli = json.loads(out.read_text())
    api = robustgen.evaluate(run.models["baseline"], x, y, attack=attack, norm="linf", eps=EPS, batch_size=20)
    assert (api.clean_accuracy, api.robust_accuracy) == (cli["clean_accuracy"], cli["robust_accuracy"])
    assert "".join("1" if r else "0" for r in api.robust.tolist()) == cli["robust_points"]
    assert [s["stage"] for s in api.stages] == [s["stage"] for s in cli["stages"]]
    # a DataLoader of (x, y) batches gives the same evaluation
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    again = robustgen.evaluate(run.models["baseline"], loader, attack=attack, eps=EPS, batch_size=20)
    assert torch.equal(again.robust, api.robust)


def test_evaluate_returns_adversarial_examples_inside_the_ball(run, points):
    x, y = points
    model = run.models["baseline"]
    result = robustgen.evaluate(model, x, y, attack="pgd40", eps=EPS, return_adversarial=True)
    adv = result.adversarial
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        wrong = model(adv).argmax(1) != y
    assert torch.equal(wrong, ~result.robust)  # fooled exactly where the evaluation says so
    assert torch.equal(adv[result.robust], x[result.robust])


def test_attack_objects_run_the_evaluations_attacks(run, points):
    x, y = points
    model = run.models["baseline"].train()  # the attack puts it in eval mode and back
    pgd = robustgen.attacks.PGD(model, norm="linf", eps=EPS)
    x_adv = pgd(x, y)
    assert model.training
    model.eval()
    reference = robustgen.evaluate(model, x, y, attack="pgd40", eps=EPS, batch_size=40)
    with torch.no_grad():
        robust = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    assert torch.equal(robust, reference.robust)  # PGD(steps=40) is the evaluation's PGD-40
    with torch.no_grad():  # attacks take their input gradients anyway
        assert torch.equal(pgd(x, y), x_adv)

    mt = robustgen.attacks.MultiTargeted(model, norm="linf", eps=EPS, restarts=1, targets=3, steps=20)
    x_mt = mt(x, y)
    assert x_mt.shape == x.shape and float((x_mt - x).abs().max()) <= EPS * (1 + 1e-5) + 1e-6
    assert float(x_mt.min()) >= 0 and float(x_mt.max()) <= 1
    with torch.no_grad():
        assert int((model(x_mt).argmax(1) != y).sum()) > int((model(x).argmax(1) != y).sum())

    l2 = robustgen.attacks.APGD(model, norm="l2", eps=1.0, steps=10)(x[:8], y[:8])
    assert float((l2 - x[:8]).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-4

    aa = robustgen.attacks.AutoAttack(model, norm="linf", eps=EPS, attack="apgd-ce+apgd-t")
    x_aa = aa(x, y)
    full = robustgen.evaluate(model, x, y, attack="apgd-ce+apgd-t", eps=EPS)
    with torch.no_grad():
        assert float((model(x_aa).argmax(1) == y).float().mean()) == full.robust_accuracy


def test_api_inputs_are_checked_with_one_line_errors(run, points):
    x, y = points
    model = run.models["baseline"]
    for bad_x, bad_y, match in ((x * 255, y, r"\[0, 1\]"), (x[:, 0], y, "float tensor"), (x, y[:3], "one label"),
                                (x.numpy(), y, "uint8")):
        with pytest.raises(RobustgenError, match=match) as e:
            robustgen.evaluate(model, bad_x, bad_y, attack="pgd40", eps=EPS)
        assert "\n" not in str(e.value)
    with pytest.raises(RobustgenError, match="labels"):
        robustgen.evaluate(model, x, attack="pgd40", eps=EPS)
    with pytest.raises(RobustgenError, match="unknown attack"):
        robustgen.attacks.AutoAttack(model, eps=EPS, attack="nope")
    with pytest.raises(RobustgenError, match=r"\[0, 1\]"):
        robustgen.attacks.PGD(model, eps=EPS)(x + 1, y)


def test_generator_samples_the_stores_sequence_and_given_classes(run):
    stage = next((run.path / "stages").glob("generate-*"))
    gen = robustgen.load_generator(stage)
    store = robustgen.open_store(stage)
    images, classes = gen.sample(12, seed=0)
    expected = torch.stack([store[i][0] for i in range(12)])
    assert torch.equal(images, expected) and classes.tolist() == [i % 10 for i in range(12)]
    threes, c = gen.sample(4, seed=0, classes=3)  # rows 3, 13, 23, 33 of the same sequence
    assert c.tolist() == [3] * 4 and torch.equal(threes, torch.stack([store[3 + 10 * j][0] for j in range(4)]))
    mixed, c = gen.sample(3, seed=0, classes=[7, 2, 7])
    assert c.tolist() == [7, 2, 7] and torch.equal(mixed[2], store[17][0])
    assert not torch.equal(gen.sample(4, seed=1)[0], images[:4])
    with pytest.raises(RobustgenError, match="classes must lie"):
        gen.sample(2, classes=10)
    with pytest.raises(RobustgenError, match="needs the generator's name"):
        robustgen.load_generator(stage / "store" / "generator_fit.npz")


def test_ddpm_generator_samples_given_classes_as_the_store_does(tmp_path):
    from robustgen.generate.sample_to_store import generate_store

    d = load_split(robustgen.load_config("digits_demo").data, "train")
    fit = dict(unet="tiny", train_steps=2, batch_size=8, warmup_steps=1, sampling_steps=2, sample_batch_size=4,
               checkpoint_every_steps=2)
    generate_store(tmp_path / "s", generator="ddpm", train_images=d.images[:100], train_labels=d.labels[:100],
                   num_classes=10, num_samples=24, seed=5, fit_config=fit, progress=False)
    gen = robustgen.load_generator(tmp_path / "s")
    store = robustgen.open_store(tmp_path / "s")
    x, c = gen.sample(3, seed=5, classes=[1, 1, 4])
    assert c.tolist() == [1, 1, 4]
    for got, row in zip(x, (1, 11, 4)):
        assert float((got - store[row][0]).abs().max()) <= 1 / 255 + 1e-6  # batch composition may round a pixel


def test_open_store_feeds_a_dataloader_with_workers(run):
    stage = next((run.path / "stages").glob("label-*"))
    dataset = robustgen.open_store(stage)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (len(dataset), 1, 8, 8) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert torch.equal(y, torch.from_numpy(dataset.labels))
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_example_notebook_runs_end_to_end(tmp_path, monkeypatch):
    notebook = json.loads((Path(__file__).parent.parent / "examples" / "api_tour.ipynb").read_text())
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTGEN_EXAMPLE_FAST", "1")
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), "api_tour.ipynb", "exec"), namespace)  # noqa: S102
    assert 0 <= namespace["result"].robust_accuracy <= namespace["result"].clean_accuracy <= 1
    assert (tmp_path / "runs" / "notebook" / "results.json").is_file()
    np.testing.assert_array_less(-1e-6, namespace["images"].numpy())


def test_the_api_pages_examples_run(run, tmp_path, monkeypatch):
    """docs/api.md's python blocks, in order, on this module's run as runs/demo."""
    import re

    page = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 5
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(run.path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    assert namespace["images"].shape == (16, 1, 8, 8) and namespace["lines"][0].startswith("grid: 4 point(s)")
