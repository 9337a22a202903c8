"""``score_record``: R, baseline markers, paired significance, family means and mCE from the counts.

Everything here is derived from the raw counts a record holds, so scoring is idempotent: a record
scored again (after a resume, or against another baseline) gets the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import cast

import numpy as np

from robench._seeding import derive_seed
from robench.evaluation.entries import (
    CleanComparison,
    CleanResult,
    Marker,
    PerturbationResult,
    Scores,
)
from robench.evaluation.record import BaselineMce, MaskingCheck, Record, Summary
from robench.perturbations import PERTURBATIONS, suites
from robench.scores import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    FAMILY_GROUPS,
    marker,
    mce,
    mcnemar_p,
    paired_r_bootstrap,
    relative_robustness,
)

__all__ = [
    "AA_MASKING_GAP",
    "RESAMPLES",
    "SIGNIFICANCE",
    "autoattack_masking_check",
    "score_record",
]

SIGNIFICANCE = 0.05
RESAMPLES = 2_000  # paired-bootstrap resamples of dR per perturbation (p never below 1e-3)
AA_MASKING_GAP = 0.05  # PGD-10 more than 5 points above AutoAttack at the same eps: flagged
AA_CHECK = "pgd_close_to_autoattack"


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
            # the paper marks clean accuracy to 0.1 percentage point (3 decimals of a fraction)
            marker=cast(Marker, marker(clean.accuracy, base.accuracy, decimals=3)),
            p_value=mcnemar_p(a, b) if a.shape == b.shape else None,
        ),
    )


def _scores(
    entry: PerturbationResult,
    clean: CleanResult,
    base: PerturbationResult | None,
    base_clean: CleanResult | None,
    seed: int,
) -> Scores:
    """Mean accuracy, R, and the marker and paired significance of dR against the baseline's R.

    The star tests what the marker shows: a paired bootstrap of dR = R - baseline_R, the image
    being the unit (a corruption's severities averaged per image, never pooled as more pairs).
    """
    accuracy = float(np.mean([s.accuracy for s in entry.severities]))
    r = _finite(relative_robustness(accuracy, clean.accuracy))  # undefined when A_clean = 0
    scores = Scores(
        accuracy=accuracy, R=r, baseline_R=None, marker="", p_value=None, significant=None
    )
    if base is None or base_clean is None:
        return scores
    base_r = None if base.scores is None else base.scores.R
    mark: Marker = "" if r is None or base_r is None else _marker(r, base_r)
    scores = replace(scores, baseline_R=base_r, marker=mark)
    mine = np.stack([s.bits() for s in entry.severities])
    theirs = np.stack([s.bits() for s in base.severities])
    if mine.shape != theirs.shape or not clean.n == base_clean.n == mine.shape[1]:
        return scores
    test = paired_r_bootstrap(
        clean.bits(), mine, base_clean.bits(), theirs, resamples=RESAMPLES, seed=seed
    )
    if math.isnan(test.p_value):
        return scores  # R undefined (clean accuracy 0): no comparison
    return replace(
        scores,
        p_value=test.p_value,
        significant=test.significant,
        delta_R=_finite(test.delta_r),
        delta_R_ci95=(test.ci_low, test.ci_high),
    )


def _eps(entry: PerturbationResult) -> float | None:
    eps = (entry.params or {}).get("eps")
    return None if eps is None else float(eps)


def autoattack_masking_check(
    perturbations: Mapping[str, PerturbationResult],
) -> MaskingCheck | None:
    """PGD-10 against AutoAttack (L-inf) at the same eps, when a run scored both.

    AutoAttack is the stronger attack at a given budget, so a PGD-10 accuracy more than
    :data:`AA_MASKING_GAP` above AutoAttack's says that PGD's gradients were misleading: the model's
    PGD numbers (and those of the other gradient attacks) overstate its robustness. ``None`` when
    ``autoattack_linf`` or a PGD-10 entry at its eps (``pgd_8_255`` by default) was not scored.

    Example:
        >>> from robench.evaluation.entries import SeverityResult
        >>> def entry(eps, correct):
        ...     sev = SeverityResult.of(np.array(correct, dtype=bool), 1, None)
        ...     return PerturbationResult(kind="attack", family="white-box", status="done",
        ...                               params={"eps": eps}, severities=(sev,))
        >>> pgd, aa = entry(8 / 255, [1, 1, 0, 0]), entry(8 / 255, [1, 0, 0, 0])
        >>> check = autoattack_masking_check({"pgd_8_255": pgd, "autoattack_linf": aa})
        >>> check.passed
        False
        >>> print(check.detail)  # doctest: +NORMALIZE_WHITESPACE
        PGD-10 accuracy 0.500 is 25.0 points above AutoAttack 0.250 at eps 0.0314
        (flagged above 5 points)
    """
    aa = perturbations.get("autoattack_linf")
    if aa is None or not aa.done or _eps(aa) is None:
        return None
    for name, entry in perturbations.items():
        spec = PERTURBATIONS.get(name) if name in PERTURBATIONS else None
        if (
            spec is None
            or getattr(spec, "algorithm", None) != "pgd"
            or not entry.done
            or _eps(entry) is None
            or not math.isclose(_eps(entry) or 0.0, _eps(aa) or 0.0, rel_tol=1e-9)
        ):
            continue
        a_pgd, a_aa = entry.severities[0].accuracy, aa.severities[0].accuracy
        gap = a_pgd - a_aa
        values = (
            f"PGD-10 accuracy {a_pgd:.3f} is {100 * gap:.1f} points above AutoAttack"
            f" {a_aa:.3f} at eps {_eps(aa):.3g} (flagged above {100 * AA_MASKING_GAP:g} points)"
        )
        return MaskingCheck(name=AA_CHECK, passed=gap <= AA_MASKING_GAP, detail=values)
    return None


def _with_aa_check(
    checks: tuple[MaskingCheck, ...] | None, perturbations: Mapping[str, PerturbationResult]
) -> tuple[MaskingCheck, ...] | None:
    """The record's masking checks with the AutoAttack comparison put in (or refreshed)."""
    check = autoattack_masking_check(perturbations)
    if check is None:
        return checks
    return (*(c for c in checks or () if c.name != AA_CHECK), check)


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
    base_done = {} if baseline is None else baseline.done()
    perts = dict(record.perturbations)
    families: dict[str, list[float]] = {}
    averaged = _averaged(record, order)
    for name in order:
        entry = perts.get(name)
        if entry is None or not entry.done:
            continue
        seed = derive_seed(record.config.seed, "significance", name)
        base_clean = None if baseline is None else baseline.clean
        scores = _scores(entry, record.clean, base_done.get(name), base_clean, seed)
        perts[name] = replace(entry, scores=scores)
        if scores.R is not None and name in averaged:
            group = FAMILY_GROUPS.get(entry.family, entry.family)
            families.setdefault(group, []).append(scores.R)
    # fsum is exactly rounded: the mean does not depend on the order the perturbations were run in
    mean_r = {k: math.fsum(v) / len(v) for k, v in families.items()}
    scored = replace(
        record,
        clean=_clean(record.clean, None if baseline is None else baseline.clean),
        perturbations=perts,
        gradient_masking=_with_aa_check(record.gradient_masking, perts),
    )
    return replace(scored, summary=_summary(scored, baseline, mean_r))


def _averaged(record: Record, order: Sequence[str]) -> set[str]:
    """The entries whose R enter the family means.

    The benchmark's own 24 (``mtlat24``) when the record holds any of them, so that a model
    scored on extra suites as well (``sensor``, the FGSM sweep, ``context``) keeps family means
    comparable with every other model's; otherwise every entry scored. The opt-in AutoAttack
    suite is reported beside the means, never averaged in.
    """
    done = {n for n in order if (e := record.perturbations.get(n)) is not None and e.done}
    done -= set(suites()["autoattack"])
    core = done & set(suites()["mtlat24"])
    return core or done


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
