"""The defenses of Borkar & Karam, DeepCorrect: Finetune-k, Deepcorr-k and Deepcorr-kc.

Both start from a network trained on clean images (option ``init``) and train on batches of which
half the images, chosen at random, are distorted (section 5.1.1): a distortion type and a level
drawn per image (default: AWGN or Gaussian blur, levels 1..6 of the ``deepcorrect`` suite).

- ``finetune`` (Finetune-k) trains the first ``k`` weight layers (conv + its batch norm, as the
  paper's parameter counts show), everything else frozen.
- ``deepcorrect`` (Deepcorr-k) ranks the filters of the first ``k`` conv layers by correction
  priority (eq. 1, Algorithm 1: accuracy gained on distorted images when one filter's output is
  replaced by its output on the clean image), puts a residual correction unit on the top ``beta``
  of each layer's filters, and trains only the units; with ``train_last`` (Deepcorr-kc) the last
  ``last_layers`` weight layers train too (the paper's "last 3 convolutional layers").

Frozen batch norms stay in eval mode (fixed statistics). The paper fine-tunes with a learning rate
ten times lower than pre-training and trains correction units with the pre-training rate; robench's
one loop takes the rate from ``--lr``, so pass the lower one to ``finetune`` yourself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import perturbations
from robench._io import atomic_write_text
from robench._seeding import derive_seed, make_generator
from robench.data import ImageDataset
from robench.defenses._base import (
    DefenseBase,
    Setup,
    SetupContext,
    StepContext,
    StepOutput,
    eval_mode,
    register_defense,
)
from robench.models import ImageClassifier, create_model
from robench.models.deepcorrect import (
    conv_positions,
    correction_units,
    features_of,
    layout_of,
    weight_layers,
)

if TYPE_CHECKING:
    from robench.models.checkpoint import CheckpointMeta

__all__ = [
    "Finetune",
    "DeepCorrect",
    "distort",
    "draw_distortions",
    "correction_priority",
    "top_filters",
    "ranking_set",
]

log = logging.getLogger(__name__)
_SRC = "Borkar & Karam, DeepCorrect"
_RANKING_FILE = "deepcorrect_ranking.json"
_MAX_ROWS = 512  # images per forward pass while ranking


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        spec = perturbations.get(n) if n in perturbations.names(kind="corruption") else None
        if spec is None or spec.needs_boxes:
            raise ValueError(
                f"distortions must name corruptions such as awgn,blur; {n!r} is not one "
                "(robench list perturbations)"
            )
    if not names:
        raise ValueError("distortions must name at least one corruption, e.g. awgn,blur")
    return names


def draw_distortions(
    n: int, names: tuple[str, ...], g: torch.Generator, *, share: float = 0.5
) -> tuple[Tensor, Tensor, int]:
    """Per image: distortion kind (index into ``names``, -1 = clean) and level, plus a noise seed.

    ``int(n * share)`` images, chosen by a random permutation, are distorted; each gets a kind
    uniform over ``names`` and a level uniform over that corruption's severities.
    """
    picked = torch.randperm(n, generator=g)[: int(n * share)]
    counts = torch.tensor([len(perturbations.get(name).severities) for name in names])
    kind_p = torch.randint(0, len(names), (len(picked),), generator=g)
    level_p = 1 + (torch.rand(len(picked), generator=g) * counts[kind_p]).long()
    kinds = torch.full((n,), -1, dtype=torch.long)
    levels = torch.zeros(n, dtype=torch.long)
    kinds[picked], levels[picked] = kind_p, level_p
    return kinds, levels, int(torch.randint(0, 2**62, (), generator=g))


def distort(
    x: Tensor,
    kinds: Tensor,
    levels: Tensor,
    *,
    names: tuple[str, ...],
    seed: int,
    indices: Tensor,
    preset: str,
) -> Tensor:
    """Image ``i`` distorted by ``names[kinds[i]]`` at severity ``levels[i]`` (kind -1: left clean).

    Each image's noise comes from ``(seed, name, level, indices[i])``, whatever batch it sits in.
    """
    out = x.clone()
    for kind in sorted(set(kinds.tolist()) - {-1}):
        spec = perturbations.get(names[kind])
        for level in sorted(set(levels[kinds == kind].tolist())):
            sel = ((kinds == kind) & (levels == level)).nonzero().flatten()
            at = sel.to(x.device)
            out[at] = spec(x[at], int(level), seed=seed, indices=indices[sel], preset=preset)
    return out


@dataclass(frozen=True)
class _HalfDistorted(DefenseBase):
    """Shared by both defenses: the init option, the half-distorted step and frozen-BN handling."""

    init: str = "zoo:standard"
    k: int = 3
    distortions: str = "awgn,blur"

    def __post_init__(self) -> None:
        _names(self.distortions)
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Cross-entropy on the batch with a random half distorted."""
        names = _names(self.distortions)
        kinds, levels, seed = draw_distortions(x.shape[0], names, ctx.generator)
        index = ctx.index.cpu() if ctx.index is not None else torch.arange(x.shape[0])
        preset = perturbations.preset_for_size(x.shape[-1])
        xd = distort(x, kinds, levels, names=names, seed=seed, indices=index, preset=preset)
        logits = model(xd)
        return StepOutput(
            F.cross_entropy(logits, y), logits, {"distorted": float((kinds >= 0).float().mean())}
        )

    def on_train(self, model: nn.Module) -> None:
        """Batch norms with no trainable parameter keep their pre-trained statistics (eval mode)."""
        for m in model.modules():
            params = list(m.parameters())
            frozen = bool(params) and not any(p.requires_grad for p in params)
            if frozen and isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _load_init(init: str, ctx: SetupContext) -> tuple[ImageClassifier, CheckpointMeta, str]:
    """The trained model to start from, its checkpoint metadata and its SHA-256."""
    from robench.models.checkpoint import FORMAT, read_checkpoint
    from robench.models.loading import load_model

    wrong = f"init {init!r} must be a robench checkpoint (from robench train, or zoo:NAME)"
    if (
        not init.startswith("zoo:")
        and Path(init).is_file()
        and read_checkpoint(init).get("format") != FORMAT
    ):
        raise ValueError(wrong)
    loaded = load_model(init)
    meta, model = loaded.meta, loaded.model.cpu()
    if meta is None or not isinstance(model, ImageClassifier):
        raise ValueError(wrong)
    layout_of(meta.arch)
    if meta.num_classes != ctx.info.num_classes or meta.in_chans != ctx.info.channels:
        raise ValueError(
            f"init {init!r} has {meta.num_classes} classes and {meta.in_chans} channels, "
            f"the data {ctx.info.num_classes} and {ctx.info.channels}"
        )
    return model, meta, str(loaded.sha256)


