"""Evaluation users can trust: every stage stays in the threat model, the cascade takes the
per-point worst case, MultiTargeted finds what exists, pyautoattack is reproduced, resume is exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from robustgen.attacks.multitargeted import multitargeted_attack, target_order
from robustgen.attacks.pgd import frozen_parameters, perturbation_norm
from robustgen.evaluate import AttackStage, evaluate_robustness, get_attack, list_attacks, run_cascade
from robustgen.attacks.autoattack import apgd, run_reference_autoattack
from robustgen.attacks.cascade import masking_warnings
from robustgen.runtime.errors import RobustgenError


def _cnn(classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, classes)).eval()


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, n).astype(np.int64)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("attack", ["pgd40", "apgd-ce", "apgd-t", "autoattack", "aa+mt", "aa+mt-top10", "mt", "worst-of-aa-and-aa+mt"])
def test_every_stage_stays_in_the_ball_and_box(attack, norm, eps):
    model = _cnn()
    images, labels = _data(12)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    for stage in get_attack(attack, norm=norm, eps=eps):
        with frozen_parameters(model):
            adv = stage.run(model, x, y, 0)
        assert adv.shape == x.shape
        assert (perturbation_norm(adv, x, norm=norm) <= eps * (1 + 1e-5) + 1e-6).all(), stage.name
        assert adv.min() >= 0 and adv.max() <= 1, stage.name


def test_registry_lists_the_attack_suite():
    assert {"pgd40", "autoattack", "aa+mt", "apgd-ce", "apgd-t", "mt"} <= set(list_attacks())
    assert [s.name for s in get_attack("aa+mt", norm="linf", eps=0.1)] == ["apgd-ce", "apgd-dlr", "multitargeted"]
    assert [s.name for s in get_attack("autoattack", norm="linf", eps=0.1)] == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_multitargeted_breaks_a_linear_model_exactly_when_some_target_allows():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(300, 3, 2, 2) * 0.5 + 0.25
    y = model(x).argmax(1)
    eps = 0.03
    w = lin.weight.detach()
    z = model(x).detach()
    # best achievable z_t - z_y for each target: (z_t - z_y) + eps * ||w_t - w_y||_1 (no box clipping here)
    gaps = z - z.gather(1, y[:, None]) + eps * (w[None] - w[y][:, None]).abs().sum(-1)
    gaps.scatter_(1, y[:, None], float("-inf"))
    best = gaps.max(1).values
    clear = best.abs() > 1e-3
    with frozen_parameters(model):
        adv, success = multitargeted_attack(model, x, y, norm="linf", eps=eps, restarts=4, steps=60,
                                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(success[clear], (best > 0)[clear])
    assert (model(adv).argmax(1) != y)[success].all()
    assert 0.2 < float((best > 0).float().mean()) < 0.9  # the case is not trivial


def test_multitargeted_published_loop_runs_every_target_in_every_restart():
    from robustgen.attacks.multitargeted import target_ranks

    assert target_ranks(2, 3, 9) == [0, 1, 2, 0, 1, 2]  # restarts x targets (the original TF1 loop)
    assert target_ranks(4, None, 3) == [0, 1, 2, 0]  # one target per restart, cycling
    assert target_ranks(1, 20, 3) == [0, 1, 2]  # no more targets than classes - 1
    # with every target in the loop, R restarts x (K-1) targets is the same sequence of runs as
    # R (K-1) restarts of one target each: both forms agree bit for bit
    model = _cnn(classes=4, seed=3)
    images, labels = _data(16, seed=5)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    with frozen_parameters(model):
        a = multitargeted_attack(model, x, y, norm="linf", eps=2 / 255, restarts=2, targets=3, steps=5,
                                 generator=torch.Generator().manual_seed(0))
        b = multitargeted_attack(model, x, y, norm="linf", eps=2 / 255, restarts=6, targets=None, steps=5,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
def test_multitargeted_top_k_attacks_only_the_k_largest_margin_targets(monkeypatch):
    """aa+mt-top10 (paper App. B, ImageNet): MultiTargeted's restarts cycle over the 10 classes with
    the largest clean margin z_t - z_y only, whatever the number of classes and restarts."""
    import robustgen.attacks.multitargeted as mt

    model = _cnn(classes=30)
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean-correct points, which a tiny eps cannot break
    used = []
    real_margin = mt.targeted_margin
    monkeypatch.setattr(mt, "targeted_margin", lambda z, ys, ts: (used.append(ts.clone()), real_margin(z, ys, ts))[1])
    with frozen_parameters(model):
        allowed = target_order(model(x), y)[:, :10]
        mt.multitargeted_attack(model, x, y, norm="linf", eps=1e-4, restarts=25, steps=2, num_targets=10,
                                generator=torch.Generator().manual_seed(0))
    seen = torch.zeros(6, 30, dtype=torch.bool)
    for ts in used:
        seen[torch.arange(len(ts)), ts] = True  # tiny eps: nothing breaks, every restart runs on all 6 points
    assert seen.sum(1).tolist() == [10] * 6 and all(seen[i, allowed[i]].all() for i in range(6))
    assert [s.name for s in get_attack("aa+mt-top10", norm="linf", eps=4 / 255)] == \
        ["apgd-ce", "apgd-dlr", "multitargeted-top10"]


def test_target_order_sorts_by_clean_margin():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert target_order(logits, torch.tensor([1])).tolist() == [[3, 2, 0]]


def _fake_stage(name, fooled_mask, white_box=True):
    """A stage that 'breaks' the points whose index is in fooled_mask by returning a point the test
    model misclassifies: the model below predicts class 0 iff pixel (0,0,0) < 0.5."""

    def run(model, x, y, seed):
        adv = x.clone()
        idx = x[:, 1, 0, 0].mul(255).round().long()  # index encoded in channel 1
        hit = torch.tensor([bool(fooled_mask[i]) for i in idx.tolist()])
        adv[hit, 0, 0, 0] = torch.where(y[hit] == 0, 0.6, 0.4)  # crosses 0.5: wrong class
        return adv

    return AttackStage(name, run, white_box=white_box)


class _Threshold(nn.Module):
    def forward(self, x):
        p = x[:, 0, 0, 0]
        return torch.stack([0.5 - p, p - 0.5], 1)


def _threshold_data(n=20):
    images = np.zeros((n, 2, 2, 3), np.uint8)
    labels = np.arange(n) % 2
    images[:, 0, 0, 0] = np.where(labels == 1, 140, 115)  # distance 12-13/255 from the threshold
    images[:, 0, 0, 1] = np.arange(n)
    return images, labels.astype(np.int64)


def test_cascade_is_the_per_point_worst_case_and_attacks_only_robust_points():
    images, labels = _threshold_data()
    a = np.zeros(20, bool); a[[1, 2, 3]] = True
    b = np.zeros(20, bool); b[[3, 4, 5]] = True
    sq = np.zeros(20, bool); sq[[6]] = True
    stages = [_fake_stage("a", a), _fake_stage("b", b), _fake_stage("square", sq, white_box=False)]
    result = run_cascade(_Threshold(), images, labels, stages, norm="linf", eps=0.2, batch_size=4, device="cpu")
    assert result["clean_accuracy"] == 1.0
    assert [s["robust_accuracy"] for s in result["stages"]] == [17 / 20, 15 / 20, 14 / 20]
    assert [s["attacked"] for s in result["stages"]] == [20, 17, 15]
    assert result["robust_accuracy"] == 14 / 20
    assert masking_warnings(result["stages"]) and "square broke 1 points" in masking_warnings(result["stages"])[0]


def test_cascade_refuses_points_outside_the_threat_model():
    images, labels = _threshold_data()
    far = AttackStage("cheat", lambda m, x, y, s: (x + 0.3).clamp(0, 1))
    with pytest.raises(RobustgenError, match="outside the linf eps-ball"):
        run_cascade(_Threshold(), images, labels, [far], norm="linf", eps=0.1, batch_size=8, device="cpu")


def test_killed_and_resumed_evaluation_equals_uninterrupted(tmp_path):
    model = _cnn()
    images, labels = _data(40)
    full = evaluate_robustness(model, images, labels, attack="aa+mt", norm="linf", eps=8 / 255, batch_size=2)
    assert full["stages"][0]["attacked"] >= 6  # enough batches to die in the middle of the cascade
    calls = {"n": 0}
    stages = get_attack("aa+mt", norm="linf", eps=8 / 255)

    def dying(stage):
        def run(model, x, y, seed):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
            return stage.run(model, x, y, seed)
        return AttackStage(stage.name, run, stage.white_box)

    state = tmp_path / "eval.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        run_cascade(model, images, labels, [dying(s) for s in stages], norm="linf", eps=8 / 255, batch_size=2,
                    device="cpu", state_path=state, state_key="k")
    assert state.exists()
    resumed = run_cascade(model, images, labels, stages, norm="linf", eps=8 / 255, batch_size=2, device="cpu",
                          state_path=state, state_key="k")
    assert resumed["robust_accuracy"] == full["robust_accuracy"]
    assert [s["robust_accuracy"] for s in resumed["stages"]] == [s["robust_accuracy"] for s in full["stages"]]
    with pytest.raises(RobustgenError, match="another model"):
        run_cascade(model, images, labels, stages, norm="linf", eps=8 / 255, batch_size=2, device="cpu",
                    state_path=state, state_key="other")


def test_apgd_stages_reproduce_pyautoattack_and_keep_the_global_rng():
    model = _cnn(seed=1)
    images, labels = _data(30, seed=2)
    ours = evaluate_robustness(model, images, labels, attack="aa+mt", norm="linf", eps=8 / 255, batch_size=10, seed=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    reference = run_reference_autoattack(model, x, y, norm="linf", eps=8 / 255, seed=3,
                                         attacks=["apgd-ce", "apgd-dlr"], batch_size=10)
    assert ours["stages"][1]["robust_accuracy"] == pytest.approx(reference)
    assert ours["robust_accuracy"] <= ours["stages"][0]["robust_accuracy"]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with frozen_parameters(model):
        apgd(model, x[:4], y[:4], norm="linf", eps=8 / 255, seed=0, loss="ce", restarts=1, steps=5)
    assert torch.equal(torch.rand(3), expected)


def test_worst_of_aa_and_aa_mt_measures_each_and_their_per_point_worst_case():
    names = [s.name for s in get_attack("worst-of-aa-and-aa+mt", norm="linf", eps=0.1)]
    assert names == ["autoattack/apgd-ce", "autoattack/apgd-t", "autoattack/fab-t", "autoattack/square",
                     "aa+mt/apgd-ce", "aa+mt/apgd-dlr", "aa+mt/multitargeted"]
    model = _cnn(seed=2)
    images, labels = _data(30, seed=4)
    kwargs = dict(norm="linf", eps=4 / 255, batch_size=10, seed=1)
    worst = evaluate_robustness(model, images, labels, attack="worst-of-aa-and-aa+mt", **kwargs)
    aa = evaluate_robustness(model, images, labels, attack="autoattack", **kwargs)
    aa_mt = evaluate_robustness(model, images, labels, attack="aa+mt", **kwargs)
    # each cascade sees the same points and seeds as when run alone: both numbers are in the JSON
    assert worst["robust_accuracy_after"] == {"autoattack": aa["robust_accuracy"], "aa+mt": aa_mt["robust_accuracy"]}
    assert [s["robust_accuracy"] for s in worst["stages"][:4]] == [s["robust_accuracy"] for s in aa["stages"]]
    assert [s["robust_accuracy"] for s in worst["stages"][4:]] == [s["robust_accuracy"] for s in aa_mt["stages"]]
    assert worst["stages"][4]["attacked"] == round(worst["clean_accuracy"] * 30)  # every clean-correct point
    # the final number is the per-point worst case: robust only where both cascades fail
    both = [a == "1" and b == "1" for a, b in zip(aa["robust_points"], aa_mt["robust_points"])]
    assert worst["robust_points"] == "".join("1" if r else "0" for r in both)
    assert worst["robust_accuracy"] == sum(both) / 30 <= min(aa["robust_accuracy"], aa_mt["robust_accuracy"])
    assert len(worst["stages"]) == 7 and all("time_s" in s for s in worst["stages"])
