"""Diffusion generators (robustgen.generate.diffusion): UNet presets, training resume, samplers,
per-sample seeds, pretrained loading, the ``ddpm`` adapter through the store runner and the config."""

import json

# imported once at collection (several seconds on a busy CPU), not inside the first test; a
# dependency, so a missing install fails here instead of skipping
import diffusers  # noqa: F401
import numpy as np
import pytest
import torch

from robustgen.presets import load_config
from robustgen.data import load_dataset
from robustgen.data.store import Store
from robustgen.generate import generator_fit_kwargs, get_generator
from robustgen.generate.diffusion import samplers as S
from robustgen.generate.diffusion.adapter import DDPMFit, DDPMGenerator, DDPMRangeSampler, fit_ddpm
from robustgen.generate.diffusion.unet import build_unet, ho_scheduler_config, load_pretrained
from robustgen.generate.sample_to_store import generate_store
from robustgen.label.label_store import label_store, select_store
from robustgen.runtime.errors import RobustgenError

# A few steps of a tiny run: settings shared by the tests below.
TINY = dict(unet="tiny", train_steps=4, batch_size=8, warmup_steps=2, sampling_steps=3, sample_batch_size=4,
            checkpoint_every_steps=2)


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", "train")
    return d.images[:200], d.labels[:200]


@pytest.fixture(scope="module")
def tiny_fit(digits):
    return fit_ddpm(*digits, num_classes=10, **TINY)


def _tiny_unet(num_classes=None, size=8, channels=1):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       num_class_embeds=num_classes).eval()


def test_ho_cifar10_unet_has_35_7m_parameters():
    with torch.device("meta"):
        unet = build_unet("ho-cifar10", image_size=32, in_channels=3, num_classes=None)
    n = sum(p.numel() for p in unet.parameters())
    assert 35.6e6 < n < 35.8e6, n  # Ho et al.: 35.7M
    assert unet.config.block_out_channels == (128, 256, 256, 256) and unet.config.layers_per_block == 2
    # self-attention only in the second level, i.e. at 16x16 for 32x32 input
    assert unet.config.down_block_types[1] == "AttnDownBlock2D"
    assert sum("Attn" in t for t in unet.config.down_block_types) == 1
    with pytest.raises(RobustgenError, match="multiple of 8"):
        build_unet("ho-cifar10", image_size=12, in_channels=3, num_classes=None)


def test_resumed_training_equals_uninterrupted(digits, tmp_path):
    full = fit_ddpm(*digits, num_classes=10, **TINY)
    # killed after step 3: the state saved at step 2 is all that survives
    fit_ddpm(*digits, num_classes=10, **TINY, work_dir=tmp_path, stop_after=3)
    resumed = fit_ddpm(*digits, num_classes=10, **TINY, work_dir=tmp_path)
    assert resumed.info["resumed_from"] == 2
    a, b = full.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run reloads without training; other settings refuse the folder
    again = fit_ddpm(*digits, num_classes=10, **TINY, work_dir=tmp_path)
    assert again.info["resumed_from"] == 4
    with pytest.raises(RobustgenError, match="another diffusion training"):
        fit_ddpm(*digits, num_classes=10, **{**TINY, "lr": 0.01}, work_dir=tmp_path)


def test_edm_heun_solves_the_gaussian_probability_flow():
    # data N(mu, s0^2): D(x; sigma) = mu + s0^2 / (s0^2 + sigma^2) (x - mu) and the ODE maps x_T to
    # mu + (x_T - mu) * s0 / sqrt(s0^2 + sigma_max^2)
    mu, s0, smax = 0.3, 0.5, 80.0
    noise = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def denoiser(x, sigma):
        return mu + s0**2 / (s0**2 + sigma**2) * (x - mu)

    exact = mu + (noise * smax - mu) * s0 / (s0**2 + smax**2) ** 0.5
    errors = []
    for n in (10, 20, 40):
        sigmas = S.edm_sigma_steps(n, sigma_min=0.002, sigma_max=smax)
        assert sigmas[0] == pytest.approx(smax) and sigmas[-2] == pytest.approx(0.002) and sigmas[-1] == 0
        errors.append(float((S.edm_heun_sample(denoiser, noise, sigmas=sigmas) - exact).abs().max()))
    # second order: doubling the steps divides the error by ~4 (first order would halve it)
    assert errors[2] < 0.03 and errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3


