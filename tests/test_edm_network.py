"""EDM network pickles (NVlabs/edm's persistent-class format, as Wang et al. 2023 release their
generators) become state-dict folders without running the pickle's code, and sample through
generator.ddpm.pretrained with EDM's own Heun sampler."""

import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from robustgen.generate.diffusion.edm_net import EDMNetwork
from robustgen.generate.diffusion.edm_pickle import convert_edm_pickle, load_edm_folder, read_edm_pickle
from robustgen.runtime.errors import RobustgenError

TINY_SONG = dict(img_resolution=8, img_channels=1, label_dim=10, use_fp16=False, model_type="SongUNet",
                 model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13,
                 augment_dim=9, embedding_type="positional", encoder_type="standard", decoder_type="standard",
                 channel_mult_noise=1, resample_filter=[1, 1])


def write_edm_pickle(path, net: EDMNetwork, precond: str, init_kwargs: dict, *, source_code: str, extra=None):
    """Pickle ``net`` the way EDM's torch_utils.persistence does: every module a call of
    _reconstruct_persistent_obj(meta) with meta = {class_name, module_src, state = its __dict__},
    the top one's init kwargs as a dnnlib EasyDict (fake modules stand in for EDM's during pickling)."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # EDM exec's meta["module_src"] here; a safe reader never calls it
        raise AssertionError("not called when reading")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    easydict = type("EasyDict", (dict,), {"__module__": "dnnlib.util", "__qualname__": "EasyDict"})
    util.EasyDict = easydict
    modules = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
               "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}

    class EDMPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not isinstance(obj, nn.Module) or isinstance(obj, nn.ModuleDict):
                return NotImplemented
            state = dict(obj.__dict__)
            state["_init_args"], state["_init_kwargs"] = (), easydict(init_kwargs if obj is net else {})
            meta = dict(type="class", version=6, module_src=source_code,
                        class_name=precond if obj is net else type(obj).__name__, state=state)
            return _reconstruct_persistent_obj, (meta,)

    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        with open(path, "wb") as f:
            EDMPickler(f).dump({"ema": net, "loss_fn": None, "augment_pipe": None,
                                "dataset_kwargs": easydict(path="cifar10.zip", xflip=False), **(extra or {})})
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _random_network(precond="VPPrecond", init=TINY_SONG):
    torch.manual_seed(0)
    net = EDMNetwork(precond=precond, **init).eval()
    with torch.no_grad():  # EDM initialises some layers at zero: make every path count
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


ADM = dict(img_resolution=8, img_channels=1, label_dim=10, model_type="DhariwalUNet", model_channels=64,
           channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)
NCSN = {**TINY_SONG, "label_dim": 0, "augment_dim": 0, "embedding_type": "fourier", "channel_mult_noise": 2,
        "encoder_type": "residual", "decoder_type": "skip", "resample_filter": [1, 3, 3, 1]}


@pytest.mark.parametrize("precond, init", [("VPPrecond", TINY_SONG), ("VEPrecond", NCSN), ("EDMPrecond", ADM)])
def test_a_converted_pickle_computes_what_the_pickled_network_computes_without_running_its_code(
        tmp_path, monkeypatch, precond, init):
    monkeypatch.chdir(tmp_path)
    net = _random_network(precond, init)
    write_edm_pickle(tmp_path / "net.pkl", net, precond, init,
                     source_code="import pathlib\npathlib.Path('PWNED').write_text('ran')\n")
    out = convert_edm_pickle(tmp_path / "net.pkl", tmp_path / "converted")
    loaded = load_edm_folder(out)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.01, 1.0, 50.0])
    labels = torch.eye(10)[:3] if init["label_dim"] else None
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))
    meta = json.loads((out / "edm_network.json").read_text())
    assert meta["edm_network"]["precond"] == precond and len(meta["sha256"]) == 64
    assert not (tmp_path / "PWNED").exists()  # the source code stored in the pickle never ran


class _RunsACommand:
    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pkl", "wb") as f:
        pickle.dump({"ema": _RunsACommand()}, f)
    with pytest.raises(RobustgenError) as e:
        read_edm_pickle(tmp_path / "evil.pkl")
    msg = str(e.value)
    assert "evil.pkl" in msg and "refused to load" in msg and "system" in msg and "\n" not in msg
    assert not (tmp_path / "PWNED").exists()


def test_unreadable_or_unexpected_files_fail_in_one_line(tmp_path):
    net = _random_network()
    write_edm_pickle(tmp_path / "net.pkl", net, "VPPrecond", TINY_SONG, source_code="")
    with pytest.raises(RobustgenError, match="no EDM network under 'model'"):
        read_edm_pickle(tmp_path / "net.pkl", key="model")
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "net.pkl").read_bytes()[:500])
    with pytest.raises(RobustgenError, match="not a readable EDM network pickle"):
        read_edm_pickle(tmp_path / "cut.pkl")
    with pytest.raises(RobustgenError, match="file not found"):
        read_edm_pickle(tmp_path / "missing.pkl")
    # init kwargs that do not match the tensors: named, nothing written
    write_edm_pickle(tmp_path / "wrong.pkl", net, "VPPrecond", {**TINY_SONG, "model_channels": 32}, source_code="")
    with pytest.raises(RobustgenError, match="do not fit an EDM VPPrecond / SongUNet network") as e:
        convert_edm_pickle(tmp_path / "wrong.pkl", tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_the_edm_preset_is_edms_cifar10_network():
    """EDM's DDPM++ (the architecture of Wang et al.'s CIFAR-10 generators): 55.7M parameters
    (Karras et al. 2022, Table 7 / their train.py --arch=ddpmpp)."""
    from robustgen.generate.diffusion.unet import build_unet

    with torch.device("meta"):
        unet = build_unet("edm-ddpmpp-cifar10", image_size=32, in_channels=3, num_classes=10)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 55.7
    assert unet.config.num_class_embeds == 10 and unet.config.edm_network["precond"] == "VPPrecond"


def test_a_converted_network_samples_as_a_pretrained_generator_with_edms_noise_levels(tmp_path, monkeypatch):
    from robustgen.generate.diffusion import DDPMGenerator, fit_ddpm, samplers

    write_edm_pickle(tmp_path / "net.pkl", _random_network(), "VPPrecond", TINY_SONG, source_code="")
    folder = convert_edm_pickle(tmp_path / "net.pkl", tmp_path / "edm")
    images = np.zeros((20, 8, 8, 1), np.uint8)
    fit = fit_ddpm(images, np.arange(20) % 10, num_classes=10, pretrained=str(folder), sampler="wang2023",
                   sample_batch_size=4)
    seen = []
    heun = samplers.edm_heun_sample
    monkeypatch.setattr(samplers, "edm_heun_sample", lambda d, x, sigmas: seen.append(sigmas) or heun(d, x, sigmas=sigmas))
    out, cond = DDPMGenerator.sample(fit, 6, seed=3)
    assert out.shape == (6, 8, 8, 1) and out.dtype == np.uint8 and list(cond) == [0, 1, 2, 3, 4, 5]
    # Wang et al.: EDM's deterministic Heun sampler, 20 levels from 80 to 0.002 (rho 7), then 0
    assert len(seen[0]) == 21 and float(seen[0][0]) == pytest.approx(80) and float(seen[0][-2]) == pytest.approx(0.002)
    # a saved fit rebuilds the network and samples the same images
    DDPMGenerator.save_fit(fit, tmp_path / "fit.safetensors")
    again = DDPMGenerator.load_fit(tmp_path / "fit.safetensors")
    assert np.array_equal(DDPMGenerator.sample(again, 6, seed=3)[0], out)


def test_convert_edm_verb_then_run_generates_labels_by_condition_and_trains(tmp_path):
    """The whole path a user of Wang et al.'s generators takes: convert, then robustgen run with the
    folder as generator.ddpm.pretrained, their sampler and the conditioning class as the label."""
    from robustgen.cli import main

    write_edm_pickle(tmp_path / "net.pkl", _random_network(), "VPPrecond", TINY_SONG, source_code="")
    main(["convert-edm", str(tmp_path / "net.pkl"), "--out", str(tmp_path / "edm")])
    main(["run", "digits_ddpm", "--out", str(tmp_path / "run"), "--quiet", "--set", "device=cpu",
          "--set", f"generator.ddpm.pretrained={tmp_path / 'edm'}", "--set", "generator.ddpm.sampler=wang2023",
          "--set", "generator.ddpm.sample_batch_size=64", "--set", "generator.num_samples=128",
          "--set", "label.mode=condition", "--set", "train.epochs=0.2", "--set", "eval.n=16",
          "--set", "baseline=false", "--set", "train.inner.steps=2"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (model,) = results["models"]
    assert model["n_eval"] == 16 and 0 <= model["robust_accuracy"] <= model["clean_accuracy"] <= 1


def test_a_reconverted_folder_invalidates_the_cached_samples(tmp_path):
    from robustgen.presets import load_config
    from robustgen.stages.generate import fingerprint

    write_edm_pickle(tmp_path / "a.pkl", _random_network(), "VPPrecond", TINY_SONG, source_code="")
    folder = convert_edm_pickle(tmp_path / "a.pkl", tmp_path / "edm")
    cfg = load_config("digits_ddpm", [f"generator.ddpm.pretrained={folder}"])
    before = fingerprint(cfg, "data")
    assert fingerprint(cfg, "data") == before
    other = _random_network()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    write_edm_pickle(tmp_path / "b.pkl", other, "VPPrecond", TINY_SONG, source_code="")
    convert_edm_pickle(tmp_path / "b.pkl", folder)
    assert fingerprint(cfg, "data") != before
