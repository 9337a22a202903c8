"""DeepCorrect models (Borkar & Karam): residual *correction units* on a trained CNN.

The most distortion-susceptible filters of a trained CNN get residual correction units.

In each of the first ``k`` conv layers, the outputs of the chosen filters (``filters[i]``, ranked by
correction priority, Algorithm 1) go through a small residual block before the layer's batch norm
and ReLU (the paper's footnote 6); the other filters' outputs pass unchanged. The base network keeps
its structure and parameter names, so a trained base checkpoint loads into it as is.

The unit (paper Fig. 7 and Table 10: four convs, one skip) is, on the ``c`` corrected channels::

    1x1 conv c -> D, BN, ReLU; k x k conv D -> D, BN, ReLU;
    k x k conv D -> D, BN, ReLU; 1x1 conv D -> c; + input

with ``D = c`` by default (the paper's "critically wide" unit) and ``k = 3`` (AlexNet's first unit
uses 5 x 5 on 55 px maps; 3 x 3 suits 32 px inputs and is what every other unit of the paper uses).
The paper names no initialisation; robench zeroes the last 1x1 conv, so a fresh unit is the
identity and a fresh DeepCorrect model predicts exactly as the network it corrects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from robench.models._base import MODELS, register_model

__all__ = [
    "BaseLayout",
    "LAYOUTS",
    "CorrectionUnit",
    "CorrectedConv2d",
    "layout_of",
    "features_of",
    "conv_positions",
    "weight_layers",
    "correction_units",
]


@dataclass(frozen=True)
class BaseLayout:
    """How a supported base network is laid out: convs in ``features``, then ``tail(backbone, f)``.

    Args:
        head: attribute name of the final (classifier) layer.
        tail: maps the output of ``features`` to logits.
    """

    head: str
    tail: Callable[[nn.Module, Tensor], Tensor]


def _apply(m: nn.Module, child: str, x: Tensor) -> Tensor:
    """``m.<child>(x)`` for the registered sub-module ``child`` of ``m``."""
    return cast(Tensor, m.get_submodule(child)(x))


def _pool_then_head(m: nn.Module, f: Tensor) -> Tensor:
    return _apply(m, "head", _apply(m, "pool", f).flatten(1))


def _classifier_then_pool(m: nn.Module, f: Tensor) -> Tensor:
    return _apply(m, "pool", _apply(m, "classifier", f)).flatten(1)


LAYOUTS: dict[str, BaseLayout] = {
    "small_cnn": BaseLayout("head", _pool_then_head),
    "vgg11": BaseLayout("head", _pool_then_head),
    "allconv": BaseLayout("classifier", _classifier_then_pool),
}


def layout_of(arch: str) -> BaseLayout:
    """The layout of a supported base architecture (``ValueError`` in one sentence otherwise)."""
    if arch not in LAYOUTS:
        known = ", ".join(sorted(LAYOUTS))
        raise ValueError(
            f"DeepCorrect and Finetune-k support the architectures {known}, not {arch!r}"
        )
    return LAYOUTS[arch]


def features_of(backbone: nn.Module) -> nn.Sequential:
    """The ``features`` stack of a supported base network (an ``nn.Sequential``)."""
    feats = backbone.get_submodule("features")
    if not isinstance(feats, nn.Sequential):
        raise TypeError(
            "the features of a DeepCorrect base must be an nn.Sequential, "
            f"not {type(feats).__name__}"
        )
    return feats


def _convs(backbone: nn.Module) -> list[tuple[int, nn.Conv2d]]:
    """The conv layers of ``backbone.features`` with their positions, input side first."""
    return [(i, m) for i, m in enumerate(features_of(backbone)) if isinstance(m, nn.Conv2d)]


def conv_positions(backbone: nn.Module) -> list[int]:
    """Positions of the conv layers in ``backbone.features``, input side first."""
    return [i for i, _ in _convs(backbone)]


def weight_layers(backbone: nn.Module, arch: str) -> list[list[nn.Module]]:
    """The weight layers in order: each conv with the batch norm right after it, then the head."""
    feats = features_of(backbone)
    groups: list[list[nn.Module]] = []
    for p in conv_positions(backbone):
        nxt = feats[p + 1] if p + 1 < len(feats) else None
        groups.append(
            [feats[p]] + ([nxt] if isinstance(nxt, nn.modules.batchnorm._BatchNorm) else [])
        )
    groups.append([getattr(backbone, layout_of(arch).head)])
    return groups


class CorrectionUnit(nn.Module):
    """A residual correction unit: ``x + body(x)`` on the corrected filters' outputs.

    Args:
        channels: number of corrected filters (input and output channels).
        width: correction width D (0: equal to ``channels``, "critically wide").
        kernel: spatial size of the two middle convs (odd).
        bn: batch norm after each of the first three convs (the paper's default; no-bn is its
            ablation).
    """

    def __init__(self, channels: int, width: int = 0, kernel: int = 3, bn: bool = True) -> None:
        super().__init__()
        d = width or channels
        layers: list[nn.Module] = []
        for cin, cout, k in ((channels, d, 1), (d, d, kernel), (d, d, kernel)):
            layers.append(nn.Conv2d(cin, cout, k, 1, k // 2, bias=not bn))
            layers += [nn.BatchNorm2d(cout)] if bn else []
            layers.append(nn.ReLU(inplace=True))
        last = nn.Conv2d(d, channels, 1)
        nn.init.zeros_(last.weight)
        if last.bias is not None:  # always: the conv is built with a bias
            nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        """``x + body(x)`` (same shape as ``x``)."""
        return x + cast(Tensor, self.body(x))


class CorrectedConv2d(nn.Conv2d):
    """A conv layer whose filters ``indices`` have their outputs passed through a correction unit.

    It is an ``nn.Conv2d`` (same parameter names), so the base network's weights load unchanged.

    Args:
        conv: the layer being corrected (its hyperparameters are copied, not its weights).
        indices: the filters whose outputs go through ``unit``.
        unit: the correction unit (``len(indices)`` channels in and out).
    """

    corrected: Tensor

    def __init__(self, conv: nn.Conv2d, indices: Sequence[int], unit: nn.Module) -> None:
        padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            _pair(conv.kernel_size),
            _pair(conv.stride),
            padding,
            _pair(conv.dilation),
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
        )
        self.register_buffer(
            "corrected", torch.tensor(list(indices), dtype=torch.long), persistent=False
        )
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        """The conv's output with the corrected filters' channels replaced by the unit's."""
        y = super().forward(x)
        fixed = cast(Tensor, self.unit(y.index_select(1, self.corrected)))
        return y.index_copy(1, self.corrected, fixed)


