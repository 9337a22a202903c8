"""Contextual fusion (Akumalla et al.): object network + context network + joint classifier.

The paper trains in stages (sections 2.1, 3.3): a foreground (object) network trained on the
object classes, a background network trained on scenes (Places365), then a joint classifier, one
fully connected layer on the concatenated features, is trained while both networks keep their
parameters. Section 3.4 adds an L2 penalty on the joint layer's object weights,

    L = sum_i CE(joint logits_i, y_i) + alpha * ||theta_fg||^2,

which shifts the decision toward the context stream; alpha ranged 0.1..10 and 10 did best.
The cross-entropy is summed over the samples, so the penalty's weight is relative to a batch of
``B`` images: robench divides the whole loss by ``B`` (mean cross-entropy + alpha / B * ||theta||^2:
the same minimiser, and Adam barely notices the scale), so losses read like every other defense's.
With ``B = 256``, alpha 10 keeps the clean accuracy high; alpha ~ 256 starves the object weights.

robench's stages, all inside ``robench train --defense fusion``:

1. object network: ``init`` (default ``zoo:standard``, a classifier of the dataset's classes), or,
   with ``-o init=none``, ``--arch`` trained here with cross-entropy for ``pre_epochs``;
2. context network: ``--arch`` with ``width=context_width`` (16: a checkpoint under 2 MB) trained
   here for ``pre_epochs`` on the context labels (``shapes``: the background style), the analogue
   of the paper's scene-centric network;
3. ``fit``: the joint linear layer only (both networks frozen, in eval mode), with the loss above.

Both preliminary runs are resumable (they live in the run's setup folder).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench._seeding import derive_seed
from robench.data import ImageDataset
from robench.defenses._base import (
    Defense,
    DefenseBase,
    Setup,
    SetupContext,
    StepContext,
    StepOutput,
    TrainConfig,
    _loop_of,
    register_defense,
)
from robench.defenses.standard import Standard
from robench.models import ImageClassifier

__all__ = ["Fusion", "ContextCE", "fusion_loss"]

_SRC = "Akumalla et al."


@dataclass(frozen=True)
class ContextCE(DefenseBase):
    """Cross-entropy on the context labels of the batch (trains the context network)."""

    name = "context_ce"  # never registered: a stage of ``fusion``'s setup
    description = "cross-entropy on the context labels"
    source = _SRC

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Loss against ``ctx.context`` instead of the class labels."""
        if ctx.context is None:
            raise ValueError("the context network needs context labels, and this dataset has none")
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, ctx.context), logits)


