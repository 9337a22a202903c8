"""Parallel MAT (Song et al., eq. 3-4): S sub-networks and a learned voting unit.

Each branch is a full copy of a registered base architecture. The voting unit (the paper's
"upper-boundary decision unit") is a small network that reads every branch's class probabilities
and outputs voting coefficients ``a_k(x)`` (softmax, so they sum to 1, as eq. 4 requires). The
composite outputs ``log(sum_k a_k p_k)``: log-probabilities of the voted prediction, which are
valid logits (their softmax is the vote), so attacks and the cross-entropy see the ensemble.

:func:`crafting_cnn` is the paper's CIFAR "model to craft adversarial examples" (section 5.1): the
separate network whose FGSM examples MAT trains and is tested on by default (see
:mod:`robench.defenses.mat`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.models._base import CIFAR_MEAN, CIFAR_STD, MODELS, ImageClassifier, register_model

__all__ = ["ParallelMAT", "branch_view", "CraftingCNN", "crafting_cnn"]


class ParallelMAT(nn.Module):
    """S branches of one base architecture combined by learned, input-dependent voting.

    Args:
        num_classes: output logits.
        in_chans: input channels.
        base: registered architecture of every branch.
        base_kwargs: its options (e.g. ``{"width": 16}``).
        branches: the number S of sub-networks (one per adversarial strength).
        strengths: the FGSM strength each branch is trained at (recorded; ``len == branches``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        base: str = "small_cnn",
        base_kwargs: Mapping[str, Any] | None = None,
        branches: int = 2,
        strengths: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if base == "mat_parallel":
            raise ValueError("mat_parallel cannot be the base of its own branches")
        if int(branches) < 1:
            raise ValueError(f"mat_parallel needs at least 1 branch, got {branches}")
        if strengths is not None and len(strengths) != int(branches):
            raise ValueError(f"mat_parallel got {len(strengths)} strengths for {branches} branches")
        spec = MODELS.get(base)
        kw = dict(base_kwargs or {})
        self.branches = nn.ModuleList(
            spec.build(num_classes=num_classes, in_chans=in_chans, **kw)
            for _ in range(int(branches))
        )
        self.strengths = [float(s) for s in strengths] if strengths is not None else None
        # zero init: every a_k starts at 1/S, a plain average of the branches' probabilities
        self.vote = nn.Linear(int(branches) * num_classes, int(branches))
        nn.init.zeros_(self.vote.weight)
        nn.init.zeros_(self.vote.bias)

    def branch_logits(self, x: Tensor) -> list[Tensor]:
        """Logits of every branch on (normalised) ``x``."""
        return [b(x) for b in self.branches]

    def vote_weights(self, probs: Sequence[Tensor]) -> Tensor:
        """Voting coefficients ``a`` (N x S, rows sum to 1) from the branches' probabilities."""
        return F.softmax(self.vote(torch.cat(list(probs), dim=1)), dim=1)

    def combine(self, logits: Sequence[Tensor]) -> Tensor:
        """``log(sum_k a_k softmax(z_k))`` for branch logits ``z_k`` (voted log-probabilities)."""
        logp = torch.stack([F.log_softmax(z, dim=1) for z in logits], dim=1)  # N x S x C
        a = self.vote_weights([lp.exp() for lp in logp.unbind(1)])
        return torch.logsumexp(logp + torch.log(a.clamp_min(1e-12)).unsqueeze(2), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """The voted log-probabilities of the branches on (normalised) ``x``."""
        return self.combine(self.branch_logits(x))


def branch_view(model: ImageClassifier, k: int) -> nn.Module:
    """Branch ``k`` of a ``mat_parallel`` classifier, on [0, 1] images (it shares the weights)."""
    net = model.backbone
    if not isinstance(net, ParallelMAT):
        raise TypeError(
            f"branch_view expects a mat_parallel classifier, not one built on {type(net).__name__}"
        )
    view = nn.Sequential(model.normalize, net.branches[k])
    view.training = model.training  # so that eval_mode(view) restores the composite's mode
    return view


@register_model(
    "mat_parallel",
    input_size=32,
    source="Song et al.",
    description="parallel MAT: S copies of a base architecture + a learned voting unit",
)
def mat_parallel(num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Parallel-MAT composite (kwargs: base, base_kwargs, branches, strengths)."""
    return ParallelMAT(num_classes, in_chans, **kwargs)


class CraftingCNN(nn.Module):
    """Song et al.'s CIFAR crafting network: 3 convolutional layers and 2 fully connected layers.

    "Each convolutional layer is followed by batch normalization layer and max pooling layer"
    (section 5.1); the paper gives no widths, kernel sizes or activation, so robench uses 3x3
    convolutions of ``width``, ``2 width`` and ``4 width`` channels, ReLU after each batch norm,
    2x2 max pooling, and a hidden fully connected layer of ``hidden`` units with ReLU. The feature
    map is average-pooled to 4 x 4 before the first fully connected layer (a no-op at 32 px), so
    other image sides work too.

    Args:
        num_classes: output logits.
        in_chans: input channels.
        width: channels of the first convolution (doubled per layer).
        hidden: units of the first fully connected layer.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, width: int = 32, hidden: int = 256
    ) -> None:
        super().__init__()
        if width < 1 or hidden < 1:
            raise ValueError(f"width and hidden must be positive, got {width} and {hidden}")
        layers: list[nn.Module] = []
        c = in_chans
        for i in range(3):
            w = width * 2**i
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of (normalised) ``x``."""
        out: Tensor = self.classifier(self.pool(self.features(x)))
        return out


def crafting_cnn(
    num_classes: int = 10, in_chans: int = 3, width: int = 32, hidden: int = 256
) -> ImageClassifier:
    """A :class:`CraftingCNN` on [0, 1] images (CIFAR normalisation inside, as ``small_cnn``).

    Example:
        >>> crafting_cnn(10, width=4)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return ImageClassifier(CraftingCNN(num_classes, in_chans, width, hidden), mean, std)
