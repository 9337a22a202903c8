"""Defenses: how a training batch becomes a loss (one training loop serves them all)."""

from __future__ import annotations

from robench.defenses import adversarial, deepcorrect, fusion, mat, perturbed, standard  # noqa: F401  (importing registers the defenses)
from robench.defenses._base import (
    DEFENSES,
    Defense,
    FitFn,
    Setup,
    SetupContext,
    StepContext,
    StepOutput,
    TrainConfig,
    build_defense,
    eval_mode,
    register_defense,
)

__all__ = [
    "DEFENSES",
    "Defense",
    "FitFn",
    "TrainConfig",
    "Setup",
    "SetupContext",
    "StepContext",
    "StepOutput",
    "build_defense",
    "eval_mode",
    "register_defense",
]
