"""Family means average the benchmark's 24 only, whatever extra suites a record also holds."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from robench.evaluation.entries import PerturbationResult, SeverityResult
from robench.evaluation.record import Record, read_record
from robench.evaluation.scoring import score_record
from robench.perturbations import suites

BENCH = suites()["mtlat24"]


def _record() -> Record:
    rec = read_record(
        Path(__file__).parents[1] / "leaderboard/shapes/standard__shapes__s0__n500.json"
    )
    return replace(rec, perturbations={k: rec.perturbations[k] for k in BENCH})


def _corruption(right: int, n: int) -> PerturbationResult:
    sev = SeverityResult.of(np.array([1] * right + [0] * (n - right), dtype=bool), 1, None)
    return PerturbationResult(
        kind="corruption", family="noise", status="done", params={}, severities=(sev,)
    )


def _mean_r_by_hand(rec: Record, names: list[str]) -> float:
    """Mean over the names of (mean accuracy over severities) / clean accuracy, from the counts."""
    assert rec.clean is not None
    clean = rec.clean.n_correct / rec.clean.n
    rs = [
        np.mean([s.n_correct / s.n for s in rec.perturbations[n].severities]) / clean for n in names
    ]
    return math.fsum(rs) / len(rs)


def test_an_extra_corruption_does_not_move_the_benchmarks_mean() -> None:
    rec = _record()
    n = rec.clean.n if rec.clean else 0
    plain = score_record(rec, None, list(rec.perturbations))
    corr = [k for k in BENCH if rec.perturbations[k].kind == "corruption"]
    assert plain.summary is not None
    mean = plain.summary.mean_R["corruption"]
    assert math.isclose(mean, _mean_r_by_hand(rec, corr), rel_tol=1e-12)
    extra = {**rec.perturbations, "gaussian_noise_std": _corruption(0, n)}  # R = 0
    scored = score_record(replace(rec, perturbations=extra), None, list(extra))
    assert scored.summary is not None and scored.summary.mean_R == plain.summary.mean_R
    assert scored.perturbations["gaussian_noise_std"].scores is not None  # still scored


def test_a_record_of_extras_only_averages_them() -> None:
    rec = _record()
    n = rec.clean.n if rec.clean else 0
    right = rec.clean.n_correct // 2 if rec.clean else 0
    extra = {"gaussian_noise_std": _corruption(right, n), "dead_pixels": _corruption(0, n)}
    scored = score_record(replace(rec, perturbations=extra), None, list(extra))
    assert scored.summary is not None
    want = _mean_r_by_hand(replace(rec, perturbations=extra), list(extra))
    assert math.isclose(scored.summary.mean_R["corruption"], want, rel_tol=1e-12)
