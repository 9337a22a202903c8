"""Shared math of the seed-000 defenses: soft labels, Mixup, (targeted) FGSM, soft cross-entropy.

Every random draw takes the step's ``torch.Generator``; nothing touches the global RNG.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.defenses._base import eval_mode

__all__ = [
    "one_hot",
    "soft_cross_entropy",
    "beta",
    "uniform",
    "random_targets",
    "mix",
    "fgsm",
    "tlat_labels",
    "smooth_labels",
]


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Float one-hot rows."""
    return F.one_hot(y, num_classes).float()


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of -sum(target * log_softmax(logits)) (soft labels)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def beta(alpha: float, g: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) seeded from ``g`` (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(0, 2**62, (), generator=g))
    return float(np.random.Generator(np.random.PCG64(seed)).beta(alpha, alpha))


def uniform(high: float, g: torch.Generator) -> float:
    """One draw of U[0, high]."""
    return float(torch.rand((), generator=g)) * high


def random_targets(n: int, num_classes: int, g: torch.Generator, device: torch.device) -> Tensor:
    """Targets uniform over the classes (the true class included, as in Algorithm 1)."""
    return torch.randint(0, num_classes, (n,), generator=g).to(device)


def mix(x: Tensor, soft: Tensor, lam: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mixup: each sample with a random partner of the same batch, ``lam`` on the sample."""
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, targeted: bool) -> Tensor:
    """One signed-gradient step of size ``eps`` (crafted in eval mode), clipped to [0, 1].

    Untargeted: ``x + eps * sign(grad L(x, y))``; targeted (Laugros et al. eq. 5):
    ``x - eps * sign(grad L(x, y_target))``.
    """
    with eval_mode(model):
        xr = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y)
        (grad,) = torch.autograd.grad(loss, xr)
    step = -eps if targeted else eps
    return (x.detach() + step * grad.sign()).clamp(0.0, 1.0)


def tlat_labels(y_soft: Tensor, target_soft: Tensor, eps: float) -> Tensor:
    """TLAT's soft label (Laugros et al. eq. 4): (1 - eps) * y + eps * y_target."""
    return (1 - eps) * y_soft + eps * target_soft


def smooth_labels(y_soft: Tensor, eps: float) -> Tensor:
    """Label smoothing of parameter ``eps``: (1 - eps) * y + eps / N."""
    return (1 - eps) * y_soft + eps / y_soft.shape[1]
