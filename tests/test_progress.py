"""The progress bar of ``evaluate``: one part at a time by name and place, weighted by the dry
run's pass counts, starting where a resumed run stands, and an ETA from the measured rates."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from robench import evaluate
from robench import perturbations as P
from robench.evaluation import loop
from robench.evaluation.plan import plan_evaluation
from robench.evaluation.progress import (
    GRADIENT_COST,
    MASKING,
    RunProgress,
    run_parts,
)

RUN = {"perturbations": ["contrast", "pgd"], "n_images": 12, "batch_size": 4, "baseline": "none"}


class _Spy(RunProgress):
    """The bar ``evaluate`` makes, kept for the test to read."""

    made: list[RunProgress] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _Spy.made.append(self)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[RunProgress]:
    _Spy.made = []
    monkeypatch.setattr(loop, "RunProgress", _Spy)
    return _Spy.made


def _plan_weight(counts: list[object]) -> float:
    """A plan row as the bar weighs it: forward passes, gradient passes times GRADIENT_COST."""
    return sum(
        c.forward  # type: ignore[attr-defined]
        + c.surrogate_forward  # type: ignore[attr-defined]
        + GRADIENT_COST * (c.gradient + c.surrogate_gradient)  # type: ignore[attr-defined]
        for c in counts
    )


def test_the_bar_shows_each_part_in_order_and_totals_the_plans_weights(
    tiny_trained: nn.Module,
    tmp_path: Path,
    spy: list[RunProgress],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = plan_evaluation(tiny_trained, out=tmp_path, **RUN)
    rec = evaluate(tiny_trained, out=tmp_path, plots=False, progress=True, **RUN).record
    assert rec.clean is not None and set(rec.perturbations) == {"contrast", "pgd"}
    (bar,) = spy
    assert bar.descriptions == ["clean", "contrast 1/2", "pgd 2/2", MASKING]
    assert [c.what for c in plan.counts] == ["clean", "contrast", "pgd", MASKING]
    assert bar.total == _plan_weight(plan.counts)
    # the attack weighs what its passes cost, not what its batches count
    weights = {p.name: p.weight for p in bar.parts.values()}
    assert weights["pgd"] / weights["contrast"] == pytest.approx((2 + 3 * 10) / 5)
    assert bar.initial == 0 and bar.position == bar.total and not bar.left
    shown = capsys.readouterr().err  # what tqdm drew
    places = [shown.rfind(label) for label in ("contrast 1/2", "pgd 2/2", MASKING)]
    assert all(i >= 0 for i in places) and places == sorted(places), shown[-400:]
    assert "100%" in shown


def test_a_resumed_run_starts_at_the_weight_already_done(
    tiny_trained: nn.Module, tmp_path: Path, spy: list[RunProgress]
) -> None:
    first = {**RUN, "perturbations": ["contrast"]}
    evaluate(tiny_trained, out=tmp_path, plots=False, **first)
    evaluate(tiny_trained, out=tmp_path, plots=False, **RUN)
    _, resumed = spy
    weights = {p.name: p.weight for p in resumed.parts.values()}
    assert resumed.initial == weights["clean"] + weights["contrast"] == 12 + 12 * 5
    assert resumed.descriptions == ["pgd 2/2", MASKING]  # the finished parts are not run again
    assert resumed.position == resumed.total == sum(weights.values())


def test_parts_weigh_the_attacks_cost_model() -> None:
    names = ["gaussian_noise", "pgd", "mi_fgsm_0.04", "imagenet_3dcc_fog"]
    parts = run_parts(
        names,
        10,
        severities=lambda n: (1, 2, 3, 4, 5) if n not in P.PERTURBATIONS else P.get(n).severities,
        released=["imagenet_3dcc_fog"],
        masking_batch=4,
        surrogate=False,
    )
    by = {p.name: p for p in parts}
    transfer = P.get("mi_fgsm_0.04").cost()  # 10 surrogate gradient passes, 1 + 2 forward
    assert by["mi_fgsm_0.04"].weight == 10 * (
        transfer.forward_passes
        + transfer.surrogate_forward_passes
        + GRADIENT_COST * transfer.surrogate_gradient_passes
    )
    assert [(p.kind, p.place) for p in parts] == [
        ("clean", ""),
        ("corruption", "1/4"),
        ("white-box", "2/4"),
        ("transfer", "3/4"),
        ("released", "4/4"),
        ("white-box", ""),
    ]
    assert by["imagenet_3dcc_fog"].weight == 50 and by[MASKING].weight > by["pgd"].weight


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_uses_each_kinds_measured_rate() -> None:
    clock = _Clock()
    parts = run_parts(["contrast", "pgd"], 10, severities=loop.severities_of)
    with RunProgress(parts, clock=clock, enabled=False) as bar:
        assert bar.eta() is None  # nothing measured yet
        tick = bar.start("clean", batches=2)
        tick(2)
        clock.now = 10.0  # clean: 10 units in 10 s
        bar.finish()
        tick = bar.start("contrast", batches=2)
        tick(10)
        clock.now = 110.0  # contrast: 50 units in 100 s
        bar.finish()
        tick = bar.start("pgd", batches=2)
        # no white-box part measured yet: the run's mean rate, 110 s / 60 units
        assert bar.eta() == pytest.approx(320 * 110 / 60)
        tick(1)
        clock.now = 142.0  # half of pgd (160 units) in 32 s: 0.2 s per unit from now on
        assert bar.eta() == pytest.approx(160 * 0.2)
        assert bar.position == 60 + 160


def test_the_bar_shows_the_measured_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    clock = _Clock()
    parts = run_parts(["contrast"], 10, severities=lambda n: (1, 2, 3, 4, 5))
    with RunProgress(parts, clock=clock) as bar:
        tick = bar.start("clean", batches=1)
        clock.now = 30.0
        tick(1)
        bar.finish()
        bar.start("contrast", batches=1)
        shown = bar.bar.format_dict
        # tqdm's time left is (total - n) / rate: the rate is set so that it equals eta()
        assert (shown["total"] - shown["n"]) / shown["rate"] == pytest.approx(bar.eta())
        assert bar.eta() == pytest.approx(50 * 3.0)
    assert "contrast 1/1" in capsys.readouterr().err


def test_a_part_started_again_starts_over() -> None:
    parts = run_parts(["pgd"], 8, severities=lambda n: (1,))
    with RunProgress(parts, done=["clean"], enabled=False) as bar:
        tick = bar.start("pgd", batches=2)  # batch size 4
        tick(1)
        assert bar.position == 8 + parts[1].weight / 2
        tick = bar.start("pgd", batches=4)  # out of memory: batch size 2, from the start
        assert bar.position == 8
        tick(3)
        assert bar.position == 8 + parts[1].weight * 3 / 4
        assert bar.descriptions == ["pgd 1/1", "pgd 1/1"]
        bar.finish()
        assert bar.position == bar.total and bar.left == []


def test_no_bar_without_progress(
    tiny_trained: nn.Module,
    tmp_path: Path,
    spy: list[RunProgress],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = {**RUN, "perturbations": ["contrast"]}
    evaluate(tiny_trained, out=tmp_path, plots=False, progress=False, **run)
    (bar,) = spy
    assert bar.bar is None and bar.descriptions == ["clean", "contrast 1/1"]
    assert "contrast 1/1" not in capsys.readouterr().err


def test_an_unforeseen_part_weighs_nothing() -> None:
    with RunProgress(run_parts([], 4, severities=lambda n: (1,)), enabled=False) as bar:
        bar.start("something else", batches=1)(1)
        bar.finish()
        assert bar.position == 0 and bar.total == 4
