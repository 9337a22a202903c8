"""The defining math of the Laugros et al. defenses, replayed by hand on tiny batches.

The references below are written out in plain torch and share nothing with
``robench/defenses/_ops.py``: the FGSM step, the Mixup convex combination and the soft-label
cross-entropy are restated from the papers. Only the order of the random draws is taken from the
implementation, since the same draws are needed to compare one step exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.defenses import DEFENSES, StepContext, build_defense
from robench.defenses._ops import fgsm, one_hot, tlat_labels

N_CLASSES = 4
HALF = 4  # the batch of 8 is split into a clean half and an adversarial half


def _model() -> nn.Module:
    torch.manual_seed(0)
    # no dropout/BN: train and eval mode compute the same function
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, N_CLASSES))


def _batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 4, 4, generator=g), torch.randint(0, N_CLASSES, (8,), generator=g)


def _ctx(seed: int = 7) -> StepContext:
    return StepContext(
        epoch=0, step=0, generator=torch.Generator().manual_seed(seed), num_classes=N_CLASSES
    )


# --- independent references ---------------------------------------------------------------------


def ref_one_hot(y: Tensor) -> Tensor:
    return torch.eye(N_CLASSES)[y]


def ref_soft_ce(logits: Tensor, q: Tensor) -> Tensor:
    """Soft-label cross-entropy -(q * log_softmax).sum(1).mean(), as a value to compare."""
    return -(q * F.log_softmax(logits.detach(), dim=1)).sum(1).mean()


def ref_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, toward: bool) -> Tensor:
    """Goodfellow et al.'s step: x +/- eps * sign(grad_x CE(model(x), y)), clipped to [0, 1].

    ``toward=True`` is the targeted step (Laugros et al. eq. 5): down the loss of ``y``.
    """
    xr = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    direction = -1.0 if toward else 1.0
    return torch.clamp(x.detach() + direction * eps * torch.sign(grad), 0.0, 1.0)


def ref_mixup(x: Tensor, q: Tensor, lam: float, partner: Tensor) -> tuple[Tensor, Tensor]:
    """Zhang et al.: sample i becomes lam * x_i + (1 - lam) * x_partner(i), its label likewise."""
    xs = torch.stack([lam * x[i] + (1 - lam) * x[int(partner[i])] for i in range(len(x))])
    qs = torch.stack([lam * q[i] + (1 - lam) * q[int(partner[i])] for i in range(len(q))])
    return xs, qs


class Draws:
    """The step's random draws, in the order the defenses take them from the step's generator."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def beta(self, alpha: float = 0.4) -> float:
        # torch has no seeded Beta sampler: one 62-bit torch draw seeds a numpy PCG64 stream
        seed = int(torch.randint(0, 2**62, (), generator=self.g))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def eps(self, high: float = 0.025) -> float:
        return float(torch.rand((), generator=self.g)) * high

    def partners(self, n: int = HALF) -> Tensor:
        return torch.randperm(n, generator=self.g)

    def targets(self, n: int = HALF) -> Tensor:
        return torch.randint(0, N_CLASSES, (n,), generator=self.g)


def test_tlat_soft_label_is_eq4() -> None:
    y, t = one_hot(torch.tensor([0, 1]), 3), one_hot(torch.tensor([2, 1]), 3)
    lab = tlat_labels(y, t, 0.02)
    assert torch.allclose(lab, torch.tensor([[0.98, 0.0, 0.02], [0.0, 1.0, 0.0]]))
    assert torch.allclose(lab.sum(1), torch.ones(2))


def test_fgsm_directions_and_budget() -> None:
    m, (x, y) = _model(), _batch()
    eps = 0.02
    adv = fgsm(m, x, y, eps, targeted=False)
    assert torch.allclose(adv, ref_fgsm(m, x, y, eps, toward=False))
    assert float((adv - x).abs().max()) <= eps + 1e-7
    with torch.no_grad():
        assert F.cross_entropy(m(adv), y) > F.cross_entropy(m(x), y)  # untargeted: loss up
    tgt = (y + 1) % N_CLASSES
    adv_t = fgsm(m, x, tgt, eps, targeted=True)
    assert torch.allclose(adv_t, ref_fgsm(m, x, tgt, eps, toward=True))
    with torch.no_grad():  # targeted: toward the target
        assert F.cross_entropy(m(adv_t), tgt) < F.cross_entropy(m(x), tgt)


