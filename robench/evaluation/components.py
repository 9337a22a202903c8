"""The sub-networks of a composite model, scored beside it, and the network attacks are crafted on.

Akumalla et al. attack a contextual-fusion model through its object (foreground) network, FGSM
crafted on that network alone, and report the accuracy of the object, context (background) and
joint networks on the same images; they compare the three under foreground blur as well.
robench scores every image a composite model sees (clean, corrupted, attacked) on its object and
context networks too (``components`` in the record), and ``attack_on="object"`` crafts every
white-box attack on the object network while the evaluated (joint) model is scored as usual.

The context network of ``shapes`` predicts the background style, which equals the class for a
``context_rate`` share of the images: its prediction is read as a class index and scored against
the class labels, as the paper scores its background classifier. A context network with another
number of outputs than the dataset's classes is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from robench.evaluation.entries import Components, component_accuracies
from robench.models import ImageClassifier
from robench.models.fusion import FusionNet, context_network, fusion_net, object_network

__all__ = ["ATTACK_ON", "Tally", "check_attack_on", "component_networks", "crafting_network"]

ATTACK_ON = ("model", "object")
"""Where the white-box attacks' gradients come from: the evaluated model, or its object network."""


def _composite(model: nn.Module) -> ImageClassifier | None:
    """The fusion classifier inside ``model`` (itself, or wrapped by the evaluation), if any."""
    for m in model.modules():
        if isinstance(m, ImageClassifier) and isinstance(m.backbone, FusionNet):
            return m
    return None


def component_networks(model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
    """``{"object": ..., "context": ...}`` of a composite model on [0, 1] images; ``{}`` otherwise.

    ``context`` is left out when its output is not one logit per class of the dataset.
    """
    fused = _composite(model)
    if fused is None:
        return {}
    net = fusion_net(fused)
    branches = (("object", net.object, object_network), ("context", net.context, context_network))
    return {
        name: build(fused)
        for name, branch, build in branches
        if int(branch.head.out_features) == num_classes
    }


def check_attack_on(model: nn.Module, attack_on: str) -> None:
    """A one-sentence ValueError unless ``attack_on`` is ``model``, or ``object`` on a composite."""
    if attack_on not in ATTACK_ON:
        raise ValueError(f"attack_on must be model or object, got {attack_on!r}")
    if attack_on == "object" and _composite(model) is None:
        raise ValueError(
            "--attack-on object needs a composite model with an object network "
            f"(a fusion model); this one ({type(_inner(model)).__name__}) has none"
        )


def _inner(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)  # the evaluation's checking wrapper
    return inner.backbone if isinstance(inner, ImageClassifier) else inner


def crafting_network(model: nn.Module, attack_on: str) -> nn.Module:
    """The network white-box attacks differentiate: ``model`` itself, or its object network."""
    check_attack_on(model, attack_on)
    fused = _composite(model) if attack_on == "object" else None
    return model if fused is None else object_network(fused)


class Tally:
    """Per-image correctness of a composite model's sub-networks, batch by batch, per severity.

    For any other model it holds nothing and every call is free.

    Args:
        model: the evaluated model (possibly wrapped).
        num_classes: classes of the dataset.
    """

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self.networks = component_networks(model, num_classes)
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in self.networks}

    def add(self, x: Tensor, y: Tensor) -> None:
        """Score each sub-network on the batch ``x`` (images the evaluated model saw) and ``y``."""
        with torch.no_grad():
            for name, net in self.networks.items():
                self.parts[name].append((net(x).argmax(1) == y).cpu().numpy())

    def take(self, gather: Callable[[list[np.ndarray]], np.ndarray]) -> Components | None:
        """The accuracies collected since the last call, gathered into run order; then reset.

        Args:
            gather: the batches' ``gather`` (this process's parts -> the whole run's bits).
        """
        bits: Mapping[str, np.ndarray] = {k: gather(v) for k, v in self.parts.items()}
        self.parts = {k: [] for k in self.networks}
        return component_accuracies(bits)
