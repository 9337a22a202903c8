"""Running the benchmark's attacks (Foolbox 3, bounded C&W, AutoAttack), seeded, on [0, 1] images.

Every model robench builds normalises inside, so Foolbox sees ``bounds=(0, 1)`` and epsilons are in
pixel units. Each call:

- puts the model in eval mode with its parameters frozen (no ``.grad`` side effects) and restores
  both afterwards;
- runs inside :func:`robench._seeding.global_seed_scope`, so the global RNGs are seeded for the
  call and left as they were;
- draws PGD's random start per image from ``(seed, attack name, image index)``: with ``indices``
  given, an image gets the same start whatever batch it sits in. The other attacks are
  deterministic and per image: ``cw_l2`` is C&W's capped margin loss optimised inside the L2 ball
  (:mod:`robench.attacks._cw`, plain torch), not Foolbox's unbounded C&W.
- ``fgsm`` and ``fgsm_transfer`` (MAT's strength sweep) are Foolbox's one-step
  ``LinfFastGradientAttack``: ``x + eps * sign(grad CE)``, clipped to [0, 1], deterministic. They
  sweep several strengths, so a call runs one: ``spec.at(severity)`` or ``epsilon=``.
- ``autoattack_linf`` and ``autoattack_l2`` run the authors' AutoAttack (standard version,
  :mod:`robench.attacks._autoattack`) seeded with ``derive_seed(seed, attack name)``. Its
  randomness is batch-level, so for these two an image's result depends on its batch.

The parameters, and why they were chosen, are in :mod:`robench.perturbations.attack_specs`.

Example:
    >>> import torch
    >>> from robench.models import create_model
    >>> m = create_model("small_cnn", width=8)
    >>> r = run_attack("pgd", m, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), seed=0)
    >>> r.adv.shape, r.success.dtype
    (torch.Size([2, 3, 32, 32]), torch.bool)
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from eagerpy.astensor import astensor
from eagerpy.tensor.tensor import Tensor as EpTensor
from foolbox.attacks.fast_gradient_method import LinfFastGradientAttack
from foolbox.attacks.gradient_descent_base import normalize_lp_norms
from foolbox.attacks.mi_fgsm import LinfMomentumIterativeFastGradientMethod
from foolbox.attacks.projected_gradient_descent import LinfProjectedGradientDescentAttack
from foolbox.criteria import Misclassification, TargetedMisclassification
from foolbox.distances import linf as linf_distance
from foolbox.models.pytorch import PyTorchModel
from torch import Tensor, nn

from robench._seeding import derive_seed, global_seed_scope
from robench.attacks._autoattack import run_autoattack
from robench.attacks._cw import bounded_cw_l2
from robench.perturbations._base import PERTURBATIONS, make_random_source
from robench.perturbations._checks import check_batch
from robench.perturbations.attack_specs import AttackCost, AttackSpec, cw_runs

__all__ = [
    "attack_mode",
    "AttackResult",
    "DongLinfMIFGSM",
    "SeededLinfPGD",
    "attack_cost",
    "craft_transfer",
    "judge_transfer",
    "random_start",
    "resolve_attack",
    "run_attack",
]

Indices = Sequence[int] | Tensor | None


class SeededLinfPGD(LinfProjectedGradientDescentAttack):
    """Foolbox's L-inf PGD whose random start is given: ``x0 + eps * start``, ``start`` in [-1, 1].

    Args:
        start: unit noise shaped like the inputs (``None``: Foolbox's own draw).
        **kwargs: Foolbox's ``rel_stepsize``, ``abs_stepsize``, ``steps``, ``random_start``.
    """

    def __init__(self, *, start: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start = start

    def get_random_start(self, x0: EpTensor, epsilon: float) -> EpTensor:
        """The given start scaled to the ball (Foolbox's uniform draw when none was given)."""
        if self.start is None:
            return cast(EpTensor, super().get_random_start(x0, epsilon))
        start = self.start.to(device=x0.raw.device, dtype=x0.raw.dtype)
        return x0 + epsilon * astensor(start)


class DongLinfMIFGSM(LinfMomentumIterativeFastGradientMethod):
    """MI-FGSM as Dong et al. (2018) publish it, on Foolbox's momentum attack.

    ``g <- mu * g + grad / ||grad||_1`` (per image), then ``x <- clip_eps(x + alpha * sign(g))``.
    Foolbox 3.3.4's L-inf class normalises the gradient with ``sign`` before the momentum, so it
    accumulates ``sign(grad)``; here the normalisation is the L1 one and the optimizer (Foolbox's
    ``GDMOptimizer``) keeps taking the sign of the accumulated momentum.
    """

    def normalize(self, gradients: EpTensor, *, x: EpTensor, bounds: Any) -> EpTensor:
        """``grad / ||grad||_1`` per image."""
        return cast(EpTensor, normalize_lp_norms(gradients, p=1))


@dataclass(frozen=True, eq=False)
class AttackResult:
    """One attack on one batch.

    Args:
        name: attack name.
        adv: clipped adversarials, same shape, dtype and device as the input.
        success: Foolbox's criterion on the evaluated model (misclassified; for ``pgd_ll``:
            predicted as the target).
        correct: still classified correctly (what accuracy under attack counts).
        pred: predicted class of each adversarial.
        clean_pred: predicted class of each clean image.
        epsilon: the budget used (L-inf eps, or the C&W L2 bound).
        targets: ``pgd_ll``'s target classes.
        l2: L2 attacks (``cw_l2``, ``autoattack_l2``): L2 distance of each returned adversarial
            from its clean image.
        notes: AutoAttack's warnings on this batch (randomized or dynamic defense, zero
            gradients, Square beating the gradient attacks): evidence of gradient masking.
    """

    name: str
    adv: Tensor
    success: Tensor
    correct: Tensor
    pred: Tensor
    clean_pred: Tensor
    epsilon: float
    targets: Tensor | None = None
    l2: Tensor | None = None
    notes: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        """Fraction of images still classified correctly (NaN for an empty batch)."""
        return float(self.correct.float().mean()) if self.correct.numel() else math.nan


def resolve_attack(name_or_spec: str | AttackSpec) -> AttackSpec:
    """The :class:`AttackSpec` of a registered name (or the spec itself)."""
    spec = PERTURBATIONS.get(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if not isinstance(spec, AttackSpec):
        raise ValueError(f"{getattr(spec, 'name', spec)!r} is not an attack")  # noqa: TRY004
    return spec


def attack_cost(name_or_spec: str | AttackSpec, steps: int | None = None) -> AttackCost:
    """Passes per image one :func:`run_attack` call needs (see :meth:`AttackSpec.cost`)."""
    return resolve_attack(name_or_spec).cost(steps)


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters inside the block; every module's flags restored after."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def _placement(
    model: nn.Module, x: Tensor, device: str | torch.device | None
) -> tuple[torch.device, torch.dtype]:
    """Where the attack runs (the model's device) and in which dtype."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    here = tensor.device if tensor is not None else x.device
    if device is not None and torch.device(device) != here:
        raise ValueError(
            f"the model lives on {here} but device={device!r} was asked; move the model first"
        )
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else x.dtype
    return here, dtype


def _check_labels(x: Tensor, y: Tensor, name: str = "y") -> None:
    check_batch(x)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"{name} must be a 1-D tensor with one label per image ({x.shape[0]}), got {shape}"
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got {y.dtype}")


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    """Logits without gradient; refuses probability outputs (C&W and the CE loss need logits)."""
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return N x num_classes logits, got {getattr(out, 'shape', out)}"
        )
    if (
        out.shape[0]
        and out.shape[1] > 1
        and bool((out >= 0).all())
        and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4)
    ):
        raise ValueError(
            "the model returns probabilities (each row sums to 1); attacks need logits"
        )
    return out


def random_start(
    shape: Sequence[int],
    *,
    seed: int,
    name: str = "pgd",
    indices: Indices = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """PGD's unit start noise in [-1, 1), one draw per image from ``(seed, name, image index)``."""
    n, *rest = shape
    rng = make_random_source(name, 1, n, device=device, generator=None, seed=seed, indices=indices)
    return rng.uniform(-1.0, 1.0, *rest, dtype=torch.float32)


def _labels_in_range(y: Tensor, logits: Tensor) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1]}), got [{int(y.min())}, {int(y.max())}]"
        )


