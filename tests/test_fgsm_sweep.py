"""MAT's FGSM strength sweep: ``fgsm`` and ``fgsm_transfer``, one severity per strength."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench import evaluate
from robench import perturbations as P
from robench.attacks import craft_transfer, judge_transfer, resolve_attack, run_attack
from robench.evaluation.plan import plan_evaluation
from robench.models import create_model
from robench.models.checkpoint import CheckpointMeta, save_checkpoint
from robench.perturbations.attack_specs import ATTACK_NAMES
from robench.report.plots import severity_curves

RUN = {"n_images": 40, "batch_size": 16, "baseline": "none"}
PAPER_EPS = [k / 2 / 255 for k in range(1, 11)]  # Song et al.: eps 0 .. 5 (of 255), step 0.5


def _hand_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of the cross-entropy, clipped to the image range."""
    xr = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    return (x + eps * grad.sign()).clamp(0.0, 1.0)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", 10, width=4).double().eval()


def _surrogate_file(tmp_path: Path, seed: int) -> Path:
    """A crafting model's checkpoint (another seed: other weights, other cached adversarials)."""
    torch.manual_seed(seed)
    model = create_model("small_cnn", 10, width=4)
    mean = tuple(model.normalize.mean.flatten().tolist())
    std = tuple(model.normalize.std.flatten().tolist())
    meta = CheckpointMeta(
        arch="small_cnn",
        arch_kwargs={"width": 4},
        num_classes=10,
        input_size=32,
        mean=mean,
        std=std,
    )
    save_checkpoint(model, tmp_path / "crafting.pt", meta)
    return tmp_path / "crafting.pt"


def test_specs_suite_and_strengths() -> None:
    assert P.names(suite="mat") == ["fgsm", "fgsm_transfer"]
    white, transfer = resolve_attack("fgsm"), resolve_attack("fgsm_transfer")
    assert (white.mode, transfer.mode) == ("whitebox", "transfer")
    for spec in (white, transfer):
        assert spec.severities == tuple(range(1, 11))
        assert spec.strengths == pytest.approx(PAPER_EPS)
        assert [spec.at(s).epsilon for s in spec.severities] == pytest.approx(PAPER_EPS)
        assert (
            spec.parameter_text()[0] == "eps=0.5/255" and spec.parameter_text()[-1] == "eps=5/255"
        )
    assert white.cost().gradient_passes == 10 and transfer.cost().surrogate_gradient_passes == 10
    # M-TLAT's benchmark is untouched
    assert ATTACK_NAMES == ("pgd", "pgd_ll", "cw_l2", "mi_fgsm_0.04", "mi_fgsm_0.08")
    assert "fgsm" not in P.names(suite="mtlat24") and "fgsm" not in P.names(suite="attacks")


def test_a_sweep_needs_a_strength_and_fgsm_is_one_step() -> None:
    m, x, y = _net(0), torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="sweeps 10 strengths"):
        run_attack("fgsm", m, x, y, seed=0)
    with pytest.raises(ValueError, match="severity must be in 1..10"):
        resolve_attack("fgsm").at(11)
    with pytest.raises(ValueError, match="single step"):
        run_attack(resolve_attack("fgsm").at(1), m, x, y, seed=0, steps=3)