def test_mtlat_step_is_algorithm_1() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("mtlat").step(m, x, y, _ctx(7))
    d = Draws(7)  # Algorithm 1: two lambdas, eps, the two Mixup pairings, the targets
    lam1, lam2, eps = d.beta(), d.beta(), d.eps()
    xm1, ym1 = ref_mixup(x[:HALF], ref_one_hot(y[:HALF]), lam1, d.partners())
    xm2, ym2 = ref_mixup(x[HALF:], ref_one_hot(y[HALF:]), lam2, d.partners())
    tgt = d.targets()
    x_mtlat = ref_fgsm(m, xm2, tgt, eps, toward=True)
    y_mtlat = (1 - eps) * ym2 + eps * ref_one_hot(tgt)  # eq. 4 on the mixed label
    loss1, loss2 = ref_soft_ce(m(xm1), ym1), ref_soft_ce(m(x_mtlat), y_mtlat)
    assert out.metrics["lambda1"] == pytest.approx(lam1)
    assert out.metrics["lambda2"] == pytest.approx(lam2)
    assert out.metrics["eps"] == pytest.approx(eps) and 0.0 <= eps <= 0.025
    assert out.metrics["loss1"] == pytest.approx(float(loss1), rel=1e-5)
    assert out.metrics["loss2"] == pytest.approx(float(loss2), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(loss1 + loss2), rel=1e-5)


def test_iat_attacks_before_mixing() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("iat").step(m, x, y, _ctx(3))
    d = Draws(3)
    lam1, lam2, eps = d.beta(), d.beta(), d.eps()
    partners1, partners2 = d.partners(), d.partners()
    xm1, ym1 = ref_mixup(x[:HALF], ref_one_hot(y[:HALF]), lam1, partners1)
    adv = ref_fgsm(m, x[HALF:], y[HALF:], eps, toward=False)  # attack the clean images ...
    x_iat, y_iat = ref_mixup(adv, ref_one_hot(y[HALF:]), lam2, partners2)  # ... then mix
    loss1, loss2 = ref_soft_ce(m(xm1), ym1), ref_soft_ce(m(x_iat), y_iat)
    assert out.metrics["loss1"] == pytest.approx(float(loss1), rel=1e-5)
    assert out.metrics["loss2"] == pytest.approx(float(loss2), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(loss1 + loss2), rel=1e-5)
    # the other order (mix, then attack the mixed images) is a different sample, with the same
    # draws: the order is what IAT is
    xm, ym = ref_mixup(x[HALF:], ref_one_hot(y[HALF:]), lam2, partners2)
    other = ref_soft_ce(m(ref_fgsm(m, xm, y[HALF:], eps, toward=False)), ym)
    assert float(other) != pytest.approx(float(loss2), rel=1e-6)


LabelFn = Callable[[Tensor, Tensor, float], Tensor]


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("tlat", lambda q, t, e: (1 - e) * q + e * t),  # eq. 4
        ("label_smoothing", lambda q, t, e: (1 - e) * q + e / N_CLASSES),
        ("targeted_fgsm", lambda q, t, e: q),
    ],
)
def test_targeted_family_labels_the_adversarial_half(name: str, label: LabelFn) -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense(name).step(m, x, y, _ctx(5))
    d = Draws(5)
    eps, tgt = d.eps(), d.targets()
    adv = ref_fgsm(m, x[HALF:], tgt, eps, toward=True)
    expect = ref_soft_ce(m(adv), label(ref_one_hot(y[HALF:]), ref_one_hot(tgt), eps))
    assert out.metrics["loss2"] == pytest.approx(float(expect), rel=1e-5)
    clean = ref_soft_ce(m(x[:HALF]), ref_one_hot(y[:HALF]))
    assert out.metrics["loss1"] == pytest.approx(float(clean), rel=1e-5)
    assert out.metrics["eps"] == pytest.approx(eps)


def test_untargeted_fgsm_keeps_the_true_labels() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("fgsm").step(m, x, y, _ctx(6))
    eps = Draws(6).eps()
    adv = ref_fgsm(m, x[HALF:], y[HALF:], eps, toward=False)
    expect = ref_soft_ce(m(adv), ref_one_hot(y[HALF:]))
    assert out.metrics["loss2"] == pytest.approx(float(expect), rel=1e-5)


def test_mixup_mixes_images_and_labels_with_one_lambda() -> None:
    m, (x, y) = _model(), _batch()
    out = build_defense("mixup", {"alpha": "0.4"}).step(m, x, y, _ctx(2))
    d = Draws(2)
    lam = d.beta()
    xm, ym = ref_mixup(x, ref_one_hot(y), lam, d.partners(len(x)))
    assert out.metrics["lambda"] == pytest.approx(lam)
    assert float(out.loss.detach()) == pytest.approx(float(ref_soft_ce(m(xm), ym)), rel=1e-5)
    assert torch.allclose(out.logits.detach(), m(xm).detach(), atol=1e-6)


# fusion and mat_parallel train the composite model their setup builds (test_fusion.py and
# test_mat.py step them on it); mat_mixed's strengths come from its setup's walk unless given
_COMPOSITE = {"fusion", "mat_parallel"}
_OPTIONS = {"mat_mixed": {"strengths": "0.01,0.03", "protocol": "online"}}  # paper: setup's sets


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
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_unknown_option_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="has no option 'beta'"):
        build_defense("mtlat", {"beta": "1"})
    with pytest.raises(ValueError, match="not a valid float"):
        build_defense("mtlat", {"alpha": "abc"})
