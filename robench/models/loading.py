"""Load any model robench is asked to score, without running code from the file by default.

Accepted: robench checkpoints, TorchScript archives, ``torch.export`` programs (``.pt2``), raw
state_dicts and ``.safetensors`` files (with ``arch=``), ``zoo:NAME``, the model specs
``timm:ARCH[.TAG]``, ``torchvision:NAME[:WEIGHTS]`` and ``hf-hub:ORG/REPO[@REV]`` (see
:mod:`robench.models.specs`), a timm or ``transformers`` model folder, and, only with
``trust_pickle=True``, a pickled ``nn.Module``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pickle
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from robench._io import first_line
from robench._registry import UnknownNameError
from robench.models._base import create_model
from robench.models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    model_from_checkpoint,
    read_checkpoint_bytes,
)
from robench.models.specs import (
    SpecModel,
    classes_from,
    is_model_spec,
    load_folder,
    load_spec,
    read_weights,
)

__all__ = ["LoadedModel", "check_graph", "check_torchscript_code", "load_model"]


@dataclass
class LoadedModel:
    """A model ready to score, plus where it came from.

    Args:
        model: the module (eval mode), taking [0, 1] images.
        model_id: a short stable name for tables and file names.
        source: what the user gave (path, ``zoo:NAME`` or a model spec).
        sha256: hash of the file (None for in-memory models); for a model spec, of its weights,
            architecture and preprocessing.
        kind: ``robench-checkpoint``, ``torchscript``, ``export``, ``state_dict``,
            ``safetensors``, ``pickle``, ``python``, or the library that built a model spec:
            ``timm``, ``torchvision`` or ``transformers``.
        meta: checkpoint metadata when known.
        card: the zoo card as a dict, for zoo entries.
        spec_meta: what a model spec resolved to (architecture, class count, weights and their
            SHA-256, preprocessing).
    """

    model: nn.Module
    model_id: str
    source: str
    sha256: str | None
    kind: str
    meta: CheckpointMeta | None = None
    card: dict[str, Any] | None = field(default=None)
    spec_meta: dict[str, Any] | None = None

    def record_meta(self) -> dict[str, Any] | None:
        """The result record's ``model.meta``: the checkpoint's metadata or the spec's."""
        return self.meta.to_dict() if self.meta is not None else self.spec_meta


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module; its train/eval behaviour was fixed when exported."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.program = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exported program's output on ``x``."""
        return cast(torch.Tensor, self.program(x))

    def train(self, mode: bool = True) -> ExportedModel:
        """Record the flag only: exported graphs refuse ``train()``/``eval()``."""
        self.training = mode
        return self


def _is_torchscript(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


# Operators that reach outside the process (files), and the operator namespaces a classifier may
# use.
# TorchScript and torch.export files are programs: robench reads them before running anything and
# refuses one that calls anything else (``--trust-pickle`` overrides, for files you trust).
_DENIED_OPS = frozenset(
    {"from_file", "save", "load", "read_file", "write_file", "_load_for_lite_interpreter"}
)
_ALLOWED_NS = frozenset(
    {
        "aten",
        "prim",
        "prims",
        "quantized",
        "_quantized",
        "quantization",
        "torchvision",
        "mkldnn",
        "mkldnn_prepacked",
        "onednn",
        "sparse",
        "rngprims",
        "xnnpack",
        "_nnapi",
        "higher_order",
    }
)


def _dotted(node: ast.AST) -> list[str]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]


