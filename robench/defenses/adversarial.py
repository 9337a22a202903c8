"""The defenses of Laugros et al.: Mixup, FGSM-AT and its variants, M-TLAT and IAT.

The defenses: Mixup, FGSM-AT, targeted FGSM-AT, label smoothing, TLAT, M-TLAT (Algorithm 1) and
IAT.

Adversarial defenses train on clean and adversarial samples together: the batch is split in two
halves, the first kept clean (or Mixup-ed), the second made adversarial; the loss is the sum of
the two halves' mean losses, as in Algorithm 1. eps ~ U[0, eps_max] is drawn once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.defenses._base import DefenseBase, StepContext, StepOutput, register_defense
from robench.defenses._ops import (
    beta,
    fgsm,
    mix,
    one_hot,
    random_targets,
    smooth_labels,
    soft_cross_entropy,
    tlat_labels,
    uniform,
)

_SRC = "Laugros et al."


def _halves(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    h = x.shape[0] // 2
    return x[:h], y[:h], x[h:], y[h:]


def _two_losses(
    model: nn.Module, xa: Tensor, ta: Tensor, xb: Tensor, tb: Tensor, **metrics: float
) -> StepOutput:
    """The loss ``L(xa, ta) + L(xb, tb)`` with soft targets; logits of both halves, in order."""
    logits = model(torch.cat([xa, xb]))
    la, lb = logits[: xa.shape[0]], logits[xa.shape[0] :]
    loss1, loss2 = soft_cross_entropy(la, ta), soft_cross_entropy(lb, tb)
    return StepOutput(
        loss1 + loss2,
        logits,
        {"loss1": float(loss1.detach()), "loss2": float(loss2.detach()), **metrics},
    )


@register_defense("mixup", "Mixup with Beta(alpha, alpha) interpolation of images and labels", _SRC)
@dataclass(frozen=True)
class Mixup(DefenseBase):
    """Mixup (Zhang et al.), alpha 0.4 as in Laugros et al."""

    alpha: float = 0.4

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Soft cross-entropy on the Mixup of the batch with a shuffled copy of itself."""
        lam = beta(self.alpha, ctx.generator)
        xm, ym = mix(x, one_hot(y, ctx.num_classes), lam, ctx.generator)
        logits = model(xm)
        return StepOutput(soft_cross_entropy(logits, ym), logits, {"lambda": lam})


@dataclass(frozen=True)
class _FGSMFamily(DefenseBase):
    """Clean first half + FGSM second half; subclasses choose the attack and adversarial label."""

    eps_max: float = 0.025

    targeted = False

    def adversarial_label(self, y_soft: Tensor, target_soft: Tensor, eps: float) -> Tensor:
        return y_soft

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        eps = uniform(self.eps_max, ctx.generator)
        xa, ya, xb, yb = _halves(x, y)
        n = ctx.num_classes
        if self.targeted:
            tgt = random_targets(xb.shape[0], n, ctx.generator, x.device)
            adv = fgsm(model, xb, tgt, eps, targeted=True)
            label = self.adversarial_label(one_hot(yb, n), one_hot(tgt, n), eps)
        else:
            adv = fgsm(model, xb, yb, eps, targeted=False)
            label = one_hot(yb, n)
        return _two_losses(model, xa, one_hot(ya, n), adv, label, eps=eps)


@register_defense(
    "fgsm", "FGSM adversarial training, eps ~ U[0, 0.025], clean + adversarial halves", _SRC
)
@dataclass(frozen=True)
class FGSMAT(_FGSMFamily):
    """Untargeted FGSM-AT."""


@register_defense("targeted_fgsm", "FGSM toward a random target class, ground-truth labels", _SRC)
@dataclass(frozen=True)
class TargetedFGSMAT(_FGSMFamily):
    """Targeted FGSM-AT (Laugros et al. eq. 3)."""

    targeted = True


@register_defense(
    "label_smoothing", "targeted FGSM-AT whose adversarial labels are smoothed by eps", _SRC
)
@dataclass(frozen=True)
class LabelSmoothingAT(_FGSMFamily):
    """Targeted FGSM-AT with label smoothing of parameter eps on the adversarial half."""

    targeted = True

    def adversarial_label(self, y_soft: Tensor, target_soft: Tensor, eps: float) -> Tensor:
        """The true label smoothed by ``eps``."""
        return smooth_labels(y_soft, eps)


@register_defense("tlat", "Targeted Labeling AT: label (1 - eps) y + eps y_target (eq. 4)", _SRC)
@dataclass(frozen=True)
class TLAT(_FGSMFamily):
    """TLAT (Laugros et al. eq. 4-5)."""

    targeted = True

    def adversarial_label(self, y_soft: Tensor, target_soft: Tensor, eps: float) -> Tensor:
        """``(1 - eps) y + eps y_target`` (eq. 4)."""
        return tlat_labels(y_soft, target_soft, eps)


@register_defense(
    "mtlat", "M-TLAT, Algorithm 1: Mixup pair 1 clean + Mixup pair 2 with TLAT, loss1 + loss2", _SRC
)
@dataclass(frozen=True)
class MTLAT(DefenseBase):
    """Laugros et al. Algorithm 1, one step.

    (x1, x2) and (x3, x4) are pairs within each half of the batch.
    """

    alpha: float = 0.4
    eps_max: float = 0.025

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Mixup on the first half; Mixup then targeted FGSM with TLAT labels on the second."""
        g, n = ctx.generator, ctx.num_classes
        lam1, lam2 = beta(self.alpha, g), beta(self.alpha, g)
        eps = uniform(self.eps_max, g)
        xa, ya, xb, yb = _halves(x, y)
        x_mix1, y_mix1 = mix(xa, one_hot(ya, n), lam1, g)
        x_mix2, y_mix2 = mix(xb, one_hot(yb, n), lam2, g)
        tgt = random_targets(xb.shape[0], n, g, x.device)
        x_mtlat = fgsm(model, x_mix2, tgt, eps, targeted=True)
        y_mtlat = tlat_labels(y_mix2, one_hot(tgt, n), eps)
        return _two_losses(
            model, x_mix1, y_mix1, x_mtlat, y_mtlat, eps=eps, lambda1=lam1, lambda2=lam2
        )


@register_defense(
    "iat",
    "Interpolated AT: FGSM first, then Mixup of the adversarials with Mixup labels",
    "Lamb et al. (Laugros et al. ref. 28)",
)
@dataclass(frozen=True)
class IAT(DefenseBase):
    """IAT: a Mixup half of clean images + a half made adversarial (untargeted FGSM), then mixed."""

    alpha: float = 0.4
    eps_max: float = 0.025

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Mixup on the first half; untargeted FGSM then Mixup on the second."""
        g, n = ctx.generator, ctx.num_classes
        lam1, lam2 = beta(self.alpha, g), beta(self.alpha, g)
        eps = uniform(self.eps_max, g)
        xa, ya, xb, yb = _halves(x, y)
        x_mix1, y_mix1 = mix(xa, one_hot(ya, n), lam1, g)
        adv = fgsm(model, xb, yb, eps, targeted=False)  # adversarial first ...
        x_iat, y_iat = mix(adv, one_hot(yb, n), lam2, g)  # ... then Mixup, with Mixup labels
        return _two_losses(model, x_mix1, y_mix1, x_iat, y_iat, eps=eps, lambda1=lam1, lambda2=lam2)
