"""Multi-strength adversarial training, mixed and parallel (Song et al.).

- ``mat_mixed`` (eq. 2): one model; every batch is used clean and at each of the S strengths; the
  loss is the unweighted sum ``CE(clean) + sum_j CE(adv_j)``, i.e. every original and every
  adversarial example counts once, the "full size" variant the paper recommends (each adversarial
  set as large as the original, section 5.4).
- ``mat_parallel`` (eq. 3-4): S sub-networks (the ``mat_parallel`` architecture over ``--arch``);
  branch k is trained on ``CE(clean) + CE(adv at s_k)``, as if trained alone (the branches share
  nothing, so one joint step equals S separate ones). The voting unit is trained at the same time
  by the cross-entropy of the voted prediction ``sum_k a_k p_k`` on the clean and all adversarial
  examples of the step, with the branch outputs detached (computed in eval mode, as at test time):
  the vote learns which copy to trust, the copies stay eq. 3.

Where the adversarial examples come from (``-o protocol=``):

- ``paper`` (default), the paper's protocol (sections 4.3 and 5.1): a separate *crafting model*
  (the paper's "model to craft adversarial examples"; for CIFAR "3 convolutional layers and 2
  fully connected layers", each convolution followed by batch norm and max pooling,
  :func:`robench.models.mat.crafting_cnn`) is trained on the clean training set in ``setup``
  (``crafting_epochs``, width ``crafting_width``), or given with ``-o crafting=zoo:NAME`` or
  ``-o crafting=PATH``. The adversarial training sets are crafted on it ONCE, by untargeted FGSM
  (one signed gradient of the cross-entropy, crafting model in eval mode, ``x + eps * sign``
  clipped to [0, 1]), and never change while the victim trains: the victim never sees its own
  gradient (a transfer setting). The strengths are chosen by the random walk over an accuracy
  matrix measured on the crafting model's FGSM sets (see :func:`accuracy_matrix`).
- ``online``: the white-box variant robench ran first: FGSM crafted at every step against the
  model being trained (in eval mode; against each branch itself for ``mat_parallel``), and the
  accuracy matrix measured under white-box FGSM of each single-strength model.

Strengths: the paper's CIFAR-10/100 and SVHN range is ``eps in [0, 5]`` in steps of 0.5 on the
0-255 pixel scale (section 5.1); robench images are in [0, 1], so its strengths are those values
divided by 255: the paper protocol's default candidates are ``0.5/255, 1/255, ..., 5/255``
(0.00196 .. 0.0196; eps 0 is the clean set, always part of training). ``-o strengths=a,b,c``
(pixel units of [0, 1] images) skips the walk; ``-o candidates=`` replaces the walk's grid (the
online protocol keeps its first grid, 0.01 .. 0.08, as default).

How robench reads the paper where it is silent:

- One crafting gradient per image serves every strength (FGSM's direction does not depend on
  eps), so the S sets are stored as one int8 tensor of signs (cached in the setup folder,
  ``mat_fgsm_sets.pt``; a resumed run reads it back); the set at strength s is
  ``clip(x + s * sign, 0, 1)``, bit for bit the same images in every epoch. Each adversarial
  image is paired with its clean original in the same batch (the paper does not say whether the
  sets are shuffled apart).
- The crafting model is trained on the whole clean training set (including the walk's validation
  images: the victim is the one that must not see them), with the run's batch size and learning
  rate; everything derives from ``--seed``. Its widths (3x3 convolutions of ``w, 2w, 4w``
  channels, ReLU, a hidden layer of 256 units) are robench's choices.
- The accuracy matrix ("the average single-strength training accuracies in an adversarial
  strength range ... measured in the victim model", using "validation accuracy to approximate
  test accuracy"): row i is a victim-architecture model trained on clean + the crafting model's
  set at candidate i (eq. 3 with one strength, from a shared clean start); column j is its
  accuracy on held-out training images perturbed by the crafting model's FGSM at candidate j,
  the same transfer setting as the paper's test sets. The rows are single-strength models for
  both structures, so mixed and parallel MAT start from the same matrix. The paper trains them
  fully; robench's default (8 epochs of shared clean start, then 2 per row, on 4000 images) is
  short but leaves them well above chance on ``shapes``: with 2 + 1 epochs they sat near 0.3 and
  the walk chose on noise.
- The test sets (crafting-model FGSM of the test images) belong to evaluation: the ``mat`` suite's
  ``fgsm_transfer`` sweep crafts on ``--surrogate``; training with ``-o crafting=zoo:vgg_surrogate``
  makes the leaderboard's column exactly the paper's test.
"""

