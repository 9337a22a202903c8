"""Contextual fusion (Akumalla et al.): object and context networks, one joint classifier.

An object network and a context network sit side by side, and a joint linear classifier reads
their concatenated penultimate features.

In the paper the foreground (object) and background (scene) classifiers are ResNet-18s whose
512-d features are concatenated into a 1024-d vector for one fully connected layer. Here each
branch is any registered backbone with a linear output layer; the branch keeps that layer, so
``object_network(model)`` is still a complete object classifier (the network FGSM attacks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from robench.models._base import MODELS, ImageClassifier, register_model
from robench.models.transfer import split_head

__all__ = ["Branch", "FusionNet", "fusion", "object_network", "context_network", "fusion_net"]


class Branch(nn.Module):
    """A backbone cut before its output layer: ``features(x)``, ``forward(x) = head(features(x))``.

    Args:
        backbone: a registered backbone (on normalised input), modified in place.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        body, head, name = split_head(backbone)
        self.body = body
        self.head = head
        self.head_name = name

    @property
    def feature_dim(self) -> int:
        """Width of the penultimate features."""
        return int(self.head.in_features)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, N x feature_dim."""
        return cast(Tensor, self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the uncut backbone: ``head(features(x))``."""
        return cast(Tensor, self.head(self.body(x)))

    def load_backbone_state(self, state: Mapping[str, Tensor]) -> None:
        """Load the state_dict of the uncut backbone (e.g. a trained ``small_cnn``'s backbone)."""
        prefix = self.head_name + "."
        self.body.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)})
        self.head.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )


class FusionNet(nn.Module):
    """``joint([object.features(x), context.features(x)])``: class logits from both streams.

    Args:
        object_net: backbone classifying the objects (the classes of the dataset).
        context_net: backbone classifying the context (background style / scene).
        num_classes: logits of the joint classifier.
    """

    def __init__(self, object_net: nn.Module, context_net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.object = Branch(object_net)
        self.context = Branch(context_net)
        self.joint = nn.Linear(self.object.feature_dim + self.context.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Joint logits from the concatenated object and context features."""
        joint = torch.cat([self.object.features(x), self.context.features(x)], dim=1)
        return cast(Tensor, self.joint(joint))

    def object_weight(self) -> Tensor:
        """The joint classifier's weights on the object features (theta_fg in the paper's L2)."""
        return self.joint.weight[:, : self.object.feature_dim]

    def context_weight(self) -> Tensor:
        """The joint classifier's weights on the context features."""
        return self.joint.weight[:, self.object.feature_dim :]


@register_model(
    "fusion",
    input_size=32,
    description=(
        "object network + context network, joint linear classifier on concatenated features"
    ),
    source="Akumalla et al.",
)
def fusion(
    num_classes: int = 10,
    in_chans: int = 3,
    base: str = "small_cnn",
    base_kwargs: Mapping[str, Any] | None = None,
    context_base: str | None = None,
    context_kwargs: Mapping[str, Any] | None = None,
    context_classes: int = 10,
) -> nn.Module:
    """Build a :class:`FusionNet`.

    Args:
        num_classes: object classes (joint logits).
        in_chans: input channels.
        base: registered backbone of the object network.
        base_kwargs: its options.
        context_base: registered backbone of the context network (default: ``base``).
        context_kwargs: its options (default: ``base_kwargs``).
        context_classes: number of context labels the context network was trained on.
    """
    if base == "fusion" or context_base == "fusion":
        raise ValueError("a fusion branch cannot itself be a fusion model")
    obj = MODELS.get(base).build(
        num_classes=num_classes, in_chans=in_chans, **dict(base_kwargs or {})
    )
    ctx_kwargs = dict(base_kwargs or {}) if context_kwargs is None else dict(context_kwargs)
    ctx = MODELS.get(context_base or base).build(
        num_classes=context_classes, in_chans=in_chans, **ctx_kwargs
    )
    return FusionNet(obj, ctx, num_classes)


def fusion_net(model: nn.Module) -> FusionNet:
    """The :class:`FusionNet` inside a robench classifier (or ``model`` itself)."""
    net = model.backbone if isinstance(model, ImageClassifier) else model
    if not isinstance(net, FusionNet):
        raise ValueError(f"expected a fusion model (arch 'fusion'), got {type(net).__name__}")
    return net


def object_network(model: ImageClassifier) -> nn.Module:
    """The object classifier of a fusion model on [0, 1] images (shares weights and normalisation).

    The paper crafts FGSM on this network and scores the joint classifier on the result.
    """
    return nn.Sequential(model.normalize, fusion_net(model).object)


def context_network(model: ImageClassifier) -> nn.Module:
    """The context classifier of a fusion model on [0, 1] images (logits over context labels)."""
    return nn.Sequential(model.normalize, fusion_net(model).context)
