"""Multi-strength adversarial training, mixed and parallel (Song et al.).

- ``mat_mixed`` (eq. 2): one model; every batch is used clean and made adversarial (FGSM, crafted
  against the current model in eval mode) at each of the S strengths; the loss is the unweighted sum
  ``CE(clean) + sum_j CE(FGSM_j)``, i.e. every original and every adversarial example counts once,
  the "full size" variant the paper recommends (each adversarial set as large as the original).
- ``mat_parallel`` (eq. 3-4): S sub-networks (the ``mat_parallel`` architecture over ``--arch``);
  branch k is trained on ``CE(clean) + CE(FGSM at s_k)`` with examples crafted against itself, as if
  trained alone (the branches share nothing, so one joint step equals S separate ones). The voting
  unit is trained at the same time by the cross-entropy of the voted prediction ``sum_k a_k p_k`` on
  the clean and all adversarial examples of the step, with the branch outputs detached (computed in
  eval mode, as at test time): the vote learns which copy to trust, the copies stay eq. 3.

Strengths: ``-o strengths=a,b,c`` (pixel units of [0, 1] images), or, when empty (default), chosen
in ``setup`` by the paper's random walk (section 4.3) over an accuracy matrix of short
single-strength runs; see :func:`accuracy_matrix` and :func:`random_walk_select`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench._io import atomic_write_text
from robench._seeding import derive_seed, make_generator
from robench.data import ImageDataset
from robench.defenses._base import (
    DefenseBase,
    Setup,
    SetupContext,
    StepContext,
    StepOutput,
    TrainConfig,
    _loop_of,
    eval_mode,
    register_defense,
)
from robench.defenses.standard import Standard
from robench.models import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ImageClassifier,
    create_model,
)
from robench.models.mat import ParallelMAT, branch_view

__all__ = [
    "MATMixed",
    "MATParallel",
    "fgsm_strengths",
    "accuracy_matrix",
    "transition_matrix",
    "random_walk_select",
    "walk_score",
]

log = logging.getLogger(__name__)
_SRC = "Song et al."
CANDIDATES = (0.01, 0.02, 0.04, 0.06, 0.08)


def fgsm_strengths(
    model: nn.Module, x: Tensor, y: Tensor, strengths: Sequence[float]
) -> list[Tensor]:
    """Untargeted FGSM at several strengths from one gradient (in eval mode), clipped to [0, 1].

    ``x + s * sign(grad_x CE(model(x), y))`` for every ``s``: the gradient does not depend on ``s``.
    """
    with eval_mode(model):
        xr = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    sign = grad.sign()
    return [(x.detach() + float(s) * sign).clamp(0.0, 1.0) for s in strengths]


# ------------------------------------------------------------------ the random walk (section 4.3)


def transition_matrix(acc: Tensor) -> Tensor:
    """Transition matrix P of the walk over strengths, from the accuracy matrix ``acc`` (n x n).

    ``A_M = acc / row sums`` is each single-strength model's accuracy profile over the attack
    strengths. From strength i the walker moves to j (j != i) in proportion to how much model j's
    profile exceeds model i's, ``sum_c max(A_M[j, c] - A_M[i, c], 0)`` (plus a small floor that
    keeps the chain irreducible): it tends to go where the current model is weak, i.e. to
    complementary strengths, as edge weights grow with dissimilarity in graph-based saliency (the
    paper's ref. [21]).
    """
    a = acc.double()
    am = a / a.sum(1, keepdim=True).clamp_min(1e-12)
    # gain[i, j] = sum_c max(am[j,c] - am[i,c], 0)
    gain = (am.unsqueeze(0) - am.unsqueeze(1)).clamp_min(0).sum(2)
    n = a.shape[0]
    off = 1.0 - torch.eye(n, dtype=a.dtype)
    w = (gain + 1e-3 / max(n, 1)) * off
    return w / w.sum(1, keepdim=True).clamp_min(1e-12) if n > 1 else torch.ones(1, 1, dtype=a.dtype)


def walk_score(acc: Tensor, chosen: Sequence[int], penalty: float) -> float:
    """G = H - penalty * S: estimated accuracy of MAT with the ``chosen`` strengths, less a penalty.

    H is the mean over attack strengths (columns) of the best single-strength accuracy among the
    chosen rows: at each strength the copy trained for it decides, the working-zone argument of
    sections 3 and 4.2. (The paper writes the penalty as ``+ a * S``; here ``a = -penalty``.)
    """
    return float(acc[list(chosen)].max(0).values.mean()) - penalty * len(chosen)


def random_walk_select(
    acc: Tensor,
    *,
    generator: torch.Generator,
    num_strengths: int = 0,
    penalty: float = 0.01,
    steps: int = 0,
    trials: int = 200,
) -> list[int]:
    """Choose strengths (row indices of ``acc``) by ``trials`` random walks of ``steps`` moves.

    Each walk starts at a strength drawn in proportion to its model's mean accuracy, moves with
    :func:`transition_matrix`, and every set of strengths it has visited so far is a candidate
    scored by :func:`walk_score`; the best candidate over all walks wins (the first found on ties).

    Args:
        acc: accuracy matrix, ``acc[i, j]`` = accuracy of the model trained at strength i under FGSM
            at j.
        generator: every draw comes from it.
        num_strengths: S; 0 lets the penalty decide, otherwise only sets of exactly S count (a walk
            then goes on until it has visited S strengths).
        penalty: cost of each extra strength in accuracy units.
        steps: moves per walk (0: twice the number of candidates).
        trials: number of walks.

    Returns:
        The chosen row indices, sorted.
    """
    n = acc.shape[0]
    if not 0 <= num_strengths <= n:
        raise ValueError(
            f"num_strengths must be in 0..{n} (the number of candidates), got {num_strengths}"
        )
    p = transition_matrix(acc)
    start = acc.double().mean(1).clamp_min(1e-12)
    steps = steps or 2 * n
    best: tuple[float, list[int]] | None = None
    for _ in range(trials):
        state = int(torch.multinomial(start, 1, generator=generator))
        seen = [state]
        for move in range(10 * n * max(steps, 1) + 1):
            if num_strengths == 0 or len(seen) == num_strengths:
                g = walk_score(acc, seen, penalty)
                if best is None or g > best[0] + 1e-12:
                    best = (g, sorted(seen))
            if move >= steps and (num_strengths == 0 or len(seen) >= num_strengths):
                break
            state = int(torch.multinomial(p[state], 1, generator=generator))
            if state not in seen:
                seen.append(state)
    assert best is not None  # the floor in P makes every state reachable
    return best[1]


# ------------------------------------------------------- the accuracy matrix (pre-computation)


class _Slice(ImageDataset):
    """Images ``start .. start + n - 1`` of ``base`` (a held-out part of the training set)."""

    def __init__(self, base: ImageDataset, start: int, n: int) -> None:
        self.base, self.start, self.info = base, start, base.info
        self.targets = base.targets[start : start + n]
        self.context = None if base.context is None else base.context[start : start + n]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.base[self.start + i]

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        return self.base.get_batch(torch.as_tensor(indices, dtype=torch.long) + self.start)


def _fgsm_accuracies(
    model: nn.Module, ds: ImageDataset, strengths: Sequence[float], device: str
) -> list[float]:
    """Accuracy of ``model`` on ``ds`` under white-box FGSM at each strength."""
    correct = [0] * len(strengths)
    model.eval()
    for start in range(0, len(ds), 250):
        x, y = ds.get_batch(torch.arange(start, min(start + 250, len(ds))))
        x, y = x.to(device), y.to(device)
        for j, adv in enumerate(fgsm_strengths(model, x, y, strengths)):
            with torch.no_grad():
                correct[j] += int((model(adv).argmax(1) == y).sum())
    return [c / len(ds) for c in correct]


def accuracy_matrix(ctx: SetupContext, d: _MAT) -> list[list[float]]:
    """The paper's matrix A of single-strength accuracies, measured on held-out training images.

    A shared start is trained first (plain cross-entropy, ``walk_pretrain_epochs`` on the first
    ``walk_images`` training images); row i continues it at candidate strength i (clean + FGSM, eq.
    3) for ``walk_epochs``; column j is that model's accuracy under FGSM at candidate j on the next
    ``walk_val`` training images (validation: the test set is never seen). The shared start makes
    short runs comparable: rows differ by their strength, not by where their training began.

    Every run goes through ``training.fit`` in ``ctx.workdir`` (a killed run resumes, a finished one
    is reloaded), and each finished row is cached in ``mat_walk.json`` there.
    """
    fit = _loop_of(ctx)

    cands = [float(c) for c in d.candidates]
    n_all = len(ctx.train_ds)
    n_val = min(d.walk_val, max(1, n_all // 5))
    n_train = min(d.walk_images, n_all - n_val)
    train, val = _Slice(ctx.train_ds, 0, n_train), _Slice(ctx.train_ds, n_train, n_val)
    key = {
        "candidates": cands,
        "arch": ctx.arch,
        "arch_kwargs": dict(ctx.arch_kwargs),
        "seed": ctx.seed,
        "pretrain": d.walk_pretrain_epochs,
        "epochs": d.walk_epochs,
        "train": n_train,
        "val": n_val,
        "batch": d.walk_batch_size,
        "lr": ctx.lr,
        "data": ctx.info.name,
    }
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "mat_walk.json"
    rows: list[list[float]] = []
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            rows = list(saved["rows"]) if saved.get("key") == json.loads(json.dumps(key)) else []
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring unreadable %s; measuring the accuracy matrix again", cache)
    if len(rows) == len(cands):
        return rows

    def cfg(epochs: int, *keys: object) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=min(d.walk_batch_size, n_train),
            lr=ctx.lr,
            milestones=(),
            seed=derive_seed(ctx.seed, "mat-walk", *keys),
            device=ctx.device,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, "mat-walk-init"))
        start = create_model(
            ctx.arch, ctx.info.num_classes, in_chans=ctx.info.channels, **dict(ctx.arch_kwargs)
        )
    if d.walk_pretrain_epochs > 0:
        fit(
            start,
            Standard(),
            train,
            cfg(d.walk_pretrain_epochs, "start"),
            out=workdir / "walk_start.pt",
            progress=ctx.progress,
            fingerprint={"mat_walk": key},
        )
    for i in range(len(rows), len(cands)):
        model = copy.deepcopy(start)
        fit(
            model,
            MATMixed(strengths=(cands[i],)),
            train,
            cfg(d.walk_epochs, cands[i]),
            out=workdir / f"walk_{i}.pt",
            progress=ctx.progress,
            fingerprint={"mat_walk": key, "strength": cands[i]},
        )
        rows.append(_fgsm_accuracies(model, val, cands, ctx.device))
        atomic_write_text(cache, json.dumps({"key": key, "rows": rows}))
        log.info("mat walk: trained at %g -> FGSM accuracies %s", cands[i], rows[-1])
    return rows


# ------------------------------------------------------------------------------- the defenses


@dataclass(frozen=True)
class _MAT(DefenseBase):
    """Options shared by both MAT structures (strengths and their random-walk selection).

    Attributes:
        strengths: FGSM strengths in [0, 1] pixel units; empty: chosen by the random walk in
            ``setup``.
        candidates: the strengths the walk chooses from (and evaluates at).
        num_strengths: S for the walk; 0 lets the size penalty decide.
        walk_penalty: accuracy an extra strength must add to be worth it (the paper's
            coefficient a).
        walk_steps: moves per walk (0: twice the number of candidates).
        walk_trials: number of walks.
        walk_pretrain_epochs: epochs of the shared clean start of the single-strength runs.
        walk_epochs: epochs of each single-strength run.
        walk_images: training images of each single-strength run.
        walk_val: held-out training images the matrix is measured on.
        walk_batch_size: batch size of the single-strength runs.
    """

    strengths: tuple[float, ...] = ()
    candidates: tuple[float, ...] = CANDIDATES
    num_strengths: int = 0
    walk_penalty: float = 0.01
    walk_steps: int = 0
    walk_trials: int = 200
    walk_pretrain_epochs: int = 2
    walk_epochs: int = 1
    walk_images: int = 4000
    walk_val: int = 500
    walk_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("strengths", "candidates"):
            bad = [s for s in getattr(self, name) if not 0.0 < float(s) <= 1.0]
            if bad:
                raise ValueError(
                    f"MAT {name} must be in (0, 1] (pixel units of [0, 1] images), got {bad}"
                )
        if not self.candidates:
            raise ValueError("MAT needs at least one candidate strength")
        if not 0 <= self.num_strengths <= len(self.candidates):
            n = len(self.candidates)
            raise ValueError(
                f"num_strengths must be in 0..{n} (the number of candidates), "
                f"got {self.num_strengths}"
            )
        for name in ("walk_trials", "walk_epochs", "walk_images", "walk_val", "walk_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MAT option {name} must be at least 1, got {getattr(self, name)}")
        if self.walk_penalty < 0 or self.walk_steps < 0 or self.walk_pretrain_epochs < 0:
            raise ValueError(
                "MAT options walk_penalty, walk_steps and walk_pretrain_epochs must not be negative"
            )

    def _resolve(self, ctx: SetupContext) -> str:
        """Fill ``strengths`` (by the random walk when empty) and return the model card's note."""
        if self.strengths:
            return f"strengths {_fmt(self.strengths)} (given)"
        acc = torch.tensor(accuracy_matrix(ctx, self), dtype=torch.float64)
        idx = random_walk_select(
            acc,
            generator=make_generator(derive_seed(ctx.seed, "mat-random-walk")),
            num_strengths=self.num_strengths,
            penalty=self.walk_penalty,
            steps=self.walk_steps,
            trials=self.walk_trials,
        )
        chosen = tuple(float(self.candidates[i]) for i in idx)
        # setup completes the configuration once, before training: the card and the resume check
        # record it
        object.__setattr__(self, "strengths", chosen)
        rows = "; ".join(" ".join(f"{v:.2f}" for v in r) for r in acc.tolist())
        return (
            f"strengths {_fmt(chosen)} chosen by random walk over {_fmt(self.candidates)}; "
            f"FGSM val accuracy matrix (row: trained at, col: attacked at): {rows}"
        )

    def _need_strengths(self) -> tuple[float, ...]:
        if not self.strengths:
            name = type(self).name
            raise ValueError(
                f"{name} has no strengths: give -o strengths=a,b,... or train it with "
                "robench train, whose setup selects them by random walk"
            )
        return self.strengths


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


@register_defense(
    "mat_mixed", "mixed MAT: clean + FGSM at S strengths in one model, summed losses (eq. 2)", _SRC
)
@dataclass(frozen=True)
class MATMixed(_MAT):
    """Mixed MAT (eq. 2)."""

    def setup(self, ctx: SetupContext) -> Setup:
        """Select the strengths (unless given) and build ``--arch``."""
        notes = self._resolve(ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.seed, "init", ctx.arch))
            model = create_model(
                ctx.arch, ctx.info.num_classes, in_chans=ctx.info.channels, **dict(ctx.arch_kwargs)
            )
        return Setup(model, ctx.arch, dict(ctx.arch_kwargs), notes)

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Cross-entropy of the clean batch plus one per FGSM strength, summed (eq. 2)."""
        strengths = self._need_strengths()
        advs = fgsm_strengths(model, x, y, strengths)
        parts = model(torch.cat([x, *advs])).split(x.shape[0])
        losses = [F.cross_entropy(p, y) for p in parts]
        metrics = {
            "loss_clean": float(losses[0].detach()),
            "loss_adv": float(torch.stack(losses[1:]).detach().mean()),
        }
        return StepOutput(torch.stack(losses).sum(), parts[0], metrics)


@register_defense(
    "mat_parallel",
    "parallel MAT: S sub-networks, each clean + one FGSM strength, learned vote (eq. 3-4)",
    _SRC,
)
@dataclass(frozen=True)
class MATParallel(_MAT):
    """Parallel MAT (eq. 3-4) on the ``mat_parallel`` composite built over ``--arch``."""

    def setup(self, ctx: SetupContext) -> Setup:
        """Select the strengths (unless given); build one ``--arch`` branch each, and the vote."""
        if ctx.arch == "mat_parallel":
            raise ValueError(
                "mat_parallel builds its own composite: "
                "give the sub-network with --arch (e.g. small_cnn)"
            )
        notes = self._resolve(ctx)
        kw = {
            "base": ctx.arch,
            "base_kwargs": dict(ctx.arch_kwargs),
            "branches": len(self.strengths),
            "strengths": list(self.strengths),
        }
        # the base's normalisation, as create_model would pick it
        big = MODELS.get(ctx.arch).input_size >= 128
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if big else (CIFAR_MEAN, CIFAR_STD)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.seed, "init", "mat_parallel", ctx.arch))
            model = create_model(
                "mat_parallel",
                ctx.info.num_classes,
                in_chans=ctx.info.channels,
                mean=mean,
                std=std,
                **kw,
            )
        return Setup(model, "mat_parallel", kw, notes)

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Each branch on clean + its own FGSM (eq. 3); the vote on detached branches (eq. 4)."""
        net = model.backbone if isinstance(model, ImageClassifier) else None
        if not isinstance(model, ImageClassifier) or not isinstance(net, ParallelMAT):
            raise ValueError(
                "mat_parallel trains the 'mat_parallel' composite its setup builds, "
                "not a plain model"
            )
        strengths = net.strengths or self._need_strengths()
        if len(strengths) != len(net.branches):
            raise ValueError(
                f"mat_parallel model has {len(net.branches)} branches "
                f"but {len(strengths)} strengths"
            )
        b, branch_losses, advs = x.shape[0], [], []
        # eq. 3 per branch, examples crafted against the branch itself
        for k, s in enumerate(strengths):
            view = branch_view(model, k)
            adv = fgsm_strengths(view, x, y, [s])[0]
            z = view(torch.cat([x, adv]))
            branch_losses.append(F.cross_entropy(z[:b], y) + F.cross_entropy(z[b:], y))
            advs.append(adv)
        xs, ys = torch.cat([x, *advs]), y.repeat(len(strengths) + 1)
        with torch.no_grad(), eval_mode(model):
            zs = net.branch_logits(model.normalize(xs))
        voted = net.combine(zs)  # eq. 4; only the voting unit gets this term's gradient
        vote_loss = F.nll_loss(voted, ys)
        branch = torch.stack(branch_losses)
        metrics = {
            "branch_loss": float(branch.detach().mean()),
            "vote_loss": float(vote_loss.detach()),
        }
        return StepOutput(branch.sum() + vote_loss, voted[:b].detach(), metrics)
