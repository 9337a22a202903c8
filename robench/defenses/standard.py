"""Plain training: cross-entropy on clean images (Laugros et al.'s baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from robench.defenses._base import DefenseBase, StepContext, StepOutput, register_defense


@register_defense("standard", "plain cross-entropy on clean images", "Laugros et al.")
@dataclass(frozen=True)
class Standard(DefenseBase):
    """Cross-entropy on the clean batch."""

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Cross-entropy of the model's logits on ``x``."""
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits)