def fusion_loss(
    logits: Tensor, y: Tensor, object_weight: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Akumalla et al.'s loss (section 3.4) divided by the batch size ``B``.

    ``mean CE(logits, y) + alpha / B * ||object_weight||^2``.

    Returns:
        ``(loss, cross_entropy, squared_norm)``.
    """
    ce = F.cross_entropy(logits, y)
    sq = object_weight.pow(2).sum()
    return ce + alpha / logits.shape[0] * sq, ce, sq


@register_defense(
    "fusion",
    "object + context networks, joint linear classifier, L2 penalty alpha on the object weights",
    _SRC,
)
@dataclass(frozen=True)
class Fusion(DefenseBase):
    """Contextual fusion; options: ``alpha``, ``init``, ``context_width``, ``pre_epochs``."""

    alpha: float = 10.0
    init: str = "zoo:standard"
    context_width: int = 16
    pre_epochs: int = 6

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.pre_epochs < 1:
            raise ValueError(f"pre_epochs must be at least 1, got {self.pre_epochs}")

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Joint logits, cross-entropy plus the L2 penalty on the object weights."""
        from robench.models.fusion import fusion_net

        logits = model(x)
        loss, ce, sq = fusion_loss(logits, y, fusion_net(model).object_weight(), self.alpha)
        return StepOutput(loss, logits, {"ce": float(ce.detach()), "object_l2": float(sq.detach())})

    def on_train(self, model: nn.Module) -> None:
        """The two networks are frozen: batch norm and dropout stay in eval mode."""
        from robench.models.fusion import fusion_net

        net = fusion_net(model)
        net.object.eval()
        net.context.eval()

    def setup(self, ctx: SetupContext) -> Setup:
        """Stages 1 and 2 (object and context networks), then the fusion model to train."""
        from robench.models import create_model
        from robench.models.fusion import fusion_net

        train_context = ctx.train_ds.context
        if train_context is None:
            raise ValueError("fusion needs context labels per image; use the shapes dataset")
        n_ctx = _context_classes(train_context, ctx.test_ds)
        obj, base, base_kwargs, note = self._object_network(ctx)
        mean, std = obj.normalize.mean.flatten().tolist(), obj.normalize.std.flatten().tolist()
        cnet, context_kwargs = self._context_network(ctx, mean, std, n_ctx)
        kwargs: dict[str, Any] = {
            "base": base,
            "base_kwargs": base_kwargs,
            "context_base": ctx.arch,
            "context_kwargs": context_kwargs,
            "context_classes": n_ctx,
        }
        model = create_model(
            "fusion", ctx.info.num_classes, in_chans=ctx.info.channels, mean=mean, std=std, **kwargs
        )
        net = fusion_net(model)
        net.object.load_backbone_state(obj.backbone.state_dict())
        net.context.load_backbone_state(cnet.backbone.state_dict())
        for p in [*net.object.parameters(), *net.context.parameters()]:
            p.requires_grad_(False)
        acc = _context_accuracy(cnet, ctx.test_ds)
        notes = (
            f"object network: {note}; context network: {ctx.arch} {context_kwargs}, "
            f"{acc:.1%} on test context labels; alpha {self.alpha:g}"
        )
        return Setup(model, "fusion", kwargs, notes)

    def _object_network(
        self, ctx: SetupContext
    ) -> tuple[ImageClassifier, str, dict[str, Any], str]:
        from robench.models import create_model
        from robench.models.loading import load_model

        if self.init and self.init.lower() != "none":
            loaded = load_model(self.init)
            meta, obj = loaded.meta, loaded.model.cpu().eval()
            if meta is None or not isinstance(obj, ImageClassifier):
                raise ValueError(
                    f"fusion init {self.init!r} must be a robench checkpoint "
                    "(its architecture is needed)"
                )
            if (
                meta.arch == "fusion"
                or meta.num_classes != ctx.info.num_classes
                or meta.in_chans != ctx.info.channels
            ):
                raise ValueError(
                    f"fusion init {self.init!r} is not a plain {ctx.info.num_classes}-class "
                    "classifier of this data"
                )
            return (
                obj,
                meta.arch,
                dict(meta.arch_kwargs),
                f"{self.init} ({meta.arch})",
            )
        model = create_model(
            ctx.arch, ctx.info.num_classes, in_chans=ctx.info.channels, **dict(ctx.arch_kwargs)
        )
        _pretrain(model, Standard(), ctx, "object", self.pre_epochs)
        return (
            model,
            ctx.arch,
            dict(ctx.arch_kwargs),
            f"{ctx.arch} trained here for {self.pre_epochs} epochs",
        )

    def _context_network(
        self, ctx: SetupContext, mean: list[float], std: list[float], n_ctx: int
    ) -> tuple[ImageClassifier, dict[str, Any]]:
        from robench.models import MODELS, create_model

        kwargs = dict(ctx.arch_kwargs)
        if self.context_width:
            if "width" not in inspect.signature(MODELS.get(ctx.arch).build).parameters:
                raise ValueError(
                    f"architecture {ctx.arch!r} has no width option; pass -o context_width=0"
                )
            kwargs["width"] = self.context_width
        model = create_model(
            ctx.arch, n_ctx, in_chans=ctx.info.channels, mean=mean, std=std, **kwargs
        )
        _pretrain(model, ContextCE(), ctx, "context", self.pre_epochs)
        return model, kwargs


def _context_classes(train_context: Tensor, test_ds: ImageDataset) -> int:
    top = int(train_context.max())
    if test_ds.context is not None:
        top = max(top, int(test_ds.context.max()))
    return top + 1


def _pretrain(
    model: nn.Module, defense: Defense, ctx: SetupContext, stage: str, epochs: int
) -> None:
    """Train one network with the run's loop, resumable from the setup folder."""
    fit = _loop_of(ctx)

    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=ctx.batch_size,
        lr=ctx.lr,
        seed=derive_seed(ctx.seed, "fusion", stage),
        device=ctx.device,
    )
    fingerprint = {"stage": stage, "train_images": len(ctx.train_ds), "model": repr(model)}
    fit(
        model,
        defense,
        ctx.train_ds,
        cfg,
        out=workdir / f"{stage}.pt",
        progress=ctx.progress,
        fingerprint=fingerprint,
    )
    model.cpu().eval()


def _context_accuracy(model: nn.Module, ds: ImageDataset, batch_size: int = 500) -> float:
    """Accuracy of the context network on ``ds``'s context labels (nan without them)."""
    context = ds.context
    if context is None or len(ds) == 0:
        return float("nan")
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(ds)))
            x, _ = ds.get_batch(idx)
            correct += int((model(x).argmax(1) == context[idx]).sum())
    return correct / len(ds)
