"""Training math and the loop: TRADES formula, schedules, EMA, BN convention, exact mixing, resume."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgen.data import ImageDataset
from robustgen.models import create_model
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.errors import RobustgenError
from robustgen.train.ema import WeightAverage
from robustgen.train.loop import LoopSettings, parameter_groups, train_loop
from robustgen.train.losses import kl_clean_adv, pgd_at_loss, smoothed_targets, trades_loss
from robustgen.train.mixing.batches import TrainingBatches
from robustgen.train.mixing.indices import chunk_rows
from robustgen.train.mixing.sources import ArraySource
from robustgen.train.schedule import ema_decay, scaled_lr, warmup_cosine_lr
from robustgen.train.steps import TrainingAttack, standard_step_loss, trades_step_loss


def test_trades_loss_equals_its_formula_on_a_fixed_case():
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.9, 0.1]])
    p, q = F.softmax(clean, 1), F.softmax(adv, 1)
    ce = -(targets * torch.log(p)).sum(1).mean()
    kl = (p * (torch.log(p) - torch.log(q))).sum(1).mean()
    assert trades_loss(clean, adv, targets, beta=6.0).item() == pytest.approx((ce + 6 * kl).item(), rel=1e-6)
    assert kl_clean_adv(clean, adv).item() == pytest.approx(
        F.kl_div(F.log_softmax(adv, 1), p, reduction="batchmean").item(), rel=1e-6)
    assert pgd_at_loss(adv, targets).item() == pytest.approx(-(targets * F.log_softmax(adv, 1)).sum(1).mean().item())


def test_label_smoothing_only_where_asked():
    labels = torch.tensor([0, 2, 1])
    t = smoothed_targets(labels, num_classes=4, smoothing=torch.tensor([0.0, 0.1, 0.1]))
    assert torch.equal(t[0], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(t[1], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(3))


def test_schedule_values_at_known_steps():
    kw = dict(peak_lr=0.4, warmup_steps=10, total_steps=110)
    assert warmup_cosine_lr(0, **kw) == 0.0
    assert warmup_cosine_lr(5, **kw) == pytest.approx(0.2)
    assert warmup_cosine_lr(10, **kw) == pytest.approx(0.4)
    assert warmup_cosine_lr(60, **kw) == pytest.approx(0.2)
    assert warmup_cosine_lr(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert scaled_lr(1024, lr_per_256=0.1) == pytest.approx(0.4)


def test_ema_ramp_values():
    assert ema_decay(0, decay=0.995) == pytest.approx(0.1)
    assert ema_decay(10, decay=0.995) == pytest.approx(11 / 20)
    assert ema_decay(10_000, decay=0.995) == 0.995
    assert ema_decay(1790, decay=0.995) == pytest.approx(min(0.995, 1791 / 1800))


def test_ema_update_and_bn_statistics_follow_raw_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = WeightAverage(model, decay=0.995)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model(torch.randn(16, 3))  # changes running stats
    ema.update(model, step=0)  # decay 0.1: ema = 0.1 * old + 0.9 * new
    assert torch.allclose(ema.model[0].weight, 0.1 * w0 + 0.9 * (w0 + 1.0), atol=1e-6)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)


def test_weight_decay_skips_batchnorm():
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    decay, no_decay = parameter_groups(model, 5e-4)
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == bn_ids
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 5e-4
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_trades_step_updates_bn_running_stats_only_with_adversarial_pass():
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1).train()
    x = torch.rand(32, 1, 8, 8)
    targets = F.one_hot(torch.randint(0, 10, (32,)), 10).float()
    inputs_seen = []
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stats_before = bn.running_mean.clone()
    hook = bn.register_forward_pre_hook(lambda m, a: inputs_seen.append((m.track_running_stats, a[0].detach())))
    loss = trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=3), beta=6.0)(
        model, model, x, targets, torch.Generator().manual_seed(0))
    hook.remove()
    # 1 clean pass (also the attack target) + 3 attack + 1 adversarial pass: only the last tracks stats
    tracked = [t for t, _ in inputs_seen]
    assert tracked == [False] * (len(tracked) - 1) + [True]
    expected = (1 - bn.momentum) * stats_before + bn.momentum * inputs_seen[-1][1].mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-6)
    assert torch.isfinite(loss) and loss.requires_grad


def _dataset(n=96, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = (rng.random((n, 8, 8, 1)) * 60 + labels[:, None, None, None] * 50).astype(np.uint8)
    return ImageDataset(images=images, labels=labels.astype(np.int64), class_names=("a", "b", "c", "d"), name="toy")


@pytest.mark.parametrize("alpha,batch", [(0.3, 10), (0.5, 7), (1.0, 8), (0.0, 5), (0.25, 64)])
def test_batches_mix_exactly(alpha, batch):
    real = _dataset()
    gen_images = np.full((50, 8, 8, 1), 255, np.uint8)  # generated rows are all-white: countable
    gen = [ArraySource(gen_images, np.zeros(50, np.int64), num_classes=4)]
    s = LoopSettings(batch_size=batch, total_steps=5, warmup_steps=0, peak_lr=0.1,
                     source_weights=(alpha, 1 - alpha) if alpha < 1 else (1.0,),
                     label_smoothing_generated=0.1, label_smoothing_real=0.0, crop_padding=0, flip=False)
    batches = TrainingBatches(real, gen if alpha < 1 else [], s, 4, torch.device("cpu"), DistContext())
    n_real = math.floor(alpha * batch + 0.5)
    for step in range(5):
        (chunk,) = batches(step)
        images, targets = chunk.images, chunk.targets
        white = (images.flatten(1) == 255).all(1)
        assert images.shape[0] == batch and int(white.sum()) == batch - n_real
        smoothed = (targets.max(1).values < 1)
        assert torch.equal(smoothed, white)  # smoothing on generated rows only


def _train(out, total, *, stop_after=None, checkpoint_every=2):
    torch.manual_seed(0)
    real = _dataset()
    gen = [ArraySource.from_dataset(_dataset(40, seed=1))]
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=16, total_steps=total, warmup_steps=2, peak_lr=0.05, source_weights=(0.5, 0.5), ema_decay=0.9,
                     checkpoint_every_steps=checkpoint_every, eval_every_steps=3, log_every_steps=2, crop_padding=1,
                     flip=True, seed=3)
    inner = trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=2), beta=6.0)
    calls = {"n": 0}

    def step_loss(attack_model, model, x, targets, generator):
        if stop_after is not None and calls["n"] == stop_after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return inner(attack_model, model, x, targets, generator)

    def evaluate(variants, step):
        return {k: {"score": float(sum(p.detach().sum() for p in m.parameters()))} for k, m in variants.items()}

    train_loop(model, settings=s, real=real, generated=gen, step_loss=step_loss, evaluate=evaluate, out_dir=out,
               device=torch.device("cpu"), spec={"arch": "small-cnn", "num_classes": 4, "in_channels": 1,
                                                  "activation": "silu", "image_size": 8},
               extra_meta={}, fingerprint="fp", progress=False)
    return model


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    from robustgen.checkpoint import read_model_file

    full = _train(tmp_path / "a", 7)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "b", 7, stop_after=5)
    resumed = _train(tmp_path / "b", 7)
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), k
    for name in ("last.safetensors", "best.safetensors"):
        a, _ = read_model_file(tmp_path / "a" / name)
        b, _ = read_model_file(tmp_path / "b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_state_from_another_config_is_refused(tmp_path):
    _train(tmp_path / "a", 2)
    with pytest.raises(RobustgenError, match="different config"):
        torch.manual_seed(0)
        model = create_model("small-cnn", num_classes=4, in_channels=1)
        s = LoopSettings(batch_size=16, total_steps=3, warmup_steps=0, peak_lr=0.05)
        train_loop(model, settings=s, real=_dataset(), generated=[], step_loss=standard_step_loss(), evaluate=None,
                   out_dir=tmp_path / "a", device=torch.device("cpu"), spec={"num_classes": 4}, extra_meta={},
                   fingerprint="other", progress=False)


def test_standard_training_learns_a_separable_toy_problem(tmp_path):
    torch.manual_seed(0)
    real = _dataset(200)
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=32, total_steps=40, warmup_steps=4, peak_lr=0.1, crop_padding=0, flip=False,
                     log_every_steps=10)
    train_loop(model, settings=s, real=real, generated=[], step_loss=standard_step_loss(), evaluate=None,
               out_dir=tmp_path, device=torch.device("cpu"), spec={"num_classes": 4}, extra_meta={},
               fingerprint="x", progress=False)
    model.eval()
    x = torch.from_numpy(real.images).permute(0, 3, 1, 2).float() / 255
    acc = (model(x).argmax(1).numpy() == real.labels).mean()
    assert acc > 0.9


@pytest.mark.parametrize("loss_name", ["trades", "pgd_at"])
def test_bf16_channels_last_and_pgd_at_steps_train(tmp_path, loss_name):
    from robustgen.train.steps import pgd_at_step_loss

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1).to(memory_format=torch.channels_last)
    attack = TrainingAttack(norm="l2", eps=0.5, steps=2, step_rule="sign")
    step_loss = (trades_step_loss(attack, beta=6.0, bf16=True) if loss_name == "trades"
                 else pgd_at_step_loss(attack, bf16=True))
    s = LoopSettings(batch_size=16, total_steps=4, warmup_steps=1, peak_lr=0.05, channels_last=True,
                     log_every_steps=2)
    result = train_loop(model, settings=s, real=_dataset(), generated=[], step_loss=step_loss, evaluate=None,
                        out_dir=tmp_path, device=torch.device("cpu"), spec={"num_classes": 4}, extra_meta={},
                        fingerprint="x", progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_torch_compile_matches_eager_loss(tmp_path):
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1).train()
    compiled = torch.compile(model)
    x = torch.rand(16, 1, 8, 8)
    targets = F.one_hot(torch.randint(0, 4, (16,)), 4).float()
    step = trades_step_loss(TrainingAttack(norm="linf", eps=0.1, steps=2), beta=6.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = step(model, model, x, targets, torch.Generator().manual_seed(0))
    model.load_state_dict(state)
    fused = step(compiled, compiled, x, targets, torch.Generator().manual_seed(0))
    assert fused.item() == pytest.approx(eager.item(), rel=1e-4)


def test_model_initialisation_depends_on_the_seed_alone():
    from robustgen.stages import build_model

    data = _dataset()
    a, _ = build_model("small-cnn", "silu", data, seed=5)
    torch.rand(1000)  # a stage that ran before must not change the next model's weights
    b, _ = build_model("small-cnn", "silu", data, seed=5)
    c, _ = build_model("small-cnn", "silu", data, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("n_real,n_gen,chunks", [(77, 179, 4), (10, 0, 3), (0, 8, 8), (5, 7, 2)])
def test_chunks_keep_the_mix_and_cover_the_batch(n_real, n_gen, chunks):
    parts = chunk_rows((n_real, n_gen), chunks)
    assert len(parts) == chunks
    assert sorted(np.concatenate([r for r, _ in parts]).tolist()) == list(range(n_real))
    assert sorted(np.concatenate([g for _, g in parts]).tolist()) == list(range(n_gen))
    assert max(len(r) for r, _ in parts) - min(len(r) for r, _ in parts) <= 1
    assert max(len(g) for _, g in parts) - min(len(g) for _, g in parts) <= 1


def test_micro_batches_train_and_weight_the_global_mean(tmp_path):
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=16, total_steps=3, warmup_steps=1, peak_lr=0.05, micro_batches=4, log_every_steps=1,
                     source_weights=(0.5, 0.5))
    batches = TrainingBatches(_dataset(), [ArraySource.from_dataset(_dataset(40, seed=1))], s, 4,
                       torch.device("cpu"), DistContext())
    chunks = batches(0)
    assert [len(c.images) for c in chunks] == [4, 4, 4, 4]
    assert sum(c.weight for c in chunks) == pytest.approx(1.0)
    batches.close()
    result = train_loop(model, settings=s, real=_dataset(), generated=[ArraySource.from_dataset(_dataset(40, seed=1))],
                        step_loss=standard_step_loss(), evaluate=None, out_dir=tmp_path,
                        device=torch.device("cpu"), spec={"num_classes": 4}, extra_meta={}, fingerprint="m",
                        progress=False)
    assert len([h for h in result.history if "loss" in h]) == 3


# --------------------------------------------------------------------------- training from stores
def _store_of(tmp_path, ds, shard_size=16):
    from robustgen.data.store import Store
    from robustgen.data.store.writer import StoreWriter

    path = tmp_path / "store"
    with StoreWriter.create(path, image_shape=ds.image_shape, num_classes=4, shard_size=shard_size) as w:
        for k, start in enumerate(range(0, len(ds), shard_size)):
            stop = min(len(ds), start + shard_size)
            w.write_shard(k, images=ds.images[start:stop], labels=ds.labels[start:stop])
    return Store(path, num_classes=4)


def _short_training(out, generated, **settings):
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    s = LoopSettings(batch_size=12, total_steps=4, warmup_steps=1, peak_lr=0.05, log_every_steps=1, crop_padding=1,
                     seed=2, **settings)
    result = train_loop(model, settings=s, real=_dataset(), generated=generated, step_loss=standard_step_loss(),
                        evaluate=None, out_dir=out, device=torch.device("cpu"), spec={"num_classes": 4},
                        extra_meta={}, fingerprint="s", progress=False)
    return model, [h["loss"] for h in result.history if "loss" in h]


@pytest.mark.parametrize("sampling", ["with_replacement", "permutation"])
def test_training_from_a_store_equals_training_from_memory(tmp_path, sampling):
    gen = _dataset(50, seed=4)
    a, loss_a = _short_training(tmp_path / "a", [ArraySource.from_dataset(gen)], source_weights=(0.25, 0.75),
                                generated_sampling=sampling)
    b, loss_b = _short_training(tmp_path / "b", [_store_of(tmp_path, gen)], source_weights=(0.25, 0.75), generated_sampling=sampling)
    assert loss_a == loss_b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_several_weighted_sources_and_class_filters_mix_exactly(tmp_path):
    from robustgen.train.mixing.sources import ClassSubset

    # real rows are < 250, store A rows are 251, store B rows are 252 and B keeps classes 1 and 3 only
    real = _dataset()
    real = ImageDataset(images=np.minimum(real.images, 250), labels=real.labels, class_names=real.class_names,
                        name="real")
    a = ArraySource(np.full((30, 8, 8, 1), 251, np.uint8), np.arange(30) % 4, num_classes=4, name="A")
    b_labels = np.arange(40) % 4
    b = ClassSubset(ArraySource(np.full((40, 8, 8, 1), 252, np.uint8), b_labels, num_classes=4, name="B"), [1, 3])
    assert len(b) == 20 and set(b.labels.tolist()) == {1, 3}
    s = LoopSettings(batch_size=20, total_steps=6, warmup_steps=0, peak_lr=0.1, source_weights=(0.3, 0.6, 0.1),
                     crop_padding=0, flip=False, micro_batches=3)
    batches = TrainingBatches(real, [a, b], s, 4, torch.device("cpu"), DistContext())
    try:
        for step in range(6):
            chunks = batches(step)
            images = torch.cat([c.images for c in chunks])
            targets = torch.cat([c.targets for c in chunks])
            first = images.flatten(1)[:, 0]
            assert [int((first < 251).sum()), int((first == 251).sum()), int((first == 252).sum())] == [6, 12, 2]
            assert set(targets[first == 252].argmax(1).tolist()) <= {1, 3}
            assert all(abs(len(c.images) - 20 / 3) < 1 for c in chunks)
    finally:
        batches.close()


def test_batches_must_be_read_in_step_order():
    s = LoopSettings(batch_size=8, total_steps=4, warmup_steps=0, peak_lr=0.1, source_weights=(0.5, 0.5))
    batches = TrainingBatches(_dataset(), [ArraySource.from_dataset(_dataset(40, seed=1))], s, 4, torch.device("cpu"),
                       DistContext(), start_step=1)
    try:
        with pytest.raises(RuntimeError, match="step order"):
            batches(0)
        assert len(batches(1)) == 1
    finally:
        batches.close()
