"""AutoAttack (Croce and Hein, ICML 2020), standard version, through the authors' code.

robench does not reimplement AutoAttack: it calls ``pyautoattack`` (0.2.0, whose attack files are
fra31/auto-attack at a392200) with the version, norm and eps of the spec, so a robench number
is the number the authors' code gives on the same images with the same seed. The standard
version runs APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes) and Square (5,000
queries) in turn, each on the images that the previous stages left classified correctly, and
returns, per image, the first adversarial found (the clean image where none was).

What robench adds around the call:

- The model is in eval mode with frozen parameters (:func:`robench.attacks.attack_mode`, by
  :func:`robench.attacks.run_attack`), gets [0, 1] images and normalises inside.
- The images are handed over contiguous: robench's ``shapes`` batches are channels-last views,
  on which AutoAttack's zero-gradient check (``grad.view``, APGD-T) raises a ``RuntimeError``.
- Seeding: every stage calls ``torch.manual_seed(seed)`` on the global RNG before it draws, so
  the seed given to AutoAttack is ``derive_seed(run seed, attack name)`` and the call runs inside
  :func:`robench._seeding.global_seed_scope`, which restores the global RNGs afterwards.
- AutoAttack's log (logger ``auto-attack``) is kept off the user's handlers; its warnings (a
  randomized or dynamic defense, zero gradients, Square beating the gradient attacks, too few
  classes) are returned as notes, as evidence of gradient masking.
- ``check_dynamic`` in AutoAttack sets ``sys.settrace(None)`` after its traced forward pass,
  which would switch off a debugger or coverage; the previous trace function is put back.

**Batch dependence.** AutoAttack's randomness is batch-level: each stage seeds the global RNG once
and draws its noise (APGD's random start, FAB's restarts, Square's windows and signs) for the
whole batch of the images still standing. An image's adversarial therefore depends on which other
images share its batch (and on which of them earlier stages broke), not only on its own index:
robench's per-image invariance to batching, which its other attacks have, does not hold here.
Running images one at a time would restore it at the price of the batch speed-up (Square's 5,000
queries become sequential per image), so robench keeps the authors' batching: results are
reproducible for a given seed, batch size and image order. The ``indices`` robench passes to
other attacks are not used.

For a model with fewer than 10 classes, APGD-T and FAB-T use ``classes - 1`` targets (with 9 the
authors' code fails with an ``IndexError`` there); at least 4 classes are needed (the targeted DLR
loss ranks the four largest logits).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robench._io import atomic_torch_save

__all__ = ["MAX_TARGETS", "MIN_CLASSES", "STAGES", "run_autoattack"]

MAX_TARGETS = 9
MIN_CLASSES = 4
LOGGER = "auto-attack"
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version, in its order


class _Notes(logging.Handler):
    """Collects the distinct warning messages AutoAttack logs, in order."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


@contextlib.contextmanager
def _captured_log() -> Iterator[_Notes]:
    """AutoAttack's logger sends its warnings to the yielded collector only; restored after."""
    log = logging.getLogger(LOGGER)
    notes = _Notes()
    saved = (log.level, log.propagate, list(log.handlers))
    log.setLevel(logging.WARNING)
    log.propagate = False
    log.handlers = [notes]
    try:
        yield notes
    finally:
        log.setLevel(saved[0])
        log.propagate = saved[1]
        log.handlers = saved[2]


@contextlib.contextmanager
def _kept_trace() -> Iterator[None]:
    """Put back the trace function (debugger, coverage) that AutoAttack's dynamic check unsets."""
    trace = sys.gettrace()
    try:
        yield
    finally:
        if sys.gettrace() is not trace:
            sys.settrace(trace)


def _fingerprint(x: Tensor, y: Tensor, eps: float, norm: str, seed: int, targets: int) -> str:
    """What a saved progress file must have been made from: the images, labels and budget."""
    h = hashlib.blake2b(digest_size=16)
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    h.update(repr((float(eps), norm, int(seed), int(targets), STAGES)).encode())
    return h.hexdigest()


