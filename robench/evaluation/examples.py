"""Adversarial example images for the leaderboard, crafted on the exact checkpoint a result names.

A result file is untrusted: the checkpoint it points to is used only when it is a robench
checkpoint (loaded with ``weights_only=True``, no code from the file) whose SHA-256, computed from
the same bytes the model is loaded from, equals the hash the result states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from robench._io import first_line
from robench.evaluation.record import Record
from robench.models.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint_bytes
from robench.models.loading import load_model
from robench.perturbations._base import PERTURBATIONS

__all__ = ["CheckpointAdversary", "ExampleUnavailable"]

_LOAD_ERRORS = (CheckpointError, FileNotFoundError, ValueError, KeyError, OSError, RuntimeError)

_Key = tuple[str, str | None, str]  # (source, sha256, kind) of a checkpoint


class ExampleUnavailable(Exception):
    """An adversarial example cannot be crafted; ``reason`` says why in a few words.

    Args:
        reason: the sentence shown on the model page.
        of_model: the evaluated model itself is unusable (every attack tile of the page is empty),
            as opposed to one attack's own problem (e.g. its surrogate).
    """

    def __init__(self, reason: str, *, of_model: bool) -> None:
        super().__init__(reason)
        self.reason, self.of_model = reason, of_model


def load_verified(ref: str, sha256: str | None, kind: str) -> nn.Module:
    """The robench checkpoint ``ref`` if its bytes have exactly the hash ``sha256``.

    Raises:
        ExampleUnavailable: not a robench checkpoint, no hash stated, unreadable, or another hash.
    """
    if kind != "robench-checkpoint":
        raise ExampleUnavailable(
            f"the model is a {kind} file, not a robench checkpoint", of_model=True
        )
    if not sha256:
        raise ExampleUnavailable("the result states no checkpoint hash", of_model=True)
    model: nn.Module | None
    try:
        if ref.startswith("zoo:"):
            loaded = load_model(ref)  # the zoo checks the card's hash against the bytes it loads
            digest, model = loaded.sha256, loaded.model
        else:
            path = Path(ref)
            if not path.is_file():
                raise ExampleUnavailable(f"checkpoint {ref} not found", of_model=True)
            data = path.read_bytes()  # one read: the hash and the weights come from the same bytes
            digest = hashlib.sha256(data).hexdigest()
            model = None  # built only once the hash matches
        if digest != sha256:
            raise ExampleUnavailable(
                f"checkpoint {ref} has another hash than the result states", of_model=True
            )
        if model is None:
            model = model_from_checkpoint(read_checkpoint_bytes(data, ref), ref)[0]
    except _LOAD_ERRORS as exc:
        raise ExampleUnavailable(
            f"checkpoint {ref} cannot be loaded ({first_line(exc, 120)})", of_model=True
        ) from None
    return model.eval()


class CheckpointAdversary:
    """Crafts a result's attacks on its own verified checkpoint (and its verified surrogate).

    Models are loaded once: the last evaluated model (one page uses it) and every surrogate (all
    pages' transfer attacks share it). A failed load is remembered too.
    """

    def __init__(self) -> None:
        self._surrogates: dict[_Key, nn.Module | ExampleUnavailable] = {}
        self._page: dict[_Key, nn.Module | ExampleUnavailable] = {}  # the current page's model only

    def _load(self, key: _Key, *, keep: bool) -> nn.Module:
        cache = self._surrogates if keep else self._page
        if key not in cache:
            if not keep:
                cache.clear()
            try:
                cache[key] = load_verified(*key)
            except ExampleUnavailable as exc:
                cache[key] = exc
        got = cache[key]
        if isinstance(got, ExampleUnavailable):
            raise got
        return got

    def craft(
        self,
        rec: Record,
        name: str,
        x: Tensor,
        y: Tensor,
        *,
        indices: Sequence[int],
        seed: int,
        severity: int | None = None,
    ) -> Tensor:
        """Adversarial images of attack ``name`` for the model of ``rec``.

        A strength sweep (``fgsm``) is crafted at ``severity`` (default: its strongest).

        Raises:
            ExampleUnavailable: the model or the surrogate cannot be used.
        """
        m = rec.model
        model = self._load((m.source, m.sha256, m.kind), keep=False)
        spec = PERTURBATIONS.get(name)
        spec = spec.at(severity or spec.severities[-1])
        surrogate = None
        if spec.mode == "transfer":
            sur = rec.perturbations[name].surrogate
            source, sha256 = ("", None) if sur is None else (sur.source, sur.sha256)
            try:
                surrogate = self._load((source, sha256, "robench-checkpoint"), keep=True)
            except ExampleUnavailable as exc:
                raise ExampleUnavailable(f"surrogate: {exc.reason}", of_model=False) from None
        from robench.attacks import run_attack  # Foolbox loads on first use, not with robench

        return run_attack(
            spec, model, x, y, seed=seed, indices=list(indices), surrogate=surrogate
        ).adv
