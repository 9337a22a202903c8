"""The 5 attacks against short hand-written references, and the gradient-masking checks."""

from __future__ import annotations

import copy
from collections.abc import Callable

import foolbox as fb
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robench.attacks as A
from robench import perturbations as P
from robench.models import create_model
from robench.perturbations.attack_specs import ATTACK_NAMES, AttackSpec, cw_l2_bound

NAMES = ("pgd", "pgd_ll", "cw_l2", "mi_fgsm_0.04", "mi_fgsm_0.08")


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def _rand(n: int, seed: int, side: int = 32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """An untrained small CNN with fixed weights (gradients are all the references need)."""
    return _seeded(lambda: create_model("small_cnn", width=8), 0)


@pytest.fixture(scope="module")
def net2() -> nn.Module:
    return _seeded(lambda: create_model("vgg11", width_div=16), 1)


def _train(arch: str, seed: int, x: Tensor, y: Tensor, steps: int, **kw: object) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(arch, **kw)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            i = torch.randint(0, len(y), (64,))
            loss = F.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def shapes_models() -> dict[str, object]:
    """Two slim VGGs trained for seconds on the embedded ``shapes`` test split (55-60% accurate)."""
    from robench.data import load_dataset

    x, y = load_dataset("shapes", "test").get_batch(range(2000))
    target = _train("vgg11", 0, x[:1500], y[:1500], 150, width_div=16)
    surrogate = _train("vgg11", 1, x[:1500], y[:1500], 150, width_div=16)
    return {"target": target, "surrogate": surrogate, "x": x[1500:1564], "y": y[1500:1564]}


# ---------------------------------------------------------------- hand-written references


def ref_linf(
    model: nn.Module,
    x: Tensor,
    lab: Tensor,
    *,
    eps: float,
    steps: int,
    step: float,
    start: Tensor | None = None,
    targeted: bool = False,
) -> Tensor:
    """Textbook L-inf PGD (Madry et al.); targeted: descend the target's cross-entropy."""
    xa = x.clone() if start is None else (x + eps * start).clamp(0, 1)
    for _ in range(steps):
        xa = xa.detach().requires_grad_()
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), lab, reduction="none").sum(), xa)
        xa = xa.detach() + (-step if targeted else step) * g.sign()
        xa = (x + (xa - x).clamp(-eps, eps)).clamp(0, 1)
    return xa


def ref_mi_fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    mu: float = 1.0,
    sign_momentum: bool = False,
) -> Tensor:
    """Dong et al.'s MI-FGSM; ``sign_momentum`` is Foolbox 3.3.4's variant (momentum over sign)."""
    alpha, g, xa = eps / steps, torch.zeros_like(x), x.clone()
    for _ in range(steps):
        xa = xa.detach().requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="none").sum(), xa)
        norm = grad.sign() if sign_momentum else grad / grad.abs().sum((1, 2, 3), keepdim=True)
        g = mu * g + norm
        xa = xa.detach() + alpha * g.sign()
        xa = (x + (xa - x).clamp(-eps, eps)).clamp(0, 1)
    return xa


