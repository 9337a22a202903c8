"""The 5 attacks of the M-TLAT benchmark, registered beside the corruptions.

The specs carry the published parameters; running them is the job of :mod:`robench.attacks`
(Foolbox-backed). Until that exists, each entry says ``implemented=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._base import PERTURBATIONS

__all__ = ["AttackSpec", "ATTACK_NAMES"]


@dataclass(frozen=True)
class AttackSpec:
    """Metadata of an adversarial attack entry.

    Args:
        name: stable name (CSV column).
        family: ``white-box`` or ``black-box``.
        description: one line.
        source: paper the parameters come from.
        params: the published parameters (eps in [0, 1] pixel units, steps, ...).
        implemented: whether :mod:`robench.attacks` can run it yet.
    """

    name: str
    family: str
    description: str
    source: str
    params: Mapping[str, Any] = field(default_factory=dict)
    implemented: bool = False
    kind: str = "attack"
    severities: tuple[int, ...] = (1,)

    def parameter_text(self, preset: str = "cifar") -> list[str]:
        """Human-readable parameters (one 'severity')."""
        return [", ".join(f"{k}={v}" for k, v in self.params.items())]


_SRC = "Laugros et al. (M-TLAT), section 4.1"
_SPECS = (
    AttackSpec("pgd", "white-box", "PGD, L-inf, untargeted, random start", _SRC,
               {"eps": 0.04, "steps": 10, "random_start": True}),
    AttackSpec("pgd_ll", "white-box", "PGD, L-inf, targeted to the least-likely clean class", _SRC,
               {"eps": 0.04, "steps": 10}),
    AttackSpec("cw_l2", "white-box", "Carlini-Wagner L2, success counted inside an L2 bound", _SRC,
               {"steps": 40, "confidence": 50, "l2_bound": "0.5*side/32"}),
    AttackSpec("mi_fgsm_0.04", "black-box", "MI-FGSM transferred from a VGG surrogate", _SRC,
               {"eps": 0.04, "steps": 10, "decay": 1.0}),
    AttackSpec("mi_fgsm_0.08", "black-box", "MI-FGSM transferred from a VGG surrogate", _SRC,
               {"eps": 0.08, "steps": 10, "decay": 1.0}),
)  # fmt: skip
ATTACK_NAMES = tuple(s.name for s in _SPECS)
for _spec in _SPECS:
    PERTURBATIONS.add(_spec.name, _spec)