def _pair(t: tuple[int, ...]) -> tuple[int, int]:
    """A conv's 2-d size (kernel, stride, padding, dilation) as the pair ``nn.Conv2d`` takes."""
    return t[0], t[1]


def correction_units(model: nn.Module) -> list[nn.Module]:
    """The correction units of a DeepCorrect model, input side first."""
    return [m.unit for m in model.modules() if isinstance(m, CorrectedConv2d)]


def _check_filters(filters: object, k: int, widths: list[int]) -> list[list[int]]:
    if not isinstance(filters, (list, tuple)) or len(filters) != k:
        raise ValueError(
            f"filters must list the corrected filter indices of each of the k={k} layers"
        )
    out = []
    for i, (idx, n) in enumerate(zip(filters, widths, strict=True)):
        idx = [int(j) for j in idx]
        if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= n:
            raise ValueError(f"filters[{i}] must be distinct indices in 0..{n - 1}, got {idx}")
        out.append(idx)
    return out


@register_model(
    "deepcorrect",
    input_size=32,
    description=(
        "a trained CNN with residual correction units on its most distortion-susceptible filters "
        "(composite)"
    ),
    source="Borkar & Karam, DeepCorrect",
)
def deepcorrect(
    num_classes: int = 10,
    in_chans: int = 3,
    *,
    base: str = "small_cnn",
    base_kwargs: Mapping[str, Any] | None = None,
    k: int = 1,
    filters: Sequence[Sequence[int]] = ((0,),),
    unit_width: int = 0,
    unit_kernel: int = 3,
    unit_bn: bool = True,
) -> nn.Module:
    """Build ``base`` with correction units on ``filters[i]`` of its conv layer ``i`` (``i < k``).

    Args:
        num_classes: output logits.
        in_chans: input channels.
        base: architecture being corrected (``small_cnn``, ``vgg11`` or ``allconv``).
        base_kwargs: its options.
        k: number of corrected conv layers, from the input.
        filters: per corrected layer, the filter indices whose outputs are corrected.
        unit_width: correction width D (0: as many as the corrected filters).
        unit_kernel: spatial size of the unit's middle convs.
        unit_bn: batch norm inside the units.
    """
    layout_of(base)
    backbone = MODELS.get(base).build(
        num_classes=num_classes, in_chans=in_chans, **dict(base_kwargs or {})
    )
    convs = _convs(backbone)
    if not 1 <= k <= len(convs):
        raise ValueError(f"k must be in 1..{len(convs)} (the conv layers of {base}), got {k}")
    if unit_kernel < 1 or unit_kernel % 2 == 0 or unit_width < 0:
        raise ValueError(
            f"unit_kernel must be odd and unit_width >= 0, got {unit_kernel} and {unit_width}"
        )
    chosen = _check_filters(filters, k, [conv.out_channels for _, conv in convs[:k]])
    feats = features_of(backbone)
    for (p, conv), idx in zip(convs[:k], chosen, strict=True):
        unit = CorrectionUnit(len(idx), unit_width, unit_kernel, unit_bn)
        feats[p] = CorrectedConv2d(conv, idx, unit)
    return backbone
