"""The defining math of the seed-000 defenses, replayed by hand on tiny batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses import DEFENSES, StepContext, build_defense
from robench.defenses._ops import beta, fgsm, mix, one_hot, soft_cross_entropy, tlat_labels

N_CLASSES = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 4 * 4, N_CLASSES)
    )  # no dropout/BN: deterministic


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 4, 4, generator=g), torch.randint(0, N_CLASSES, (8,), generator=g)


def _ctx(seed: int = 7) -> StepContext:
    return StepContext(
        epoch=0, step=0, generator=torch.Generator().manual_seed(seed), num_classes=N_CLASSES
    )


def test_tlat_soft_label_is_eq4() -> None:
    y, t = one_hot(torch.tensor([0, 1]), 3), one_hot(torch.tensor([2, 1]), 3)
    lab = tlat_labels(y, t, 0.02)
    assert torch.allclose(lab, torch.tensor([[0.98, 0.0, 0.02], [0.0, 1.0, 0.0]]))
    assert torch.allclose(lab.sum(1), torch.ones(2))


def test_fgsm_directions_and_budget() -> None:
    m, (x, y) = _model(), _batch()
    eps = 0.02
    adv = fgsm(m, x, y, eps, targeted=False)
    assert float((adv - x).abs().max()) <= eps + 1e-7
    with torch.no_grad():
        assert F.cross_entropy(m(adv), y) > F.cross_entropy(m(x), y)  # untargeted: loss up
    tgt = (y + 1) % N_CLASSES
    adv_t = fgsm(m, x, tgt, eps, targeted=True)
    with torch.no_grad():
        assert F.cross_entropy(m(adv_t), tgt) < F.cross_entropy(
            m(x), tgt
        )  # targeted: toward the target


def test_mtlat_step_is_algorithm_1() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("mtlat").step(m, x, y, _ctx())
    g = torch.Generator().manual_seed(7)  # replay the same draws in Algorithm 1's order
    lam1, lam2 = beta(0.4, g), beta(0.4, g)
    eps = float(torch.rand((), generator=g)) * 0.025
    x1, x2, y1, y2 = x[:4], x[4:], one_hot(y[:4], N_CLASSES), one_hot(y[4:], N_CLASSES)
    xm1, ym1 = mix(x1, y1, lam1, g)
    xm2, ym2 = mix(x2, y2, lam2, g)
    tgt = torch.randint(0, N_CLASSES, (4,), generator=g)
    grad = torch.autograd.grad(F.cross_entropy(m(xm2.requires_grad_(True)), tgt), xm2)[0]
    x_mtlat = (xm2.detach() - eps * grad.sign()).clamp(0, 1)
    y_mtlat = (1 - eps) * ym2 + eps * one_hot(tgt, N_CLASSES)
    loss1 = -(ym1 * F.log_softmax(m(xm1), 1)).sum(1).mean()
    loss2 = -(y_mtlat * F.log_softmax(m(x_mtlat), 1)).sum(1).mean()
    assert out.metrics["loss1"] == pytest.approx(float(loss1), rel=1e-5)
    assert out.metrics["loss2"] == pytest.approx(float(loss2), rel=1e-5)
    assert float(out.loss) == pytest.approx(float(loss1 + loss2), rel=1e-5)
    assert 0.0 <= out.metrics["eps"] <= 0.025


def test_iat_attacks_before_mixing() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("iat").step(m, x, y, _ctx(3))
    g = torch.Generator().manual_seed(3)
    lam1, lam2 = beta(0.4, g), beta(0.4, g)
    eps = float(torch.rand((), generator=g)) * 0.025
    xm1, ym1 = mix(x[:4], one_hot(y[:4], N_CLASSES), lam1, g)
    adv = fgsm(m, x[4:], y[4:], eps, targeted=False)
    x_iat, y_iat = mix(adv, one_hot(y[4:], N_CLASSES), lam2, g)
    loss2 = soft_cross_entropy(m(x_iat), y_iat)
    assert out.metrics["loss2"] == pytest.approx(float(loss2), rel=1e-5)
    # the other order (mix, then attack) is a different sample: the order is what IAT is
    g2 = torch.Generator().manual_seed(3)
    (
        beta(0.4, g2),
        beta(0.4, g2),
        torch.rand((), generator=g2),
        mix(x[:4], one_hot(y[:4], N_CLASSES), lam1, g2),
    )
    xm, ym = mix(x[4:], one_hot(y[4:], N_CLASSES), lam2, g2)
    other = soft_cross_entropy(m(fgsm(m, xm, y[4:], eps, targeted=False)), ym)
    assert float(other) != pytest.approx(float(loss2), rel=1e-6)


@pytest.mark.parametrize(
    "name,label",
    [
        ("tlat", lambda yb, t, e: (1 - e) * yb + e * t),
        ("label_smoothing", lambda yb, t, e: (1 - e) * yb + e / N_CLASSES),
        ("targeted_fgsm", lambda yb, t, e: yb),
    ],
)
def test_targeted_family_labels_the_adversarial_half(name: str, label) -> None:  # type: ignore[no-untyped-def]
    m, (x, y) = _model(), _batch()
    out = build_defense(name).step(m, x, y, _ctx(5))
    g = torch.Generator().manual_seed(5)
    eps = float(torch.rand((), generator=g)) * 0.025
    tgt = torch.randint(0, N_CLASSES, (4,), generator=g)
    adv = fgsm(m, x[4:], tgt, eps, targeted=True)
    expect = soft_cross_entropy(
        m(adv), label(one_hot(y[4:], N_CLASSES), one_hot(tgt, N_CLASSES), eps)
    )
    assert out.metrics["loss2"] == pytest.approx(float(expect), rel=1e-5)
    assert out.metrics["loss1"] == pytest.approx(float(F.cross_entropy(m(x[:4]), y[:4])), rel=1e-5)


def test_mixup_mixes_images_and_labels_with_one_lambda() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("mixup", {"alpha": "0.4"}).step(m, x, y, _ctx(2))
    g = torch.Generator().manual_seed(2)
    lam = beta(0.4, g)
    xm, ym = mix(x, one_hot(y, N_CLASSES), lam, g)
    assert out.metrics["lambda"] == pytest.approx(lam)
    assert float(out.loss) == pytest.approx(float(soft_cross_entropy(m(xm), ym)), rel=1e-5)


# fusion and mat_parallel train the composite model their setup builds (tests/defenses/test_fusion.py
# and test_mat.py step them on it); mat_mixed's strengths come from its setup's walk unless given
_COMPOSITE = {"fusion", "mat_parallel"}
_OPTIONS = {"mat_mixed": {"strengths": "0.01,0.03"}}


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if n not in _COMPOSITE])
def test_every_defense_trains_two_steps_and_restores_the_mode(name: str) -> None:
    from robench.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", N_CLASSES, width=4).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, N_CLASSES, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    d = build_defense(name, _OPTIONS.get(name))
    for step in range(2):
        out = d.step(
            model, x, y, StepContext(0, step, torch.Generator().manual_seed(step), N_CLASSES)
        )
        assert torch.isfinite(out.loss) and out.logits.shape[1] == N_CLASSES
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_option_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="has no option 'beta'"):
        build_defense("mtlat", {"beta": "1"})
    with pytest.raises(ValueError, match="not a valid float"):
        build_defense("mtlat", {"alpha": "abc"})
