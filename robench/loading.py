"""Load any model robench is asked to score, without running code from the file by default.

Accepted: robench checkpoints, TorchScript archives, ``torch.export`` programs (``.pt2``), raw
state_dicts (with ``arch=``), ``zoo:NAME``, and, only with ``trust_pickle=True``, a pickled
``nn.Module``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import sha256_file
from .checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, read_checkpoint
from .models import create_model

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    """A model ready to score, plus where it came from.

    Args:
        model: the module (eval mode), taking [0, 1] images.
        model_id: a short stable name for tables and file names.
        source: what the user gave (path or ``zoo:NAME``).
        sha256: hash of the file (None for in-memory models).
        kind: ``robench-checkpoint``, ``torchscript``, ``export``, ``state_dict``, ``pickle`` or ``python``.
        meta: checkpoint metadata when known.
        card: the zoo card as a dict, for zoo entries.
    """

    model: nn.Module
    model_id: str
    source: str
    sha256: str | None
    kind: str
    meta: CheckpointMeta | None = None
    card: dict[str, Any] | None = field(default=None)


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module; its train/eval behaviour was fixed when exported."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.program = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedModel:
        """Record the flag only: exported graphs refuse ``train()``/``eval()``."""
        self.training = mode
        return self


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_model(
    source: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model for evaluation.

    Args:
        source: a file path or ``zoo:NAME`` / ``zoo:DATASET/NAME``.
        arch: architecture of a raw state_dict (``robench list models``).
        num_classes: class count for a raw state_dict.
        arch_kwargs: architecture options for a raw state_dict.
        trust_pickle: allow a fully pickled ``nn.Module`` (runs code from the file!).
        device: where to put the model.

    Returns:
        A :class:`LoadedModel`.
    """
    text = str(source)
    if text.startswith("zoo:"):
        from dataclasses import asdict

        from .zoo import resolve_zoo

        path, card = resolve_zoo(text)
        model, meta = load_checkpoint(path, map_location=device)
        return LoadedModel(model, text.removeprefix("zoo:").replace("/", "-"), text, sha256_file(path),
                           "robench-checkpoint", meta, None if card is None else asdict(card))  # fmt: skip
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    digest = sha256_file(path)
    model_id = path.stem
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001  (torch.export raises many types on bad files)
            raise CheckpointError(f"{path} is not a readable torch.export program: {str(exc).splitlines()[0][:160]}") from None
        return LoadedModel(ExportedModel(program.module()).to(device), model_id, text, digest, "export")
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} is not a readable TorchScript archive: {str(exc).splitlines()[0][:160]}") from None
        return LoadedModel(module.eval(), model_id, text, digest, "torchscript")
    return _load_torch_file(path, digest, arch=arch, num_classes=num_classes, arch_kwargs=arch_kwargs,
                            trust_pickle=trust_pickle, device=device)  # fmt: skip


def _load_torch_file(
    path: Path, digest: str, *, arch: str | None, num_classes: int | None, arch_kwargs: dict[str, Any] | None,
    trust_pickle: bool, device: str | torch.device,
) -> LoadedModel:  # fmt: skip
    try:
        obj = read_checkpoint(path)
    except CheckpointError:
        if not trust_pickle:
            raise
        obj = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
        if not isinstance(obj, nn.Module):
            raise CheckpointError(f"{path} unpickled to a {type(obj).__name__}, not an nn.Module") from None
        return LoadedModel(obj.to(device).eval(), path.stem, str(path), digest, "pickle")
    if obj.get("format") == "robench-checkpoint":
        model, meta = load_checkpoint(path, map_location=device)
        return LoadedModel(model, path.stem, str(path), digest, "robench-checkpoint", meta)
    state = obj.get("state_dict", obj)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither a robench checkpoint nor a state_dict of tensors")
    if arch is None:
        raise CheckpointError(f"{path} is a raw state_dict; say which architecture it is with --arch (see `robench list models`)")
    n = num_classes or _infer_classes(state)
    model = create_model(arch, n, **(arch_kwargs or {}))
    target = model if any(k.startswith("normalize.") for k in state) else model.backbone
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit --arch {arch}: {str(exc).splitlines()[0][:200]}") from None
    return LoadedModel(model.to(device).eval(), path.stem, str(path), digest, "state_dict")


def _infer_classes(state: dict[str, torch.Tensor]) -> int:
    """Class count from the last 1-D bias-like tensor of a state_dict (the classifier's)."""
    biases = [v for k, v in state.items() if k.endswith(".bias") and v.dim() == 1]
    if not biases:
        raise CheckpointError("cannot tell the class count of this state_dict; pass --num-classes")
    return int(biases[-1].shape[0])