def test_vp_denoiser_maps_sigma_to_timestep():
    from robustgen.generate.diffusion.unet import alphas_cumprod

    a = alphas_cumprod(ho_scheduler_config())
    seen = {}

    def eps_model(x, t):
        seen["t"], seen["x"] = t, x
        return torch.ones_like(x)

    den = S.VPDenoiser(eps_model, a)
    sigma = float(((1 - a[500]) / a[500]).sqrt())
    assert den.timestep(sigma) == pytest.approx(500, abs=1e-6)
    x = torch.full((2, 1, 2, 2), 2.0)
    out = den(x, sigma)
    assert torch.allclose(seen["x"], x / (1 + sigma**2) ** 0.5) and torch.allclose(out, x - sigma)


@pytest.mark.parametrize("sampler", S.SAMPLERS)
def test_per_sample_seeds_do_not_depend_on_the_batch(sampler):
    unet = _tiny_unet(num_classes=3)
    cfg = ho_scheduler_config()
    labels = torch.tensor([0, 1, 2, 0, 1])

    def run(idx):
        return S.sample_diffusion(unet, cfg, generators=S.sample_generators(7, idx), class_labels=labels[idx],
                                  sampler=sampler, steps=3)

    whole = run([0, 1, 2, 3, 4])
    parts = torch.cat([run([0, 1]), run([2, 3, 4])])
    assert whole.shape == (5, 1, 8, 8) and whole.abs().max() <= 1
    assert torch.allclose(whole, parts, atol=1e-4)
    assert not torch.allclose(whole[0], whole[3])  # same class, other seed
    other = S.sample_diffusion(unet, cfg, generators=S.sample_generators(8, [0]), class_labels=labels[:1],
                               sampler=sampler, steps=3)
    assert not torch.allclose(other[0], whole[0])


def test_range_sampler_is_bitwise_reproducible_and_class_balanced(tiny_fit):
    whole, cond = DDPMRangeSampler(tiny_fit, seed=3).sample(0, 10)
    s = DDPMRangeSampler(tiny_fit, seed=3)
    pieces = [s.sample(a, b) for a, b in ((0, 3), (3, 7), (7, 10))]
    assert whole.dtype == np.uint8 and whole.shape == (10, 8, 8, 1)
    assert np.array_equal(whole, np.concatenate([p[0] for p in pieces]))
    assert cond.tolist() == [i % 10 for i in range(10)]
    assert np.array_equal(DDPMRangeSampler(tiny_fit, seed=3).sample(5, 6)[0], whole[5:6])


def test_save_and_load_fit_round_trip(tiny_fit, tmp_path):
    path = tmp_path / DDPMGenerator.fit_file
    DDPMGenerator.save_fit(tiny_fit, path)
    loaded = DDPMGenerator.load_fit(path, device="cpu", work_dir=None)
    assert (loaded.sampler, loaded.steps, loaded.batch_size, loaded.image_shape) == (
        tiny_fit.sampler, tiny_fit.steps, tiny_fit.batch_size, tiny_fit.image_shape)
    assert np.array_equal(DDPMGenerator.sample(loaded, 6, seed=1)[0], DDPMGenerator.sample(tiny_fit, 6, seed=1)[0])
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(RobustgenError, match="not a readable DDPM fit"):
        DDPMGenerator.load_fit(tmp_path / "bad.safetensors")


def test_pretrained_loader_reads_a_saved_diffusers_folder(tmp_path, digits):
    from diffusers import DDPMScheduler

    unet = _tiny_unet()
    unet.save_pretrained(tmp_path / "model" / "unet")
    DDPMScheduler(**ho_scheduler_config()).save_pretrained(tmp_path / "model" / "scheduler")
    loaded, sched = load_pretrained(str(tmp_path / "model"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in unet.state_dict().items())
    assert sched["beta_end"] == 0.02 and sched["num_train_timesteps"] == 1000
    # top-level layout (older hub repos), no scheduler: Ho et al.'s schedule
    unet.save_pretrained(tmp_path / "flat")
    assert load_pretrained(str(tmp_path / "flat"))[1] == ho_scheduler_config()
    # as a generator: no training, unconditional -> no conditioning classes
    fit = fit_ddpm(*digits, num_classes=10, pretrained=str(tmp_path / "flat"), class_conditional=False,
                   sampling_steps=2, sample_batch_size=4)
    images, cond = DDPMGenerator.sample(fit, 5, seed=0)
    assert images.shape == (5, 8, 8, 1) and cond is None
    with pytest.raises(RobustgenError, match="unconditional"):
        fit_ddpm(*digits, num_classes=10, pretrained=str(tmp_path / "flat"))


def test_pretrained_loader_errors_are_one_line(tmp_path):
    with pytest.raises(RobustgenError, match="no such folder") as e:
        load_pretrained(str(tmp_path / "missing"))
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustgenError, match="cannot load a diffusers UNet") as e:
        load_pretrained(str(tmp_path / "empty"))
    # a hub id that is not in the local cache, offline
    with pytest.raises(RobustgenError, match="offline or missing") as e:
        load_pretrained("robustgen-tests/no-such-model", local_files_only=True)
    assert "\n" not in str(e.value)