def check_torchscript_code(data: bytes, name: str) -> None:
    """Refuse a TorchScript archive whose code touches files or unknown operator libraries.

    Loading TorchScript runs its ``__setstate__`` methods and scoring runs ``forward``; both are
    code from the file. Its serialized source (``code/**.py``, Python syntax) is parsed first.

    Raises:
        CheckpointError: a denied operator or namespace, or code that cannot be read.
    """
    hint = "refusing it (pass --trust-pickle only if you trust the file)"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        sources = [n for n in z.namelist() if "/code/" in n and n.endswith(".py")]
        for member in sources:
            try:
                tree = ast.parse(z.read(member).decode("utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                raise CheckpointError(
                    f"{name}: TorchScript code {member} cannot be checked; {hint}"
                ) from None
            for node in ast.walk(tree):
                chain = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else []
                bad = [c for c in chain if c in _DENIED_OPS]
                for i, part in enumerate(chain[:-1]):
                    if part in ("ops", "classes") and chain[i + 1] not in _ALLOWED_NS:
                        bad.append(f"{part}.{chain[i + 1]}")
                if bad:
                    raise CheckpointError(
                        f"{name}: its TorchScript code calls {'.'.join(chain)} (file access or an "
                        f"unknown operator library); {hint}"
                    )


def check_graph(module: nn.Module, name: str) -> None:
    """Refuse an exported program whose graph calls anything but allowed operators.

    ``torch.export`` programs name their calls as dotted paths resolved by attribute lookup on
    ``torch``, so a forged file can point a node at any Python function (``os.system`` through
    ``torch.serialization.os``); only operator overloads, higher-order operators and the
    ``operator``/``math`` builtins are accepted here.
    """
    import math
    import operator

    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        for node in getattr(graph, "nodes", ()):
            if node.op in (
                "placeholder",
                "output",
                "get_attr",
                "call_module",
            ):  # a called module is walked itself
                continue
            target = node.target
            ok = False
            if node.op == "call_function":
                if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
                    ns, op = target.namespace, target.__name__.split(".")[0]
                    ok = ns in _ALLOWED_NS and op not in _DENIED_OPS
                elif isinstance(target, torch._ops.HigherOrderOperator):
                    ok = True
                else:
                    ok = getattr(target, "__module__", None) in (
                        "_operator",
                        "operator",
                        "math",
                    ) and (
                        getattr(operator, getattr(target, "__name__", ""), None) is target
                        or getattr(math, getattr(target, "__name__", ""), None) is target
                    )
            if not ok:
                raise CheckpointError(
                    f"{name}: its graph calls {target!r} ({node.op}), "
                    "which is not an allowed operator; "
                    "refusing it (pass --trust-pickle only if you trust the file)"
                )


class _NoCodeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _inert_pickle_loads(data: bytes, *args: Any, **kwargs: Any) -> Any:
    return _NoCodeUnpickler(io.BytesIO(data)).load()


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise pickle.UnpicklingError("refusing a TorchScript object inside a torch.export file")


def _jit_load(data: bytes, device: str | torch.device) -> nn.Module:
    """``torch.jit.load`` of an in-memory TorchScript archive."""
    load = cast(Callable[..., nn.Module], torch.jit.load)  # torch leaves it unannotated
    return load(io.BytesIO(data), map_location=device)


def _load_export(data: bytes, name: str, device: str | torch.device) -> nn.Module:
    """``torch.export.load`` with its unpickling forced to run no code, then its graph checked."""
    from unittest import mock

    real_load = torch.load

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    with (
        _EXPORT_GUARD,
        mock.patch.object(torch, "load", weights_only_load),
        mock.patch.object(pickle, "loads", _inert_pickle_loads),
        mock.patch.object(torch._C, "_pickle_load_obj", _refuse),
    ):
        try:
            program = torch.export.load(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001  (torch.export raises many types on bad files)
            raise CheckpointError(
                f"{name} is not a readable (or a safe) torch.export program: {first_line(exc)}"
            ) from None
    check_graph(
        program.graph_module, name
    )  # the file's graph; .module() only adds torch's own guard code
    return ExportedModel(program.module()).to(device)


_EXPORT_GUARD = threading.Lock()  # the patches above are process-wide: one export load at a time


def _card_beside(path: Path, digest: str) -> dict[str, Any] | None:
    """The model card beside a checkpoint (``x.json`` for ``x.pt``), once its hash is checked."""
    card_path = path.with_suffix(".json")
    if card_path == path or not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a card (or not readable): it states no hash
    if not isinstance(card, dict) or not isinstance(card.get("sha256"), str) or "arch" not in card:
        return None
    if card["sha256"] != digest:
        raise CheckpointError(
            f"{path} does not match its model card {card_path.name} (sha256 {digest[:12]}... != "
            f"{card['sha256'][:12]}...); refusing a tampered or corrupted checkpoint"
        )
    return card


def load_model(
    source: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
    weights: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> LoadedModel:
    """Load a model for evaluation.

    The file is read once: its SHA-256 and the model come from the same bytes. A model card
    beside it (or the zoo's) that states a SHA-256 must match it.

    Args:
        source: a file path, a model folder, ``zoo:NAME`` / ``zoo:DATASET/NAME``, or a model spec
            (``timm:resnet50.a1_in1k``, ``torchvision:resnet18:IMAGENET1K_V1``,
            ``hf-hub:timm/resnet18.a1_in1k``).
        arch: architecture of a raw state_dict or ``.safetensors`` file (``robench list models``,
            or a ``timm:`` / ``torchvision:`` spec).
        num_classes: class count for a raw state_dict or a model spec (default: from the weights).
        arch_kwargs: architecture options for a raw state_dict.
        trust_pickle: allow a fully pickled ``nn.Module`` and unchecked TorchScript/export code,
            and let ``transformers`` run a hub model's own code (runs code from the file!).
        device: where to put the model.
        weights: the weights of a model spec (``.safetensors`` or a state_dict file; default: the
            pretrained weights in the local Hugging Face or torch hub cache).
        download: fetch a model spec's missing pretrained weights into the cache (network).

    Returns:
        A :class:`LoadedModel`.
    """
    text = str(source)
    spec = _spec_of(text, arch, num_classes, trust_pickle, weights, download)
    if spec is not None:
        return LoadedModel(
            spec.model.to(device).eval(),
            spec.model_id,
            spec.meta["spec"],  # the spec (also for a file given with --arch SPEC) or the folder
            spec.sha256,
            spec.kind,
            spec_meta=spec.meta,
        )
    if text.startswith("zoo:"):
        from dataclasses import asdict

        from robench.models.zoo import resolve_zoo, zoo_model_id

        path, zcard = resolve_zoo(text, verify=False)
        data = _read(path)
        digest = hashlib.sha256(data).hexdigest()
        if zcard is not None and zcard.sha256 != digest:
            raise CheckpointError(
                f"{path} does not match its model card (sha256 {digest[:12]}... != "
                f"{zcard.sha256[:12]}...); refusing a tampered or corrupted zoo file"
            )
        model, meta = model_from_checkpoint(
            read_checkpoint_bytes(data, str(path)), str(path), map_location=device
        )
        return LoadedModel(
            model,
            zoo_model_id(text),
            text,
            digest,
            "robench-checkpoint",
            meta,
            None if zcard is None else asdict(zcard),
        )
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    card = _card_beside(path, digest)
    model_id = path.stem
    if path.suffix == ".pt2":
        module = (
            ExportedModel(torch.export.load(io.BytesIO(data)).module()).to(device)
            if trust_pickle
            else _load_export(data, text, device)
        )
        return LoadedModel(module, model_id, text, digest, "export", card=card)
    if _is_torchscript(data):
        if not trust_pickle:
            check_torchscript_code(data, text)
        try:
            module = _jit_load(data, device)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path} is not a readable TorchScript archive: {first_line(exc, 160)}"
            ) from None
        return LoadedModel(module.eval(), model_id, text, digest, "torchscript", card=card)
    if path.suffix == ".safetensors":
        state, _ = read_weights(path, data=data)
        loaded = _from_state(path, state, digest, arch, num_classes, arch_kwargs, device)
        loaded.kind, loaded.card = "safetensors", card
        return loaded
    loaded = _load_torch_file(
        path,
        data,
        digest,
        arch=arch,
        num_classes=num_classes,
        arch_kwargs=arch_kwargs,
        trust_pickle=trust_pickle,
        device=device,
    )
    loaded.card = card
    return loaded


def _spec_of(
    text: str,
    arch: str | None,
    num_classes: int | None,
    trust_pickle: bool,
    weights: str | os.PathLike[str] | None,
    download: bool,
) -> SpecModel | None:
    """The model a spec, a model folder, or a file with ``--arch SPEC`` names; else None."""
    if is_model_spec(text):
        return load_spec(
            text,
            weights=weights,
            num_classes=num_classes,
            download=download,
            trust_remote_code=trust_pickle,
        )
    if weights is not None:
        raise ValueError(
            f"--weights goes with a timm:, torchvision: or hf-hub: model, not {text} "
            "(give a weights file itself as the model, with --arch)"
        )
    if arch is not None and is_model_spec(arch):
        return load_spec(arch, weights=text, num_classes=num_classes, download=download)
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file():
        return load_folder(path, num_classes=num_classes, trust_remote_code=trust_pickle)
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a model file") from None


def _load_torch_file(
    path: Path,
    data: bytes,
    digest: str,
    *,
    arch: str | None,
    num_classes: int | None,
    arch_kwargs: dict[str, Any] | None,
    trust_pickle: bool,
    device: str | torch.device,
) -> LoadedModel:
    try:
        obj = read_checkpoint_bytes(data, str(path))
    except CheckpointError:
        if not trust_pickle:
            raise
        obj = torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=False
        )  # the user vouched for this file
        if not isinstance(obj, nn.Module):
            raise CheckpointError(
                f"{path} unpickled to a {type(obj).__name__}, not an nn.Module"
            ) from None
        return LoadedModel(obj.to(device).eval(), path.stem, str(path), digest, "pickle")
    if obj.get("format") == "robench-checkpoint":
        model, meta = model_from_checkpoint(obj, str(path), map_location=device)
        return LoadedModel(model, path.stem, str(path), digest, "robench-checkpoint", meta)
    state = obj.get("state_dict", obj)
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(f"{path} is neither a robench checkpoint nor a state_dict of tensors")
    return _from_state(path, state, digest, arch, num_classes, arch_kwargs, device)


