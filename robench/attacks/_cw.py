"""Carlini-Wagner's objective optimised inside an L2 ball: the attack behind robench's ``cw_l2``.

Laugros et al. configure C&W-L2 with 40 iterations and confidence 50. Run as Carlini and Wagner
wrote it, the attack is unbounded: it minimises ``||delta||_2^2 + c * f(x + delta)`` and reports
an adversarial once the margin ``max_{j != y} z_j - z_y`` reaches the confidence. Whether 40
iterations reach a margin of 50 says more about the scale of a model's logits than about its
robustness, and an unbounded success is no robustness score at all; projecting that attack's
margin-50 adversarials onto an L2 ball afterwards (robench's first version) found an in-ball
misclassification only by accident (0.707 accuracy left on ``zoo:standard`` where L2 PGD at the
same radius leaves 0.043).

robench's ``cw_l2`` keeps C&W's objective and makes it a bounded attack: the margin, capped at
the confidence ``kappa`` as in the paper, is maximised by normalised-gradient steps from the clean
image, each followed by a projection onto the L2 ball of the given radius and onto the [0, 1]
box. Every iterate lies inside the ball; an image is broken when any of them is misclassified,
and the best iterate (misclassified first, then the highest capped margin) is returned. The
registry's ``cw_l2`` splits its 40 steps over C&W's targeted objective towards the three
highest-scoring wrong classes (``targets=3``): the single untargeted run was the weaker L2 attack
on a converged model (see :mod:`robench.perturbations.attack_specs`). No random start: the attack
is deterministic and an image's result does not depend on its batch. One forward + backward pass
per step, plus one forward pass that scores each run's last iterate.

Example:
    >>> import torch
    >>> from robench.models import create_model
    >>> m = create_model("small_cnn", width=4).eval().requires_grad_(False)
    >>> x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    >>> adv, broken = bounded_cw_l2(m, x, y, epsilon=0.5, steps=3, step=0.1, confidence=50.0)
    >>> bool(((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()), broken.dtype
    (True, torch.bool)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.perturbations.attack_specs import cw_runs

__all__ = ["bounded_cw_l2", "cw_margin", "cw_target_margin", "project_l2"]


def cw_margin(logits: Tensor, y: Tensor, confidence: float = math.inf) -> Tensor:
    """C&W's objective per image: ``min(max_{j != y} z_j - z_y, confidence)`` (> 0: misclassified).

    Example:
        >>> cw_margin(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1]), confidence=50.0)
        tensor([-1.])
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return (others.amax(1) - true).clamp(max=confidence)


def project_l2(x0: Tensor, x: Tensor, radius: float) -> Tensor:
    """``x`` projected onto the L2 ball of ``radius`` around ``x0`` (per image), then onto [0, 1].

    Clamping to the box after the projection keeps the image inside the ball, as ``x0`` lies in
    the box (each coordinate only moves towards ``x0``'s).
    """
    delta = x - x0
    norm = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    scale = norm.clamp_min(torch.finfo(x.dtype).tiny).reciprocal().mul(radius).clamp(max=1.0)
    return torch.addcmul(x0, delta, scale).clamp(0.0, 1.0)


def _unit(grad: Tensor) -> Tensor:
    """Each image's gradient scaled to L2 norm 1 (zero stays zero)."""
    norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    return grad.div(norm.clamp_min(1e-12))


def cw_target_margin(logits: Tensor, t: Tensor, confidence: float = math.inf) -> Tensor:
    """C&W's targeted objective: ``min(z_t - max_{j != t} z_j, confidence)`` (> 0: ``t`` on top).

    Example:
        >>> cw_target_margin(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([2]), confidence=50.0)
        tensor([-1.])
    """
    target = logits.gather(1, t[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(t, logits.shape[1]).bool(), -math.inf)
    return (target - others.amax(1)).clamp(max=confidence)


def bounded_cw_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float,
    steps: int,
    step: float,
    confidence: float,
    targets: int | None = None,
) -> tuple[Tensor, Tensor]:
    """C&W's capped objective maximised inside the L2 ball of radius ``epsilon`` around ``x``.

    With ``targets=None`` one run ascends the untargeted margin (:func:`cw_margin`). With
    ``targets=k`` the ``steps`` are split over ``k`` runs (never more runs than steps; the first
    runs take one more step where ``k`` does not divide them), each from the clean image and each
    ascending C&W's targeted objective (:func:`cw_target_margin`) towards one of the ``k``
    highest-scoring wrong classes of the clean image (read from the first run's first forward
    pass). Every iterate of every run counts: an image is broken when any of them is
    misclassified.

    Every run of ``n`` steps makes ``n`` forward + backward passes (iterate 0 is the clean image)
    and one forward pass on its last iterate. The model should be in eval mode with frozen
    parameters (as :func:`robench.attacks.run_attack` prepares it).

    Args:
        model: [0, 1] images in, logits out.
        x: N x C x H x W clean images in [0, 1].
        y: N true labels.
        epsilon: L2 radius (pixel units).
        steps: gradient steps in all.
        step: L2 length of each (normalised) gradient step.
        confidence: C&W's ``kappa``: the objective is capped there.
        targets: how many target classes to run (at most the number of classes - 1); ``None``
            for the untargeted margin.

    Returns:
        ``(adv, broken)``: ``broken`` marks the images with a misclassified iterate; ``adv`` is,
        per image, the misclassified iterate with the highest capped untargeted margin where
        there is one, else the iterate with the highest margin (the earliest on a tie).
    """
    best = x.clone()
    best_obj = torch.full((len(x),), -math.inf, device=x.device, dtype=x.dtype)
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    runs = cw_runs(steps, targets)
    order: Tensor | None = None  # wrong classes of the clean image, highest logit first
    for r in range(runs):
        n = steps // runs + (1 if r < steps % runs else 0)
        xt = x
        for t in range(n + 1):
            last = t == n
            with torch.set_grad_enabled(not last):
                xt = xt.detach().requires_grad_(not last)
                logits = model(xt)
                margin = cw_margin(logits, y, confidence)
                if targets is None:
                    obj = margin
                else:
                    if order is None:
                        wrong_only = logits.detach().scatter(1, y[:, None], -math.inf)
                        order = wrong_only.argsort(dim=1, descending=True, stable=True)
                    obj = cw_target_margin(logits, order[:, min(r, order.shape[1] - 2)], confidence)
            with torch.no_grad():
                wrong = logits.argmax(1) != y
                better = (wrong & ~broken) | ((wrong == broken) & (margin > best_obj))
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), xt.detach(), best)
                best_obj = torch.where(better, margin.detach(), best_obj)
                broken |= wrong
            if last:
                break
            (grad,) = torch.autograd.grad(obj.sum(), xt)
            xt = project_l2(x, xt.detach() + step * _unit(grad), epsilon)
    return best, broken