def test_generate_store_with_ddpm_resumes_and_labels_by_condition(digits, tmp_path):
    images, labels = digits
    cfg = {k: v for k, v in TINY.items()}
    kw = dict(generator="ddpm", train_images=images, train_labels=labels, num_classes=10, num_samples=10, seed=5,
              fit_config=cfg, shard_size=4, progress=False,
              fit_options={"device": "cpu", "work_dir": tmp_path / "work", "progress": False, "ignored": 1})
    out = generate_store(tmp_path / "s", **kw)
    assert out["refit"] and (tmp_path / "s" / "generator_fit.safetensors").is_file()
    assert (tmp_path / "work" / "ddpm_train_state.pt").is_file()
    first = Store(tmp_path / "s")
    ref = first.gather(np.arange(10))[0].copy()
    # drop the last shard: the resumed run loads the fit and redoes it byte for byte
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:2]
    manifest["num_images"] = 8
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    again = generate_store(tmp_path / "s", **kw)
    assert not again["refit"] and again["written"] == 2
    store = Store(tmp_path / "s")
    assert np.array_equal(store.gather(np.arange(10))[0], ref)
    assert store.conditions_all.tolist() == [i % 10 for i in range(10)]
    # Wang et al.: label = the conditioning class, keep the top fraction per class by f_NR's confidence in it
    torch.manual_seed(0)
    f_nr = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    label_store(tmp_path / "s", f_nr, labeller={"id": "test"}, mode="condition", progress=False)
    sel = select_store(tmp_path / "s", top_fraction=0.5)
    assert sel["of"] == 10 and Store(tmp_path / "s").labels_all.tolist() == [i % 10 for i in range(10)]


def test_unconditional_store_has_placeholder_labels(tmp_path):
    class Uncond:
        fit_file = "fit.json"

        @staticmethod
        def fit(images, labels, *, num_classes):
            return {}

        @staticmethod
        def save_fit(fitted, path):
            path.write_text("{}")

        @staticmethod
        def load_fit(path):
            return {}

        @staticmethod
        def range_sampler(fitted, *, seed):
            class R:
                def sample(self, a, b):
                    return np.full((b - a, 2, 2, 1), a, np.uint8), None

            return R()

    from robustgen import generate

    generate.GENERATORS["_test_uncond"] = Uncond
    try:
        kw = dict(generator="_test_uncond", train_images=np.zeros((4, 2, 2, 1), np.uint8),
                  train_labels=np.zeros(4, np.int64), num_classes=3, num_samples=5, seed=0, shard_size=2,
                  progress=False)
        generate_store(tmp_path / "u", **kw)
        assert generate_store(tmp_path / "u", **kw)["written"] == 0  # resumable without conditions
        store = Store(tmp_path / "u")
        assert store.conditions_all is None and store.labels_all.tolist() == [0] * 5
    finally:
        del generate.GENERATORS["_test_uncond"]


def test_config_and_fit_kwargs():
    cfg = load_config("digits_ddpm")
    assert cfg.generator.name == "ddpm" and cfg.generator.ddpm.class_conditional
    kw = generator_fit_kwargs(cfg.generator)
    assert kw["unet"] == "digits-small" and kw["sampler"] == "dpm-solver++" and "device" not in kw
    assert generator_fit_kwargs(load_config("digits_demo").generator) == {"num_components": 200}
    demo = load_config("digits_demo")
    for key in ("data", "threat", "classifier", "train", "eval", "seed"):  # rows compare with the demo's
        assert getattr(cfg, key) == getattr(demo, key), key
    c10 = load_config("cifar10_linf_wrn-28-10")
    assert c10.generator.ddpm.pretrained == "google/ddpm-cifar10-32" and c10.generator.ddpm.unet == "ho-cifar10"
    for bad, match in (("generator.ddpm.sampler=euler", "sampler"), ("generator.ddpm.unet=big", "UNet preset"),
                       ("generator.ddpm.precision=fp16", "precision"), ("generator.ddpm.ema_decay=1", "ema_decay"),
                       ("generator.ddpm.sampling_steps=0", "sampling_steps"), ("generator.ddpm.x=1", "unknown")):
        with pytest.raises(RobustgenError, match=match):
            load_config("digits_ddpm", [bad])