from __future__ import annotations

import copy
import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench._io import atomic_torch_save, atomic_write_text, sha256_bytes_of_state
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
from robench.models.mat import ParallelMAT, branch_view, crafting_cnn

__all__ = [
    "MATMixed",
    "MATParallel",
    "FGSMSets",
    "PAPER_CANDIDATES",
    "fgsm_sign",
    "fgsm_strengths",
    "craft_sets",
    "paper_sets",
    "attach_sets",
    "accuracy_matrix",
    "transition_matrix",
    "random_walk_select",
    "walk_score",
]

log = logging.getLogger(__name__)
_SRC = "Song et al."
CANDIDATES = (0.01, 0.02, 0.04, 0.06, 0.08)
PAPER_CANDIDATES = tuple(k / 2 / 255 for k in range(1, 11))
"""The paper's CIFAR/SVHN strengths, 0.5 .. 5 on the 0-255 scale, in [0, 1] pixel units."""
PROTOCOLS = ("paper", "online")
_SETS_FILE = "mat_fgsm_sets.pt"


def fgsm_sign(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``sign(grad_x CE(model(x), y))``, computed in eval mode (the model's mode is restored)."""
    with eval_mode(model):
        xr = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    return grad.sign()


def fgsm_strengths(
    model: nn.Module, x: Tensor, y: Tensor, strengths: Sequence[float]
) -> list[Tensor]:
    """Untargeted FGSM at several strengths from one gradient (in eval mode), clipped to [0, 1].

    ``x + s * sign(grad_x CE(model(x), y))`` for every ``s``: the gradient does not depend on ``s``.
    """
    sign = fgsm_sign(model, x, y)
    return [(x.detach() + float(s) * sign).clamp(0.0, 1.0) for s in strengths]


# --------------------------------------------- the paper protocol: fixed sets of a crafting model


@dataclass(frozen=True)
class FGSMSets:
    """The paper's adversarial training sets: the crafting model's FGSM direction of every image.

    The set at strength ``s`` is ``clip(x + s * signs, 0, 1)`` for the clean images ``x``: one
    crafting gradient per image serves every strength.

    Attributes:
        signs: N x C x H x W int8, the sign of the crafting model's input gradient per image.
        sums: N float64, pixel sums of the clean images they were crafted from (a batch must
            bring the same images back).
        crafting: SHA-256 of the crafting model's weights.
    """

    signs: Tensor
    sums: Tensor
    crafting: str

    def __len__(self) -> int:
        return int(self.signs.shape[0])

    def adversarial(
        self, x: Tensor, index: Tensor | None, strengths: Sequence[float]
    ) -> list[Tensor]:
        """The adversarial versions of the images ``x`` at dataset positions ``index``.

        Args:
            x: the clean batch, in [0, 1].
            index: the images' positions in the dataset the sets were crafted from
                (``StepContext.index``).
            strengths: FGSM strengths in [0, 1] pixel units.

        Returns:
            One batch per strength, ``clip(x + s * sign, 0, 1)``.
        """
        if index is None:
            raise ValueError(
                "MAT's paper protocol needs each batch's dataset indices (StepContext.index) "
                "to find its fixed adversarial images"
            )
        idx = index.detach().cpu().to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise ValueError(
                f"batch index {int(idx.max())} is outside the {len(self)} images "
                "MAT's adversarial sets were crafted from"
            )
        sums = x.detach().double().sum(dim=(1, 2, 3)).cpu()
        if not torch.allclose(sums, self.sums[idx], rtol=0.0, atol=1e-3):
            raise ValueError(
                "the batch's images are not those MAT's adversarial sets were crafted from: "
                "train on the dataset its setup saw"
            )
        sign = self.signs[idx].to(device=x.device, dtype=x.dtype)
        return [(x.detach() + float(s) * sign).clamp(0.0, 1.0) for s in strengths]


def craft_sets(
    model: nn.Module, ds: ImageDataset, *, device: str = "cpu", batch_size: int = 250
) -> FGSMSets:
    """Craft the FGSM directions of every image of ``ds`` on ``model`` (one gradient each).

    The crafting model runs in eval mode, so an image's direction does not depend on its batch.
    """
    model.to(device)
    signs, sums = [], []
    for start in range(0, len(ds), batch_size):
        x, y = ds.get_batch(torch.arange(start, min(start + batch_size, len(ds))))
        signs.append(fgsm_sign(model, x.to(device), y.to(device)).to(torch.int8).cpu())
        sums.append(x.double().sum(dim=(1, 2, 3)))
    return FGSMSets(torch.cat(signs), torch.cat(sums), sha256_bytes_of_state(model))


_ATTACHED: dict[int, FGSMSets] = {}


def attach_sets(defense: object, sets: FGSMSets) -> None:
    """Hand a paper-protocol MAT defense the fixed sets its steps read (``setup`` does this).

    The sets are kept beside the defense, not in it: its fields are its recorded configuration.
    """
    key = id(defense)
    if key not in _ATTACHED:
        weakref.finalize(defense, _ATTACHED.pop, key, None)
    _ATTACHED[key] = sets


def _sets_of(defense: _MAT) -> FGSMSets:
    sets = _ATTACHED.get(id(defense))
    if sets is None:
        raise ValueError(
            f"{type(defense).name} with protocol=paper trains on the fixed adversarial sets its "
            "setup crafts: train it with robench train (or run its setup first), "
            "or use -o protocol=online"
        )
    return sets


def _crafting_model(ctx: SetupContext, d: _MAT) -> tuple[nn.Module, str]:
    """The crafting model (trained here, resumably, or loaded) and a line saying which it is."""
    if d.crafting:
        return _load_crafting(d.crafting, ctx)
    fit = _loop_of(ctx)
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, "mat-crafting-init"))
        model = crafting_cnn(ctx.info.num_classes, ctx.info.channels, width=d.crafting_width)
    cfg = TrainConfig(
        epochs=d.crafting_epochs,
        batch_size=min(ctx.batch_size, len(ctx.train_ds)),
        lr=ctx.lr,
        seed=derive_seed(ctx.seed, "mat-crafting"),
        device=ctx.device,
    )
    key = {"width": d.crafting_width, "data": ctx.info.name, "train": len(ctx.train_ds)}
    fit(
        model,
        Standard(),
        ctx.train_ds,
        cfg,
        out=workdir / "crafting.pt",
        progress=ctx.progress,
        fingerprint={"mat_crafting": key},
    )
    model.eval()
    epochs = f"{d.crafting_epochs} epoch{'s' if d.crafting_epochs != 1 else ''}"
    about = f"a 3-conv/2-FC CNN (width {d.crafting_width}) trained {epochs} on clean images"
    if ctx.test_ds is not None:
        about += f", clean test accuracy {_clean_accuracy(model, ctx.test_ds, ctx.device):.3f}"
    return model, about