def ref_cw_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step: float,
    kappa: float,
    targets: int | None = None,
) -> tuple[Tensor, Tensor]:
    """C&W's capped objective ascended by normalised L2 steps inside the ball; best iterate kept.

    ``targets=None``: the untargeted margin ``max_{j != y} z_j - z_y``, one run of ``steps``.
    ``targets=k``: ``k`` runs from the clean image (steps dealt out one by one, first runs first),
    run ``r`` ascending ``z_t - max_{j != t} z_j`` for the ``r``-th highest wrong clean logit t.
    The best iterate is judged by the untargeted margin over all runs.
    """
    n, rows = len(x), torch.arange(len(x))
    best, best_m = x.clone(), [-float("inf")] * n
    hit = [False] * n
    with torch.no_grad():
        z0 = model(x)
    ranked = [
        sorted(
            (j for j in range(z0.shape[1]) if j != int(y[i])), key=lambda j, i=i: -float(z0[i, j])
        )
        for i in range(n)
    ]
    runs = [0] * (1 if targets is None else targets)
    for k in range(steps):
        runs[k % len(runs)] += 1
    for r, run_steps in enumerate(runs):
        xa = x.clone()
        for t in range(run_steps + 1):
            xa = xa.detach().requires_grad_()
            z = model(xa)
            other = z.clone()
            other[rows, y] = -float("inf")
            margin = torch.clamp(other.max(1).values - z[rows, y], max=kappa)
            if targets is None:
                obj = margin
            else:
                tgt = torch.tensor([ranked[i][r] for i in range(n)])
                rest = z.clone()
                rest[rows, tgt] = -float("inf")
                obj = torch.clamp(z[rows, tgt] - rest.max(1).values, max=kappa)
            for i in range(n):
                wrong, m = bool(z[i].argmax() != y[i]), float(margin[i])
                if (wrong and not hit[i]) or (wrong == hit[i] and m > best_m[i]):
                    best[i], best_m[i] = xa[i].detach(), m
                hit[i] = hit[i] or wrong
            if t == run_steps:
                break
            (g,) = torch.autograd.grad(obj.sum(), xa)
            d = xa.detach() + step * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) - x
            d = d * (eps / d.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
            xa = (x + d).clamp(0, 1)
    return best, torch.tensor(hit)


# ---------------------------------------------------------------- registry


def test_registry_entries_are_implemented_and_costed() -> None:
    assert ATTACK_NAMES == NAMES
    for name in NAMES:
        spec = P.get(name)
        assert isinstance(spec, AttackSpec) and spec.kind == "attack" and spec.implemented
        assert spec.family == ("black-box" if name.startswith("mi_fgsm") else "white-box")
        assert spec.parameter_text()[0]
    assert P.get("pgd").cost() == A.attack_cost("pgd") and P.get("pgd").cost().gradient_passes == 10
    cw = P.get("cw_l2").cost()
    # 3 target runs of 14, 13, 13 steps, + one pass on each run's last iterate
    assert (cw.gradient_passes, cw.forward_passes) == (40, 5)
    assert P.get("cw_l2").step_size(0.5, 40) == pytest.approx(0.03125)
    mi = A.attack_cost("mi_fgsm_0.08")
    assert (mi.gradient_passes, mi.surrogate_gradient_passes, mi.forward_passes) == (0, 10, 2)
    assert cw_l2_bound(32) == 0.5 and cw_l2_bound(224) == pytest.approx(3.5)
    assert P.get("pgd").step_size(0.04, 10) == pytest.approx(0.01)
    assert P.get("mi_fgsm_0.04").step_size(0.04, 10) == pytest.approx(0.004)


# ---------------------------------------------------------------- each attack vs its reference


def test_pgd_equals_handwritten_pgd_with_the_same_start(net: nn.Module) -> None:
    x, y = _rand(6, 0)
    idx = [40, 41, 42, 43, 44, 45]
    r = A.run_attack("pgd", net, x, y, seed=3, indices=idx)
    start = A.random_start(x.shape, seed=3, name="pgd", indices=idx)
    assert start.abs().max() <= 1 and start.std() > 0.5  # uniform in [-1, 1)
    ref = ref_linf(net, x, y, eps=0.04, steps=10, step=0.01, start=start)
    torch.testing.assert_close(r.adv, ref, atol=1e-6, rtol=0)
    with torch.no_grad():
        pred = net(ref).argmax(1)
    assert torch.equal(r.correct, pred == y) and torch.equal(r.success, pred != y)
    assert r.accuracy == float((pred == y).float().mean())
    # a different seed is a different start
    other = A.run_attack("pgd", net, x, y, seed=4, indices=idx)
    assert not torch.equal(other.adv, r.adv)


@pytest.mark.parametrize("name", ["pgd", "pgd_ll", "cw_l2", "mi_fgsm_0.04"])
def test_an_image_gets_the_same_attack_whatever_its_batch(name: str, net: nn.Module) -> None:
    x, y = _rand(6, 1)
    kw = {"seed": 0, "steps": 4, "surrogate": net}
    full = A.run_attack(name, net, x, y, indices=range(100, 106), **kw)
    part = A.run_attack(name, net, x[2:4], y[2:4], indices=[102, 103], **kw)
    torch.testing.assert_close(part.adv, full.adv[2:4], atol=1e-5, rtol=0)
    s_full = A.random_start(x.shape, seed=0, indices=range(100, 106))
    s_part = A.random_start(x[2:4].shape, seed=0, indices=[102, 103])
    assert torch.equal(s_full[2:4], s_part) and not torch.equal(s_full[2], s_full[3])


def test_pgd_ll_targets_least_likely_class_and_matches_reference(net: nn.Module) -> None:
    x, y = _rand(6, 2)
    r = A.run_attack("pgd_ll", net, x, y, seed=0)
    with torch.no_grad():
        clean = net(x)
    assert torch.equal(r.targets, clean.argmin(1))
    assert (r.adv - x).abs().max() <= 0.04 + 1e-6
    ref = ref_linf(net, x, clean.argmin(1), eps=0.04, steps=10, step=0.01, targeted=True)
    torch.testing.assert_close(r.adv, ref, atol=1e-6, rtol=0)
    with torch.no_grad():
        pred = net(r.adv).argmax(1)
    assert torch.equal(r.success, pred == r.targets) and torch.equal(r.correct, pred == y)
    # explicit targets go into the TargetedMisclassification criterion
    tgt = (y + 1) % 10
    r2 = A.run_attack("pgd_ll", net, x, y, seed=0, targets=tgt)
    torch.testing.assert_close(
        r2.adv,
        ref_linf(net, x, tgt, eps=0.04, steps=10, step=0.01, targeted=True),
        atol=1e-6,
        rtol=0,
    )


def test_pgd_ll_succeeds_on_a_trained_model(shapes_models: dict) -> None:
    r = A.run_attack(
        "pgd_ll",
        shapes_models["target"],
        shapes_models["x"],
        shapes_models["y"],
        seed=0,
        epsilon=0.1,
    )
    assert r.success.float().mean() > 0.5  # most images reach their least-likely class


def test_mi_fgsm_is_dongs_algorithm_not_foolbox_sign_momentum(net: nn.Module) -> None:
    x, y = _rand(6, 3)
    ours = A.craft_transfer("mi_fgsm_0.04", net, x, y, seed=0)
    torch.testing.assert_close(ours, ref_mi_fgsm(net, x, y, eps=0.04), atol=1e-6, rtol=0)
    builtin = fb.attacks.LinfMomentumIterativeFastGradientMethod(rel_stepsize=0.1, steps=10)
    frozen = copy.deepcopy(net).requires_grad_(False)  # Foolbox's backward() would fill .grad
    _, fb_adv, _ = builtin(
        fb.PyTorchModel(frozen, bounds=(0, 1), device="cpu"), x, y, epsilons=0.04
    )
    # Foolbox's built-in is the sign-momentum variant, which is a different attack
    torch.testing.assert_close(
        fb_adv, ref_mi_fgsm(net, x, y, eps=0.04, sign_momentum=True), atol=1e-6, rtol=0
    )
    assert ((fb_adv - ours).abs() > 1e-3).float().mean() > 0.01
    big = A.craft_transfer("mi_fgsm_0.08", net, x, y, seed=0)
    torch.testing.assert_close(big, ref_mi_fgsm(net, x, y, eps=0.08), atol=1e-6, rtol=0)


def test_transfer_is_crafted_on_the_surrogate_and_judged_on_the_target(
    net: nn.Module, net2: nn.Module
) -> None:
    x, y = _rand(5, 4)
    with pytest.raises(ValueError, match="surrogate"):
        A.run_attack("mi_fgsm_0.04", net, x, y, seed=0)
    r = A.run_attack("mi_fgsm_0.04", net, x, y, seed=0, surrogate=net2)
    torch.testing.assert_close(r.adv, ref_mi_fgsm(net2, x, y, eps=0.04), atol=1e-6, rtol=0)
    with torch.no_grad():
        pred = net(r.adv).argmax(1)
    assert torch.equal(r.pred, pred) and torch.equal(r.success, pred != y)
    cached = A.craft_transfer("mi_fgsm_0.04", net2, x, y, seed=0)
    judged = A.judge_transfer("mi_fgsm_0.04", net, x, cached, y)
    assert torch.equal(judged.correct, r.correct)
    with pytest.raises(ValueError, match="do not belong"):
        A.judge_transfer("mi_fgsm_0.04", net, x, cached.flip(0).clamp(0, 1), y)


def test_cw_l2_equals_handwritten_bounded_cw(net: nn.Module) -> None:
    x, y = _rand(6, 10)
    r = A.run_attack("cw_l2", net, x, y, seed=0, steps=8)  # 3 targets: runs of 3, 3 and 2 steps
    ref, hit = ref_cw_l2(net, x, y, eps=0.5, steps=8, step=2.5 * 0.5 / 3, kappa=50.0, targets=3)
    torch.testing.assert_close(r.adv, ref, atol=1e-6, rtol=0)
    assert torch.equal(r.success, hit) and torch.equal(r.correct, ~hit)
    torch.testing.assert_close(r.l2, (ref - x).flatten(1).norm(dim=1), atol=1e-6, rtol=0)


def test_untargeted_bounded_cw_equals_handwritten(net: nn.Module) -> None:
    x, y = _rand(6, 10)
    adv, hit = A.bounded_cw_l2(
        net.eval().requires_grad_(False), x, y, epsilon=0.5, steps=8, step=0.15, confidence=50.0
    )
    ref, ref_hit = ref_cw_l2(net, x, y, eps=0.5, steps=8, step=0.15, kappa=50.0)
    torch.testing.assert_close(adv, ref, atol=1e-6, rtol=0)
    assert torch.equal(hit, ref_hit)


def test_cw_l2_returns_in_ball_misclassified_adversarials(shapes_models: dict) -> None:
    m, x, y = shapes_models["target"], shapes_models["x"][:32], shapes_models["y"][:32]
    with torch.no_grad():
        clean_wrong = m(x).argmax(1) != y
    for eps in (0.5, 0.1):
        r = A.run_attack("cw_l2", m, x, y, seed=0, epsilon=eps)
        dist = (r.adv - x).flatten(1).norm(dim=1)
        assert r.epsilon == eps and (dist <= eps + 1e-5).all() and torch.equal(dist, r.l2)
        assert r.adv.min() >= 0 and r.adv.max() <= 1
        with torch.no_grad():
            pred = m(r.adv).argmax(1)
        assert r.success.any() and torch.equal(r.success, pred != y)  # broken: misclassified
        assert (r.success >= clean_wrong).all() and r.success.sum() > clean_wrong.sum()
        assert (dist[r.success & ~clean_wrong] > 0).all()
    tiny = A.run_attack("cw_l2", m, x, y, seed=0, epsilon=1e-4)
    assert torch.equal(tiny.success, clean_wrong)  # nothing fits in a 1e-4 ball


@pytest.mark.parametrize("eps", [0.5, 0.1])
def test_cw_l2_is_about_as_strong_as_foolbox_l2_pgd(eps: float, shapes_models: dict) -> None:
    m, x, y = shapes_models["target"], shapes_models["x"], shapes_models["y"]
    cw = A.run_attack("cw_l2", m, x, y, seed=0, epsilon=eps).accuracy
    fmodel = fb.PyTorchModel(copy.deepcopy(m).requires_grad_(False), bounds=(0, 1), device="cpu")
    broken = torch.zeros(len(y), dtype=torch.bool)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(2):  # 2 random restarts of Foolbox's L2 PGD, 100 steps
            _, _, ok = fb.attacks.L2PGD(steps=100)(fmodel, x, y, epsilons=eps)
            broken |= ok
    pgd = 1.0 - float(broken.float().mean())
    with torch.no_grad():
        clean = float((m(x).argmax(1) == y).float().mean())
    assert cw <= pgd + 0.05, (cw, pgd)
    assert cw < clean - 0.2  # not the clean accuracy: the projected-unbounded C&W left ~clean


def test_attacks_refuse_probability_outputs(net: nn.Module) -> None:
    probs = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    x, y = _rand(3, 5)
    for name in ("cw_l2", "pgd"):
        with pytest.raises(ValueError, match="probabilities"):
            A.run_attack(name, probs, x, y, seed=0)


def test_bad_inputs_raise_one_clear_error(net: nn.Module) -> None:
    x, y = _rand(3, 6)
    with pytest.raises(ValueError, match="one label per image"):
        A.run_attack("pgd", net, x, y[:2], seed=0)
    with pytest.raises(ValueError, match="labels must lie"):
        A.run_attack("pgd", net, x, y + 10, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.run_attack("pgd", net, x * 2, y, seed=0)
    with pytest.raises(ValueError, match="not an attack"):
        A.run_attack("gaussian_noise", net, x, y, seed=0)
    with pytest.raises(ValueError, match="white-box"):
        A.craft_transfer("pgd", net, x, y, seed=0)
    with pytest.raises(ValueError, match="steps >= 1"):
        A.run_attack("pgd", net, x, y, seed=0, steps=0)
    with pytest.raises(ValueError, match="epsilon must be finite"):
        A.run_attack("cw_l2", net, x, y, seed=0, epsilon=-1.0)
    with pytest.raises(ValueError, match="device"):
        A.run_attack("pgd", net, x, y, seed=0, device="meta")


# ---------------------------------------------------------------- contract shared by all five


class Counting(nn.Module):
    """Counts forward passes per image, separating those that build a graph (gradient passes)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.grad, self.fwd = inner, 0, 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad += len(x)
        else:
            self.fwd += len(x)
        return self.inner(x)


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_keeps_the_contract(name: str, rng_guard) -> None:
    x, y = _rand(4, 7)
    x0 = x.clone()
    target = Counting(_seeded(lambda: create_model("small_cnn", width=4), 2))
    sur = Counting(_seeded(lambda: create_model("vgg11", width_div=16), 3))
    target.train()
    kw = {"surrogate": sur, "steps": 3} if name.startswith("mi") else {"steps": 3}
    r = A.run_attack(name, target, x, y, seed=11, **kw)
    assert rng_guard.unchanged()
    assert torch.equal(x, x0)
    assert target.training and all(m.training for m in target.modules())  # mode restored
    assert all(p.requires_grad and p.grad is None for p in target.parameters())
    assert (
        r.adv.shape == x.shape and r.adv.dtype == x.dtype and r.adv.min() >= 0 and r.adv.max() <= 1
    )
    spec = P.get(name)
    if spec.norm == "linf":
        assert (r.adv - x).abs().max() <= spec.epsilon + 1e-6
    else:
        assert ((r.adv - x).flatten(1).norm(dim=1) <= cw_l2_bound(32) + 1e-5).all()
    cost = spec.cost(steps=3)
    n = len(x)
    assert (target.grad, target.fwd) == (n * cost.gradient_passes, n * cost.forward_passes)
    assert (sur.grad, sur.fwd) == (
        n * cost.surrogate_gradient_passes,
        n * cost.surrogate_forward_passes,
    )
    # same seed, same result; eval mode was used (the model started in train mode above)
    target.eval()
    again = A.run_attack(name, target, x, y, seed=11, **kw)
    assert torch.equal(again.adv, r.adv) and torch.equal(again.success, r.success)
    assert not target.training


def test_masking_checks_cost_counts_every_pass() -> None:
    x, y = _rand(3, 9)
    target = Counting(_seeded(lambda: create_model("small_cnn", width=4), 4))
    sur = Counting(_seeded(lambda: create_model("vgg11", width_div=16), 5))
    checks = A.gradient_masking_checks(target, x, y, seed=0, surrogate=sur)
    assert len(checks) == 4 and all(c.passed is not None for c in checks)
    cost = A.masking_checks_cost(surrogate=True)
    assert (target.grad, target.fwd) == (3 * cost.gradient_passes, 3 * cost.forward_passes)
    assert (sur.grad, sur.fwd) == (
        3 * cost.surrogate_gradient_passes,
        3 * cost.surrogate_forward_passes,
    )
    assert cost.gradient_passes == 10 * 4 + 40 and cost.surrogate_gradient_passes == 10


def test_float64_input_and_empty_batch(net: nn.Module) -> None:
    x, y = _rand(2, 8)
    r = A.run_attack("pgd", net, x.double(), y, seed=0)
    assert r.adv.dtype == torch.float64
    empty = A.run_attack("pgd", net, x[:0], y[:0], seed=0)
    assert empty.adv.shape == (0, 3, 32, 32)


# ---------------------------------------------------------------- trained models and masking


def test_transfer_accuracy_is_not_below_white_box_accuracy(shapes_models: dict) -> None:
    m, s, x, y = (shapes_models[k] for k in ("target", "surrogate", "x", "y"))
    with torch.no_grad():
        clean = float((m(x).argmax(1) == y).float().mean())
    white = A.run_attack("pgd", m, x, y, seed=0).accuracy
    black = A.run_attack("mi_fgsm_0.04", m, x, y, seed=0, surrogate=s).accuracy
    assert clean > 0.3  # the model learned something
    assert white < clean and black >= white


class Quantised(nn.Module):
    """Rounds its input to 16 grey levels: a zero gradient everywhere (masking, not robustness)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 16) / 16)