def _from_state(
    path: Path,
    state: dict[str, torch.Tensor],
    digest: str,
    arch: str | None,
    num_classes: int | None,
    arch_kwargs: dict[str, Any] | None,
    device: str | torch.device,
) -> LoadedModel:
    """A registered architecture (``--arch``) holding the raw weights ``state``."""
    if arch is None:
        raise CheckpointError(
            f"{path} is a raw state_dict; say which architecture it is with --arch "
            "(see `robench list models`, or give timm:NAME or torchvision:NAME)"
        )
    kwargs = arch_kwargs or {}
    try:
        n = num_classes or classes_from(state, lambda k: create_model(arch, k, **kwargs))
        model = create_model(arch, n or _infer_classes(state), **kwargs)
    except UnknownNameError as exc:
        raise CheckpointError(
            f"{exc}; for a timm or torchvision architecture give --arch timm:{arch} or "
            f"--arch torchvision:{arch}"
        ) from None
    target = model if any(k.startswith("normalize.") for k in state) else model.backbone
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit --arch {arch}: {first_line(exc, 200)}"
        ) from None
    return LoadedModel(model.to(device).eval(), path.stem, str(path), digest, "state_dict")


def _infer_classes(state: dict[str, torch.Tensor]) -> int:
    """Class count from the last 1-D bias-like tensor of a state_dict (the classifier's)."""
    biases = [v for k, v in state.items() if k.endswith(".bias") and v.dim() == 1]
    if not biases:
        raise CheckpointError("cannot tell the class count of this state_dict; pass --num-classes")
    return int(biases[-1].shape[0])
