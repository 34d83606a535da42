"""The guided-diffusion -> diffusers converter on tiny randomly initialised checkpoints saved by
the test (no downloads): the converted UNet2DModel computes what the original network computes."""

import dataclasses

import pytest
import torch
from guided_diffusion_reference import UNetModel

from robustgen.generate.diffusion.convert import (GUIDED_DIFFUSION_PRESETS, GuidedDiffusionConfig,
                                                  convert_guided_diffusion, scheduler_config, unet_config)
from robustgen.runtime.errors import RobustgenError

TINY = GuidedDiffusionConfig(image_size=16, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                             attention_resolutions=(8, 4), num_head_channels=16, num_classes=5, learn_sigma=True,
                             use_new_attention_order=True, diffusion_steps=50, noise_schedule="cosine")


def _random_checkpoint(gd, path, seed=0):
    torch.manual_seed(seed)
    model = UNetModel(gd).eval()
    with torch.no_grad():  # guided-diffusion zero-initialises some layers: make every weight matter
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    torch.save(model.state_dict(), path)
    return model


@pytest.mark.parametrize("new_order", [True, False], ids=["new-attention-order", "legacy-attention-order"])
def test_converted_unet_computes_what_guided_diffusion_computes(tmp_path, new_order):
    from robustgen.generate.diffusion.unet import load_pretrained

    gd = dataclasses.replace(TINY, use_new_attention_order=new_order)
    reference = _random_checkpoint(gd, tmp_path / "model.pt")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"n0{i} name {i}" for i in range(5)) + "\n")
    out = convert_guided_diffusion(tmp_path / "model.pt", tmp_path / "diffusers", gd, class_names_file=names)
    unet, sched = load_pretrained(str(out))
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 17, 49]), torch.tensor([4, 0, 2])
    with torch.no_grad():
        expected = reference(x, t, y)
        got = unet(x, t, class_labels=y).sample
    assert got.shape == (3, 6, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert sched["num_train_timesteps"] == 50 and sched["variance_type"] == "learned_range"
    assert (out / "class_names.json").read_text() == '["n00", "n01", "n02", "n03", "n04"]'


def test_presets_map_every_parameter_of_the_published_networks():
    """At the sizes of the two ImageNet checkpoints (built on the meta device), every tensor of
    guided-diffusion's network has a place in the diffusers one with the same shape, and back."""
    from diffusers import UNet2DModel

    from robustgen.generate.diffusion.convert import convert_state_dict

    for gd in GUIDED_DIFFUSION_PRESETS.values():
        with torch.device("meta"):
            original = UNetModel(gd).state_dict()
            unet = UNet2DModel(**unet_config(gd)).state_dict()
        converted = convert_state_dict(original, gd)
        assert converted.keys() == unet.keys()
        assert all(converted[k].shape == unet[k].shape for k in unet)
    assert scheduler_config(GUIDED_DIFFUSION_PRESETS["imagenet256-cond"])["beta_end"] == pytest.approx(0.02)


def test_wrong_configuration_or_file_is_one_line(tmp_path):
    _random_checkpoint(TINY, tmp_path / "model.pt")
    wrong = dataclasses.replace(TINY, num_res_blocks=2)
    with pytest.raises(RobustgenError, match=r"model\.pt: missing key"):
        convert_guided_diffusion(tmp_path / "model.pt", tmp_path / "a", wrong)
    with pytest.raises(RobustgenError, match=r"model\.pt: 1 keys not in this configuration.*label_emb"):
        convert_guided_diffusion(tmp_path / "model.pt", tmp_path / "b", dataclasses.replace(TINY, num_classes=None))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RobustgenError, match=r"bad\.pt: not a readable"):
        convert_guided_diffusion(tmp_path / "bad.pt", tmp_path / "c", TINY)
    with pytest.raises(RobustgenError, match="unknown guided-diffusion preset"):
        convert_guided_diffusion(tmp_path / "model.pt", tmp_path / "d", "imagenet128")


def _converted_tiny(tmp_path, names=("n00", "n01", "n02", "n03", "n04")):
    from robustgen.cli import main

    _random_checkpoint(TINY, tmp_path / "model.pt")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["convert-guided-diffusion", str(tmp_path / "model.pt"), "--preset", "imagenet64-cond",
              "--out", str(tmp_path / "x")])
    assert e.value.code == 2  # the tiny checkpoint is not the 64x64 network: one-line error
    from robustgen.generate.diffusion.convert import convert_guided_diffusion

    return convert_guided_diffusion(tmp_path / "model.pt", tmp_path / "diffusers", TINY,
                                    class_names_file=tmp_path / "classes.txt")


def test_class_subset_sampler_conditions_on_the_model_class_of_each_data_class(tmp_path):
    """TinyImageNet in an ImageNet model (paper Sec. 6): data class c (a wnid) conditions on the
    model's class of that name, and the sample's label is c; every sampler reads the learned-variance
    output correctly; the fit survives a save / load."""
    import numpy as np

    from robustgen.generate.diffusion.adapter import DDPMGenerator, fit_ddpm

    folder = _converted_tiny(tmp_path)
    images = np.zeros((4, 16, 16, 3), np.uint8)
    fit = fit_ddpm(images, np.zeros(4, np.int64), num_classes=2, pretrained=str(folder), class_map="by-name",
                   class_names=("n03", "n01"), sampler="ddim", sampling_steps=2, sample_batch_size=3)
    assert fit.condition_classes == [3, 1]
    seen = []
    forward = fit.unet.forward
    fit.unet.forward = lambda x, t, class_labels=None: (seen.append(class_labels.tolist()),
                                                       forward(x, t, class_labels=class_labels))[1]
    out, labels = DDPMGenerator.range_sampler(fit, seed=0).sample(1, 4)
    assert out.shape == (3, 16, 16, 3) and labels.tolist() == [1, 0, 1]
    assert seen[0] == [3, 1, 3] and seen[-1] == [1, 3, 1]  # blocks of 3: samples 0-2, then 3-5
    for sampler in ("ddpm", "dpm-solver++", "edm-heun"):
        fit.sampler = sampler
        imgs, _ = DDPMGenerator.range_sampler(fit, seed=1).sample(0, 2)
        assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    fit.unet.forward = forward
    DDPMGenerator.save_fit(fit, tmp_path / "fit.safetensors")
    assert DDPMGenerator.load_fit(tmp_path / "fit.safetensors").condition_classes == [3, 1]
    with pytest.raises(RobustgenError, match=r"class_names\.json: 1 of the data's classes .*'n09'"):
        fit_ddpm(images, None, num_classes=2, pretrained=str(folder), class_map="by-name", class_names=("n03", "n09"))
    with pytest.raises(RobustgenError, match="the model has 5 classes but the data 2.*by-name"):
        fit_ddpm(images, None, num_classes=2, pretrained=str(folder))
