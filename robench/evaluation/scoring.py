"""``score_record``: R, baseline markers, paired significance, family means and mCE from the counts.

Everything here is derived from the raw counts a record holds, so scoring is idempotent: a record
scored again (after a resume, or against another baseline) gets the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import cast

import numpy as np

from robench.evaluation.entries import (
    CleanComparison,
    CleanResult,
    Marker,
    PerturbationResult,
    Scores,
)
from robench.evaluation.record import BaselineMce, Record, Summary
from robench.scores import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    FAMILY_GROUPS,
    marker,
    mce,
    mcnemar_p,
    relative_robustness,
)

__all__ = ["SIGNIFICANCE", "score_record"]

SIGNIFICANCE = 0.05


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined ratio is None."""
    return None if math.isnan(value) else value


def _marker(value: float, baseline: float) -> Marker:
    return cast(Marker, marker(value, baseline))  # scores.marker gives "+", "-" or ""


def _clean(clean: CleanResult, base: CleanResult | None) -> CleanResult:
    if base is None:
        return replace(clean, comparison=None)
    a, b = clean.bits(), base.bits()
    return replace(
        clean,
        comparison=CleanComparison(
            baseline_accuracy=base.accuracy,
            marker=_marker(clean.accuracy, base.accuracy),
            p_value=mcnemar_p(a, b) if a.shape == b.shape else None,
        ),
    )


def _scores(entry: PerturbationResult, a_clean: float, base: PerturbationResult | None) -> Scores:
    """Mean accuracy, R, and the marker and paired significance against the baseline's entry."""
    accuracy = float(np.mean([s.accuracy for s in entry.severities]))
    r = _finite(relative_robustness(accuracy, a_clean))  # undefined when A_clean = 0
    if base is None:
        return Scores(
            accuracy=accuracy, R=r, baseline_R=None, marker="", p_value=None, significant=None
        )
    base_r = None if base.scores is None else base.scores.R
    a, b = entry.bits(), base.bits()
    p = mcnemar_p(a, b) if a.shape == b.shape else None
    return Scores(
        accuracy=accuracy,
        R=r,
        baseline_R=base_r,
        marker="" if r is None or base_r is None else _marker(r, base_r),
        p_value=p,
        significant=None if p is None else bool(p < SIGNIFICANCE),
    )


def score_record(record: Record, baseline: Record | None, order: Sequence[str]) -> Record:
    """The record with R, markers, significance, family means and mCE filled from its counts.

    Args:
        record: a record whose clean images are scored.
        baseline: the baseline's scored record on the same images, or None (no markers).
        order: the perturbations to score (others are left as they are), in the order their R
            enter the family means.

    Raises:
        ValueError: the record has no clean accuracy yet.
    """
    if record.clean is None or (baseline is not None and baseline.clean is None):
        raise ValueError("a record is scored once its clean images are")
    a_clean = record.clean.accuracy
    base_done = {} if baseline is None else baseline.done()
    perts = dict(record.perturbations)
    families: dict[str, list[float]] = {}
    for name in order:
        entry = perts.get(name)
        if entry is None or not entry.done:
            continue
        scores = _scores(entry, a_clean, base_done.get(name))
        perts[name] = replace(entry, scores=scores)
        if scores.R is not None:
            group = FAMILY_GROUPS.get(entry.family, entry.family)
            families.setdefault(group, []).append(scores.R)
    # fsum is exactly rounded: the mean does not depend on the order the perturbations were run in
    mean_r = {k: math.fsum(v) / len(v) for k, v in families.items()}
    scored = replace(
        record,
        clean=_clean(record.clean, None if baseline is None else baseline.clean),
        perturbations=perts,
    )
    return replace(scored, summary=_summary(scored, baseline, mean_r))


def _errors(record: Record) -> dict[str, list[float]]:
    """Per corruption with all five severities scored: the error at each severity."""
    return {
        n: [1.0 - s.accuracy for s in e.severities]
        for n in ALEXNET_ERRORS
        if (e := record.perturbations.get(n)) is not None and e.done and len(e.severities) == 5
    }


def _summary(record: Record, baseline: Record | None, mean_r: dict[str, float]) -> Summary:
    assert record.clean is not None  # checked by score_record
    errs = _errors(record)
    clean_err = 1.0 - record.clean.accuracy
    vs_baseline = None
    if baseline is not None and baseline.clean is not None:
        base = _errors(baseline)
        rel = mce(
            errs, base, clean_error=clean_err, reference_clean_error=1.0 - baseline.clean.accuracy
        )
        vs_baseline = BaselineMce(
            mce_vs_baseline=_finite(mce(errs, base)), relative_mce_vs_baseline=_finite(rel)
        )
    imagenet = record.dataset.preset == "imagenet"  # AlexNet's errors are ImageNet-C's
    rel_alexnet = mce(
        errs, ALEXNET_ERRORS, clean_error=clean_err, reference_clean_error=ALEXNET_CLEAN_ERROR
    )
    return Summary(
        mean_R=mean_r,
        mce_corruptions=tuple(sorted(errs)),
        vs_baseline=vs_baseline,
        mce_vs_alexnet=_finite(mce(errs, ALEXNET_ERRORS)) if imagenet else None,
        relative_mce_vs_alexnet=_finite(rel_alexnet) if imagenet else None,
    )
