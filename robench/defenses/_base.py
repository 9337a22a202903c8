"""The defense contract: a defense turns a batch into a loss; ``training.fit`` does the rest."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor, nn

from robench._registry import Registry
from robench.data import DatasetInfo, ImageDataset
from robench.models import ImageClassifier

__all__ = [
    "StepContext",
    "StepOutput",
    "SetupContext",
    "TrainConfig",
    "FitFn",
    "Setup",
    "Defense",
    "DefenseBase",
    "DEFENSES",
    "register_defense",
    "build_defense",
    "eval_mode",
]


@dataclass(frozen=True)
class StepContext:
    """Where training is: epoch, step, and the generator every random choice must use.

    ``epochs`` is the run's total (for schedules over training); ``seed`` is the run seed, for
    per-image randomness that must not change from epoch to epoch (derive from it, never reseed it).
    """

    epoch: int
    step: int
    generator: torch.Generator
    num_classes: int
    index: Tensor | None = None
    context: Tensor | None = None
    epochs: int = 1
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings (Laugros et al. section 4.2 defaults).

    Args:
        epochs: passes over the training set.
        batch_size: images per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        milestones: fractions of all steps where the LR is divided by 10.
        seed: every random choice derives from it.
        device: ``cpu`` or ``cuda``.
    """

    epochs: int = 6
    batch_size: int = 256
    lr: float = 0.002
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (1 / 3, 2 / 3, 8 / 9)
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """One-sentence errors for impossible settings."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")


class FitFn(Protocol):
    """The training loop handed to a composite defense's ``setup`` (:func:`robench.training.fit`).

    Composite defenses train their parts (MAT's single-strength runs, fusion's stages) with the
    run's own loop, checkpointed and resumable under ``out``; the loop is passed in rather than
    imported, because training sits above defenses.
    """

    def __call__(
        self,
        model: nn.Module,
        defense: Defense,
        train_ds: ImageDataset,
        cfg: TrainConfig,
        *,
        out: Path,
        progress: bool = ...,
        fingerprint: Mapping[str, Any] | None = ...,
    ) -> object:
        """Train ``model`` in place with ``defense``, checkpointed and resumable at ``out``."""


@dataclass(frozen=True)
class SetupContext:
    """What a composite defense's ``setup`` may use before training starts.

    Args:
        arch: the architecture asked for (``--arch``), the base of composite models.
        arch_kwargs: its options.
        info: facts of the training data (classes, channels, side).
        train_ds: training images (with ``context`` labels where the dataset has them).
        test_ds: test images.
        seed: the run's seed; any random choice of the setup derives from it.
        device: ``cpu`` or ``cuda``.
        workdir: a folder beside the output checkpoint for resumable preliminary work
            (e.g. MAT's short single-strength runs); reruns find it there.
        batch_size: the run's batch size.
        lr: the run's learning rate.
        progress: whether bars may be shown.
        fit: the training loop, for setups that train parts of their model before the main run.
    """

    arch: str
    arch_kwargs: Mapping[str, Any]
    info: DatasetInfo
    train_ds: ImageDataset
    test_ds: ImageDataset
    seed: int
    device: str
    workdir: Path
    batch_size: int = 256
    lr: float = 0.002
    progress: bool = False
    fit: FitFn | None = None


@dataclass
class Setup:
    """What ``setup`` returns: the model to train and how to rebuild it from a checkpoint.

    ``create_model(arch, num_classes, in_chans=..., **arch_kwargs)`` must rebuild ``model``'s exact
    structure (so the checkpoint loads with ``weights_only=True``, no code from the file).
    Parameters with ``requires_grad=False`` are not trained.
    """

    model: ImageClassifier
    arch: str
    arch_kwargs: dict[str, Any]
    notes: str = ""


@dataclass(frozen=True)
class StepOutput:
    """What a defense returns for one batch."""

    loss: Tensor
    logits: Tensor
    metrics: Mapping[str, float] = field(default_factory=dict)


class Defense(Protocol):
    """Frozen dataclass of hyperparameters with a ``step`` method.

    Optional hooks, looked up with ``getattr``:

    - ``setup(ctx: SetupContext) -> Setup``: composite defenses build (and may pre-train, load
      or freeze) their model here; without it the trainer builds ``create_model(--arch)``.
    - ``on_train(model)``: called after ``model.train()`` at the start of every epoch (e.g. to keep
      frozen layers' batch-norm statistics fixed).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    source: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """The loss and logits of one batch (``training.fit`` does the backward and the update)."""
        ...


class DefenseBase:
    """Declares the class attributes :func:`register_defense` sets, for type checkers.

    A defense dataclass derives from it so that its class satisfies :class:`Defense`; the values
    come from the decorator (or, for a defense that is never registered, from the class body).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    source: ClassVar[str]


_DefenseT = TypeVar("_DefenseT", bound=Defense)

DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(
    name: str, description: str, source: str
) -> Callable[[type[_DefenseT]], type[_DefenseT]]:
    """Class decorator registering a defense dataclass (a :class:`DefenseBase` subclass)."""

    def wrap(cls: type[_DefenseT]) -> type[_DefenseT]:
        cls.name = name
        cls.description = description
        cls.source = source
        DEFENSES.add(name, cls)
        return cls

    return wrap


def build_defense(name: str, options: Mapping[str, str] | None = None) -> Defense:
    """Instantiate a defense from ``-o key=value`` options, converting values to the field types."""
    cls = DEFENSES.get(name)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        if key not in known:
            raise ValueError(
                f"defense {name!r} has no option {key!r} (options: {', '.join(known) or 'none'})"
            )
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


def _loop_of(ctx: SetupContext) -> FitFn:
    """The training loop a setup was handed; one sentence when a caller forgot it."""
    if ctx.fit is None:
        raise ValueError(
            "this defense trains parts of its model in setup: "
            "pass SetupContext(fit=robench.training.fit)"
        )
    return ctx.fit
