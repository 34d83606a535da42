"""BatchNorm per group of G images (the authors' 32 images per core): equal to plain BatchNorm at
G = batch, equal to micro-batch emulation on TRADES losses and gradients, groups keep the mix."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgen.data import ImageDataset
from robustgen.models import create_model
from robustgen.models.ghost_batchnorm import GroupBatchNorm2d, use_bn_groups
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.errors import RobustgenError
from robustgen.train.loop import LoopSettings
from robustgen.train.mixing.batches import TrainingBatches
from robustgen.train.mixing.sources import ArraySource
from robustgen.train.steps import TrainingAttack, trades_step_loss


def _model(seed=0):
    torch.manual_seed(seed)
    model = create_model("small-cnn", num_classes=5, in_channels=3).train()
    for m in model.modules():  # non-trivial BN parameters and running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    return x, F.one_hot(torch.randint(0, 5, (n,), generator=g), 5).float()


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def test_one_group_of_the_whole_batch_is_plain_batchnorm():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(6, momentum=0.3)
    plain.weight.data.uniform_(0.5, 1.5)
    grouped = use_bn_groups(copy.deepcopy(plain), 12)
    assert isinstance(grouped, GroupBatchNorm2d) and set(grouped.state_dict()) == set(plain.state_dict())
    x = torch.randn(12, 6, 5, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out, out2 = plain(x), grouped(x2)
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-5)
    (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
    (out2 * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grouped.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grouped.running_mean, plain.running_mean)
    torch.testing.assert_close(grouped.running_var, plain.running_var)
    grouped.eval(), plain.eval()
    torch.testing.assert_close(grouped(x), plain(x))  # eval: running statistics, no groups


def test_groups_equal_micro_batch_emulation_on_trades_losses_and_gradients():
    # A deterministic attack (zero start) so both sides see the same examples.
    attack = TrainingAttack(norm="linf", eps=8 / 255, steps=3, init="zero")
    step = trades_step_loss(attack, beta=6.0)
    x, targets = _batch(16)
    grouped = use_bn_groups(_model(), 4)
    loss = step(grouped, grouped, x, targets, torch.Generator().manual_seed(0))
    loss.backward()
    emulated = _model()
    losses = []
    for xc, tc in zip(x.chunk(4), targets.chunk(4)):  # micro_batches = 4: BN statistics per chunk of 4
        chunk_loss = step(emulated, emulated, xc, tc, torch.Generator().manual_seed(0))
        (chunk_loss / 4).backward()
        losses.append(chunk_loss.detach())
    torch.testing.assert_close(loss.detach(), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(grouped), _grads(emulated)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and differs from normalising the whole batch at once
    whole = _model()
    step(whole, whole, x, targets, torch.Generator().manual_seed(0)).backward()
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_grads(whole), _grads(grouped)))


def test_every_group_keeps_the_batch_mix_and_bad_sizes_are_refused():
    rng = np.random.default_rng(0)
    real = ImageDataset(images=rng.integers(0, 200, (64, 8, 8, 1), dtype=np.uint8), labels=np.arange(64) % 4,
                        class_names=("a", "b", "c", "d"), name="toy")
    gen = [ArraySource(np.full((50, 8, 8, 1), 255, np.uint8), np.zeros(50, np.int64), num_classes=4)]
    s = LoopSettings(batch_size=32, total_steps=2, warmup_steps=0, peak_lr=0.1, source_weights=(0.3, 0.7), crop_padding=0,
                     flip=False, bn_group_size=8)
    batches = TrainingBatches(real, gen, s, 4, torch.device("cpu"), DistContext())
    (chunk,) = batches(0)
    white = (chunk.images.flatten(1) == 255).all(1).view(4, 8).sum(1)  # generated rows per group of 8
    assert int(white.sum()) == 32 - round(0.3 * 32) and int(white.max() - white.min()) <= 1
    assert torch.equal((chunk.targets.max(1).values < 1).view(4, 8).sum(1), white)  # targets follow their image
    batches.close()
    with pytest.raises(RobustgenError, match="bn_group_size 8 must divide"):
        TrainingBatches(real, gen, LoopSettings(batch_size=36, total_steps=1, warmup_steps=0, peak_lr=0.1, source_weights=(0.3, 0.7),
                                                bn_group_size=8), 4, torch.device("cpu"), DistContext())
    with pytest.raises(RobustgenError, match="multiple of 4"):
        use_bn_groups(_model(), 4)(torch.rand(6, 3, 8, 8))
