"""Model specs: ``timm:ARCH[.TAG]``, ``torchvision:NAME[:WEIGHTS]`` and ``hf-hub:ORG/REPO[@REV]``.

The weights come from ``weights`` (a ``.safetensors`` file or a state_dict) or from the local
caches: the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``) for timm and hub
models, the torch hub cache (``$TORCH_HOME/hub/checkpoints``) for torchvision weights. Nothing is
downloaded unless ``download=True``. Files are read as tensors only (safetensors, or
``torch.load(weights_only=True)``), so no code from them runs.

The model's own preprocessing, from its pretrained config in timm's terms (input size,
``crop_pct``, ``crop_mode``, interpolation, mean and std), is wrapped inside it by
:class:`PreprocessedModel`: the model takes [0, 1] images of any size, attack budgets stay in
pixel units, and the preprocessing is recorded with the result.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from robench._io import first_line, sha256_file
from robench.models.checkpoint import CheckpointError, read_checkpoint_bytes
from robench.models.preprocess import Preprocess, PreprocessedModel

__all__ = [
    "SPEC_PREFIXES",
    "SpecModel",
    "classes_from",
    "hf_cache_dir",
    "is_model_spec",
    "load_folder",
    "load_spec",
    "read_weights",
]

SPEC_PREFIXES = ("timm:", "torchvision:", "hf-hub:")
_EXAMPLES = {
    "timm": "timm:resnet50.a1_in1k",
    "torchvision": "torchvision:resnet18:IMAGENET1K_V1",
    "hf-hub": "hf-hub:timm/resnet18.a1_in1k",
}
_TV_LOCK = threading.Lock()  # the torchvision weights patch is process-wide: one build at a time


def is_model_spec(text: object) -> bool:
    """Whether ``text`` is a ``timm:``, ``torchvision:`` or ``hf-hub:`` model spec.

    Example:
        >>> is_model_spec("timm:resnet18"), is_model_spec("model.pt")
        (True, False)
    """
    return isinstance(text, str) and text.startswith(SPEC_PREFIXES)


@dataclass
class SpecModel:
    """A resolved model spec.

    Args:
        model: the model behind its preprocessing (eval mode, on the CPU).
        model_id: a short name for tables and file names.
        kind: the library that built it (``timm``, ``torchvision`` or ``transformers``).
        sha256: hash of the weights' SHA-256, the architecture and the preprocessing (what fixes the
            outputs; the weights file's own hash is ``meta["weights_sha256"]``).
        meta: spec, architecture, class count, weights file and hash, preprocessing.
    """

    model: PreprocessedModel
    model_id: str
    kind: str
    sha256: str
    meta: dict[str, Any]


def _spec_model(net: nn.Module, pre: Preprocess, model_id: str, **meta: Any) -> SpecModel:
    meta["preprocess"] = pre.to_dict()
    fixed = {k: meta[k] for k in ("library", "arch", "num_classes", "weights_sha256", "preprocess")}
    digest = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
    model = PreprocessedModel(net.eval(), pre).eval()
    return SpecModel(model, model_id, str(meta["library"]), digest, meta)


def _close(name: str, names: Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def read_weights(
    path: str | os.PathLike[str], *, data: bytes | None = None
) -> tuple[dict[str, Tensor], str]:
    """The tensors of a ``.safetensors`` file or a state_dict file, and the file's SHA-256.

    The file is read once: the hash and the tensors come from the same bytes. A ``state_dict``
    (or ``model``) entry of a training checkpoint is taken, and a ``module.`` prefix is dropped.

    Args:
        path: the file (its suffix ``.safetensors`` says which format).
        data: its bytes, when already read.

    Raises:
        CheckpointError: not a file of tensors.
    """
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            state: Any = load(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a readable .safetensors file: {first_line(exc)}"
            ) from None
    else:
        state = read_checkpoint_bytes(data, str(path))
        if state.get("format") == "robench-checkpoint":
            raise CheckpointError(f"{path} is a robench checkpoint: give it as the model itself")
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors")
    from timm.models import clean_state_dict

    return cast(dict[str, Tensor], clean_state_dict(state)), digest


def _classes(state: Mapping[str, Tensor], classifier: Any, default: Any) -> int:
    """The class count: the classifier's rows, else the last 1-D bias, else ``default``."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    biases = [v for k, v in state.items() if k.endswith(".bias") and v.dim() == 1]
    if not names and biases:
        return int(biases[-1].shape[0])
    if default:
        return int(default)
    raise CheckpointError("cannot tell the class count of these weights; give num_classes")


