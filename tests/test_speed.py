"""Speed options chosen by measurement (train/speed.py) and the one-pass TRADES step's faithfulness."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from robustgen.models import create_model
from robustgen.train.speed import StepOptions, candidate_options, choose_step_options, measure_candidates
from robustgen.train.steps import TrainingAttack, trades_step_loss

CPU = torch.device("cpu")


class FakeClock:
    """A clock that only moves when a fake step runs: each option costs a fixed time."""

    def __init__(self, cost):
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self):
        return self.now

    def run(self, option):
        self.calls.append(option)
        self.now += self.cost(option)


def _choose(tmp_path, cost, *, precision="bf16", channels_last=False, compile=False, fingerprint="f", out="run"):
    clock = FakeClock(cost)
    lines = []
    measure = lambda run, candidates, sync: measure_candidates(clock.run, candidates, clock=clock)
    model = create_model("small-cnn", num_classes=4, in_channels=1)
    chosen = choose_step_options(model, lambda bf16: None, precision=precision, channels_last=channels_last, compile=compile,
                                 batch_shape=(8, 1, 8, 8), num_classes=4, device=CPU, what="small-cnn trades-2",
                                 out_dir=tmp_path / out, fingerprint=fingerprint, log=lines.append, measure=measure)
    return chosen, clock, lines


def test_bf16_on_cpu_is_dropped_with_one_warning_when_slower(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "cache"))
    slow_bf16 = lambda o: 20.0 if o.bf16 else 1.0  # the 20x trap, forced
    chosen, clock, lines = _choose(tmp_path, slow_bf16)
    assert chosen == StepOptions(bf16=False, channels_last=False)
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "bf16 is slower than fp32" in warning[0] and "fp32" in warning[0]
    # the trap cost two steps (a warm-up and one timed round); fp32 ran a warm-up and 3 rounds
    assert sum(o.bf16 for o in clock.calls) == 2 and sum(not o.bf16 for o in clock.calls) == 4
    assert "measured" in lines[0]
    record = json.loads((tmp_path / "run" / "step_options.json").read_text())
    assert record["options"] == {"bf16": False, "channels_last": False, "compile": False} and record["fingerprint"] == "f"


def test_bf16_is_kept_where_faster_and_the_choice_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "cache"))
    chosen, clock, _ = _choose(tmp_path, lambda o: 0.5 if o.bf16 else 1.0)
    assert chosen == StepOptions(bf16=True) and "warning" not in capsys.readouterr().err
    # another run folder with the same machine, model and batch: the cache answers, nothing runs
    chosen2, clock2, lines2 = _choose(tmp_path, lambda o: 0.5 if o.bf16 else 1.0, out="other")
    assert chosen2 == chosen and clock2.calls == [] and lines2 == []


def test_compile_on_cpu_is_dropped_when_slower(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "cache"))
    chosen, _, _ = _choose(tmp_path, lambda o: 1.5 if o.compile else 1.0, precision="fp32", compile=True)
    assert chosen == StepOptions(compile=False)
    assert "train.compile=true is slower than eager" in capsys.readouterr().err
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "another-machine"))
    chosen, _, _ = _choose(tmp_path, lambda o: 0.5 if o.compile else 1.0, precision="fp32", compile=True, out="b")
    assert chosen == StepOptions(compile=True)


def test_a_resumed_run_reuses_its_recorded_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "cache"))
    first, _, _ = _choose(tmp_path, lambda o: 0.5 if o.bf16 else 1.0)
    (tmp_path / "cache" / "step_options.json").unlink()  # the machine cache is gone; the run folder decides
    again, clock, _ = _choose(tmp_path, lambda o: 2.0 if o.bf16 else 1.0)
    assert again == first and clock.calls == []
    other, clock, _ = _choose(tmp_path, lambda o: 2.0 if o.bf16 else 1.0, fingerprint="g")  # another config
    assert other == StepOptions(bf16=False) and clock.calls


def test_auto_layout_takes_the_faster_and_fixed_settings_are_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "cache"))
    chosen, _, _ = _choose(tmp_path, lambda o: 0.9 if o.channels_last else 1.0, precision="fp32", channels_last=None)
    assert chosen == StepOptions(bf16=False, channels_last=True)
    chosen, clock, _ = _choose(tmp_path, lambda o: 1.0, precision="fp32", channels_last=True, out="fixed")
    assert chosen == StepOptions(channels_last=True) and clock.calls == []
    assert candidate_options("bf16", False, torch.device("cuda")) == [StepOptions(bf16=True)]  # GPUs: as asked
    assert len(candidate_options("bf16", None, CPU)) == 4


def test_real_measurement_runs_the_actual_step_on_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTGEN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=4, in_channels=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = TrainingAttack(norm="linf", eps=0.1, steps=1)
    chosen = choose_step_options(model, lambda bf16: trades_step_loss(attack, beta=6.0, bf16=bf16), precision="fp32",
                                 channels_last=None, batch_shape=(8, 1, 8, 8), num_classes=4, device=CPU,
                                 what="small-cnn trades-1", out_dir=tmp_path / "run", log=lambda line: None)
    assert chosen in candidate_options("fp32", None, CPU)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the real model is untouched
    assert all(p.grad is None for p in model.parameters())
    cache = json.loads((tmp_path / "cache" / "step_options.json").read_text())
    (entry,) = cache.values()
    assert len(entry["median_s"]) == 2 and all(t > 0 for t in entry["median_s"].values())


@pytest.mark.parametrize("arch,image,channels", [("small-cnn", 8, 1), ("wrn-10-1", 16, 3)])
def test_one_pass_trades_step_matches_the_two_pass_step(arch, image, channels):
    """The shared clean pass against the authors' two passes: loss, weights and BN statistics after
    one SGD step, fp32, same batch, same attack start.
    Tolerances: loss rel 1e-5, weights and running statistics abs 1e-6 (float32 reassociation)."""
    torch.manual_seed(0)
    base = create_model(arch, num_classes=10, in_channels=channels).train()
    with torch.no_grad():  # non-zero logits layer, so the step moves every weight
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.rand(16, channels, image, image)
    targets = F.one_hot(torch.randint(0, 10, (16,)), 10).float()
    attack = TrainingAttack(norm="linf", eps=8 / 255, steps=3)
    results = []
    for step in (trades_step_loss(attack, beta=6.0), trades_step_loss(attack, beta=6.0, share_clean_pass=False)):
        model = create_model(arch, num_classes=10, in_channels=channels)
        model.load_state_dict(base.state_dict())
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        loss = step(model, model, x, targets, torch.Generator().manual_seed(1))
        loss.backward()
        opt.step()
        results.append((loss.item(), model.state_dict()))
    (loss_a, state_a), (loss_b, state_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in state_a:
        assert torch.allclose(state_a[k].float(), state_b[k].float(), atol=1e-6, rtol=0), k
    moved = [k for k in state_a if state_a[k].is_floating_point() and not torch.equal(state_a[k], base.state_dict()[k])]
    assert len(moved) > len(state_a) // 2  # the step moved the weights and statistics being compared


class CountFlops(TorchDispatchMode):
    """torch's per-operator FLOP formulas without FlopCounterMode's module hooks (which do not
    support the attack's autograd.grad)."""

    flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **(kwargs or {}), out_val=out)
        return out


