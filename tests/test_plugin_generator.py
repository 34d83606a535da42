"""A pretrained generator of the user's own, plugged in through generator.plugin.entry_point:
sampled per index (the same images whatever the batch), checked in one-line errors, and run
through generate -> label -> train -> eval from a checkpoint the test writes."""

import json
import textwrap

import numpy as np
import pytest
import torch

from robustgen.runtime.errors import RobustgenError

PLUGIN = textwrap.dedent('''
    import torch
    from safetensors.torch import load_file


    class TinyConditionalGenerator(torch.nn.Module):
        """z (8) + one-hot class -> an 8x8x1 image in [-1, 1]."""

        def __init__(self, num_classes):
            super().__init__()
            self.num_classes = num_classes
            self.net = torch.nn.Linear(8 + num_classes, 64)

        def sample(self, generators, classes):
            z = torch.stack([torch.randn(8, generator=g) for g in generators])
            onehot = torch.nn.functional.one_hot(classes, self.num_classes).float()
            return torch.tanh(self.net(torch.cat([z, onehot], 1))).reshape(-1, 1, 8, 8)


    def make(checkpoint, device, image_shape, num_classes, scale=1.0):
        model = TinyConditionalGenerator(10)  # the checkpoint's classes, whatever the data's
        model.load_state_dict(load_file(checkpoint))
        with torch.no_grad():
            model.net.weight.mul_(scale)
        return model.to(device).eval()


    def wrong_shape(checkpoint, device, image_shape, num_classes):
        model = make(checkpoint, device, image_shape, num_classes)
        model.sample = lambda generators, classes: torch.zeros(len(generators), 3, 8, 8)
        return model
''')


@pytest.fixture
def plugin(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "my_generator.py").write_text(PLUGIN)
    torch.manual_seed(0)
    weights = torch.nn.Linear(18, 64)
    save_file({"net.weight": weights.weight.detach() * 3, "net.bias": weights.bias.detach()}, tmp_path / "g.safetensors")
    return tmp_path / "my_generator.py", tmp_path / "g.safetensors"


def _fit(plugin, **kw):
    from robustgen.generate import get_generator

    code, ckpt = plugin
    args = dict(entry_point=f"{code}:make", checkpoint=str(ckpt), options={}, batch_size=4) | kw
    return get_generator("plugin").fit(np.zeros((5, 8, 8, 1), np.uint8), np.zeros(5, np.int64), num_classes=10, **args)


def test_images_depend_on_their_index_only(plugin, tmp_path):
    from robustgen.generate import get_generator

    adapter = get_generator("plugin")
    fit = _fit(plugin)
    whole, classes = adapter.range_sampler(fit, seed=7).sample(0, 12)
    assert whole.dtype == np.uint8 and whole.shape == (12, 8, 8, 1) and list(classes) == [i % 10 for i in range(12)]
    other_batches = _fit(plugin, batch_size=5)
    parts = [adapter.range_sampler(other_batches, seed=7).sample(a, b)[0] for a, b in ((0, 3), (3, 12))]
    assert np.array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(adapter.range_sampler(fit, seed=8).sample(0, 12)[0], whole)
    # the options reach the factory
    assert not np.array_equal(adapter.range_sampler(_fit(plugin, options={"scale": 0.1}), seed=7).sample(0, 12)[0],
                              whole)
    # a saved fit samples the same images; changed weights are refused
    adapter.save_fit(fit, tmp_path / "fit.json")
    assert np.array_equal(adapter.range_sampler(adapter.load_fit(tmp_path / "fit.json"), seed=7).sample(0, 12)[0], whole)
    plugin[1].write_bytes(plugin[1].read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(RobustgenError, match="the checkpoint changed"):
        adapter.load_fit(tmp_path / "fit.json")


@pytest.mark.parametrize("entry, message", [
    ("no_such_module_xyz:make", "importing no_such_module_xyz failed"),
    ("{code}:missing", "has no callable 'missing'"),
    ("{dir}/absent.py:make", "absent.py: file not found"),
    ("{code}:wrong_shape", "must return a float tensor of shape (4, 1, 8, 8)"),
    ("{code}:TinyConditionalGenerator", "the factory failed (TypeError"),
])
def test_a_broken_plug_in_is_named_in_one_line(plugin, entry, message):
    from robustgen.generate import get_generator

    code, _ = plugin
    with pytest.raises(RobustgenError) as e:
        fit = _fit(plugin, entry_point=entry.format(code=code, dir=code.parent))
        get_generator("plugin").range_sampler(fit, seed=0).sample(0, 4)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_class_counts_must_match_the_data(plugin):
    with pytest.raises(RobustgenError, match="conditions on 10 classes but the data have 3"):
        from robustgen.generate import get_generator

        code, ckpt = plugin
        get_generator("plugin").fit(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int64), num_classes=3,
                                    entry_point=f"{code}:make", checkpoint=str(ckpt))


def test_config_names_a_malformed_entry_point():
    from robustgen.presets import load_config

    with pytest.raises(RobustgenError, match="generator.plugin.entry_point must be 'module:factory'"):
        load_config("digits_demo", ["generator.name=plugin", "generator.plugin.entry_point=just_a_module"])


def test_a_plugged_in_generator_runs_generate_label_train_eval(plugin, tmp_path):
    from robustgen.cli import main

    code, ckpt = plugin
    out = tmp_path / "run"
    main(["run", "digits_demo", "--out", str(out), "--quiet", "--set", "device=cpu", "--set", "generator.name=plugin",
          "--set", f"generator.plugin.entry_point={code}:make", "--set", f"generator.plugin.checkpoint={ckpt}",
          "--set", "generator.num_samples=200", "--set", "train.epochs=0.2", "--set", "classifier.epochs=1",
          "--set", "eval.n=20", "--set", "baseline=false", "--set", "train.inner.steps=2"])
    results = json.loads((out / "results.json").read_text())
    (model,) = results["models"]
    assert model["n_eval"] == 20 and 0 <= model["robust_accuracy"] <= model["clean_accuracy"] <= 1
    assert results["labeling"] is not None  # f_NR pseudo-labelled the plug-in's images
    stages = sorted(p.name.split("-")[0] for p in (out / "stages").iterdir())
    assert {"classifier", "generate", "label", "train", "eval"} <= set(stages)


def test_dry_run_names_a_missing_plug_in_file_and_checkpoint(tmp_path, capsys):
    from robustgen.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "digits_demo", "--dry-run", "--out", str(tmp_path / "run"), "--set", "generator.name=plugin",
              "--set", f"generator.plugin.entry_point={tmp_path}/gone.py:make",
              "--set", f"generator.plugin.checkpoint={tmp_path}/gone.safetensors"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "gone.py: file not found" in err and "gone.safetensors: file not found" in err


def test_changed_weights_are_a_new_cache_key(plugin):
    import os

    from robustgen.presets import load_config
    from robustgen.stages.generate import fingerprint

    code, ckpt = plugin
    cfg = load_config("digits_demo", ["generator.name=plugin", f"generator.plugin.entry_point={code}:make",
                                      f"generator.plugin.checkpoint={ckpt}"])
    before = fingerprint(cfg, "data")
    assert fingerprint(cfg, "data") == before
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 1_000_000_000))
    assert fingerprint(cfg, "data") != before
