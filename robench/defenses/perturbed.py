"""Training on perturbed data (Cavey et al., section VI): constant, incremental, transfer.

- ``constant``: every training image is perturbed (VI-A). The paper perturbs the data set once
  ("data remains unaltered once training begins"), so each image keeps the same perturbation in
  every epoch; ``-o resample=true`` draws a new one each epoch instead.
- ``incremental``: a share of each batch is perturbed, rising every epoch from 5 % to all of it
  (VI-B); the batch is sliced at ``round(share * batch size)``.
- ``transfer``: a trained model whose output layer is replaced by new fully connected layers
  (256 + ReLU, 512 + ReLU, output: the CIFAR model of Fig. 9) and fine-tuned, all layers (the
  paper found that slightly better than freezing), on perturbed data (VI-C).

The paper trains one model per perturbation and level (pixels 1..10, noise 0.001..0.05 (read as
a standard deviation, see ``gaussian_noise_std``), blur sigma 0.04..1.0); ``perturbation`` is any
registered corruption and ``severity`` one of its levels (``0``: a random level per image, a
robench extension). The default, ``gaussian_noise_std`` at severity 5 (std 0.05), is the setting
of the paper's transfer-learning headline result. Every image's perturbation derives from the run
seed and its dataset index, never from its batch, so it does not depend on batch size or order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import perturbations
from robench._seeding import derive_seed
from robench.defenses._base import (
    DefenseBase,
    Setup,
    SetupContext,
    StepContext,
    StepOutput,
    register_defense,
)
from robench.perturbations import CorruptionSpec, preset_for_size

__all__ = [
    "Constant",
    "Incremental",
    "Transfer",
    "perturb_images",
    "image_levels",
    "perturbed_share",
]

_SRC = "Cavey et al., section VI"


def image_levels(seed: int, indices: Tensor, severities: tuple[int, ...]) -> Tensor:
    """A level per image, uniform over ``severities``, fixed by ``(seed, index)``."""
    picks = [derive_seed(seed, "level", int(i)) % len(severities) for i in indices]
    return torch.tensor([severities[p] for p in picks], dtype=torch.int64)


def perturb_images(
    x: Tensor, name: str, severity: int, *, seed: int, indices: Tensor | None = None
) -> Tensor:
    """Perturb each image of ``x`` with its own reproducible draw.

    Args:
        x: N x C x H x W batch in [0, 1] (not modified).
        name: a registered corruption.
        severity: one of its levels, or 0 for a level per image from :func:`image_levels`.
        seed: the data seed; image ``i`` gets the corruption's draw for ``(seed, indices[i])``.
        indices: dataset positions of the images (default ``0..N-1``).

    Returns:
        The perturbed batch (a new tensor).
    """
    spec: CorruptionSpec = perturbations.get(name)
    idx = torch.arange(x.shape[0]) if indices is None else indices.detach().cpu().to(torch.int64)
    preset = preset_for_size(x.shape[-1])
    with torch.no_grad():
        if severity:
            return spec(x, severity, seed=seed, indices=idx, preset=preset)
        levels = image_levels(seed, idx, spec.severities)
        out = x.clone()
        for level in torch.unique(levels).tolist():
            mask = levels == level
            out[mask.to(x.device)] = spec(
                x[mask.to(x.device)], int(level), seed=seed, indices=idx[mask], preset=preset
            )
        return out


def perturbed_share(epoch: int, epochs: int, start: float = 0.05, end: float = 1.0) -> float:
    """Incremental learning's share of perturbed images in epoch ``epoch``.

    ``start`` in the first epoch, rising linearly per epoch to ``end`` in the last.
    """
    if epochs <= 1:
        return start
    return start + (end - start) * min(epoch, epochs - 1) / (epochs - 1)


@dataclass(frozen=True)
class _PerturbedData(DefenseBase):
    """Options shared by the three defenses: which corruption, which level, when it is drawn."""

    perturbation: str = "gaussian_noise_std"
    severity: int = 5
    resample: bool = False

    def __post_init__(self) -> None:
        spec = perturbations.get(self.perturbation)
        if spec.kind != "corruption":
            raise ValueError(
                f"perturbation must be a corruption, got the attack {self.perturbation!r}"
            )
        if spec.needs_boxes:
            raise ValueError(
                f"{self.perturbation} needs bounding boxes, which training batches do not carry"
            )
        if self.severity != 0 and self.severity not in spec.severities:
            levels = f"{spec.severities[0]}..{spec.severities[-1]}"
            raise ValueError(
                f"severity must be in {levels} for {self.perturbation} "
                f"(or 0: random per image), got {self.severity}"
            )

    def data_seed(self, ctx: StepContext) -> int:
        """Seed of the perturbed data: the run's (fixed data) or the epoch's (``resample``)."""
        if self.resample:
            return derive_seed(ctx.generator.initial_seed(), "perturbed-data")
        return derive_seed(ctx.seed, "perturbed-data")

    def perturb(self, x: Tensor, ctx: StepContext, indices: Tensor | None = None) -> Tensor:
        """The perturbed version of ``x`` (dataset positions ``indices``, default ``ctx.index``)."""
        idx = ctx.index if indices is None else indices
        return perturb_images(
            x, self.perturbation, self.severity, seed=self.data_seed(ctx), indices=idx
        )

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Cross-entropy on the fully perturbed batch."""
        logits = model(self.perturb(x, ctx))
        return StepOutput(F.cross_entropy(logits, y), logits)


