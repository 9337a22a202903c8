"""The runner's attack step: white-box attacks per batch, transfer attacks crafted once and cached.

Transfer adversarials depend only on (dataset, image indices, surrogate checkpoint, attack
parameters, seed), so they are cached under ``<cache>/transfer/`` and every evaluated model is
judged on exactly the same images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robench import _distributed as distributed
from robench._io import atomic_torch_save, cache_dir, first_line
from robench.data import DatasetInfo
from robench.evaluation.components import Tally, crafting_network
from robench.evaluation.record import (
    MaskingCheck,
    PerturbationResult,
    Record,
    SeverityResult,
    SurrogateRef,
)
from robench.models.loading import LoadedModel, load_model

__all__ = ["attack_entry", "masking_entry", "resolve_surrogate"]

log = logging.getLogger(__name__)


def resolve_surrogate(surrogate: str | None, dataset: str, device: str) -> LoadedModel | None:
    """The transfer surrogate: ``auto`` -> the zoo's ``vgg_surrogate`` for the dataset, if any."""
    if surrogate in (None, "none"):
        return None
    ref = f"zoo:{dataset}/vgg_surrogate" if surrogate == "auto" else surrogate
    try:
        return load_model(ref, device=device)
    except FileNotFoundError:
        if surrogate == "auto":
            return None
        raise


