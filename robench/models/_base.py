"""The model registry in the style of timm/torchvision: ``create_model(name, num_classes=...)``.

Every model takes images in [0, 1]: the normalisation lives inside the model (``Normalize``),
so attack epsilons are in pixel units and checkpoints carry their own mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from robench._registry import Registry

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "ModelSpec",
    "MODELS",
    "Normalize",
    "ImageClassifier",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    Args:
        name: registry name.
        build: ``build(num_classes, in_chans, **kwargs) -> nn.Module``, the backbone (on normalised
            input).
        input_size: the image side it is meant for.
        description: one line.
        source: where it comes from.
    """

    name: str
    build: Callable[..., nn.Module]
    input_size: int
    description: str
    source: str


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str, *, input_size: int, description: str, source: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a backbone builder."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name, ModelSpec(name, fn, input_size, description, source))
        return fn

    return wrap


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers, saved in the state_dict."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (N x C x H x W) channel by channel."""
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """``Normalize`` followed by a backbone: takes [0, 1] images, returns logits."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the backbone on the normalised ``x``."""
        return cast(Tensor, self.backbone(self.normalize(x)))


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names (fnmatch ``pattern``)."""
    return MODELS.names(pattern)


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """Build a registered architecture with random weights (nothing is downloaded).

    Args:
        name: a name from :func:`list_models`.
        num_classes: output logits.
        in_chans: input channels (1 or 3).
        mean: normalisation mean per channel (default: CIFAR's for small inputs, ImageNet's for
            224 px).
        std: normalisation std per channel.
        **kwargs: architecture options (e.g. ``width`` for ``small_cnn``).

    Returns:
        An :class:`ImageClassifier` taking N x C x H x W images in [0, 1].

    Example:
        >>> m = create_model("small_cnn", num_classes=10)
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    spec = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
    big = spec.input_size >= 128
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if big else CIFAR_MEAN)
    std = tuple(std) if std is not None else (IMAGENET_STD if big else CIFAR_STD)
    if in_chans == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values, got {len(mean)} and {len(std)}")
    backbone = spec.build(num_classes=num_classes, in_chans=in_chans, **kwargs)
    return ImageClassifier(backbone, mean, std)