@register_defense(
    "constant",
    "constant learning: train on perturbed images only (any registered corruption)",
    _SRC,
)
@dataclass(frozen=True)
class Constant(_PerturbedData):
    """Constant learning (VI-A): every training image is perturbed."""


@register_defense(
    "incremental",
    "incremental learning: the share of perturbed images rises per epoch from 5% to 100%",
    _SRC,
)
@dataclass(frozen=True)
class Incremental(_PerturbedData):
    """Incremental learning (VI-B): ``round(share * B)`` images of each batch are perturbed.

    The paper starts at 5 % and grows the share every epoch until the last epochs are mostly
    perturbed; it gives no end value. robench rises linearly to 100 % in the last epoch (with the
    paper's 20 CIFAR epochs, that is 5 % more per epoch).
    """

    start: float = 0.05
    end: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 <= self.start <= 1.0 and 0.0 <= self.end <= 1.0):
            raise ValueError(
                f"start and end must be shares in [0, 1], got start={self.start}, end={self.end}"
            )

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Cross-entropy on the batch whose first ``round(share * B)`` images are perturbed."""
        share = perturbed_share(ctx.epoch, ctx.epochs, self.start, self.end)
        k = min(x.shape[0], int(math.floor(share * x.shape[0] + 0.5)))
        xs = x
        if k > 0:
            xs = x.clone()
            xs[:k] = self.perturb(x[:k], ctx, None if ctx.index is None else ctx.index[:k])
        logits = model(xs)
        return StepOutput(
            F.cross_entropy(logits, y), logits, {"share": share, "perturbed": float(k)}
        )


@register_defense(
    "transfer",
    "transfer learning: new FC layers (256, 512) on a trained model, "
    "fine-tuned on perturbed images",
    _SRC,
)
@dataclass(frozen=True)
class Transfer(_PerturbedData):
    """Transfer learning (VI-C): replace the output layer of ``init`` by new FC layers, fine-tune.

    Options beyond the perturbation: ``init`` (the trained model), ``hidden`` (sizes of the new
    hidden layers; ``256`` is the paper's MNIST head) and ``freeze`` (train the new layers only,
    the paper's other variant).
    """

    init: str = "zoo:standard"
    hidden: tuple[float, ...] = (256, 512)
    freeze: bool = False

    def setup(self, ctx: SetupContext) -> Setup:
        """Load ``init``, swap its output layer for the new head, copy every other weight."""
        from robench.models import ImageClassifier, create_model
        from robench.models.loading import load_model
        from robench.models.transfer import check_hidden, last_linear

        loaded = load_model(self.init)
        meta, old = loaded.meta, loaded.model
        if meta is None or not isinstance(old, ImageClassifier):
            raise ValueError(
                f"transfer init {self.init!r} must be a robench checkpoint "
                "(its architecture is needed)"
            )
        if meta.arch == "transfer_mlp":
            raise ValueError(
                f"transfer init {self.init!r} is already a transfer model; "
                "give the original network"
            )
        if meta.in_chans != ctx.info.channels:
            raise ValueError(
                f"transfer init has {meta.in_chans} input channels, "
                f"the data has {ctx.info.channels}"
            )
        head = last_linear(old.backbone)[2]
        head_name = next(n for n, m in old.backbone.named_modules() if m is head)
        prefix = f"backbone.{head_name}."
        kwargs: dict[str, Any] = {
            "base": meta.arch,
            "base_kwargs": dict(meta.arch_kwargs),
            "hidden": check_hidden(self.hidden),
        }
        model = create_model(
            "transfer_mlp",
            ctx.info.num_classes,
            in_chans=meta.in_chans,
            mean=meta.mean,
            std=meta.std,
            **kwargs,
        )
        kept = {k: v for k, v in old.state_dict().items() if not k.startswith(prefix)}
        missing, unexpected = model.load_state_dict(kept, strict=False)
        if unexpected or any(not k.startswith(prefix) for k in missing):
            raise ValueError(
                f"transfer init {self.init!r} does not fit {meta.arch} with a new head"
            )
        for name, p in model.named_parameters():
            p.requires_grad_(not self.freeze or name.startswith(prefix))
        what = "new layers only (rest frozen)" if self.freeze else "all layers"
        notes = (
            f"from {self.init} ({meta.arch}); output layer {head_name} -> "
            f"FC {kwargs['hidden']} + output; trains {what}"
        )
        return Setup(model, "transfer_mlp", kwargs, notes)

    def on_train(self, model: nn.Module) -> None:
        """With ``freeze``, frozen batch-norm layers keep their running statistics (eval mode)."""
        if not self.freeze:
            return
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()
            ):
                m.eval()
