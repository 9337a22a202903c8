"""Head surgery on registered backbones, and Cavey et al.'s transfer-learning architecture.

Cavey et al. (section VI-C, Fig. 9) build their transfer model from a trained CIFAR
network by replacing its final output layer with new fully connected layers: 256 units + ReLU,
then 512 units + ReLU, then the output layer. ``transfer_mlp`` is that structure on any registered
backbone whose output layer is an ``nn.Linear`` (``small_cnn``, ``vgg11``, ``resnet18_cifar``...),
so a fine-tuned checkpoint rebuilds from its metadata alone.

The helpers here (:func:`last_linear`, :func:`split_head`) are shared with the fusion model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from robench.models._base import MODELS, register_model

__all__ = ["last_linear", "split_head", "mlp_head", "transfer_mlp", "PAPER_HIDDEN"]

PAPER_HIDDEN = (256, 512)  # Cavey et al., CIFAR transfer model (Fig. 9); MNIST used (256,)


def last_linear(module: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """Find the output layer: the last ``nn.Linear`` registered in ``module``.

    Args:
        module: a backbone whose forward ends with that layer (true of every registered CNN
            with a linear head).

    Returns:
        ``(parent, attribute, layer)`` such that ``getattr(parent, attribute) is layer``.

    Raises:
        ValueError: when ``module`` has no ``nn.Linear`` (e.g. the all-convolutional net).
    """
    found = ""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            found = name
    if not found:
        raise ValueError(f"{type(module).__name__} has no fully connected output layer to replace")
    parent_name, _, attr = found.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    return parent, attr, getattr(parent, attr)


def split_head(backbone: nn.Module) -> tuple[nn.Module, nn.Linear, str]:
    """Detach the output layer: ``backbone`` (modified in place) then returns its features.

    Returns:
        ``(body, head, head_name)``: ``head(body(x))`` equals the original ``backbone(x)``;
        ``head_name`` is the layer's dotted name in the original backbone's state_dict.
    """
    parent, attr, head = last_linear(backbone)
    name = next(n for n, m in backbone.named_modules() if m is head)
    setattr(parent, attr, nn.Identity())
    return backbone, head, name


def mlp_head(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """Linear layers ``in -> hidden[0] -> ReLU -> ... -> num_classes`` (no final activation)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def check_hidden(hidden: Sequence[Any]) -> list[int]:
    """Hidden layer sizes as positive ints (option values may arrive as floats)."""
    sizes = []
    for h in hidden:
        if float(h) != int(h) or int(h) < 1:
            raise ValueError(f"hidden layer sizes must be positive integers, got {list(hidden)}")
        sizes.append(int(h))
    return sizes


@register_model(
    "transfer_mlp",
    input_size=32,
    description=(
        "a registered backbone whose output layer is replaced by new FC layers (256, 512 + ReLU)"
    ),
    source="Cavey et al., section VI-C, Fig. 9",
)
def transfer_mlp(
    num_classes: int = 10,
    in_chans: int = 3,
    base: str = "small_cnn",
    base_kwargs: Mapping[str, Any] | None = None,
    hidden: Sequence[int] = PAPER_HIDDEN,
) -> nn.Module:
    """Build ``base`` and replace its output layer by :func:`mlp_head` (in place).

    Args:
        num_classes: output logits.
        in_chans: input channels.
        base: registered backbone name.
        base_kwargs: its options.
        hidden: sizes of the new hidden FC layers, in order.
    """
    if base == "transfer_mlp":
        raise ValueError("transfer_mlp cannot wrap itself; give the original backbone as base")
    net = MODELS.get(base).build(
        num_classes=num_classes, in_chans=in_chans, **dict(base_kwargs or {})
    )
    parent, attr, old = last_linear(net)
    setattr(parent, attr, mlp_head(old.in_features, check_hidden(hidden), num_classes))
    return net
