"""The 5 attacks of the M-TLAT benchmark, registered beside the corruptions.

The specs carry every parameter an attack needs (the published ones and robench's choices where
the paper is silent); running them is the job of :mod:`robench.attacks` (Foolbox-backed). This
module imports neither Foolbox nor any model code, so listing the registry stays cheap.

Choices where the paper (Laugros et al., section 4.1) is silent, and why:

- PGD and PGD-LL step: ``2.5 * eps / steps`` (Madry et al.), so 10 steps can walk from the
  random start to the far side of the eps-ball. Foolbox's default ``0.01 / 0.3 * eps`` would cover
  only a third of the ball in 10 steps. PGD starts uniformly in the ball; PGD-LL (Kurakin et al.'s
  least-likely-class method) starts at the clean image.
- MI-FGSM: ``alpha = eps / steps`` and no random start, as Dong et al.
- C&W-L2, bounded: the paper runs "CW_2 as an L2 white-box bounded attack" with 40 iterations
  and confidence 50 but gives no bound and no constant. Carlini and Wagner's attack is
  unbounded: it minimises ``||delta||_2^2 + c * f(x + delta)`` and succeeds once the margin
  ``max_{j != y} z_j - z_y`` reaches the confidence. What that variant measured is whether 40
  iterations reach a margin of 50 with no limit on the perturbation, a property of the scale of
  the model's logits more than of its robustness (a model with small logits "resists" it at any
  distance). robench's first version projected those margin-50 adversarials onto the L2 ball and
  kept the clean image where there was none, so it never looked for a misclassification inside
  the ball: on ``zoo:standard`` (256 ``shapes`` test images, radius 0.5) it left 0.707 accuracy
  where Foolbox's L2 PGD leaves 0.043. The unbounded variant is not kept: its numbers are not
  robustness scores and its constant and step were never published, so it could not reproduce
  Table 1c anyway.
  robench's ``cw_l2`` column is the bounded attack with C&W's objective, run as C&W's targeted
  attack against the three highest-scoring wrong classes of the clean image: 40 gradient steps
  in all, split into three runs of 14, 13 and 13 from the clean image, each maximising C&W's
  targeted margin ``min(z_t - max_{j != t} z_j, kappa = 50)`` by normalised-gradient steps of L2
  length ``2.5 * eps / 14`` (PGD's rule over one run), each step projected onto the L2 ball of
  radius ``0.5 * side / 32`` and the [0, 1] box. An image is broken when any iterate of any run is
  misclassified; the best iterate is returned (:func:`robench.attacks.bounded_cw_l2`). Cost: 40
  forward + backward passes and one forward pass on each run's last iterate, beside every
  attack's clean and judging passes.
  Why three targets: one run of the untargeted margin ``max_{j != y} z_j - z_y`` was the weaker
  L2 attack on the converged ``zoo:standard`` (200 ``shapes`` test images, radius 0.5): it left
  0.250 accuracy where Foolbox's ``L2PGD`` (100 steps, 2 random restarts) leaves 0.175. The
  three targeted runs leave 0.140 with the same 40 gradient passes, and on ``zoo:constant`` and
  the 6-epoch ``fgsm`` and ``mtlat`` 0.495 / 0.515 / 0.360 against L2PGD's 0.515 / 0.570 / 0.395
  (``benchmarks/results/attacks-cw-targets-2026-12-06.md``). ``targets=None`` in the spec's
  parameters gives the single untargeted run.

Beyond the paper's five, the opt-in suite ``autoattack`` holds Croce and Hein's AutoAttack (ICML
2020), standard version, run through the authors' code (``pyautoattack``,
:mod:`robench.attacks._autoattack`): ``autoattack_linf`` at eps 8/255 at every preset and
``autoattack_l2`` at ``0.5 * side / 32`` (C&W's radius rule above: 0.5 at 32 px, the radius
AutoAttack is reported at on CIFAR-10). Neither is part of ``mtlat24`` nor of :data:`ATTACK_NAMES`.
The suite also holds ``pgd_8_255``, robench's PGD-10 at 8/255: a model whose PGD-10 accuracy is
more than 5 points above AutoAttack's at the same eps is flagged for gradient masking
(:func:`robench.evaluation.scoring.autoattack_masking_check`).

The opt-in suite ``mat`` holds the FGSM strength sweep of Song et al. (MAT, section 5.1), whose
claim is a wider working range over attack strengths: ``fgsm`` (white-box) and ``fgsm_transfer``
(crafted once on a separate crafting model, the paper's own protocol: its test examples come from
a "model to craft adversarial examples" that is not the victim; robench uses the transfer
surrogate, ``--surrogate``). Each is one entry whose severities are strengths: L-inf eps
0.5/255, 1/255, ..., 5/255 (10 levels), the paper's CIFAR-10/100 and SVHN range
``eps in [0, 5]`` in steps of 0.5, read on the 0-255 pixel scale (5 on the [0, 1] scale would
erase the image; at 5/255 the paper's CIFAR-10 model falls from 78 % to 43 %). Eps 0 is the clean
accuracy, recorded anyway. The same strengths are used at every preset; the paper's MNIST range
(0 to 0.3 on [0, 1]) is not used. FGSM is one step ``x + eps * sign(grad CE)``, clipped to
[0, 1], no random start (Foolbox's ``LinfFastGradientAttack``); a sweep's ``params["eps"]``
lists the strengths and :meth:`AttackSpec.at` gives the single-strength attack of one severity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, field, replace
from typing import Any, Literal

from robench.perturbations._base import PERTURBATIONS, register_suite

__all__ = [
    "ATTACK_NAMES",
    "AUTOATTACK_NAMES",
    "PGD_AT_AA",
    "AttackCost",
    "AttackSpec",
    "MAT_NAMES",
    "autoattack_cost",
    "cw_l2_bound",
    "cw_runs",
]

Algorithm = Literal["pgd", "pgd_ll", "cw_l2", "mi_fgsm", "fgsm", "autoattack"]
Mode = Literal["whitebox", "transfer"]

CW_BOUND_AT_32 = 0.5
STEP_FACTOR: Mapping[str, float] = {
    "pgd": 2.5,
    "pgd_ll": 2.5,
    "mi_fgsm": 1.0,
    "cw_l2": 2.5,
    "fgsm": 1.0,
}


def cw_runs(steps: int, targets: int | None) -> int:
    """How many runs ``cw_l2`` splits its ``steps`` into: one untargeted, else one per target.

    Never more runs than steps; :func:`robench.attacks.bounded_cw_l2` deals the steps out.

    Example:
        >>> cw_runs(40, 3), cw_runs(40, None), cw_runs(2, 3)
        (3, 1, 2)
    """
    return 1 if targets is None else min(max(1, int(targets)), max(1, int(steps)))


def cw_l2_bound(side: int, at_32: float = CW_BOUND_AT_32) -> float:
    """The C&W L2 radius for images of side ``side``: ``at_32 * side / 32`` (0.5 at 32 px)."""
    if side < 1:
        raise ValueError(f"image side must be positive, got {side!r}")
    return float(at_32) * side / 32.0


@dataclass(frozen=True)
class AttackCost:
    """Model evaluations one attack needs per image (what a ``--dry-run`` multiplies by N).

    Args:
        gradient_passes: forward + backward passes on the attacked model.
        forward_passes: forward-only passes on the attacked model (clean check, final judgement).
        surrogate_gradient_passes: forward + backward passes on the surrogate (transfer attacks).
        surrogate_forward_passes: forward-only passes on the surrogate.
    """

    gradient_passes: int
    forward_passes: int
    surrogate_gradient_passes: int = 0
    surrogate_forward_passes: int = 0

    def __add__(self, other: AttackCost) -> AttackCost:
        return AttackCost(
            self.gradient_passes + other.gradient_passes,
            self.forward_passes + other.forward_passes,
            self.surrogate_gradient_passes + other.surrogate_gradient_passes,
            self.surrogate_forward_passes + other.surrogate_forward_passes,
        )

    @property
    def total_passes(self) -> int:
        """Every pass, on both models."""
        return (
            self.gradient_passes
            + self.forward_passes
            + self.surrogate_gradient_passes
            + self.surrogate_forward_passes
        )


@dataclass(frozen=True)
class AttackSpec:
    """An adversarial attack entry.

    Args:
        name: stable name (CSV column).
        family: ``white-box`` or ``black-box``.
        description: one line.
        source: paper the parameters come from.
        params: every parameter :mod:`robench.attacks` uses (eps in [0, 1] pixel units, steps...).
            A strength sweep lists its eps values, one per severity (:attr:`strengths`).
        implemented: whether :mod:`robench.attacks` can run it.
        algorithm: ``pgd``, ``pgd_ll``, ``cw_l2``, ``mi_fgsm``, ``fgsm`` or ``autoattack``.
        mode: ``whitebox`` (crafted on the evaluated model) or ``transfer`` (on a surrogate).
        norm: ``linf`` or ``l2``.
        surrogate: architecture crafting a transfer attack (``None`` for white-box).
    """

    name: str
    family: str
    description: str
    source: str
    params: Mapping[str, Any] = field(default_factory=dict)
    implemented: bool = True
    algorithm: Algorithm = "pgd"
    mode: Mode = "whitebox"
    norm: Literal["linf", "l2"] = "linf"
    surrogate: str | None = None
    kind: str = "attack"
    severities: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if self.strengths and self.severities != tuple(range(1, len(self.strengths) + 1)):
            raise ValueError(
                f"{self.name!r} sweeps {len(self.strengths)} strengths, so its severities must be "
                f"1..{len(self.strengths)}, got {self.severities}"
            )

    @property
    def strengths(self) -> tuple[float, ...]:
        """A sweep's L-inf eps per severity (severity ``s`` at ``strengths[s - 1]``); else ``()``.

        Example:
            >>> [round(e * 255, 2) for e in PERTURBATIONS.get("fgsm").strengths][:3]
            [0.5, 1.0, 1.5]
        """
        eps = self.params.get("eps")
        return tuple(float(e) for e in eps) if isinstance(eps, (tuple, list)) else ()

    def at(self, severity: int) -> AttackSpec:
        """The single-strength attack run at ``severity`` (the spec itself when it is no sweep).

        Example:
            >>> PERTURBATIONS.get("fgsm").at(4).epsilon == 2 / 255
            True
        """
        if severity not in self.severities:
            levels = f"{self.severities[0]}..{self.severities[-1]}"
            raise ValueError(f"severity must be in {levels} for {self.name}, got {severity!r}")
        if not self.strengths:
            return self
        params = {**self.params, "eps": self.strengths[severity - 1]}
        return replace(self, params=params, severities=(1,))

    def parameter_text(self, preset: str = "cifar") -> list[str]:
        """Human-readable parameters, one line per severity (a sweep: ``eps=k/255`` each)."""
        if self.strengths:
            return [f"eps={e * 255:g}/255" for e in self.strengths]
        return [", ".join(f"{k}={v}" for k, v in self.params.items())]

    @property
    def epsilon(self) -> float | None:
        """The L-inf budget; ``None`` for an L2 attack (it depends on the side) or a sweep."""
        eps = self.params.get("eps")
        return None if eps is None or self.strengths else float(eps)

    @property
    def steps(self) -> int:
        """Gradient steps."""
        return int(self.params["steps"])

    def budget(self, side: int) -> float:
        """The perturbation bound at image side ``side``: eps (L-inf) or the L2 radius.

        Example:
            >>> PERTURBATIONS.get("autoattack_l2").budget(64)
            1.0
        """
        if self.norm == "l2":
            return cw_l2_bound(side, float(self.params.get("l2_bound_at_32", CW_BOUND_AT_32)))
        if self.strengths:
            raise ValueError(
                f"{self.name!r} sweeps {len(self.strengths)} strengths: "
                "pass epsilon, or run one severity's attack (spec.at(severity))"
            )
        return float(self.params["eps"])

    def step_size(self, epsilon: float, steps: int) -> float:
        """Absolute step: ``2.5 * eps / steps`` (PGD(-LL), C&W-L2); ``eps / steps`` (MI-, FGSM)."""
        if self.algorithm not in STEP_FACTOR:
            raise ValueError(f"{self.name!r} is not a gradient attack; it has no step size rule")
        return STEP_FACTOR[self.algorithm] * float(epsilon) / int(steps)

    def cost(self, steps: int | None = None) -> AttackCost:
        """Passes per image of one :func:`robench.attacks.run_attack` call.

        Every call runs one clean forward pass (targets, logit check) and one on the adversarials
        (judgement) on the evaluated model; the gradient steps run on the surrogate for a transfer
        attack (plus one clean forward pass there). C&W adds one forward pass per target run that
        scores the run's last iterate (its gradient passes score the earlier ones). AutoAttack's
        count is an upper bound whose ``steps`` cannot be changed (:func:`autoattack_cost`). A
        strength sweep is one call per strength, so its cost is that of one strength times their
        number.

        Example:
            >>> c = PERTURBATIONS.get("cw_l2").cost()
            >>> c.gradient_passes, c.forward_passes
            (40, 5)
        """
        if self.algorithm == "autoattack":
            if steps is not None:
                raise ValueError(f"{self.name!r} has AutoAttack's fixed budget; steps can't be set")
            return autoattack_cost(**_aa_budget(self.params))
        if self.strengths:
            one = self.at(1).cost(steps)
            k = len(self.strengths)
            return AttackCost(*(k * v for v in astuple(one)))
        n = int(self.steps if steps is None else steps)
        if self.mode == "transfer":
            return AttackCost(0, 2, surrogate_gradient_passes=n, surrogate_forward_passes=1)
        if self.algorithm == "cw_l2":  # + one forward pass on each run's last iterate
            runs = cw_runs(n, self.params.get("targets"))
            return AttackCost(gradient_passes=n, forward_passes=2 + runs)
        return AttackCost(gradient_passes=n, forward_passes=2)


def autoattack_cost(
    *, iterations: int = 100, targets: int = 9, square_queries: int = 5000
) -> AttackCost:
    """Upper bound on the passes per image of one AutoAttack (standard version) run.

    Counted from the authors' code (``pyautoattack`` 0.2.0 = fra31/auto-attack a392200), called
    once per stage by robench (so that a stopped run resumes after its last finished stage), for
    an image that no stage breaks, so that it goes through all four:

    ====================  ===============================  ====================================
    stage                 forward + backward               forward only
    ====================  ===============================  ====================================
    wrapper, per stage    -                                7 checks (randomness x5, output
                                                           range, dynamic defense), 1 clean,
                                                           1 judgement: 4 x 9
    APGD-CE               ``iterations + 1`` (start)       1 (clean prediction)
    APGD-T                ``targets * (iterations + 1)``   ``1 + targets`` (target ranking)
    FAB-T                 ``targets * iterations``         ``1 + targets * (iterations + 3)``:
                                                           each iteration scores its point
    Square                -                                ``square_queries + 3``: first
                                                           query, then one per iteration
    robench               -                                2 (clean logits, judgement)
    ====================  ===============================  ====================================

    At the defaults: 1,910 gradient and 5,980 forward passes. The real cost is lower, often by
    far: each stage runs only on the images still classified correctly (an image the model
    already gets wrong costs the 9 wrapper and 2 robench passes; one broken by APGD-CE about
    102 gradient passes more), APGD and FAB skip targets once an image is broken, and Square
    stops when every image of its batch is broken. For a model with fewer than 10 classes the
    targets are ``classes - 1``.

    Example:
        >>> c = autoattack_cost()
        >>> c.gradient_passes, c.forward_passes
        (1910, 5980)
    """
    it, t, q = int(iterations), int(targets), int(square_queries)
    grad = (it + 1) + t * (it + 1) + t * it
    fwd = 4 * (7 + 1 + 1) + 1 + (1 + t) + (1 + t * (it + 3)) + (q + 3) + 2
    return AttackCost(gradient_passes=grad, forward_passes=fwd)


def _aa_budget(params: Mapping[str, Any]) -> dict[str, int]:
    return {
        "iterations": int(params["steps"]),
        "targets": int(params["targets"]),
        "square_queries": int(params["square_queries"]),
    }


_SRC = "Laugros et al. (M-TLAT), section 4.1"
_SRC_MI = _SRC + "; Dong et al. 2018 (MI-FGSM)"
_PGD = {"eps": 0.04, "steps": 10, "step": "2.5*eps/steps", "random_start": True}
_PGD_LL = {"eps": 0.04, "steps": 10, "step": "2.5*eps/steps", "random_start": False}
_CW = {
    "steps": 40,
    "targets": 3,
    "confidence": 50,
    "step": "2.5*eps/run_steps",
    "l2_bound_at_32": 0.5,
}


def _mi(eps: float) -> dict[str, Any]:
    return {"eps": eps, "steps": 10, "decay": 1.0, "step": "eps/steps", "random_start": False}


_SPECS = (
    AttackSpec("pgd", "white-box", "PGD, L-inf, untargeted, random start", _SRC, _PGD),
    AttackSpec(
        "pgd_ll",
        "white-box",
        "PGD, L-inf, targeted to the least-likely clean class",
        _SRC,
        _PGD_LL,
        algorithm="pgd_ll",
    ),
    AttackSpec(
        "cw_l2",
        "white-box",
        "Carlini-Wagner margin loss (confidence 50), optimised inside an L2 ball",
        _SRC,
        _CW,
        algorithm="cw_l2",
        norm="l2",
    ),
    AttackSpec(
        "mi_fgsm_0.04",
        "black-box",
        "MI-FGSM transferred from a VGG surrogate",
        _SRC_MI,
        _mi(0.04),
        algorithm="mi_fgsm",
        mode="transfer",
        surrogate="vgg11",
    ),
    AttackSpec(
        "mi_fgsm_0.08",
        "black-box",
        "MI-FGSM transferred from a VGG surrogate",
        _SRC_MI,
        _mi(0.08),
        algorithm="mi_fgsm",
        mode="transfer",
        surrogate="vgg11",
    ),
)
ATTACK_NAMES = tuple(s.name for s in _SPECS)

_SRC_AA = "Croce and Hein 2020 (AutoAttack), standard version; code: fra31/auto-attack a392200"
_AA = {"version": "standard", "steps": 100, "targets": 9, "square_queries": 5000}
_AA_SPECS = (
    AttackSpec(
        "autoattack_linf",
        "white-box",
        "AutoAttack (APGD-CE, APGD-T, FAB-T, Square), L-inf",
        _SRC_AA,
        {"eps": 8 / 255, **_AA},
        algorithm="autoattack",
    ),
    AttackSpec(
        "autoattack_l2",
        "white-box",
        "AutoAttack (APGD-CE, APGD-T, FAB-T, Square), L2 radius 0.5 x side / 32",
        _SRC_AA,
        {"l2_bound_at_32": CW_BOUND_AT_32, **_AA},
        algorithm="autoattack",
        norm="l2",
    ),
)
AUTOATTACK_NAMES = tuple(s.name for s in _AA_SPECS)

# PGD-10 at AutoAttack's L-inf eps: the partner of the masking flag, which compares the two at the
# same budget (``pgd`` runs at the paper's 0.04, not at 8/255).
PGD_AT_AA = AttackSpec(
    "pgd_8_255",
    "white-box",
    "PGD-10, L-inf, random start, at AutoAttack's eps 8/255 (the masking flag compares the two)",
    _SRC,
    {**_PGD, "eps": 8 / 255},
)
_SRC_MAT = (
    "Song et al. (MAT), section 5.1: FGSM sweep, CIFAR-10 eps 0 to 5 (of 255) in steps of 0.5"
)
_FGSM = {"eps": tuple(k / 2 / 255 for k in range(1, 11)), "steps": 1, "step": "eps"}
_MAT_SPECS = (
    AttackSpec(
        "fgsm",
        "white-box",
        "FGSM, L-inf, one signed-gradient step, swept over 10 strengths (0.5/255 .. 5/255)",
        _SRC_MAT,
        _FGSM,
        algorithm="fgsm",
        severities=tuple(range(1, 11)),
    ),
    AttackSpec(
        "fgsm_transfer",
        "black-box",
        "FGSM crafted on a separate crafting model, swept over 10 strengths (0.5/255 .. 5/255)",
        _SRC_MAT,
        _FGSM,
        algorithm="fgsm",
        mode="transfer",
        surrogate="vgg11",
        severities=tuple(range(1, 11)),
    ),
)
MAT_NAMES = tuple(s.name for s in _MAT_SPECS)

for _spec in (*_SPECS, *_AA_SPECS, PGD_AT_AA, *_MAT_SPECS):
    PERTURBATIONS.add(_spec.name, _spec)
register_suite("autoattack", (*AUTOATTACK_NAMES, PGD_AT_AA.name))
register_suite("mat", MAT_NAMES)