@pytest.mark.parametrize("severity", [1, 4, 10])
def test_fgsm_is_one_signed_gradient_step(severity: int) -> None:
    g = torch.Generator().manual_seed(severity)
    x = torch.rand(6, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    model, crafting = _net(0), _net(1)
    eps = PAPER_EPS[severity - 1]
    res = run_attack(resolve_attack("fgsm").at(severity), model, x, y, seed=0)
    expected = _hand_fgsm(model, x, y, eps)
    assert torch.allclose(res.adv, expected, atol=1e-12, rtol=0)
    assert float((res.adv - x).abs().max()) == pytest.approx(eps)
    pred = model(expected).argmax(1)
    assert torch.equal(res.correct, pred == y)
    # the transfer twin: the same step on the crafting model, judged on the evaluated one
    one = resolve_attack("fgsm_transfer").at(severity)
    adv = craft_transfer(one, crafting, x, y, seed=0)
    assert torch.allclose(adv, _hand_fgsm(crafting, x, y, eps), atol=1e-12, rtol=0)
    judged = judge_transfer(one, model, x, adv, y)
    assert torch.equal(judged.correct, model(adv).argmax(1) == y)


def test_accuracy_falls_with_strength(tiny_trained: nn.Module) -> None:
    from robench.data import load_dataset

    x, y = load_dataset("shapes", "test").get_batch(torch.arange(1500, 1800))
    spec = resolve_attack("fgsm")
    with torch.no_grad():
        clean = float((tiny_trained(x).argmax(1) == y).float().mean())
    acc = [run_attack(spec.at(s), tiny_trained, x, y, seed=0).accuracy for s in spec.severities]
    assert clean > 0.3
    assert acc[0] <= clean + 0.01 and acc[-1] < clean - 0.15
    assert all(b <= a + 0.02 for a, b in zip(acc, acc[1:], strict=False)), acc
    assert acc[-1] < acc[0]


def test_mat_suite_runs_end_to_end_with_its_strengths(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    sur = _surrogate_file(tmp_path, 3)
    report = evaluate(tiny_trained, suite="mat", out=tmp_path / "r", surrogate=str(sur), **RUN)
    rec = report.record
    assert list(rec.perturbations) == ["fgsm", "fgsm_transfer"]
    for name in ("fgsm", "fgsm_transfer"):
        entry = rec.perturbations[name]
        assert entry.done and [s.severity for s in entry.severities] == list(range(1, 11))
        assert [s.parameter for s in entry.severities] == [
            f"eps={k / 2:g}/255" for k in range(1, 11)
        ]
        assert all(s.n == 40 for s in entry.severities)
        assert entry.params is not None and list(entry.params["eps"]) == pytest.approx(PAPER_EPS)
        mean = np.mean([s.accuracy for s in entry.severities])
        assert entry.scores is not None and entry.scores.accuracy == pytest.approx(mean)
    assert rec.perturbations["fgsm_transfer"].surrogate is not None
    # the white-box sweep agrees with one call per strength on the same images
    from robench.data import load_dataset
    from robench.evaluation.loop import select_indices

    idx = select_indices(2000, 40, 0, "shapes")
    x, y = load_dataset("shapes", "test").get_batch(torch.from_numpy(idx))
    sev7 = rec.perturbations["fgsm"].severities[6]
    direct = run_attack(resolve_attack("fgsm").at(7), tiny_trained, x, y, seed=0)
    assert sev7.n_correct == int(direct.correct.sum())
    # accuracy vs strength: a panel per sweep, eps as tick labels
    assert report.paths["severity_png"].is_file()
    fig = severity_curves(report.to_frame())
    ax = next(a for a in fig.axes if a.get_title() == "fgsm")
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{k / 2:g}" for k in range(1, 11)]
    assert ax.get_xlabel() == "eps (/255)"


def test_dry_run_counts_the_passes_of_the_sweep(tiny_trained: nn.Module, tmp_path: Path) -> None:
    sur = str(_surrogate_file(tmp_path, 4))
    out = tmp_path / "r"
    plan = plan_evaluation(tiny_trained, suite="mat", out=out, surrogate=sur, **RUN)
    rows = {c.what: c for c in plan.counts}
    assert (rows["fgsm"].gradient, rows["fgsm"].forward) == (10 * 40, 2 * 10 * 40)
    t = rows["fgsm_transfer"]
    assert (t.forward, t.surrogate_gradient, t.surrogate_forward) == (800, 400, 400)
    counted = {"forward": 0, "gradient": 0}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        grad = torch.is_grad_enabled() and args[0].requires_grad
        counted["gradient" if grad else "forward"] += args[0].shape[0]

    handle = tiny_trained.register_forward_hook(hook)
    try:
        evaluate(tiny_trained, suite="mat", out=out, surrogate=sur, plots=False, **RUN)
    finally:
        handle.remove()
    assert (plan.total("forward"), plan.total("gradient")) == (
        counted["forward"],
        counted["gradient"],
    )
    # the crafted adversarials of every strength are cached: a new run crafts nothing
    again = plan_evaluation(tiny_trained, suite="mat", out=out, surrogate=sur, resume=False, **RUN)
    t2 = next(c for c in again.counts if c.what == "fgsm_transfer")
    assert (t2.forward, t2.surrogate_gradient, t2.surrogate_forward) == (800, 0, 0)


def _entry(record: Any, name: str) -> dict[str, Any]:
    """A column as its file text (the dataclasses hold NaN, which equals nothing)."""
    return record.perturbations[name].to_dict()  # type: ignore[no-any-return]


def test_a_retrained_surrogate_recomputes_only_the_transfer_columns(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    """A record resumed under another surrogate keeps no transfer number crafted on the old one."""
    old, new = str(_surrogate_file(tmp_path / "a", 5)), str(_surrogate_file(tmp_path / "b", 6))
    out = tmp_path / "r"
    first = evaluate(tiny_trained, suite="mat", out=out, surrogate=old, plots=False, **RUN).record
    assert first.gradient_masking is not None
    plan = plan_evaluation(tiny_trained, suite="mat", out=out, surrogate=new, **RUN)
    assert [c.what for c in plan.counts] == ["fgsm_transfer", "gradient-masking checks"]
    # a run that computes only the white-box column leaves the transfer column alone
    only_fgsm = evaluate(
        tiny_trained, perturbations=["fgsm"], out=out, surrogate=new, plots=False, **RUN
    ).record
    assert _entry(only_fgsm, "fgsm_transfer") == _entry(first, "fgsm_transfer")
    assert only_fgsm.gradient_masking == first.gradient_masking
    again = evaluate(tiny_trained, suite="mat", out=out, surrogate=new, plots=False, **RUN).record
    assert _entry(again, "fgsm") == _entry(first, "fgsm")  # not recomputed
    moved = again.perturbations["fgsm_transfer"]
    assert moved.surrogate is not None and moved.surrogate.source == new
    fresh = evaluate(
        tiny_trained, suite="mat", out=tmp_path / "f", surrogate=new, plots=False, **RUN
    ).record
    assert np.array_equal(moved.bits(), fresh.perturbations["fgsm_transfer"].bits())
    assert not np.array_equal(moved.bits(), first.perturbations["fgsm_transfer"].bits())
    assert again.gradient_masking == fresh.gradient_masking
