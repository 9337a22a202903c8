"""The runner's attack step: white-box attacks per batch, transfer attacks crafted once and cached.

Transfer adversarials depend only on (dataset, image indices, surrogate checkpoint, attack
parameters, seed), so they are cached under ``<cache>/transfer/`` and every evaluated model is
judged on exactly the same images.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ._io import atomic_torch_save
from .data import DatasetInfo
from .data.shapes import cache_dir
from .loading import LoadedModel, load_model
from .results import accuracy_entry

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


def _transfer_advs(spec: Any, sur: LoadedModel, batches: Any, cfg: Any, tick: Callable[[int], None]) -> torch.Tensor:
    """All adversarials of the run's images, from the cache or crafted now (then cached)."""
    from .attacks import craft_transfer

    path = cache_dir() / "transfer" / f"{_transfer_key(spec, sur, cfg.dataset, cfg.seed, batches.indices)}.pt"
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["adv"].shape[0] == len(batches.indices):
                tick(len(batches))
                return cached["adv"]
        except Exception as exc:  # noqa: BLE001  (a torn cache file of any kind is recomputed)
            log.warning("recomputing unreadable transfer cache %s (%s)", path, str(exc).splitlines()[0][:100])
    parts = []
    surrogate = sur.model.to(batches.device).eval()
    for idx, x, y, _ in batches:
        parts.append(craft_transfer(spec, surrogate, x, y, seed=cfg.seed, indices=idx.tolist()).cpu())
        tick(1)
    adv = torch.cat(parts)
    atomic_torch_save({"adv": adv, "indices": torch.from_numpy(batches.indices)}, path)
    return adv


def attack_entry(spec: Any, model: nn.Module, batches: Any, cfg: Any, info: DatasetInfo,
                 tick: Callable[[int], None], record: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Accuracy under one attack (one 'severity'), in the record's per-perturbation format."""
    from .attacks import run_attack

    entry: dict[str, Any] = {"kind": "attack", "family": spec.family, "mode": spec.mode,
                             "params": {k: v for k, v in spec.params.items()}}  # fmt: skip
    correct: list[np.ndarray] = []
    if spec.mode == "transfer":
        sur = resolve_surrogate(cfg.surrogate, cfg.dataset, batches.device)
        if sur is None:
            tick(len(batches))
            return entry | {"status": "skipped", "reason": f"no surrogate for {cfg.dataset} (pass --surrogate)"}
        entry["surrogate"] = {"id": sur.model_id, "source": sur.source, "sha256": sur.sha256}
        from .attacks import judge_transfer

        adv = _transfer_advs(spec, sur, batches, cfg, lambda n: None)
        start = 0
        for _, x, y, _ in batches:
            xa = adv[start : start + len(y)].to(x.device)
            start += len(y)
            correct.append(judge_transfer(spec, model, x, xa, y).correct.cpu().numpy())  # checks the eps budget
            tick(1)
    else:
        for idx, x, y, _ in batches:
            res = run_attack(spec, model, x, y, seed=cfg.seed, indices=idx.tolist())
            correct.append(res.correct.cpu().numpy())
            tick(1)
    sev = accuracy_entry(np.concatenate(correct))
    sev.update(severity=1, parameter=spec.parameter_text(info.preset)[0])
    return entry | {"severities": [sev]}


def masking_entry(model: nn.Module, batches: Any, cfg: Any) -> list[dict[str, Any]]:
    """Gradient-masking sanity checks on the first images of the run (SPEC section 3)."""
    from .attacks import gradient_masking_checks

    idx, x, y, _ = next(iter(batches))
    sur = resolve_surrogate(cfg.surrogate, cfg.dataset, batches.device)
    checks = gradient_masking_checks(model, x, y, seed=cfg.seed, indices=idx.tolist(),
                                     surrogate=None if sur is None else sur.model.to(batches.device).eval())  # fmt: skip
    return [asdict(c) for c in checks]


