"""AutoAttack through ``run_attack`` equals the authors' code (pyautoattack) run directly."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pyautoattack import AutoAttack
from torch import Tensor, nn

import robench.attacks as A
from robench import perturbations as P
from robench._seeding import derive_seed
from robench.attacks._autoattack import STAGES
from robench.evaluation.entries import PerturbationResult, SeverityResult
from robench.evaluation.record import Record, read_record
from robench.evaluation.scoring import score_record
from robench.perturbations.attack_specs import ATTACK_NAMES, AUTOATTACK_NAMES, autoattack_cost

EPS = 8 / 255


@pytest.fixture(scope="module")
def shapes_batch(tiny_trained: nn.Module) -> tuple[nn.Module, Tensor, Tensor]:
    """The session's trained small CNN and 24 held-out ``shapes`` images (a channels-last view)."""
    from robench.data import load_dataset

    x, y = load_dataset("shapes", "test").get_batch(range(1500, 1524))
    return tiny_trained, x, y


def _direct(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int) -> Tensor:
    """pyautoattack's standard version as its README runs it, on the whole batch."""
    aa = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed, device="cpu")
    adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    return adv


def _linear(classes: int, margin: float, side: int = 8, seed: int = 0) -> nn.Module:
    """A cheap linear classifier on small images whose class 0 leads by ``margin`` (plus W x)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lin = nn.Linear(3 * side * side, classes)
        nn.init.normal_(lin.weight, std=0.05)
    with torch.no_grad():
        lin.bias.zero_()
        lin.bias[0] = margin
    return nn.Sequential(nn.Flatten(), lin).eval()


class Counting(nn.Module):
    """Counts passes per image: gradient passes (graph built on the input) and forward ones."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.grad, self.fwd = inner, 0, 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad += len(x)
        else:
            self.fwd += len(x)
        return self.inner(x)


# ---------------------------------------------------------------- registry


def test_autoattack_entries_form_their_own_suite() -> None:
    assert AUTOATTACK_NAMES == ("autoattack_linf", "autoattack_l2")
    assert P.names(kind="attack", suite="autoattack") == [*AUTOATTACK_NAMES, "pgd_8_255"]
    partner = P.get("pgd_8_255")  # the masking flag's PGD-10 at AutoAttack's eps
    assert partner.algorithm == "pgd" and partner.steps == 10 and partner.params["random_start"]
    assert partner.epsilon == pytest.approx(8 / 255) == P.get("autoattack_linf").epsilon
    assert not set(AUTOATTACK_NAMES) & (set(P.names(suite="mtlat24")) | set(ATTACK_NAMES))
    assert len(P.names(kind="attack", suite="mtlat24")) == 5
    linf, l2 = (P.get(n) for n in AUTOATTACK_NAMES)
    assert (linf.family, linf.mode, linf.norm, l2.norm) == ("white-box", "whitebox", "linf", "l2")
    assert linf.budget(32) == linf.budget(224) == pytest.approx(8 / 255)
    assert l2.budget(32) == 0.5 and l2.budget(224) == pytest.approx(3.5)
    assert linf.cost() == l2.cost() == A.attack_cost("autoattack_l2") == autoattack_cost()
    assert (linf.cost().gradient_passes, linf.cost().forward_passes) == (1910, 5980)
    with pytest.raises(ValueError, match="fixed budget"):
        linf.cost(steps=10)


# ---------------------------------------------------------------- against the authors' code


def test_autoattack_linf_equals_pyautoattack_run_directly(shapes_batch) -> None:
    model, x, y = shapes_batch
    r = A.run_attack("autoattack_linf", model, x, y, seed=5)
    ref = _direct(model, x.contiguous(), y, "Linf", EPS, derive_seed(5, "autoattack_linf"))
    assert torch.equal(r.adv, ref)
    with torch.no_grad():
        pred = model(ref).argmax(1)
    assert r.accuracy == float((pred == y).float().mean())
    assert torch.equal(r.correct, pred == y) and torch.equal(r.success, pred != y)
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    assert 0 < int(clean_ok.sum()) and r.accuracy < float(clean_ok.float().mean())
    assert torch.equal(r.adv[~clean_ok], x[~clean_ok])  # misclassified images stay clean
    other = A.run_attack("autoattack_linf", model, x, y, seed=6)
    assert not torch.equal(other.adv, r.adv)  # the seed reaches APGD's random start


