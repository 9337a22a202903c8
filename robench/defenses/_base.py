"""The defense contract: a defense turns a batch into a loss; ``training.fit`` does the rest."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from .._registry import Registry

__all__ = ["StepContext", "StepOutput", "Defense", "DEFENSES", "register_defense", "build_defense", "eval_mode"]


@dataclass(frozen=True)
class StepContext:
    """Where training is: epoch, step, and the generator every random choice must use."""

    epoch: int
    step: int
    generator: torch.Generator
    num_classes: int


@dataclass(frozen=True)
class StepOutput:
    """What a defense returns for one batch."""

    loss: Tensor
    logits: Tensor
    metrics: Mapping[str, float] = field(default_factory=dict)


class Defense(Protocol):
    """Frozen dataclass of hyperparameters with a ``step`` method."""

    name: ClassVar[str]
    description: ClassVar[str]

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput: ...


DEFENSES: Registry[Any] = Registry("defense")


def register_defense(name: str, description: str, source: str) -> Callable[[type], type]:
    """Class decorator registering a defense dataclass."""

    def wrap(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        cls.description = description  # type: ignore[attr-defined]
        cls.source = source  # type: ignore[attr-defined]
        DEFENSES.add(name, cls)
        return cls

    return wrap


def build_defense(name: str, options: Mapping[str, str] | None = None) -> Any:
    """Instantiate a defense from ``-o key=value`` options, converting values to the field types."""
    cls = DEFENSES.get(name)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        if key not in known:
            raise ValueError(f"defense {name!r} has no option {key!r} (options: {', '.join(known) or 'none'})")
        default = getattr(cls, key, None) if known[key].default is not None else None
        kwargs[key] = _convert(raw, default, key)
    return cls(**kwargs)


def _convert(raw: Any, default: Any, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"option {key}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


class eval_mode:
    """``with eval_mode(model):`` switches to eval and restores the previous mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
