"""Gradient-masking sanity checks: is a white-box accuracy inflated by masked gradients?"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from robench.attacks._foolbox import (
    Indices,
    craft_transfer,
    judge_transfer,
    resolve_attack,
    run_attack,
)
from robench.perturbations.attack_specs import AttackCost, AttackSpec

__all__ = ["MaskingCheck", "gradient_masking_checks", "masking_checks_cost"]


@dataclass(frozen=True)
class MaskingCheck:
    """One gradient-masking sanity check.

    Args:
        name: check id (CSV column).
        passed: ``True``/``False``; ``None`` when it could not run (e.g. no surrogate).
        detail: one sentence with the numbers (the reason when it failed).
    """

    name: str
    passed: bool | None
    detail: str


def masking_checks_cost(*, surrogate: bool = True) -> AttackCost:
    """Passes per image of :func:`gradient_masking_checks` (run on at most ``max_images``)."""
    pgd = resolve_attack("pgd")
    total = pgd.cost() + pgd.cost() + pgd.cost() + pgd.cost(40) + pgd.cost()
    return total + resolve_attack("mi_fgsm_0.04").cost() if surrogate else total


def _acc(
    name: str | AttackSpec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    seed: int,
    indices: Indices,
    **kw: Any,
) -> float:
    return run_attack(name, model, x, y, seed=seed, indices=indices, **kw).accuracy


def _check(name: str, ok: bool, values: str, why: str) -> MaskingCheck:
    return MaskingCheck(name, ok, values if ok else f"{why}: {values}")


def gradient_masking_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    seed: int,
    surrogate: nn.Module | None = None,
    epsilon: float = 0.04,
    large_epsilon: float = 0.5,
    max_images: int = 64,
    tolerance: float | None = None,
    zero_threshold: float = 0.05,
    indices: Indices = None,
) -> list[MaskingCheck]:
    """Sanity checks that PGD's accuracy is not inflated by masked gradients (SPEC section 3).

    On the first ``max_images`` images: white-box PGD at ``epsilon`` must not leave more images
    correct than the MI-FGSM transfer attack from ``surrogate`` (skipped without one); PGD accuracy
    must not rise with eps (eps/2, eps, 2 eps) nor with steps (10 vs 40); PGD at ``large_epsilon``
    without random start (so that the gradients, not the noise of a large random start, do the
    work) must bring accuracy to at most ``zero_threshold``. Accuracies may differ by ``tolerance``
    (default: the larger of 0.02 and 2 images) before a check fails.

    Returns:
        One :class:`MaskingCheck` per check; a model is flagged when any ``passed`` is ``False``.
    """
    x, y = x[:max_images], y[:max_images]
    idx = None if indices is None else list(indices)[:max_images]
    tol = max(0.02, 2.0 / max(len(y), 1)) if tolerance is None else float(tolerance)
    a = {
        e: _acc("pgd", model, x, y, seed, idx, epsilon=e)
        for e in (epsilon / 2, epsilon, 2 * epsilon)
    }
    half, at, double = a[epsilon / 2], a[epsilon], a[2 * epsilon]
    more = _acc("pgd", model, x, y, seed, idx, epsilon=epsilon, steps=40)
    pgd = resolve_attack("pgd")
    no_start = dataclasses.replace(pgd, params={**pgd.params, "random_start": False})
    large = _acc(no_start, model, x, y, seed, idx, epsilon=large_epsilon)  # gradients alone
    checks = [
        _check(
            "accuracy_falls_with_eps",
            half + tol >= at and at + tol >= double,
            f"PGD accuracy {half:.3f} / {at:.3f} / {double:.3f}"
            f" at eps {epsilon / 2:g} / {epsilon:g} / {2 * epsilon:g}",
            "accuracy rises with eps",
        ),
        _check(
            "accuracy_falls_with_steps",
            more <= at + tol,
            f"PGD accuracy {at:.3f} with 10 steps, {more:.3f} with 40",
            "accuracy rises with more steps",
        ),
        _check(
            "large_eps_reaches_zero",
            large <= zero_threshold,
            f"PGD accuracy {large:.3f} at eps {large_epsilon:g} (threshold {zero_threshold:g})",
            "a large-eps PGD does not reach ~0%",
        ),
    ]
    if surrogate is None:
        return [
            MaskingCheck("whitebox_below_transfer", None, "skipped: no surrogate given"),
            *checks,
        ]
    adv = craft_transfer("mi_fgsm_0.04", surrogate, x, y, seed=seed, indices=idx, epsilon=epsilon)
    transfer = judge_transfer("mi_fgsm_0.04", model, x, adv, y, epsilon=epsilon).accuracy
    first = _check(
        "whitebox_below_transfer",
        at <= transfer + tol,
        f"white-box PGD accuracy {at:.3f}, transfer MI-FGSM accuracy {transfer:.3f}"
        f" at eps {epsilon:g}",
        "white-box accuracy exceeds black-box accuracy",
    )
    return [first, *checks]