class Masked(nn.Module):
    """Linear logits plus a term of quantised pixels that gradients cannot see (only Square can)."""

    def __init__(self, side: int = 8, margin: float = 0.5) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.smooth = nn.Linear(3 * side * side, 10)
            self.steps = nn.Linear(3 * side * side, 10, bias=False)
            nn.init.normal_(self.smooth.weight, std=0.05)
            nn.init.normal_(self.steps.weight, std=0.05)
        with torch.no_grad():
            self.smooth.bias.zero_()
            self.smooth.bias[0] = margin

    def forward(self, x: Tensor) -> Tensor:
        f = x.flatten(1)
        return self.smooth(f) + self.steps(torch.round(f * 4) / 4)


def test_every_random_stage_matches_and_square_beating_gradients_is_noted() -> None:
    """8 images of 8 x 8 px; at seed 0, APGD-CE breaks 2, APGD-T 5, FAB-T none, Square the last."""
    model = Masked().eval()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct
    eps = 0.05
    r = A.run_attack("autoattack_linf", model, x, y, seed=0, epsilon=eps)
    ref = _direct(model, x, y, "Linf", eps, derive_seed(0, "autoattack_linf"))
    assert torch.equal(r.adv, ref) and r.accuracy == 0.0
    assert any("Square Attack has decreased the robust accuracy" in n for n in r.notes)


@pytest.mark.parametrize("name", AUTOATTACK_NAMES)
def test_adversarials_lie_in_the_ball(name: str, shapes_batch, rng_guard) -> None:
    model, x, y = shapes_batch
    x0 = x.clone()
    r = A.run_attack(name, model, x[:12], y[:12], seed=0)
    assert rng_guard.unchanged() and torch.equal(x, x0) and not model.training
    assert r.adv.shape == (12, 3, 32, 32) and r.adv.min() >= 0 and r.adv.max() <= 1
    delta = (r.adv - x[:12]).flatten(1)
    if name == "autoattack_linf":
        assert delta.abs().amax() <= EPS + 1e-6 and r.epsilon == pytest.approx(EPS)
    else:
        assert r.l2 is not None and (delta.norm(dim=1) <= 0.5 + 1e-5).all() and r.epsilon == 0.5
        torch.testing.assert_close(r.l2, delta.norm(dim=1))
    assert r.accuracy < 0.2  # a weakly trained CNN at these budgets


# ---------------------------------------------------------------- cost, notes, refusals


