"""The robench checkpoint format: weights plus everything needed to rebuild and trust them.

A checkpoint is a plain dict of tensors, strings and numbers, so ``torch.load(weights_only=True)``
reads it without running any code. It is written atomically; its SHA-256 is its provenance.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench._io import atomic_torch_save, first_line, sha256_file
from robench._version import __version__
from robench.models._base import ImageClassifier, create_model

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "content_digest",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "read_checkpoint_bytes",
    "save_checkpoint",
]

FORMAT = "robench-checkpoint"
FORMAT_VERSION = (
    2  # 2: a content digest (torch does not check its zip CRCs, so bit rot loaded silently)
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one sentence saying why."""


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything a checkpoint records besides its weights.

    Args:
        arch: registered architecture name.
        arch_kwargs: its options.
        num_classes: logits.
        in_chans: input channels.
        input_size: image side it was trained at.
        mean: normalisation mean.
        std: normalisation std.
        dataset: training dataset name.
        defense: defense name (``standard`` for plain training).
        defense_config: the defense's hyperparameters.
        train_config: optimiser, epochs, seed...
        robench_version: version that wrote it.
        extra: anything else (e.g. clean accuracy at save time).
    """

    arch: str
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    in_chans: int = 3
    dataset: str = ""
    defense: str = "standard"
    defense_config: Mapping[str, Any] = field(default_factory=dict)
    train_config: Mapping[str, Any] = field(default_factory=dict)
    robench_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, ``weights_only``-safe representation."""
        return {
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "num_classes": int(self.num_classes),
            "in_chans": int(self.in_chans),
            "input_size": int(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "dataset": self.dataset,
            "defense": self.defense,
            "defense_config": dict(self.defense_config),
            "train_config": dict(self.train_config),
            "robench_version": self.robench_version,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointMeta:
        """Inverse of :meth:`to_dict`, tolerant of unknown keys."""
        try:
            return cls(
                arch=str(d["arch"]),
                num_classes=int(d["num_classes"]),
                input_size=int(d["input_size"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                arch_kwargs=dict(d.get("arch_kwargs", {})),
                in_chans=int(d.get("in_chans", 3)),
                dataset=str(d.get("dataset", "")),
                defense=str(d.get("defense", "standard")),
                defense_config=dict(d.get("defense_config", {})),
                train_config=dict(d.get("train_config", {})),
                robench_version=str(d.get("robench_version", "")),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint metadata is incomplete or malformed ({exc})"
            ) from None


def _normalize_of(model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    if isinstance(model, ImageClassifier):
        return model.normalize.mean.flatten().tolist(), model.normalize.std.flatten().tolist()
    raise CheckpointError("save_checkpoint expects a robench ImageClassifier (from create_model)")


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], meta: CheckpointMeta) -> str:
    """Write ``model``'s weights and ``meta`` atomically; returns the file's SHA-256."""
    mean, std = _normalize_of(model)
    if len(mean) != len(meta.mean) or any(
        abs(a - b) > 1e-6 for a, b in zip(mean, meta.mean, strict=True)
    ):
        raise CheckpointError("meta.mean does not match the model's normalisation")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta_d = meta.to_dict()
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta_d,
        "state_dict": state,
        "content_sha256": content_digest(meta_d, state),
    }
    atomic_torch_save(obj, path)
    return sha256_file(path)


def content_digest(meta: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata (canonical JSON) and each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=repr).encode())
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state_dict entry {name!r} is not a tensor")
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-sentence errors (runs no code from it)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return read_checkpoint_bytes(p.read_bytes(), str(p))


def read_checkpoint_bytes(data: bytes, name: str) -> dict[str, Any]:
    """:func:`read_checkpoint` on bytes already read (hash and load the very same bytes)."""
    p = name
    if not (
        data[:2] == b"PK" or data[:1] == b"\x80"
    ):  # a torch.save zip archive or a legacy pickle
        raise CheckpointError(
            f"{p} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text or "Unsupported operand" in text:
            raise CheckpointError(
                f"{p} holds pickled Python objects (e.g. a whole nn.Module), which could run code "
                "when loaded; refusing it (save a state_dict or a robench checkpoint instead, "
                "or pass --trust-pickle if you trust the file)"
            ) from None
        raise CheckpointError(
            f"{p} is not a readable checkpoint (truncated or corrupt?): {first_line(exc)}"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
        MemoryError,
        OverflowError,
    ) as exc:  # torch raises all of these on torn files
        raise CheckpointError(
            f"{p} is not a readable checkpoint (truncated or corrupt?): {first_line(exc)}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p} does not hold a dict of weights (got {type(obj).__name__})")
    return obj


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[ImageClassifier, CheckpointMeta]:
    """Rebuild the model of a robench checkpoint, in eval mode.

    Returns:
        ``(model, meta)``.
    """
    return model_from_checkpoint(read_checkpoint(path), str(path), map_location=map_location)


def model_from_checkpoint(
    obj: Mapping[str, Any], path: str, *, map_location: str | torch.device = "cpu"
) -> tuple[ImageClassifier, CheckpointMeta]:
    """Verify a loaded robench checkpoint dict and rebuild its model (see :func:`load_checkpoint`).

    The metadata is untrusted: the architecture is first built on the meta device (no memory) and
    its tensor shapes compared with the file's, so a forged ``arch_kwargs`` cannot allocate
    gigabytes; a format-2 file must match its content digest (bit rot, tampering).
    """
    if obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a robench checkpoint "
            "(a raw state_dict? give its architecture with --arch)"
        )
    version = obj.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer robench (format {version!r}); upgrade robench"
        )
    raw_meta, state = obj.get("meta", {}), obj.get("state_dict")
    if not isinstance(raw_meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} lacks its metadata or weights")
    try:
        intact = version < 2 or obj.get("content_sha256") == content_digest(raw_meta, state)
    except (
        RuntimeError,
        TypeError,
        ValueError,
    ) as exc:  # e.g. sparse or quantized tensors where weights belong
        raise CheckpointError(
            f"{path} holds weights of an unexpected kind ({str(exc)[:120]})"
        ) from None
    if not intact:
        raise CheckpointError(
            f"{path} is corrupted or was modified: "
            "its content does not match the digest it was saved with"
        )
    meta = CheckpointMeta.from_dict(raw_meta)
    kwargs = dict(in_chans=meta.in_chans, mean=meta.mean, std=meta.std, **dict(meta.arch_kwargs))
    try:
        with torch.device("meta"):
            skeleton = create_model(meta.arch, meta.num_classes, **kwargs)
    except KeyError as exc:  # an unknown architecture: the registry's message names close matches
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            f"{path}: cannot build architecture {meta.arch!r} with {dict(meta.arch_kwargs)}: "
            f"{first_line(exc)}"
        ) from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()), key=str)[:2]
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta.arch!r} (first differences: {diff})"
        )
    model = create_model(meta.arch, meta.num_classes, **kwargs)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta.arch!r}: {first_line(exc, 160)}"
        ) from None
    return model.to(map_location).eval(), meta