def classes_from(state: Mapping[str, Tensor], build: Callable[[int], nn.Module]) -> int | None:
    """The class count of ``state`` for the architecture ``build(num_classes)`` makes, if found.

    The architecture is built (on the meta device: nothing is allocated) with one and two classes;
    a tensor whose shape differs is the classifier's, and its rows in ``state`` are the count.
    A ``.safetensors`` file sorts its keys, so "the last bias" does not find the classifier.
    """
    try:
        with torch.device("meta"):
            one, two = build(1).state_dict(), build(2).state_dict()
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return None
    for key, value in one.items():
        if value.shape != two[key].shape:
            for name in (key, key.removeprefix("backbone.")):
                if name in state and state[name].dim() >= 1:
                    return int(state[name].shape[0])
    return None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, else the library's default.

    Read at each call (huggingface_hub reads the environment once, at import).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _not_cached(spec: str, where: Path) -> CheckpointError:
    return CheckpointError(
        f"the weights of {spec} are not in the local cache ({where}); pass --download to fetch "
        "them (network), or give a weights file with --weights"
    )


def _hf_file(spec: str, repo: str, names: tuple[str, ...], download: bool) -> tuple[Path, str]:
    """The first of ``names`` in hub repo ``repo`` (``ORG/NAME[@REV]``), from the cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, rev = repo.partition("@")
    for name in names:
        try:
            got = hf_hub_download(
                repo_id,
                name,
                revision=rev or None,
                cache_dir=hf_cache_dir(),
                local_files_only=not download,
            )
        except EntryNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{spec}: {first_line(exc)}") from None
        return Path(got), f"hf-hub:{repo}/{name}"
    if download:
        raise CheckpointError(f"{spec}: hub repo {repo} has none of {', '.join(names)}")
    raise _not_cached(spec, hf_cache_dir())


def _torch_hub_file(spec: str, url: str, download: bool) -> Path:
    """``url``'s file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not path.is_file():
        if not download:
            raise _not_cached(spec, path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(path.name)
        torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None)
    return path


def _check_hub_hash(path: Path, digest: str) -> None:
    """A torch hub file names a prefix of its SHA-256: bit rot or tampering shows there."""
    match = torch.hub.HASH_REGEX.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise CheckpointError(
            f"{path} does not match the hash in its name ({match.group(1)}...); it is corrupted "
            "or was replaced: delete it and fetch it again (--download)"
        )