class Flat(nn.Module):
    """Logits that ignore the image (class ``classes - 1`` leads): no attack breaks anything."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :1] * 0 + torch.arange(float(self.classes))


@pytest.mark.parametrize("classes", [10, 5])
def test_passes_reach_the_cost_bound_when_no_stage_breaks_an_image(classes: int, caplog) -> None:
    """Every stage runs in full on both images; AutoAttack's log stays out of the user's."""
    model = Counting(Flat(classes))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.full((2,), classes - 1)
    log = logging.getLogger("auto-attack")
    before = (log.level, log.propagate, list(log.handlers))
    trace = sys.gettrace()
    with caplog.at_level(logging.DEBUG):
        r = A.run_attack("autoattack_linf", model, x, y, seed=0)
    assert r.accuracy == 1.0 and torch.equal(r.adv, x)
    cost = autoattack_cost(targets=min(9, classes - 1))
    assert (model.grad, model.fwd) == (2 * cost.gradient_passes, 2 * cost.forward_passes)
    assert not [rec for rec in caplog.records if rec.name == "auto-attack"]
    assert (log.level, log.propagate, list(log.handlers)) == before and sys.gettrace() is trace
    assert any("zero gradient" in n for n in r.notes) and len(r.notes) == len(set(r.notes))


def test_too_few_classes_and_steps_are_refused() -> None:
    x = torch.rand(2, 3, 8, 8)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 4 classes"):
        A.run_attack("autoattack_linf", _linear(3, margin=1.0), x, y, seed=0)
    with pytest.raises(ValueError, match="steps"):
        A.run_attack("autoattack_linf", _linear(10, margin=1.0), x, y, seed=0, steps=5)


# ---------------------------------------------------------------- the masking flag


def _attack_entry(eps: float, correct: list[int]) -> PerturbationResult:
    sev = SeverityResult.of(np.array(correct, dtype=bool), 1, None)
    return PerturbationResult(
        kind="attack", family="white-box", status="done", params={"eps": eps}, severities=(sev,)
    )


def _committed(name: str = "standard") -> Record:
    """A committed zoo record as the run wrote it, before the opt-in AutoAttack suite was added."""
    rec = read_record(
        Path(__file__).parents[1] / f"leaderboard/shapes/{name}__shapes__s0__n500.json"
    )
    added = {*AUTOATTACK_NAMES, "pgd_8_255"}
    perts = {k: v for k, v in rec.perturbations.items() if k not in added}
    checks = tuple(c for c in rec.gradient_masking or () if c.name != "pgd_close_to_autoattack")
    return replace(rec, perturbations=perts, gradient_masking=checks)


@pytest.mark.parametrize(
    ("pgd_right", "aa_right", "flagged"), [(60, 30, True), (60, 56, False), (30, 30, False)]
)
def test_pgd_far_above_autoattack_at_the_same_eps_flags_the_model(
    pgd_right: int, aa_right: int, flagged: bool
) -> None:
    rec = _committed()
    n = rec.clean.n if rec.clean else 0
    pgd = _attack_entry(8 / 255, [1] * pgd_right + [0] * (n - pgd_right))
    aa = _attack_entry(8 / 255, [1] * aa_right + [0] * (n - aa_right))
    perts = {**rec.perturbations, "pgd_8_255": pgd, "autoattack_linf": aa}
    scored = score_record(replace(rec, perturbations=perts), None, list(perts))
    checks = {c.name: c for c in scored.gradient_masking or ()}
    check = checks["pgd_close_to_autoattack"]
    gap = (pgd_right - aa_right) / n  # recomputed here, not read from the check
    assert check.passed is (not flagged) and (gap > 0.05) is flagged
    assert f"{pgd_right / n:.3f}" in check.detail and f"{100 * gap:.1f} points" in check.detail
    # the run's other checks are kept, and the opt-in suite stays out of the family means
    assert {c.name for c in rec.gradient_masking or ()} < set(checks)
    plain = score_record(rec, None, list(rec.perturbations))
    assert scored.summary is not None and plain.summary is not None
    assert scored.summary.mean_R == plain.summary.mean_R
    # scoring again replaces the check rather than adding a second one
    again = score_record(scored, None, list(perts))
    assert [c.name for c in again.gradient_masking or ()].count("pgd_close_to_autoattack") == 1


def test_no_masking_flag_without_a_pgd_at_autoattacks_eps() -> None:
    rec = _committed()
    n = rec.clean.n if rec.clean else 0
    aa = _attack_entry(8 / 255, [0] * n)  # committed `pgd` runs at 0.04, not 8/255
    perts = {**rec.perturbations, "autoattack_linf": aa}
    scored = score_record(replace(rec, perturbations=perts), None, list(perts))
    assert "pgd_close_to_autoattack" not in {c.name for c in scored.gradient_masking or ()}


def test_dry_run_counts_autoattack_as_an_upper_bound(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    from robench import evaluate
    from robench.evaluation.plan import plan_evaluation

    run = {"n_images": 12, "batch_size": 12, "baseline": "none", "surrogate": "none"}
    plan = plan_evaluation(tiny_trained, perturbations=["autoattack_linf"], out=tmp_path, **run)
    row = next(c for c in plan.counts if c.what == "autoattack_linf")
    assert (row.gradient, row.forward) == (12 * 1910, 12 * 5980)
    assert "upper bounds" in str(plan)
    grads = []
    hook = tiny_trained.register_forward_hook(
        lambda m, args, out: grads.append(args[0].shape[0]) if args[0].requires_grad else None
    )
    try:
        evaluate(tiny_trained, perturbations=["autoattack_linf"], out=tmp_path, plots=False, **run)
    finally:
        hook.remove()
    assert 0 < sum(grads) <= row.gradient  # the run made gradient passes, never more than counted


def test_a_run_stopped_between_stages_resumes_after_the_last_finished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped in FAB-T (third stage), the rerun starts there and gives the direct call's result."""
    from pyautoattack.fab_pt import FABAttack_PT

    model = Masked().eval()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    eps, progress = 0.05, tmp_path / "aa.pt"
    ref = _direct(model, x, y, "Linf", eps, derive_seed(0, "autoattack_linf"))
    real_perturb = FABAttack_PT.perturb

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # a kill in the middle of the third stage

    monkeypatch.setattr(FABAttack_PT, "perturb", stopped)
    with pytest.raises(KeyboardInterrupt):
        A.run_attack("autoattack_linf", model, x, y, seed=0, epsilon=eps, progress=progress)
    saved = torch.load(progress, weights_only=True)
    assert saved["done"] == ["apgd-ce", "apgd-t"] and int(saved["robust"].sum()) == 1
    monkeypatch.setattr(FABAttack_PT, "perturb", real_perturb)
    counted = Counting(model)
    r = A.run_attack("autoattack_linf", counted, x, y, seed=0, epsilon=eps, progress=progress)
    assert torch.equal(r.adv, ref) and r.accuracy == 0.0
    # only FAB-T ran gradients again, on the one image left: APGD-CE/APGD-T were not rerun
    assert 0 < counted.grad <= autoattack_cost(targets=9).gradient_passes - 101 * 10
    assert torch.load(progress, weights_only=True)["done"] == list(STAGES)
    # a progress file made from other images is not used
    other = A.run_attack(
        "autoattack_linf", model, x.flip(0), y.flip(0), seed=0, epsilon=eps, progress=progress
    )
    assert torch.equal(
        other.adv,
        _direct(model, x.flip(0), y.flip(0), "Linf", eps, derive_seed(0, "autoattack_linf")),
    )


