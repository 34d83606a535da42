"""The projected-gradient core: iterates stay in the eps-ball and [0, 1]; attacks find what they should."""

import pytest
import torch
import torch.nn as nn

from robustgen.attacks.pgd import (batch_stats_without_update, frozen_parameters, margin, misclassified,
                                   perturbation_norm, piecewise_constant, project, projected_gradient_attack,
                                   random_start, soft_cross_entropy)
from robustgen.evaluate import evaluate_robustness
from robustgen.attacks.suites import pgd40_stage


def _model(seed=0, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, classes))


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5), ("l2", 128 / 255)])
@pytest.mark.parametrize("step_rule", ["adam", "sign"])
@pytest.mark.parametrize("init", ["uniform", "normal", "zero"])
def test_every_iterate_stays_in_ball_and_box(norm, eps, step_rule, init):
    model = _model().eval()
    x = torch.rand(16, 3, 8, 8)
    x[:4] = 0.0  # corners of the box
    x[4:8] = 1.0
    y = torch.randint(0, 5, (16,))
    seen = []

    def forward(z):
        seen.append(z.detach().clone())
        return model(z)

    with frozen_parameters(model):
        res = projected_gradient_attack(forward, x, lambda z: margin(z, y), norm=norm, eps=eps, steps=15,
                                        step_rule=step_rule, step_size=piecewise_constant([0.5, 0.05], [7]),
                                        init=init, success_fn=misclassified(y),
                                        generator=torch.Generator().manual_seed(1))
    for z in seen + [res.x_adv]:
        dist = perturbation_norm(z, x, norm=norm)
        assert (dist <= eps * (1 + 1e-5) + 1e-6).all()
        assert z.min() >= 0 and z.max() <= 1


def test_projection_l2_and_random_start_l2_uniform_radius():
    x = torch.full((2000, 3, 4, 4), 0.5)
    start = random_start(x, norm="l2", eps=0.2, init="uniform", generator=torch.Generator().manual_seed(0))
    r = perturbation_norm(start, x, norm="l2")
    assert (r <= 0.2 + 1e-6).all()
    # uniform in a d-ball: P(r < eps * 0.5**(1/d)) = 0.5
    d = 48
    frac = (r < 0.2 * 0.5 ** (1 / d)).float().mean()
    assert abs(float(frac) - 0.5) < 0.05
    # a point far outside lands on the sphere (x = 0.5 leaves room inside the box)
    far = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 100
    projected = project(far, x, norm="l2", eps=0.2)
    assert torch.allclose(perturbation_norm(projected, x, norm="l2"), torch.full((2000,), 0.2), atol=1e-4)
    assert (project(x + 10.0, x, norm="linf", eps=0.1) == 0.6).all()


def test_pgd40_breaks_a_linear_model_exactly_when_the_margin_allows():
    # Linear 2-class model z = w.x: Linf attack changes the margin by at most eps*||w||_1.
    torch.manual_seed(0)
    lin = nn.Linear(12, 2, bias=False)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(200, 3, 2, 2) * 0.5 + 0.25  # away from the box edges
    y = model(x).argmax(1)
    w = lin.weight.detach()
    diff = (w[1 - y] - w[y])  # [B, 12]
    base_margin = (diff * x.flatten(1)).sum(1)  # z_other - z_y < 0
    eps = 0.05
    best_margin = base_margin + eps * diff.abs().sum(1)
    clear = best_margin.abs() > 1e-3  # leave out points on the decision boundary
    x_adv = pgd40_stage(model, x, y, 0, norm="linf", eps=eps)
    success = model(x_adv).argmax(1) != y
    assert torch.equal(success[clear], (best_margin > 0)[clear])
    assert clear.float().mean() > 0.9
    assert (model(x_adv).argmax(1) != y)[success].all()


def test_attack_computes_no_weight_gradients_and_keeps_bn_stats():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 8, 8)
    p = torch.softmax(torch.randn(8, 5), 1)
    with batch_stats_without_update(model), frozen_parameters(model):
        projected_gradient_attack(model, x, lambda z: soft_cross_entropy(z, p), norm="linf", eps=0.1, steps=3,
                                  step_rule="adam", step_size=lambda k: 0.1)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_evaluate_robustness_reports_worst_case(tiny_images):
    images, labels = tiny_images
    model = _model(classes=4).eval()
    r = evaluate_robustness(model, images, labels, attack="pgd40", norm="linf", eps=8 / 255, batch_size=16)
    assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
    assert r["max_perturbation"] <= 8 / 255 + 1e-6
    assert r["n"] == 64
    r0 = evaluate_robustness(model, images, labels, attack="pgd40", norm="linf", eps=0.0, batch_size=16)
    assert r0["robust_accuracy"] == pytest.approx(r0["clean_accuracy"])
    again = evaluate_robustness(model, images, labels, attack="pgd40", norm="linf", eps=8 / 255, batch_size=16)
    assert again["robust_accuracy"] == r["robust_accuracy"]  # seeded


def test_pgd40_schedule_compounds_like_the_authors_optax_schedule():
    # optax.piecewise_constant_schedule(0.1, {20: 0.1, 30: 0.01}) multiplies the scales: the last
    # ten steps run at 1e-4, not 1e-3 (google-deepmind/deepmind-research adversarial_robustness).
    from robustgen.attacks.pgd import pgd40_schedule, scaled_piecewise_constant

    schedule = pgd40_schedule(0.1)
    assert [schedule(k) for k in (0, 19)] == [0.1, 0.1]
    assert [schedule(k) for k in (20, 29)] == pytest.approx([0.01, 0.01])
    assert [schedule(k) for k in (30, 39)] == pytest.approx([1e-4, 1e-4])
    assert scaled_piecewise_constant(0.1, {5: 0.1})(5) == pytest.approx(0.01)  # the training attack's