def test_generate_stage_with_ddpm(tmp_path):
    import torch

    from robustgen.stages import generate, load_splits

    sets = [f"generator.ddpm.{k}={v}" for k, v in TINY.items()] + ["generator.num_samples=6", "device=cpu"]
    cfg = load_config("digits_ddpm", sets)
    generate.run(cfg, load_splits(cfg).train, tmp_path / "store", device=torch.device("cpu"), progress=False)
    store = Store(tmp_path / "store")
    assert len(store) == 6 and store.gather(np.arange(6)).shape == (6, 8, 8, 1)
    assert store.labels.tolist() == list(range(6))
    assert (tmp_path / "store" / "generator-work" / "ddpm_train_state.pt").is_file()


def test_adapter_is_registered():
    assert get_generator("ddpm") is DDPMGenerator
    assert set(DDPMGenerator.runtime_options) == {"device", "work_dir", "progress", "class_names"}
    assert DDPMGenerator.fit_file.endswith(".safetensors") and DDPMFit.__dataclass_fields__["sampler"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_sampling_on_cuda_is_close_to_fp32():
    unet = _tiny_unet(num_classes=3).cuda()
    kw = dict(generators=S.sample_generators(0, range(4)), class_labels=torch.tensor([0, 1, 2, 0]),
              sampler="dpm-solver++", steps=5)
    a = S.sample_diffusion(unet, ho_scheduler_config(), **kw)
    kw["generators"] = S.sample_generators(0, range(4))
    b = S.sample_diffusion(unet, ho_scheduler_config(), bf16=True, **kw)
    assert a.dtype == b.dtype == torch.float32 and (a - b).abs().mean() < 0.05


def test_named_sampler_settings_and_speed_options_travel_with_the_fit(tiny_fit, tmp_path):
    import dataclasses

    assert S.resolve_sampler("wang2023", 7) == ("edm-heun", 20) and S.resolve_sampler("ddim", 7) == ("ddim", 7)
    with pytest.raises(RobustgenError, match="unknown sampler 'heun'"):
        S.resolve_sampler("heun", 20)
    fit = dataclasses.replace(tiny_fit, sampler="edm-heun", steps=3, channels_last=True, setting="wang2023")
    path = tmp_path / DDPMGenerator.fit_file
    DDPMGenerator.save_fit(fit, path)
    loaded = DDPMGenerator.load_fit(path)
    assert (loaded.sampler, loaded.steps, loaded.channels_last, loaded.compile, loaded.setting) == (
        "edm-heun", 3, True, False, "wang2023")
    # channels_last changes the memory layout, not the images (up to a rare rounding of one level)
    plain = DDPMRangeSampler(dataclasses.replace(fit, channels_last=False), seed=2).sample(0, 6)[0].astype(int)
    nhwc = DDPMRangeSampler(loaded, seed=2).sample(0, 6)[0].astype(int)
    assert np.abs(plain - nhwc).max() <= 1 and (plain == nhwc).mean() > 0.99
    # batch size by memory: a CPU gets the default; the choice is made once and kept in the fit
    assert S.auto_batch_size(tiny_fit.unet, class_conditional=True, bf16=False) == 256
    wang = fit_ddpm(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2, num_classes=2,
                    **{**TINY, "train_steps": 1, "sampler": "wang2023", "sample_batch_size": 0})
    assert (wang.sampler, wang.steps, wang.setting, wang.batch_size) == ("edm-heun", 20, "wang2023", 256)
    assert wang.info["batch_size_chosen_by_memory"] == 256


# --------------------------------------------------------------------------- augmentation conditioning (issue 23)
def test_shift_images_moves_pixels_and_index_0_is_the_identity():
    from robustgen.generate.diffusion.train import num_shifts, shift_images

    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(shift_images(x, torch.zeros(2, dtype=torch.long), 1), x)
    # every index is a distinct (dy, dx) in [-1, 1]^2; index 3 = one pixel down, the top row replicated
    down = shift_images(x, torch.tensor([3, 3]), 1)[0, 0]
    assert torch.equal(down[1:], x[0, 0, :3]) and torch.equal(down[0], x[0, 0, 0])
    outs = {tuple(shift_images(x[:1], torch.tensor([i]), 1).flatten().tolist()) for i in range(num_shifts(1))}
    assert len(outs) == 9


def test_augmented_training_is_deterministic_resumable_and_samples_unshifted(digits, tmp_path):
    aug = {**TINY, "augment_shift": 1, "augment_p": 0.5}
    full = fit_ddpm(*digits, num_classes=10, **aug)
    # class x shift conditions in the embedding; sampling asks for the plain classes (shift index 0)
    assert full.unet.config.num_class_embeds == 10 * 9 and full.num_classes == 10
    fit_ddpm(*digits, num_classes=10, **aug, work_dir=tmp_path, stop_after=3)
    resumed = fit_ddpm(*digits, num_classes=10, **aug, work_dir=tmp_path)
    a, b = full.unet.state_dict(), resumed.unet.state_dict()
    assert resumed.info["resumed_from"] == 2 and all(torch.equal(a[k], b[k]) for k in a)
    images, cond = DDPMGenerator.sample(full, 12, seed=0)
    assert images.shape == (12, 8, 8, 1) and cond.tolist() == [i % 10 for i in range(12)]
    plain = fit_ddpm(*digits, num_classes=10, **TINY)
    assert not all(torch.equal(plain.unet.state_dict()[k], a[k]) for k in a if k in plain.unet.state_dict()
                   and plain.unet.state_dict()[k].shape == a[k].shape)
    with pytest.raises(RobustgenError, match="class_conditional"):
        fit_ddpm(*digits, num_classes=10, **{**aug, "class_conditional": False})


def test_augmentation_options_enter_the_stage_key_only_when_set():
    plain = load_config("digits_ddpm")
    assert "augment_shift" not in generator_fit_kwargs(plain.generator)  # fits made before the option keep their key
    assert "augment_p" not in generator_fit_kwargs(load_config("digits_ddpm", ["generator.ddpm.augment_p=0.9"]).generator)
    kw = generator_fit_kwargs(load_config("digits_ddpm", ["generator.ddpm.augment_shift=1"]).generator)
    assert kw["augment_shift"] == 1 and kw["augment_p"] == 0.5
    for bad in ("generator.ddpm.augment_shift=-1", "generator.ddpm.augment_p=2"):
        with pytest.raises(RobustgenError, match="augment"):
            load_config("digits_ddpm", [bad])
    with pytest.raises(RobustgenError, match="class_conditional: true"):
        load_config("digits_ddpm", ["generator.ddpm.augment_shift=1", "generator.ddpm.class_conditional=false"])


# --------------------------------------------------------------------------- EDM objective, guidance (issue 23)
def test_edm_preconditioning_is_the_identity_at_zero_noise_and_the_loss_is_edm_weighted():
    from robustgen.generate.diffusion.edm import EDM_SIGMA_DATA, edm_coefficients, edm_loss

    c_skip, c_out, c_in, _ = edm_coefficients(torch.tensor([1e-6, 0.5, 80.0], dtype=torch.float64))
    assert abs(float(c_skip[0]) - 1) < 1e-9 and float(c_out[0]) < 1e-5  # D(x; 0) = x
    assert abs(float(c_skip[1]) - 0.5) < 1e-12  # sigma = sigma_data: half skip
    # unit-variance network input and training target (Karras et al. App. B.6) for data of std sigma_data
    sigma = c_out.new_tensor([0.5, 80.0])
    s_in = (c_in[1:] ** 2 * (EDM_SIGMA_DATA ** 2 + sigma ** 2)).sqrt()
    assert torch.allclose(s_in, torch.ones(2, dtype=torch.float64))

    class Zero(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            from types import SimpleNamespace
            return SimpleNamespace(sample=torch.zeros_like(x))

    # F = 0 leaves the target: lambda * ||c_skip x - x0||^2 = E[(x0 - c_skip x)^2 / c_out^2]
    torch.manual_seed(0)
    x0, noise = torch.randn(4096, 1, 1, 1) * 0.5, torch.randn(4096, 1, 1, 1)
    loss = edm_loss(Zero(), x0, torch.zeros(4096), noise, None)  # sigma = 1: target variance 1
    assert abs(float(loss) - 1.0) < 0.08


def test_edm_eps_model_inverts_the_vp_timestep_and_denoises_a_perfect_model():
    from robustgen.generate.diffusion.edm import EDMEpsModel, edm_coefficients
    from robustgen.generate.diffusion.unet import alphas_cumprod

    abar = alphas_cumprod(ho_scheduler_config())
    x0 = torch.full((3, 1, 2, 2), 0.3)

    class Oracle(torch.nn.Module):  # F that makes D(x; sigma) = x0 exactly
        def forward(self, x_in, c_noise, class_labels=None):
            from types import SimpleNamespace
            sigma = (c_noise / 250.0).exp().view(-1, 1, 1, 1)
            c_skip, c_out, c_in, _ = edm_coefficients(sigma)
            x = x_in / c_in
            return SimpleNamespace(sample=(x0 - c_skip * x) / c_out)

    model = EDMEpsModel(Oracle(), abar)
    den = S.VPDenoiser(lambda x, t: model(x, t).sample, abar)
    for sigma in (0.05, 1.0, 20.0):
        t = den.timestep(sigma)
        assert abs(float(model.sigma(torch.tensor([t]))[0]) - sigma) < 1e-6 * sigma
        noise = torch.randn(3, 1, 2, 2)
        # the VP solvers' eps of x_vp = (x0 + sigma n) / sqrt(1 + sigma^2) is n
        x_vp = (x0 + sigma * noise) / (1 + sigma ** 2) ** 0.5
        eps = model(x_vp, torch.full((3,), t)).sample
        assert torch.allclose(eps, noise, atol=1e-4)


def test_edm_and_guided_fits_train_deterministically_resume_and_sample(digits, tmp_path):
    edm = {**TINY, "objective": "edm"}
    full = fit_ddpm(*digits, num_classes=10, **edm)
    fit_ddpm(*digits, num_classes=10, **edm, work_dir=tmp_path, stop_after=3)
    resumed = fit_ddpm(*digits, num_classes=10, **edm, work_dir=tmp_path)
    a, b = full.unet.state_dict(), resumed.unet.state_dict()
    assert resumed.info["resumed_from"] == 2 and all(torch.equal(a[k], b[k]) for k in a)
    eps_fit = fit_ddpm(*digits, num_classes=10, **TINY)
    assert not all(torch.equal(a[k], eps_fit.unet.state_dict()[k]) for k in a)  # another objective
    for sampler in ("dpm-solver++", "edm-heun"):
        full.sampler = sampler
        images, _ = DDPMGenerator.sample(full, 8, seed=0)
        assert images.shape == (8, 8, 8, 1) and np.array_equal(images, DDPMGenerator.sample(full, 8, seed=0)[0])

    guided = fit_ddpm(*digits, num_classes=10, **{**TINY, "label_dropout": 0.2, "guidance": 1.0})
    assert guided.unet.config.num_class_embeds == 11 and guided.null_class == 10
    path = tmp_path / "fit.safetensors"
    DDPMGenerator.save_fit(guided, path)
    loaded = DDPMGenerator.load_fit(path)
    assert (loaded.guidance, loaded.null_class, loaded.objective) == (1.0, 10, "eps")
    images, cond = DDPMGenerator.sample(loaded, 6, seed=1)
    assert np.array_equal(images, DDPMGenerator.sample(guided, 6, seed=1)[0])
    # guidance 0 is the plain conditional model of the same weights; w > 0 moves the samples
    guided.guidance = 0.0
    assert not np.array_equal(images, DDPMGenerator.sample(guided, 6, seed=1)[0])
    with pytest.raises(RobustgenError, match="label_dropout"):
        fit_ddpm(*digits, num_classes=10, **{**TINY, "guidance": 1.0})


def test_edm_and_guidance_options_enter_the_stage_key_only_when_set():
    plain = generator_fit_kwargs(load_config("digits_ddpm").generator)
    assert not {"objective", "label_dropout", "guidance"} & set(plain)  # earlier fits keep their key
    kw = generator_fit_kwargs(load_config("digits_ddpm", ["generator.ddpm.objective=edm",
                                                          "generator.ddpm.label_dropout=0.1",
                                                          "generator.ddpm.guidance=0.5"]).generator)
    assert (kw["objective"], kw["label_dropout"], kw["guidance"]) == ("edm", 0.1, 0.5)
    for bad, match in (("generator.ddpm.objective=v", "objective"), ("generator.ddpm.guidance=1", "label_dropout"),
                       ("generator.ddpm.label_dropout=1", "label_dropout")):
        with pytest.raises(RobustgenError, match=match):
            load_config("digits_ddpm", [bad])