def _build_timm(name: str, state: dict[str, Tensor], n: int, what: str) -> nn.Module:
    """``timm.create_model`` with ``state`` as its pretrained weights, which timm checks."""
    import timm

    overlay = {"state_dict": state, "num_classes": n, "source": ""}
    try:
        model = timm.create_model(
            name, pretrained=True, num_classes=n, pretrained_cfg_overlay=overlay
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{what}: the weights do not fit: {first_line(exc, 200)}") from None
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.pop("state_dict", None)  # timm keeps a copy of the weights there
    return model


def _timm_preprocess(net: nn.Module) -> Preprocess:
    from timm.data.config import resolve_model_data_config

    return Preprocess.from_timm(resolve_model_data_config(net))  # type: ignore[no-untyped-call]


def _timm_weights(spec: str, cfg: Any, download: bool) -> tuple[Path, str]:
    """Where timm's pretrained weights for ``cfg`` lie in the local caches."""
    if cfg.hf_hub_id and cfg.custom_load != "hf":
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ()
        return _hf_file(
            spec, cfg.hf_hub_id, names or ("model.safetensors", "pytorch_model.bin"), download
        )
    if cfg.url and not cfg.custom_load:
        path = _torch_hub_file(spec, cfg.url, download)
        return path, cfg.url
    raise CheckpointError(
        f"{spec}: its pretrained weights are in a format robench does not read; "
        "convert them to a state_dict and pass --weights FILE"
    )


def _load_timm(
    spec: str, name: str, weights: Any, num_classes: int | None, download: bool
) -> SpecModel:
    import timm
    from timm.models import resolve_pretrained_cfg, split_model_name_tag

    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise CheckpointError(
            f"unknown timm architecture {arch!r}{_close(arch, timm.list_models())}"
        )
    try:
        cfg = resolve_pretrained_cfg(name)
    except RuntimeError as exc:
        raise CheckpointError(f"{spec}: {first_line(exc)} (see timm.list_pretrained())") from None
    path, where = (Path(weights), str(weights)) if weights else _timm_weights(spec, cfg, download)
    state, wdigest = read_weights(path)
    if not weights:
        _check_hub_hash(path, wdigest)
    n = num_classes or _classes(state, cfg.classifier, cfg.num_classes)
    net = _build_timm(name, state, n, spec)
    pre = _timm_preprocess(net)
    full = f"{arch}.{cfg.tag}" if cfg.tag else arch
    return _spec_model(
        net,
        pre,
        path.stem if weights else full,
        spec=spec,
        library="timm",
        arch=full,
        num_classes=n,
        weights=where,
        weights_sha256=wdigest,
    )


def _tv_weights(spec: str, name: str, wname: str) -> Any:
    """The torchvision weights enum member ``wname`` (``DEFAULT`` when empty) of model ``name``."""
    from torchvision import models as tvm

    enum = tvm.get_model_weights(name)
    try:
        return enum[wname or "DEFAULT"]
    except KeyError:
        names = [w.name for w in enum]
        raise CheckpointError(
            f"{spec}: {name} has no weights {wname!r} (choose from DEFAULT, {', '.join(names)})"
        ) from None


def _load_torchvision(
    spec: str, rest: str, weights: Any, num_classes: int | None, download: bool
) -> SpecModel:
    from torchvision import models as tvm

    name, _, wname = rest.partition(":")
    known = tvm.list_models(module=tvm)
    if name not in known:
        raise CheckpointError(f"unknown torchvision classifier {name!r}{_close(name, known)}")
    enum = _tv_weights(spec, name, wname)
    if weights:
        path, where = Path(weights), str(weights)
    else:
        path, where = _torch_hub_file(spec, enum.url, download), enum.url
    state, wdigest = read_weights(path)
    if weights:
        n = (
            num_classes
            or classes_from(state, lambda k: tvm.get_model(name, weights=None, num_classes=k))
            or _classes(state, (), None)
        )
        net = tvm.get_model(name, weights=None, num_classes=n)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{spec}: {path} does not fit: {first_line(exc, 200)}") from None
    else:
        _check_hub_hash(path, wdigest)
        net = _tv_build(spec, name, enum, state)
        n = len(enum.meta["categories"])
    pre = Preprocess.from_torchvision(enum.transforms())
    return _spec_model(
        net,
        pre,
        path.stem if weights else f"{name}.{enum.name}",
        spec=spec,
        library="torchvision",
        arch=name,
        weights_enum=None if weights else enum.name,
        num_classes=n,
        weights=where,
        weights_sha256=wdigest,
    )


def _tv_build(spec: str, name: str, enum: Any, state: dict[str, Tensor]) -> nn.Module:
    """The torchvision builder with ``enum``'s weights, taken from ``state`` (read here, safely).

    The builder sets what the weights need (``transform_input``, legacy key renames); only its
    file read (``torch.load`` of any pickle) is replaced.
    """
    from unittest import mock

    from torchvision import models as tvm

    with _TV_LOCK, mock.patch.object(type(enum), "get_state_dict", lambda *a, **k: state):
        try:
            return cast(nn.Module, tvm.get_model(name, weights=enum))
        except RuntimeError as exc:
            raise CheckpointError(
                f"{spec}: the cached weights do not fit: {first_line(exc)}"
            ) from None


def _hub_folder(spec: str, repo: str, download: bool) -> Path:
    """The snapshot folder of hub repo ``ORG/NAME[@REV]`` in the local cache (fetched if asked)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, rev = repo.partition("@")
    if repo_id.count("/") != 1:
        raise ValueError(f"hf-hub specs look like hf-hub:ORG/REPO[@REVISION], got {spec!r}")
    cache = hf_cache_dir()

    def get(patterns: list[str] | None) -> Path:
        got = snapshot_download(
            repo_id,
            revision=rev or None,
            cache_dir=cache,
            local_files_only=not download,
            allow_patterns=patterns,
        )
        return Path(got)

    try:
        folder = get(["*.json", "*.safetensors"] if download else None)
        if download and not _weight_files(folder):
            folder = get(["*.json", "*.bin"])
    except EntryNotFoundError:
        org, name = repo_id.split("/")
        raise CheckpointError(
            f"{spec} is not in the local Hugging Face cache ({cache}); pass --download to fetch "
            f"it (network), or put its files in {cache}/models--{org}--{name}/snapshots/<commit>/"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{spec}: {first_line(exc)}") from None
    return folder


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def load_folder(
    folder: str | os.PathLike[str],
    *,
    source: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    trust_remote_code: bool = False,
) -> SpecModel:
    """A timm or ``transformers`` model folder (``config.json`` plus weights), as the hub holds it.

    Args:
        folder: the folder (a hub snapshot, or what ``timm.models.save_for_hf`` or
            ``save_pretrained`` wrote).
        source: what the user named (default: the folder).
        weights: other weights for a timm folder's architecture.
        num_classes: class count (default: from the weights).
        trust_remote_code: let ``transformers`` run the folder's own model code.

    Returns:
        A :class:`SpecModel`.
    """
    folder = Path(folder)
    source = source or str(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{source} has no config.json (timm and transformers write one)"
        ) from None
    except ValueError:
        raise CheckpointError(f"{source}: its config.json is not JSON") from None
    if isinstance(cfg, dict) and ("architecture" in cfg or "pretrained_cfg" in cfg):
        return _timm_folder(folder, cfg, source, weights, num_classes)
    if isinstance(cfg, dict) and "model_type" in cfg:
        if weights:
            raise ValueError(f"{source} is a transformers model: it takes no --weights")
        return _transformers_folder(folder, source, trust_remote_code)
    raise CheckpointError(f"{source}: its config.json is neither timm's nor transformers'")


def _timm_folder(
    folder: Path, cfg: dict[str, Any], source: str, weights: Any, num_classes: int | None
) -> SpecModel:

    files = [p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.is_file()]
    if not weights and not files:
        raise CheckpointError(f"{source} holds no model.safetensors or pytorch_model.bin")
    path = Path(weights) if weights else files[0]
    state, wdigest = read_weights(path)
    pcfg = cfg.get("pretrained_cfg", cfg)
    n = num_classes or _classes(state, pcfg.get("classifier"), cfg.get("num_classes"))
    net = _build_timm(f"local-dir:{folder}", state, n, source)
    pre = _timm_preprocess(net)
    name = source.partition(":")[2] if is_model_spec(source) else folder.name
    return _spec_model(
        net,
        pre,
        Path(path).stem if weights else name,
        spec=source,
        library="timm",
        arch=str(cfg.get("architecture", pcfg.get("architecture"))),
        num_classes=n,
        weights=str(weights) if weights else path.name,
        weights_sha256=wdigest,
    )


def _transformers_folder(folder: Path, source: str, trust_remote_code: bool) -> SpecModel:
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            f"{source} is a transformers model: pip install transformers"
        ) from None
    files = _weight_files(folder)
    if not files:
        raise CheckpointError(f"{source} holds no .safetensors or .bin weights")
    kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        net = transformers.AutoModelForImageClassification.from_pretrained(str(folder), **kw)
        proc = transformers.AutoImageProcessor.from_pretrained(str(folder), **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: transformers cannot load it: {first_line(exc)}") from None
    digest = hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()
    name = source.partition(":")[2] if is_model_spec(source) else folder.name
    return _spec_model(
        cast(nn.Module, net),
        Preprocess.from_transformers(proc),
        name,
        spec=source,
        library="transformers",
        arch=type(net).__name__,
        num_classes=int(net.config.num_labels),
        weights=", ".join(p.name for p in files),
        weights_sha256=digest,
    )


def load_spec(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    download: bool = False,
    trust_remote_code: bool = False,
) -> SpecModel:
    """Build the model a spec names, with its weights and its preprocessing wrapped inside.

    Args:
        spec: ``timm:ARCH[.TAG]``, ``torchvision:NAME[:WEIGHTS]`` or ``hf-hub:ORG/REPO[@REV]``.
        weights: a ``.safetensors`` or state_dict file (default: the pretrained weights in the
            local cache).
        num_classes: class count (default: from the weights).
        download: fetch missing pretrained weights into the cache (the only network use).
        trust_remote_code: let ``transformers`` run a hub repo's own model code.

    Returns:
        A :class:`SpecModel`.

    Raises:
        CheckpointError: unknown name, weights not cached (the message names ``--download``), or
            weights that do not fit.
    """
    prefix, _, rest = spec.partition(":")
    if prefix not in _EXAMPLES:
        raise ValueError(f"model specs start with {', '.join(SPEC_PREFIXES)}, got {spec!r}")
    if not rest:
        raise ValueError(f"{spec!r} names no model (e.g. {_EXAMPLES[prefix]})")
    if prefix == "timm":
        return _load_timm(spec, rest, weights, num_classes, download)
    if prefix == "torchvision":
        return _load_torchvision(spec, rest, weights, num_classes, download)
    folder = _hub_folder(spec, rest, download)
    return load_folder(
        folder,
        source=spec,
        weights=weights,
        num_classes=num_classes,
        trust_remote_code=trust_remote_code,
    )