def _train_only(model: nn.Module, modules: list[nn.Module]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@register_defense(
    "finetune",
    "Finetune-k: fine-tune the first k layers of a trained model on half-distorted batches",
    _SRC,
)
@dataclass(frozen=True)
class Finetune(_HalfDistorted):
    """Finetune-k (section 5.1.1): weight layers 1..k train, the rest is frozen.

    A weight layer is a conv with its batch norm; the last one is the head.
    """

    def setup(self, ctx: SetupContext) -> Setup:
        """Load ``init`` and freeze everything but its first ``k`` weight layers."""
        model, meta, _ = _load_init(self.init, ctx)
        groups = weight_layers(model.backbone, meta.arch)
        if self.k > len(groups):
            raise ValueError(
                f"k must be in 1..{len(groups)} (the weight layers of {meta.arch}), got {self.k}"
            )
        _train_only(model, [m for group in groups[: self.k] for m in group])
        notes = f"Finetune-{self.k} of {self.init}: {_count(model)} trainable parameters"
        return Setup(model, meta.arch, dict(meta.arch_kwargs), notes)


def ranking_set(
    ds: ImageDataset, per_class: int, names: tuple[str, ...], seed: int, preset: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1's validation triplets: ``per_class`` random images per class, clean, distorted.

    Every image is distorted (kind and level drawn per image), as Algorithm 1 measures accuracy on
    distorted images only. Returns ``(clean, distorted, labels)``.
    """
    g = make_generator(derive_seed(seed, "deepcorrect", "ranking"))
    idx = []
    for c in range(ds.info.num_classes):
        members = (ds.targets == c).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    index = torch.cat(idx)
    x, y = ds.get_batch(index)
    kinds, levels, noise_seed = draw_distortions(len(index), names, g, share=1.0)
    return (
        x,
        distort(x, kinds, levels, names=names, seed=noise_seed, indices=index, preset=preset),
        y,
    )


def _score(logits: Tensor, y: Tensor, m: int) -> tuple[list[int], list[float]]:
    """Correct counts and summed cross-entropies of consecutive groups of ``m`` rows."""
    rows = logits.shape[0] // m
    hit = (logits.argmax(1) == y.repeat(rows)).view(rows, m).sum(1)
    ce = F.cross_entropy(logits, y.repeat(rows), reduction="none").view(rows, m).double().sum(1)
    return hit.tolist(), ce.tolist()


def correction_priority(
    model: ImageClassifier, arch: str, clean: Tensor, dist: Tensor, y: Tensor, k: int
) -> dict[str, Any]:
    """Algorithm 1 on the first ``k`` conv layers of a model whose backbone has a supported layout.

    For filter j of layer i, the distorted image's output of that filter is replaced by its output
    on the clean image (both computed by the unmodified layers below), the rest of the network
    runs on, and ``tau(i, j) = p_swp(i, j) - p_b`` (eq. 1) is the top-1 accuracy gained over the
    distorted images. ``ce_gain`` (the drop of the mean cross-entropy) is kept to break ties.

    Returns:
        ``{"p_b": float, "images": M, "layers": [{"position", "tau", "ce_gain"}, ...]}``.
    """
    tail, bb, m = layout_of(arch).tail, model.backbone, len(y)
    feats = features_of(bb)
    with eval_mode(model), torch.no_grad():
        a_clean, a_dist = model.normalize(clean), model.normalize(dist)
        (hit_b,), (ce_b,) = _score(tail(bb, feats(a_dist)), y, m)
        layers, start = [], 0
        for p in conv_positions(bb)[:k]:
            a_clean, a_dist = feats[start : p + 1](a_clean), feats[start : p + 1](a_dist)
            start, suffix, n = p + 1, feats[p + 1 :], a_dist.shape[1]
            hits, ces = [], []
            step = max(1, _MAX_ROWS // m)
            for j0 in range(0, n, step):
                js = range(j0, min(n, j0 + step))
                batch = a_dist.repeat(len(js), 1, 1, 1)
                for r, j in enumerate(js):
                    batch[r * m : (r + 1) * m, j] = a_clean[:, j]
                h, c = _score(tail(bb, suffix(batch)), y, m)
                hits += h
                ces += c
            tau, gain = [(h - hit_b) / m for h in hits], [(ce_b - c) / m for c in ces]
            layers.append({"position": p, "tau": tau, "ce_gain": gain})
    return {"p_b": hit_b / m, "images": m, "layers": layers}


def top_filters(tau: list[float], ce_gain: list[float], beta: float) -> list[int]:
    """The ``round(beta * N)`` filters (at least 1) of highest priority, in ascending order.

    Ties are broken by ``ce_gain``.
    """
    n = len(tau)
    count = min(n, max(1, int(beta * n + 0.5)))
    ranked = sorted(range(n), key=lambda j: (-tau[j], -ce_gain[j], j))
    return sorted(ranked[:count])


@register_defense(
    "deepcorrect",
    "Deepcorr-k(c): correction units on the top-beta filters (Algorithm 1) of the first k layers",
    _SRC,
)
@dataclass(frozen=True)
class DeepCorrect(_HalfDistorted):
    """Deepcorr-k (``train_last=False``) or Deepcorr-kc (``train_last=True``), section 5.1.2.

    Options: ``beta`` share of each layer's filters corrected (0.5, the paper's CIFAR setting);
    ``rank_per_class`` images per class for Algorithm 1 (10, as the paper's 1000 CIFAR-100 images);
    ``last_layers`` trained by -kc (3, with the head); ``unit_width`` (0: as many as the corrected
    filters), ``unit_kernel`` and ``unit_bn`` shape the correction units.
    """

    beta: float = 0.5
    train_last: bool = False
    last_layers: int = 3
    rank_per_class: int = 10
    unit_width: int = 0
    unit_kernel: int = 3
    unit_bn: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.rank_per_class < 1 or self.last_layers < 1:
            raise ValueError(
                f"rank_per_class and last_layers must be at least 1, "
                f"got {self.rank_per_class} and {self.last_layers}"
            )

    def _ranking(
        self, model: ImageClassifier, arch: str, sha: str, ctx: SetupContext
    ) -> dict[str, Any]:
        """Algorithm 1's priorities, cached in the run's workdir (a rerun reuses them)."""
        preset = perturbations.preset_for_size(int(ctx.info.image_size))
        key = {
            "init_sha256": sha,
            "k": self.k,
            "rank_per_class": self.rank_per_class,
            "distortions": self.distortions,
            "seed": ctx.seed,
            "preset": preset,
            "train_images": len(ctx.train_ds),
        }
        path = Path(ctx.workdir) / _RANKING_FILE
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                cached = {}
            if cached.get("key") == key:
                log.info("reusing the filter ranking in %s", path)
                return dict(cached)
        clean, dist, y = ranking_set(
            ctx.train_ds, self.rank_per_class, _names(self.distortions), ctx.seed, preset
        )
        dev = ctx.device
        result = correction_priority(
            model.to(dev), arch, clean.to(dev), dist.to(dev), y.to(dev), self.k
        )
        model.cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, **result}) + "\n")
        return result

    def setup(self, ctx: SetupContext) -> Setup:
        """Rank the filters of ``init``, build DeepCorrect on it and freeze what is not trained."""
        base, meta, sha = _load_init(self.init, ctx)
        n_conv, n_layers = (
            len(conv_positions(base.backbone)),
            len(weight_layers(base.backbone, meta.arch)),
        )
        if self.k > n_conv:
            raise ValueError(
                f"k must be in 1..{n_conv} (the conv layers of {meta.arch}), got {self.k}"
            )
        if self.train_last and self.last_layers > n_layers:
            raise ValueError(
                f"last_layers must be in 1..{n_layers} (the weight layers of {meta.arch}), "
                f"got {self.last_layers}"
            )
        ranking = self._ranking(base, meta.arch, sha, ctx)
        filters = [top_filters(lay["tau"], lay["ce_gain"], self.beta) for lay in ranking["layers"]]
        kwargs: dict[str, Any] = {
            "base": meta.arch,
            "base_kwargs": dict(meta.arch_kwargs),
            "k": self.k,
            "filters": filters,
            "unit_width": self.unit_width,
            "unit_kernel": self.unit_kernel,
            "unit_bn": self.unit_bn,
        }
        model = create_model(
            "deepcorrect",
            meta.num_classes,
            in_chans=meta.in_chans,
            mean=meta.mean,
            std=meta.std,
            **kwargs,
        )
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(".unit." not in name for name in missing):
            raise RuntimeError(
                f"the base weights do not fit the DeepCorrect model ({unexpected or missing})"
            )
        trained = correction_units(model)
        if self.train_last:
            trained += [
                m
                for group in weight_layers(model.backbone, meta.arch)[-self.last_layers :]
                for m in group
            ]
        _train_only(model, trained)
        variant = f"Deepcorr-{self.k}{'c' if self.train_last else ''}"
        notes = (
            f"{variant} of {self.init}: corrected filters per layer {[len(f) for f in filters]}, "
            f"p_b {ranking['p_b']:.3f} on {ranking['images']} distorted images, "
            f"{_count(model)} trainable parameters"
        )
        return Setup(model, "deepcorrect", kwargs, notes)
