"""The significance star on the committed leaderboard, recomputed independently.

For every model and perturbation with a marker, an independent paired bootstrap of
dR = R_model - R_baseline (written here with a plain loop over resamples, its own random stream,
sharing no code with robench.scores) must agree with the stored star, except where its own
p-value lies so close to 5 % that two bootstraps may honestly disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robench.evaluation.record import Record, read_record

RESULTS = Path(__file__).resolve().parents[1] / "leaderboard" / "shapes"
RECORDS = {p.name: read_record(p) for p in sorted(RESULTS.glob("*.json"))}
BASELINE = next(r for r in RECORDS.values() if r.model.id == "standard")


def _unpack(entry: object) -> np.ndarray:
    return np.asarray(entry.bits(), dtype=float)  # type: ignore[attr-defined]


def independent_bootstrap(
    mc: np.ndarray, mp: np.ndarray, bc: np.ndarray, bp: np.ndarray, *, resamples: int, seed: int
) -> tuple[float, float, float]:
    """95 % percentile interval of dR and a two-sided p-value, one resample at a time."""
    rng = np.random.default_rng(seed)
    n = mc.shape[0]
    m_score, b_score = mp.mean(axis=0), bp.mean(axis=0)  # per image: mean over severities
    deltas = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        if mc[idx].sum() == 0 or bc[idx].sum() == 0:
            continue
        r_model = m_score[idx].sum() / mc[idx].sum()
        r_base = b_score[idx].sum() / bc[idx].sum()
        deltas.append(r_model - r_base)
    d = np.array(deltas)
    below, above = (d <= 0).sum(), (d >= 0).sum()
    p = min(1.0, 2 * (1 + min(below, above)) / (len(d) + 1))
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi), float(p)


def _cases() -> list[tuple[str, str]]:
    return [
        (file, name)
        for file, rec in RECORDS.items()
        if rec.model.id != "standard"
        for name, entry in rec.done().items()
        if entry.scores is not None and entry.scores.marker
    ]


def test_every_marked_cell_has_a_paired_test() -> None:
    cases = _cases()
    assert len(cases) > 100
    for file, name in cases:
        s = RECORDS[file].perturbations[name].scores
        assert s is not None and s.p_value is not None and s.delta_R is not None, (file, name)


@pytest.mark.slow
def test_every_star_agrees_with_an_independent_paired_bootstrap() -> None:
    disagreements, checked = [], 0
    for file, name in _cases():
        rec: Record = RECORDS[file]
        entry, base = rec.perturbations[name], BASELINE.perturbations[name]
        assert rec.clean is not None and BASELINE.clean is not None
        mp = np.stack([_unpack(s) for s in entry.severities])
        bp = np.stack([_unpack(s) for s in base.severities])
        lo, hi, p = independent_bootstrap(
            _unpack(rec.clean), mp, _unpack(BASELINE.clean), bp, resamples=2000, seed=7
        )
        if 0.02 < p < 0.1:
            continue  # too close to 5 % for two Monte Carlo tests to be required to agree
        checked += 1
        mine = bool(lo > 0 or hi < 0)
        if mine != bool(entry.scores and entry.scores.significant):
            disagreements.append(
                f"{rec.model.id}/{name}: stored {entry.scores}, independent p={p:.3g}"
            )
    assert checked > 100
    assert not disagreements, disagreements


def test_no_p_value_smaller_than_the_images_can_give() -> None:
    for rec in RECORDS.values():
        n = rec.dataset.n_images
        for entry in rec.done().values():
            if entry.scores is not None and entry.scores.p_value is not None:
                assert entry.scores.p_value >= 2 * 0.5**n
                assert entry.scores.p_value >= 2 / (2000 + 1) - 1e-12


def test_independent_bootstrap_sees_a_clear_difference_and_none() -> None:
    rng = np.random.default_rng(0)
    clean = np.ones(200)
    worse = (rng.random((5, 200)) < 0.5).astype(float)
    better = np.ones((5, 200))
    lo, hi, p = independent_bootstrap(clean, better, clean, worse, resamples=500, seed=1)
    assert lo > 0.4 and p < 0.01
    lo, hi, p = independent_bootstrap(clean, worse, clean, worse, resamples=500, seed=1)
    assert lo == hi == 0.0 and p == 1.0