def _transfer_key(spec: Any, sur: LoadedModel, dataset: str, seed: int, indices: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (spec.name, repr(sorted(spec.params.items())), sur.sha256, dataset, seed):
        h.update(str(part).encode())
    h.update(indices.astype(np.int64).tobytes())
    return h.hexdigest()


def _cached_advs(path: Any, n: int) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached["adv"].shape[0] == n:
            return cached["adv"]  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001  (a torn cache file of any kind is recomputed)
        log.warning("recomputing unreadable transfer cache %s (%s)", path, first_line(exc, 100))
    return None


def _transfer_advs(
    spec: Any, sur: LoadedModel, batches: Any, cfg: Any, tick: Callable[[int], None]
) -> torch.Tensor:
    """Adversarials of this process's images (in the order it meets them), cached for the whole run.

    The cache holds every image of the run. Under torchrun each rank crafts its own batches and,
    when rank 0 found no cache, rank 0 collects every share and writes it.
    """
    from robench.attacks import craft_transfer

    path = (
        cache_dir()
        / "transfer"
        / f"{_transfer_key(spec, sur, cfg.dataset, cfg.seed, batches.indices)}.pt"
    )
    full, pos = _cached_advs(path, len(batches.indices)), batches.positions()
    if full is not None:
        local = full[torch.from_numpy(pos)]
        tick(len(batches))
    else:
        parts = []
        surrogate = sur.model.to(batches.device).eval()
        for idx, x, y, _ in batches:
            parts.append(
                craft_transfer(spec, surrogate, x, y, seed=cfg.seed, indices=idx.tolist()).cpu()
            )
            tick(1)
        local = torch.cat(parts) if parts else torch.zeros(0)
    if distributed.broadcast(full is None):
        shares = distributed.gather_to_main((pos, local.numpy()))
        if shares is not None:
            adv = torch.from_numpy(distributed.assemble(shares, len(batches.indices)))
            atomic_torch_save({"adv": adv, "indices": torch.from_numpy(batches.indices)}, path)
    return local


def _progress_file(spec: Any, record: Record, idx: Any) -> Path | None:
    """Where a long attack keeps one batch's finished stages (AutoAttack), so a kill loses little.

    Keyed by the run (model hash, dataset, seed), the attack and the batch's image indices; the
    file itself also checks the images it was made from. None for a model without a hash.
    """
    key = record.run_key
    if key.model_sha256 is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    for part in (key.model_sha256, key.dataset, key.seed, key.preset, spec.name):
        h.update(str(part).encode())
    if key.attack_on != "model":  # crafted on another network: other stages (old keys unchanged)
        h.update(f"attack_on={key.attack_on}".encode())
    h.update(repr(sorted(spec.params.items())).encode())
    h.update(np.asarray(idx, dtype=np.int64).tobytes())
    return cache_dir() / "attack-progress" / f"{h.hexdigest()}.pt"


def attack_entry(
    spec: Any,
    model: nn.Module,
    batches: Any,
    cfg: Any,
    info: DatasetInfo,
    tick: Callable[[int], None],
    record: Record,
) -> PerturbationResult:
    """Accuracy under one attack, as the record's per-perturbation result.

    An attack has one severity, or one per strength for a sweep (``fgsm``): each severity runs
    the single-strength attack ``spec.at(severity)`` over every batch, and a transfer sweep
    crafts (and caches) the adversarials of each strength on the surrogate. With
    ``cfg.attack_on == "object"`` a white-box attack is crafted on the composite model's object
    network and its adversarials are scored on ``model``. A composite model's object and context
    networks are scored on the same adversarials (the severities' ``components``).
    """
    entry = PerturbationResult(
        kind="attack",
        family=spec.family,
        mode=spec.mode,
        params=dict(spec.params),
        status="done",
    )
    sur = None
    if spec.mode == "transfer":
        sur = resolve_surrogate(cfg.surrogate, cfg.dataset, batches.device)
        if sur is None:
            tick(len(batches) * len(spec.severities))
            return replace(
                entry,
                status="skipped",
                reason=f"no surrogate for {cfg.dataset} (pass --surrogate)",
            )
        entry = replace(
            entry, surrogate=SurrogateRef(id=sur.model_id, source=sur.source, sha256=sur.sha256)
        )
    texts = spec.parameter_text(info.preset)
    tally = Tally(model, info.num_classes)
    crafter = crafting_network(model, getattr(cfg, "attack_on", "model"))
    sevs, warnings = [], []
    for s in spec.severities:
        one = spec.at(s)
        if sur is not None:
            correct = _transfer_correct(one, model, sur, batches, cfg, tick, tally)
        else:
            correct, notes = _whitebox_correct(
                one, _Judged(model, crafter, tally), batches, cfg, tick, record
            )
            warnings += [n for n in notes if n not in warnings]
        parts = tally.take(batches.gather)
        sevs.append(SeverityResult.of(batches.gather(correct), s, texts[s - 1], parts))
    if warnings:  # AutoAttack's own warnings (randomized defense, zero gradients, ...)
        entry = replace(entry, notes={"warnings": warnings})
    return replace(entry, severities=tuple(sevs))


@dataclass(frozen=True)
class _Judged:
    """Who a white-box attack is crafted on (``crafter``) and judged on (``model``, ``tally``)."""

    model: nn.Module
    crafter: nn.Module
    tally: Tally

    def correct(self, res: Any, y: torch.Tensor) -> np.ndarray:
        """Per-image correctness of ``model`` on the attack's adversarials (sub-networks too)."""
        self.tally.add(res.adv, y)
        if self.crafter is self.model:
            return res.correct.cpu().numpy()  # type: ignore[no-any-return]
        with torch.no_grad():  # crafted on another network: the evaluated model judges
            return (self.model(res.adv).argmax(1) == y).cpu().numpy()  # type: ignore[no-any-return]


def _transfer_correct(
    spec: Any,
    model: nn.Module,
    sur: LoadedModel,
    batches: Any,
    cfg: Any,
    tick: Callable[[int], None],
    tally: Tally,
) -> list[np.ndarray]:
    """Per-batch correctness of ``model`` on the (cached) transfer adversarials of one strength."""
    from robench.attacks import judge_transfer

    adv = _transfer_advs(spec, sur, batches, cfg, lambda n: None)
    correct: list[np.ndarray] = []
    start = 0
    for _, x, y, _ in batches:
        xa = adv[start : start + len(y)].to(x.device)
        start += len(y)
        correct.append(
            judge_transfer(spec, model, x, xa, y).correct.cpu().numpy()
        )  # checks the eps budget
        tally.add(xa, y)
        tick(1)
    return correct


def _whitebox_correct(
    spec: Any,
    judged: _Judged,
    batches: Any,
    cfg: Any,
    tick: Callable[[int], None],
    record: Record,
) -> tuple[list[np.ndarray], list[str]]:
    """Per-batch correctness under a white-box attack of one strength, and its warnings.

    The attack's gradients come from ``judged.crafter`` (the evaluated model, or its object
    network); correctness is ``judged.model``'s on the adversarials.
    """
    from robench.attacks import run_attack

    correct: list[np.ndarray] = []
    warnings: list[str] = []
    kept: list[Path] = []
    for idx, x, y, _ in batches:
        progress = _progress_file(spec, record, idx) if spec.algorithm == "autoattack" else None
        res = run_attack(
            spec, judged.crafter, x, y, seed=cfg.seed, indices=idx.tolist(), progress=progress
        )
        correct.append(judged.correct(res, y))
        warnings += [n for n in res.notes if n not in warnings]
        kept += [] if progress is None else [progress]
        tick(1)
    for path in kept:  # the entry is complete: a rerun has nothing to resume
        path.unlink(missing_ok=True)
    return correct, warnings


def masking_entry(model: nn.Module, batches: Any, cfg: Any) -> tuple[MaskingCheck, ...]:
    """Gradient-masking sanity checks on the first images of the run (SPEC section 3)."""
    from robench.attacks import gradient_masking_checks

    idx, x, y, _ = next(iter(batches))
    sur = resolve_surrogate(cfg.surrogate, cfg.dataset, batches.device)
    checks = gradient_masking_checks(
        model,
        x,
        y,
        seed=cfg.seed,
        indices=idx.tolist(),
        surrogate=None if sur is None else sur.model.to(batches.device).eval(),
    )
    return tuple(MaskingCheck(name=c.name, passed=c.passed, detail=c.detail) for c in checks)