def _load_crafting(source: str, ctx: SetupContext) -> tuple[nn.Module, str]:
    from robench.models.loading import load_model

    loaded = load_model(source, device=ctx.device)
    model = loaded.model.eval()
    x, _ = ctx.train_ds.get_batch(torch.arange(1))
    with torch.no_grad():
        try:
            classes = int(model(x.to(ctx.device)).shape[-1])
        except RuntimeError:
            classes = -1
    if classes != ctx.info.num_classes:
        raise ValueError(
            f"crafting model {source} does not classify {ctx.info.name}'s "
            f"{ctx.info.image_size} px images into its {ctx.info.num_classes} classes"
        )
    return model, f"{source} (sha256 {str(loaded.sha256)[:12]})"


def _clean_accuracy(model: nn.Module, ds: ImageDataset, device: str) -> float:
    correct = 0
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(ds), 250):
            x, y = ds.get_batch(torch.arange(start, min(start + 250, len(ds))))
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / max(1, len(ds))


def paper_sets(ctx: SetupContext, d: _MAT) -> tuple[FGSMSets, str]:
    """The crafting model's FGSM sets of the training images, crafted once and cached.

    They are written to ``mat_fgsm_sets.pt`` in ``ctx.workdir``; a rerun whose crafting model has
    the same weights (the same run resumed) reads them back instead of crafting again.

    Returns:
        The sets and a line describing the crafting model.
    """
    model, about = _crafting_model(ctx, d)
    digest = sha256_bytes_of_state(model)
    key = {
        "crafting": digest,
        "data": ctx.info.name,
        "images": len(ctx.train_ds),
        "shape": [ctx.info.channels, ctx.info.image_size],
    }
    path = Path(ctx.workdir) / _SETS_FILE
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["key"] == key:
                log.info("mat: reusing the crafting model's FGSM sets in %s", path)
                return FGSMSets(saved["signs"], saved["sums"], digest), about
        except Exception:  # noqa: BLE001  (a torn or foreign file: craft again)
            log.warning("ignoring unreadable %s; crafting the FGSM sets again", path)
    sets = craft_sets(model, ctx.train_ds, device=ctx.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"key": key, "signs": sets.signs, "sums": sets.sums}, path)
    return sets, about


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