def _save_tiny(model: nn.Module, path: Path) -> None:
    """The session's small CNN (width 8) as a robench checkpoint file."""
    from robench.models.checkpoint import CheckpointMeta, save_checkpoint

    norm = model.normalize
    meta = CheckpointMeta(
        arch="small_cnn",
        num_classes=10,
        input_size=32,
        arch_kwargs={"width": 8},
        mean=tuple(norm.mean.flatten().tolist()),
        std=tuple(norm.std.flatten().tolist()),
        dataset="shapes",
    )
    save_checkpoint(model, path, meta)


def test_evaluate_keeps_autoattack_progress_until_the_entry_is_done(
    tiny_trained: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed in the second batch's APGD-CE reruns to the same record; nothing is left."""
    from pyautoattack.autopgd_base import APGDAttack

    from robench import evaluate

    monkeypatch.setenv("ROBENCH_CACHE", str(tmp_path / "cache"))
    _save_tiny(tiny_trained, tmp_path / "m.pt")  # a file: its hash keys the progress
    run = {"n_images": 12, "batch_size": 6, "baseline": "none", "surrogate": "none"}
    kw = {"perturbations": ["autoattack_linf"], "plots": False, **run}
    whole = evaluate(tmp_path / "m.pt", out=tmp_path / "whole", **kw)
    real, calls = APGDAttack.perturb, []

    def killed_second_time(self: APGDAttack, *args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, in the second batch's first stage
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(APGDAttack, "perturb", killed_second_time)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path / "m.pt", out=tmp_path / "resumed", **kw)
    kept = list((tmp_path / "cache" / "attack-progress").glob("*.pt"))
    assert len(kept) == 1  # the first batch's finished stages, saved before the kill
    calls.clear()
    resumed = evaluate(tmp_path / "m.pt", out=tmp_path / "resumed", **kw)
    assert len(calls) == 1  # only the second batch ran APGD-CE again
    a, b = (r.record.perturbations["autoattack_linf"] for r in (whole, resumed))
    assert a.severities[0].correct == b.severities[0].correct
    assert not list((tmp_path / "cache" / "attack-progress").glob("*.pt"))


def test_a_baseline_evaluated_for_a_partial_run_keeps_its_whole_family_means(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    """A later run on fewer perturbations rescores the baseline over all of its entries."""
    import copy

    from robench import evaluate
    from robench.evaluation.record import read_record

    other = copy.deepcopy(tiny_trained)
    with torch.no_grad():
        next(other.parameters()).mul_(0.9)
    _save_tiny(tiny_trained, tmp_path / "base.pt")
    _save_tiny(other, tmp_path / "m.pt")
    run = {"n_images": 16, "baseline": str(tmp_path / "base.pt"), "surrogate": "none"}
    out = tmp_path / "out"
    evaluate(
        tmp_path / "m.pt", perturbations=["brightness", "contrast"], out=out, plots=False, **run
    )
    evaluate(tmp_path / "m.pt", perturbations=["brightness"], out=out, plots=False, **run)
    (base,) = [read_record(f) for f in out.glob("base__*.json")]
    assert base.summary is not None
    r = [base.perturbations[n].scores.R for n in ("brightness", "contrast")]  # type: ignore[union-attr]
    assert base.summary.mean_R["corruption"] == pytest.approx(sum(r) / 2)