def _budget(
    spec: AttackSpec, x: Tensor, epsilon: float | None, steps: int | None
) -> tuple[float, int]:
    """The eps (or C&W L2 bound) and the steps of one call, overrides applied."""
    eps = spec.budget(x.shape[-1]) if epsilon is None else float(epsilon)
    n_steps = spec.steps if steps is None else int(steps)
    if not (math.isfinite(eps) and eps >= 0) or n_steps < 1:
        raise ValueError(f"epsilon must be finite and >= 0 and steps >= 1, got {eps} and {n_steps}")
    if spec.algorithm == "fgsm" and n_steps != 1:
        raise ValueError(f"{spec.name!r} is FGSM, a single step; steps must be 1, got {n_steps}")
    return eps, n_steps


def _linf(
    spec: AttackSpec,
    fmodel: Any,
    x: Tensor,
    criterion: Any,
    eps: float,
    steps: int,
    start: Tensor | None,
) -> Tensor:
    """PGD, PGD-LL, MI-FGSM or FGSM through Foolbox's ``run``, then Foolbox's L-inf clipping."""
    kw: dict[str, Any] = {"abs_stepsize": spec.step_size(eps, steps), "steps": steps}
    if spec.algorithm == "fgsm":
        attack: Any = LinfFastGradientAttack(random_start=False)
    elif spec.algorithm == "mi_fgsm":
        mu = float(spec.params.get("decay", 1.0))
        attack = DongLinfMIFGSM(momentum=mu, random_start=False, **kw)
    else:
        attack = SeededLinfPGD(start=start, random_start=start is not None, **kw)
    raw = attack.run(fmodel, x, criterion, epsilon=eps)
    return cast(Tensor, linf_distance.clip_perturbation(x, raw, eps)).clamp(0.0, 1.0)