def _transfer_accuracies(
    model: nn.Module,
    ds: ImageDataset,
    indices: range,
    sets: FGSMSets,
    strengths: Sequence[float],
    device: str,
) -> list[float]:
    """Accuracy of ``model`` on images ``indices`` of ``ds`` in the crafting model's FGSM sets."""
    correct = [0] * len(strengths)
    model.eval()
    with torch.no_grad():
        for start in range(indices.start, indices.stop, 250):
            idx = torch.arange(start, min(start + 250, indices.stop))
            x, y = ds.get_batch(idx)
            x, y = x.to(device), y.to(device)
            for j, adv in enumerate(sets.adversarial(x, idx, strengths)):
                correct[j] += int((model(adv).argmax(1) == y).sum())
    return [c / max(1, len(indices)) for c in correct]


def _walk_key(ctx: SetupContext, d: _MAT, sets: FGSMSets | None, n_train: int, n_val: int) -> Any:
    key = {
        "candidates": [float(c) for c in d.candidates],
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
        "protocol": d.protocol,
        "crafting": None if sets is None else sets.crafting,
    }
    return json.loads(json.dumps(key))


def _cached_rows(cache: Path, key: Any) -> list[list[float]]:
    if not cache.is_file():
        return []
    try:
        saved = json.loads(cache.read_text())
        return list(saved["rows"]) if saved.get("key") == key else []
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring unreadable %s; measuring the accuracy matrix again", cache)
        return []