@pytest.mark.parametrize("loss_name", ["trades", "pgd"])
def test_the_cost_estimate_counts_the_step_the_trainer_runs(loss_name):
    """cost.py's forward-equivalents per image of a training step against the FLOPs the step
    actually runs (torch's flop counter, forward and backward, attack included). The first
    convolution's input gradient is not needed in the final backward, so the measured count is
    a little below the estimate; 3% covers it, and a second clean pass (+1 of 26) would not."""
    from robustgen.cost import step_forward_equivalents
    from robustgen.train.steps import pgd_at_step_loss

    torch.manual_seed(0)
    model = create_model("wrn-10-1", num_classes=10, in_channels=3).train()
    x = torch.rand(8, 3, 16, 16)
    targets = F.one_hot(torch.randint(0, 10, (8,)), 10).float()
    attack = TrainingAttack(norm="linf", eps=8 / 255, steps=10)
    step = trades_step_loss(attack, beta=6.0) if loss_name == "trades" else pgd_at_step_loss(attack)
    with CountFlops() as forward, torch.no_grad():
        model(x)
    with CountFlops() as counted:
        step(model, model, x, targets, torch.Generator().manual_seed(1)).backward()
    measured = counted.flops / forward.flops
    expected = step_forward_equivalents(loss_name, 10)
    assert expected * 0.97 <= measured <= expected, (measured, expected)