def _cw(
    spec: AttackSpec, model: nn.Module, x: Tensor, y: Tensor, bound: float, steps: int
) -> Tensor:
    """Bounded C&W-L2: C&W's capped objective maximised inside the L2 ball of radius ``bound``.

    The ``steps`` are split over the spec's ``targets`` runs; each run steps ``2.5 * bound / n``
    for its ``n`` steps (the longest run's ``n``), as PGD does over its whole budget.
    """
    targets = spec.params.get("targets")
    targets = None if targets is None else int(targets)
    adv, _ = bounded_cw_l2(
        model,
        x,
        y,
        epsilon=bound,
        steps=steps,
        step=spec.step_size(bound, math.ceil(steps / cw_runs(steps, targets))),
        confidence=float(spec.params.get("confidence", 50.0)),
        targets=targets,
    )
    return adv


def _whitebox(
    spec: AttackSpec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    eps: float,
    steps: int,
    seed: int,
    indices: Indices,
    targets: Tensor | None,
    progress: Path | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Craft a white-box attack on the (prepared) model: adversarials and the result's extras."""
    if spec.algorithm == "autoattack":
        aa_seed, n_cls = derive_seed(seed, spec.name), clean.shape[1]
        adv, notes = run_autoattack(
            model, x, y, eps=eps, norm=spec.norm, seed=aa_seed, num_classes=n_cls, progress=progress
        )
        extra: dict[str, Any] = {"notes": notes}
        if spec.norm == "l2":
            extra["l2"] = (adv - x).flatten(1).norm(dim=1)
        return adv, extra
    if spec.algorithm == "cw_l2":
        adv = _cw(spec, model, x, y, eps, steps)
        return adv, {"l2": (adv - x).flatten(1).norm(dim=1)}
    fmodel = PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    if spec.algorithm == "pgd_ll":
        tgt = clean.argmin(1) if targets is None else targets.to(x.device)
        _check_labels(x, tgt, "targets")
        _labels_in_range(tgt, clean)
        crit = TargetedMisclassification(tgt)
        return _linf(spec, fmodel, x, crit, eps, steps, None), {"targets": tgt}
    start = None
    if spec.params.get("random_start"):
        start = random_start(x.shape, seed=seed, name=spec.name, indices=indices, device=x.device)
    return _linf(spec, fmodel, x, Misclassification(y), eps, steps, start), {}


def _judge(
    spec: AttackSpec,
    model: nn.Module,
    x0: Tensor,
    adv: Tensor,
    y: Tensor,
    clean: Tensor,
    eps: float,
    extra: dict[str, Any],
) -> AttackResult:
    """Forward the adversarials once and apply Foolbox's criterion; results on ``x0``'s device."""
    logits = _logits(model, adv)
    tgt = extra.get("targets")
    crit = Misclassification(y) if tgt is None else TargetedMisclassification(tgt)
    success, pred, dev = crit(adv, logits), logits.argmax(1), x0.device
    tensors = {k: v.to(dev) for k, v in extra.items() if isinstance(v, Tensor)}
    return AttackResult(
        spec.name,
        adv.to(device=dev, dtype=x0.dtype),
        success.to(dev),
        (pred == y).to(dev),
        pred.to(dev),
        clean.argmax(1).to(dev),
        eps,
        notes=tuple(extra.get("notes", ())),
        **tensors,
    )


def _empty(spec: AttackSpec, x: Tensor, y: Tensor, epsilon: float | None) -> AttackResult:
    """The result of an attack on an empty batch."""
    no = torch.zeros(0, dtype=torch.bool, device=x.device)
    return AttackResult(
        spec.name, x.clone(), no, no, y.clone(), y.clone(), _budget(spec, x, epsilon, 1)[0]
    )


def run_attack(
    name_or_spec: str | AttackSpec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    seed: int,
    device: str | torch.device | None = None,
    surrogate: nn.Module | None = None,
    epsilon: float | None = None,
    steps: int | None = None,
    targets: Tensor | None = None,
    indices: Indices = None,
    progress: Path | None = None,
) -> AttackResult:
    """Run one attack on a batch and judge it on ``model``.

    Args:
        name_or_spec: ``pgd``, ``pgd_ll``, ``cw_l2``, ``mi_fgsm_0.04``, ``mi_fgsm_0.08``,
            ``autoattack_linf``, ``autoattack_l2``, ``pgd_8_255`` or a spec; ``fgsm`` (a sweep)
            with ``epsilon``, or one strength of it: ``resolve_attack("fgsm").at(severity)``.
        model: the evaluated classifier: [0, 1] images in, logits out.
        x: N x C x H x W images in [0, 1] (not modified).
        y: N true labels.
        seed: run seed (PGD's random start, AutoAttack's seed ``derive_seed(seed, name)``; the
            global RNGs are seeded inside the call only). ``pgd_ll``, ``cw_l2``, MI-FGSM and
            FGSM are deterministic.
        device: where to run (default and only choice: the model's device).
        surrogate: the model crafting a transfer attack (required for ``mi_fgsm_*`` and
            ``fgsm_transfer``).
        epsilon: overrides the L-inf eps, or the L2 radius (``cw_l2``, ``autoattack_l2``).
        steps: overrides the number of steps (not for AutoAttack, whose budget is fixed, nor
            FGSM, a single step).
        targets: ``pgd_ll`` targets (default: least-likely class of the clean logits).
        indices: dataset index of each image, for per-image random starts (AutoAttack's
            randomness is per batch and does not use them).
        progress: AutoAttack only: a file where the finished stages are kept, so that a run
            stopped in the middle resumes after its last finished stage (other attacks ignore it).

    Returns:
        An :class:`AttackResult` on ``x``'s device.
    """
    spec = resolve_attack(name_or_spec)
    _check_labels(x, y)
    if spec.algorithm == "autoattack" and steps is not None:
        raise ValueError(f"{spec.name!r} runs AutoAttack's standard budget; steps cannot be set")
    if spec.mode == "transfer" and surrogate is None:
        raise ValueError(
            f"{spec.name!r} is a transfer attack: pass the surrogate model that crafts it"
        )
    dev, dtype = _placement(model, x, device)
    if not len(x):
        return _empty(spec, x, y, epsilon)
    if surrogate is not None and spec.mode == "transfer":
        kw: dict[str, Any] = {"seed": seed, "indices": indices, "epsilon": epsilon, "steps": steps}
        adv = craft_transfer(spec, surrogate, x, y, **kw)
        return judge_transfer(spec, model, x, adv, y, epsilon=epsilon, device=device)
    eps, n_steps = _budget(spec, x, epsilon, steps)
    xd, yd = x.to(device=dev, dtype=dtype), y.to(dev)
    with attack_mode(model), global_seed_scope(seed):
        clean = _logits(model, xd)
        _labels_in_range(yd, clean)
        adv, extra = _whitebox(
            spec, model, xd, yd, clean, eps, n_steps, seed, indices, targets, progress
        )
        return _judge(spec, model, x, adv, yd, clean, eps, extra)


def craft_transfer(
    name_or_spec: str | AttackSpec,
    surrogate: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    seed: int,
    indices: Indices = None,
    epsilon: float | None = None,
    steps: int | None = None,
) -> Tensor:
    """Craft a transfer attack's adversarials on ``surrogate`` (craft once, cache, judge per model).

    MI-FGSM and FGSM are deterministic, so ``seed`` and ``indices`` only fence the global RNG;
    they are kept so that every attack has the same call shape.

    Returns:
        The adversarials, on ``x``'s device and in its dtype.
    """
    spec = resolve_attack(name_or_spec)
    if spec.mode != "transfer":
        raise ValueError(f"{spec.name!r} is a white-box attack; use run_attack")
    _check_labels(x, y)
    dev, dtype = _placement(surrogate, x, None)
    if not len(x):
        return x.clone()
    eps, n_steps = _budget(spec, x, epsilon, steps)
    xd, yd = x.to(device=dev, dtype=dtype), y.to(dev)
    with attack_mode(surrogate), global_seed_scope(seed):
        _labels_in_range(yd, _logits(surrogate, xd))
        fmodel = PyTorchModel(surrogate, bounds=(0.0, 1.0), device=dev)
        adv = _linf(spec, fmodel, xd, Misclassification(yd), eps, n_steps, None)
    return adv.to(device=x.device, dtype=x.dtype)


def judge_transfer(
    name_or_spec: str | AttackSpec,
    model: nn.Module,
    x: Tensor,
    adv: Tensor,
    y: Tensor,
    *,
    epsilon: float | None = None,
    device: str | torch.device | None = None,
) -> AttackResult:
    """Judge crafted (e.g. cached) transfer adversarials of ``x`` on ``model``."""
    spec = resolve_attack(name_or_spec)
    _check_labels(x, y)
    check_batch(adv)
    eps = _budget(spec, x, epsilon, 1)[0]
    if adv.shape != x.shape or (adv.numel() and float((adv - x.to(adv)).abs().max()) > eps + 1e-5):
        raise ValueError(
            f"these adversarials do not belong to these images (shape or eps {eps:g} budget)"
        )
    dev, dtype = _placement(model, x, device)
    if not len(x):
        return _empty(spec, x, y, epsilon)
    with attack_mode(model):
        clean = _logits(model, x.to(device=dev, dtype=dtype))
        _labels_in_range(y.to(dev), clean)
        return _judge(spec, model, x, adv.to(device=dev, dtype=dtype), y.to(dev), clean, eps, {})