def accuracy_matrix(ctx: SetupContext, d: _MAT, sets: FGSMSets | None = None) -> list[list[float]]:
    """The paper's matrix A of single-strength accuracies, measured on held-out training images.

    A shared start is trained first (plain cross-entropy, ``walk_pretrain_epochs`` on the first
    ``walk_images`` training images); row i continues it at candidate strength i (clean + one
    adversarial set, eq. 3) for ``walk_epochs``; column j is that model's accuracy at candidate j
    on the next ``walk_val`` training images (validation: the test set is never seen). The shared
    start makes short runs comparable: rows differ by their strength, not by where their training
    began.

    With ``sets`` (the paper protocol) the rows train on, and the columns test on, the crafting
    model's fixed FGSM sets; without (``protocol=online``) the rows train on FGSM crafted against
    themselves and the columns are white-box FGSM accuracies.

    Every run goes through ``training.fit`` in ``ctx.workdir`` (a killed run resumes, a finished one
    is reloaded), and each finished row is cached in ``mat_walk.json`` there.
    """
    fit = _loop_of(ctx)

    cands = [float(c) for c in d.candidates]
    n_all = len(ctx.train_ds)
    n_val = min(d.walk_val, max(1, n_all // 5))
    n_train = min(d.walk_images, n_all - n_val)
    train, val = _Slice(ctx.train_ds, 0, n_train), _Slice(ctx.train_ds, n_train, n_val)
    key = _walk_key(ctx, d, sets, n_train, n_val)
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "mat_walk.json"
    rows = _cached_rows(cache, key)
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
        row = MATMixed(strengths=(cands[i],), protocol=d.protocol)
        if sets is not None:
            attach_sets(row, sets)  # train is the first n_train images: its indices are the sets'
        fit(
            model,
            row,
            train,
            cfg(d.walk_epochs, cands[i]),
            out=workdir / f"walk_{i}.pt",
            progress=ctx.progress,
            fingerprint={"mat_walk": key, "strength": cands[i]},
        )
        if sets is None:
            rows.append(_fgsm_accuracies(model, val, cands, ctx.device))
        else:
            held_out = range(n_train, n_train + n_val)
            rows.append(
                _transfer_accuracies(model, ctx.train_ds, held_out, sets, cands, ctx.device)
            )
        atomic_write_text(cache, json.dumps({"key": key, "rows": rows}))
        log.info("mat walk: trained at %g -> FGSM accuracies %s", cands[i], rows[-1])
    return rows


# ------------------------------------------------------------------------------- the defenses


@dataclass(frozen=True)
class _MAT(DefenseBase):
    """Options shared by both MAT structures (protocol, strengths and their random-walk selection).

    Attributes:
        strengths: FGSM strengths in [0, 1] pixel units; empty: chosen by the random walk in
            ``setup``.
        candidates: the strengths the walk chooses from (and evaluates at); empty: the protocol's
            default (``paper``: 0.5/255 .. 5/255, ``online``: 0.01 .. 0.08).
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
        protocol: ``paper`` (fixed FGSM sets of a separate crafting model, a transfer setting) or
            ``online`` (FGSM against the model being trained, at every step).
        crafting: the paper protocol's crafting model, ``zoo:NAME`` or a model file; empty: a
            3-conv/2-FC CNN trained on the clean training set in ``setup``.
        crafting_epochs: epochs of that training.
        crafting_width: channels of its first convolution.
    """

    strengths: tuple[float, ...] = ()
    candidates: tuple[float, ...] = ()
    num_strengths: int = 0
    walk_penalty: float = 0.01
    walk_steps: int = 0
    walk_trials: int = 200
    walk_pretrain_epochs: int = 8
    walk_epochs: int = 2
    walk_images: int = 4000
    walk_val: int = 500
    walk_batch_size: int = 64
    protocol: str = "paper"
    crafting: str = ""
    crafting_epochs: int = 6
    crafting_width: int = 32

    def __post_init__(self) -> None:
        self._check_protocol()
        if not self.candidates:  # the protocol's grid, recorded as such
            grid = PAPER_CANDIDATES if self.protocol == "paper" else CANDIDATES
            object.__setattr__(self, "candidates", grid)
        for name in ("strengths", "candidates"):
            bad = [s for s in getattr(self, name) if not 0.0 < float(s) <= 1.0]
            if bad:
                raise ValueError(
                    f"MAT {name} must be in (0, 1] (pixel units of [0, 1] images), got {bad}"
                )
        if not 0 <= self.num_strengths <= len(self.candidates):
            n = len(self.candidates)
            raise ValueError(
                f"num_strengths must be in 0..{n} (the number of candidates), "
                f"got {self.num_strengths}"
            )
        for name in (
            "walk_trials",
            "walk_epochs",
            "walk_images",
            "walk_val",
            "walk_batch_size",
            "crafting_epochs",
            "crafting_width",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"MAT option {name} must be at least 1, got {getattr(self, name)}")
        if self.walk_penalty < 0 or self.walk_steps < 0 or self.walk_pretrain_epochs < 0:
            raise ValueError(
                "MAT options walk_penalty, walk_steps and walk_pretrain_epochs must not be negative"
            )

    def _check_protocol(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"MAT option protocol must be 'paper' or 'online', got {self.protocol!r}"
            )
        if self.crafting and self.protocol != "paper":
            raise ValueError(
                "MAT option crafting names the paper protocol's crafting model: "
                "drop it or use protocol=paper"
            )
        if self.crafting and not (
            self.crafting.startswith("zoo:") or Path(self.crafting).is_file()
        ):
            raise ValueError(
                f"crafting model file not found: {self.crafting} "
                "(give zoo:NAME or the path of a model file)"
            )

    def _prepare(self, ctx: SetupContext) -> str:
        """Craft (paper) the fixed sets, fill ``strengths``; return the model card's note."""
        if self.protocol == "online":
            return "protocol online (FGSM against the model being trained); " + self._resolve(
                ctx, None
            )
        sets, about = paper_sets(ctx, self)
        attach_sets(self, sets)
        return (
            f"protocol paper: fixed FGSM sets crafted once on a separate crafting model, "
            f"{about}; " + self._resolve(ctx, sets)
        )

    def _resolve(self, ctx: SetupContext, sets: FGSMSets | None) -> str:
        """Fill ``strengths`` (by the random walk when empty) and describe them."""
        if self.strengths:
            return f"strengths {_fmt(self.strengths)} (given)"
        acc = torch.tensor(accuracy_matrix(ctx, self, sets), dtype=torch.float64)
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
        what = "white-box FGSM" if sets is None else "crafting-model FGSM"
        return (
            f"strengths {_fmt(chosen)} chosen by random walk over {_fmt(self.candidates)}; "
            f"{what} val accuracy matrix (row: trained at, col: attacked at): {rows}"
        )

    def _need_strengths(self) -> tuple[float, ...]:
        if not self.strengths:
            name = type(self).name
            raise ValueError(
                f"{name} has no strengths: give -o strengths=a,b,... or train it with "
                "robench train, whose setup selects them by random walk"
            )
        return self.strengths

    def _adversarials(
        self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext, strengths: Sequence[float]
    ) -> list[Tensor]:
        """The batch at each strength: the fixed crafting-model sets, or FGSM against ``model``."""
        if self.protocol == "paper":
            return _sets_of(self).adversarial(x, ctx.index, strengths)
        return fgsm_strengths(model, x, y, strengths)


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


@register_defense(
    "mat_mixed", "mixed MAT: clean + FGSM at S strengths in one model, summed losses (eq. 2)", _SRC
)
@dataclass(frozen=True)
class MATMixed(_MAT):
    """Mixed MAT (eq. 2)."""

    def setup(self, ctx: SetupContext) -> Setup:
        """Craft the fixed sets (paper), select the strengths (unless given), build ``--arch``."""
        notes = self._prepare(ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.seed, "init", ctx.arch))
            model = create_model(
                ctx.arch, ctx.info.num_classes, in_chans=ctx.info.channels, **dict(ctx.arch_kwargs)
            )
        return Setup(model, ctx.arch, dict(ctx.arch_kwargs), notes)

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        """Cross-entropy of the clean batch plus one per FGSM strength, summed (eq. 2)."""
        strengths = self._need_strengths()
        advs = self._adversarials(model, x, y, ctx, strengths)
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
        """Craft the fixed sets (paper), select the strengths; one ``--arch`` branch each + vote."""
        if ctx.arch == "mat_parallel":
            raise ValueError(
                "mat_parallel builds its own composite: "
                "give the sub-network with --arch (e.g. small_cnn)"
            )
        notes = self._prepare(ctx)
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
        fixed = (
            _sets_of(self).adversarial(x, ctx.index, strengths)
            if self.protocol == "paper"
            else None
        )
        # eq. 3 per branch: the crafting model's set at s_k, or FGSM against the branch itself
        for k, s in enumerate(strengths):
            view = branch_view(model, k)
            adv = fgsm_strengths(view, x, y, [s])[0] if fixed is None else fixed[k]
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
