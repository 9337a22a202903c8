"""Running attacks: Foolbox adapters for the registry's specs, bounded C&W, masking checks.

The specs themselves (names, budgets, costs) live in :mod:`robench.perturbations.attack_specs`;
this room runs them on a model.
"""

from __future__ import annotations

from ._cw import bounded_cw_l2
from ._foolbox import (
    AttackResult,
    DongLinfMIFGSM,
    SeededLinfPGD,
    attack_cost,
    attack_mode,
    craft_transfer,
    judge_transfer,
    random_start,
    resolve_attack,
    run_attack,
)
from .masking import MaskingCheck, gradient_masking_checks, masking_checks_cost

__all__ = [
    "AttackResult",
    "DongLinfMIFGSM",
    "MaskingCheck",
    "SeededLinfPGD",
    "attack_cost",
    "attack_mode",
    "bounded_cw_l2",
    "craft_transfer",
    "gradient_masking_checks",
    "judge_transfer",
    "masking_checks_cost",
    "random_start",
    "resolve_attack",
    "run_attack",
]