class Saturated(nn.Module):
    """Softmax times 1e4: the cross-entropy gradient underflows to zero."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).softmax(1) * 1e4


def test_masking_checks_pass_an_ordinary_model(shapes_models: dict) -> None:
    m, s, x, y = (shapes_models[k] for k in ("target", "surrogate", "x", "y"))
    checks = A.gradient_masking_checks(m, x, y, surrogate=s, seed=0, max_images=32)
    assert [c.name for c in checks] == [
        "whitebox_below_transfer",
        "accuracy_falls_with_eps",
        "accuracy_falls_with_steps",
        "large_eps_reaches_zero",
    ]
    assert all(c.passed for c in checks), checks
    skipped = A.gradient_masking_checks(m, x, y, seed=0, max_images=8)
    assert skipped[0].passed is None and "no surrogate" in skipped[0].detail


@pytest.mark.parametrize("wrapper", [Quantised, Saturated])
def test_masking_checks_flag_a_gradient_masking_model(
    wrapper: type[nn.Module], shapes_models: dict
) -> None:
    m, s, x, y = (shapes_models[k] for k in ("target", "surrogate", "x", "y"))
    checks = A.gradient_masking_checks(wrapper(m).eval(), x, y, surrogate=s, seed=0, max_images=32)
    failed = {c.name: c for c in checks if c.passed is False}
    # zero gradients: a gradient-only PGD at eps 0.5 cannot move the images
    assert "large_eps_reaches_zero" in failed, checks
    assert failed["large_eps_reaches_zero"].detail.startswith(
        "a large-eps PGD does not reach ~0%: "
    )
