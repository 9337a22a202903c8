"""Defenses: how a training batch becomes a loss (one training loop serves them all)."""

from __future__ import annotations

from . import adversarial, deepcorrect, fusion, mat, perturbed, standard  # noqa: F401  (importing registers the defenses)
from ._base import (
    DEFENSES, Defense, Setup, SetupContext, StepContext, StepOutput, build_defense, eval_mode, register_defense,
)  # fmt: skip

__all__ = [
    "DEFENSES", "Defense", "Setup", "SetupContext", "StepContext", "StepOutput", "build_defense", "eval_mode",
    "register_defense",
]  # fmt: skip