def _saved(path: Path | None, key: str) -> dict[str, Any] | None:
    """The progress saved at ``path`` for the same inputs, or None (absent, torn or other)."""
    if path is None or not path.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (a torn file of any kind means starting over)
        return None
    return state if state.get("key") == key else None


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Literal["linf", "l2"],
    seed: int,
    num_classes: int,
    progress: Path | None = None,
) -> tuple[Tensor, tuple[str, ...]]:
    """AutoAttack's standard version on one batch, as the authors' code runs it, stage by stage.

    The caller prepares the model (eval mode, frozen), puts ``x`` and ``y`` on its device and
    fences the global RNG (:func:`robench.attacks.run_attack` does all three).

    robench calls the authors' ``run_standard_evaluation`` once per stage, on the images the
    previous stages left standing, which is what the single call does inside (every stage seeds
    the global RNG itself, so the stages are independent calls): the adversarials are the same
    (a test checks them bit for bit). After each stage the adversarials so far are saved to
    ``progress`` (atomically), so a run stopped in the middle resumes after its last finished
    stage; a file made from other images, labels or budget is ignored.

    Args:
        model: [0, 1] images in, ``num_classes`` logits out.
        x: N x C x H x W images in [0, 1].
        y: N labels.
        eps: the L-inf eps or the L2 radius.
        norm: ``linf`` or ``l2``.
        seed: AutoAttack's seed (each stage seeds the global torch RNG with it).
        num_classes: the model's number of classes (sets the targets below 10 classes).
        progress: file keeping the finished stages (None: not kept).

    Returns:
        The adversarials (the clean image where none was found, the first adversarial found
        otherwise) and AutoAttack's distinct warnings.
    """
    if num_classes < MIN_CLASSES:
        raise ValueError(
            f"AutoAttack's targeted attacks need at least {MIN_CLASSES} classes, "
            f"the model has {num_classes}"
        )
    from pyautoattack import AutoAttack, checks  # loads on first use, not with robench

    targets = min(MAX_TARGETS, num_classes - 1)
    key = _fingerprint(x, y, eps, norm, seed, targets)
    state = _saved(progress, key) or {"key": key, "done": [], "accuracy": {"clean": 1.0}}
    adv = state["adv"].to(x.device) if "adv" in state else x.detach().clone()
    robust: Tensor | None = state["robust"].to(x.device) if "robust" in state else None
    with _captured_log() as notes, _kept_trace():
        attack: Any = AutoAttack(
            model,
            norm="Linf" if norm == "linf" else "L2",
            eps=float(eps),
            version="standard",
            seed=int(seed),
            device=x.device,
        )
        attack.apgd_targeted.n_target_classes = targets
        attack.fab.n_target_classes = targets
        assert tuple(attack.attacks_to_run) == STAGES  # the standard version's order
        for stage in STAGES:
            if stage in state["done"]:
                continue
            idx = (
                torch.arange(len(x), device=x.device) if robust is None else robust.nonzero()[:, 0]
            )
            if not len(idx):
                break  # nothing left standing: the later stages would not run either
            attack.attacks_to_run = [stage]
            part, pred = attack.run_standard_evaluation(
                x[idx].contiguous(), y[idx], batch_size=len(idx)
            )
            broken = pred != y[idx]  # misclassified on the stage's output (clean or adversarial)
            adv[idx[broken]] = part[broken].to(adv.dtype)
            robust = torch.zeros_like(y, dtype=torch.bool) if robust is None else robust
            robust[idx] = ~broken
            # the clean accuracy bounds every stage's robust accuracy, so the value stored for it
            # (1.0) never decides the Square check below
            state["accuracy"][stage] = float(robust.float().mean())
            state["done"].append(stage)
            if progress is not None:
                atomic_torch_save({**state, "adv": adv.cpu(), "robust": robust.cpu()}, progress)
        checks.check_square_sr(state["accuracy"], logger=logging.getLogger(LOGGER))
    return adv.detach(), tuple(notes.messages)
