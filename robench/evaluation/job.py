"""``robench.evaluate``: score a model on the benchmark and write every output file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from robench import _distributed as distributed
from robench._distributed import resolve_device
from robench._io import file_lock, sha256_bytes_of_state, writable_dir
from robench._version import __version__
from robench.data import DATASETS
from robench.evaluation.attack_step import attack_entry
from robench.evaluation.components import check_attack_on
from robench.evaluation.loop import EvalConfig, evaluate_record, run_stem
from robench.evaluation.memory import (
    MAX_AUTO_BATCH,
    BatchChoice,
    choose_batch_size,
    parse_batch_size,
    peak_memory,
    probe_images,
)
from robench.evaluation.record import BaselineRef, Record, ResultError, read_record, write_record
from robench.evaluation.scoring import score_record
from robench.models.loading import LoadedModel, load_model
from robench.models.specs import is_model_spec
from robench.models.zoo import resolve_zoo

__all__ = [
    "EvalRun",
    "OutputWriter",
    "auto_batch_size",
    "evaluate",
    "resolve_baseline",
    "run_lock",
]

OutputWriter = Callable[[Record, Path], dict[str, Path]]
"""Writes the files derived from a finished record beside its JSON; returns them by kind."""


@dataclass(frozen=True)
class EvalRun:
    """What :func:`evaluate` did: the finished record and every file written for it.

    Attributes:
        record: the scored result record.
        paths: the files written, by kind (``json`` and whatever the output writer added); empty on
            every rank but rank 0 under torchrun.
    """

    record: Record
    paths: dict[str, Path]


log = logging.getLogger(__name__)


def _as_loaded(
    model: nn.Module | str | Path | LoadedModel,
    *,
    model_id: str | None,
    arch: str | None,
    trust_pickle: bool,
    weights: str | Path | None = None,
    download: bool = False,
) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        digest = sha256_bytes_of_state(model)
        return LoadedModel(model, model_id or type(model).__name__, "python", digest, "python")
    loaded = load_model(
        model, arch=arch, trust_pickle=trust_pickle, weights=weights, download=download
    )
    if model_id:
        loaded.model_id = model_id
    return loaded


def resolve_baseline(baseline: str | None, dataset: str) -> str | None:
    """What ``--baseline`` names: ``None``, a model reference or a result ``.json``.

    ``none`` (and ``auto`` without a zoo ``standard`` for the dataset) is ``None``; ``auto``
    becomes ``zoo:DATASET/standard``.
    """
    if baseline in (None, "none"):
        return None
    if baseline != "auto":
        return baseline
    ref = f"zoo:{dataset}/standard"
    try:
        resolve_zoo(ref)
    except (FileNotFoundError, ValueError):
        log.info("no zoo baseline for %s; markers are left empty", dataset)
        return None
    return ref


def _is_result_file(baseline: str) -> bool:
    return not baseline.startswith("zoo:") and baseline.endswith(".json")


def auto_batch_size(loaded: LoadedModel, cfg: EvalConfig) -> BatchChoice:
    """The batch size ``auto`` gives ``loaded`` (and the surrogate of a transfer attack) on ``cfg``.

    Measured on the run's device at the dataset's resolution (:mod:`robench.evaluation.memory`);
    under ``torchrun`` every rank takes the smallest of the ranks' sizes, so batches stay dealt
    alike.
    """
    from robench import perturbations as P
    from robench.evaluation.attack_step import resolve_surrogate

    device = resolve_device(cfg.device)
    ds = cfg.load()
    x, y = probe_images(ds, device)
    models = [loaded.model.to(device)]
    if any(getattr(P.get(n), "mode", "") == "transfer" for n in cfg.names()):
        sur = resolve_surrogate(cfg.surrogate, cfg.dataset, device)
        models += [] if sur is None else [sur.model]
    choice = choose_batch_size(models, x, y, device)
    sizes = distributed.gather_to_main(choice.size)
    return replace(choice, size=int(distributed.broadcast(min(sizes) if sizes else choice.size)))


def _with_peak_memory(record: Record) -> Record:
    """The record with this process's peak memory so far in its ``environment``."""
    env = record.environment
    peak = peak_memory(env.device)
    return replace(
        record,
        environment=replace(
            env, peak_rss_mib=peak.get("peak_rss_mib"), peak_cuda_mib=peak.get("peak_cuda_mib")
        ),
    )


def _write_if_changed(record: Record, path: Path) -> Record:
    """Write ``record`` (with this process's peak memory) unless ``path`` holds the same results.

    A rerun that computed nothing and rescored to the same numbers leaves the file byte for byte
    as it was (its ``updated`` time and environment describe the run that computed it), so a
    committed result does not change when it is only read again.
    """
    try:
        old = read_record(path)
    except (FileNotFoundError, ResultError):
        old = None
    if old is not None:
        same = replace(record, updated=old.updated, environment=old.environment)
        if same.to_json() == old.to_json():
            return old
    return write_record(_with_peak_memory(record), path)


def _baseline_record(
    baseline: str | None,
    loaded: LoadedModel,
    cfg: EvalConfig,
    out: Path,
    *,
    progress: bool,
    auto_batch: bool = False,
) -> Record | None:
    """The baseline's finished record for the same images, evaluating it first when needed."""
    baseline = resolve_baseline(baseline, cfg.dataset)
    if baseline is None:
        return None
    if _is_result_file(baseline):
        rec = read_record(baseline)
        if rec.dataset.name != cfg.dataset or rec.config.seed != cfg.seed:
            raise ResultError(f"baseline {baseline} was computed on other data or another seed")
        if rec.robench_version != __version__:
            raise ResultError(
                f"baseline {baseline} was computed by robench {rec.robench_version}, "
                f"not {__version__}; evaluate the baseline again (or pass --baseline none)"
            )
        if rec.clean is None:
            raise ResultError(f"baseline {baseline} is an unfinished run (no clean accuracy yet)")
        # R from its raw counts, whatever state it was left in (every entry: the family means
        # are over the whole record, not over this run's perturbations)
        return score_record(rec, None, _all_names(cfg, rec))
    base = load_model(baseline)
    if base.sha256 == loaded.sha256:
        return None  # the model is its own baseline: no markers
    cfg = replace(cfg, attack_on="model")  # the baseline is attacked through its own gradients
    if auto_batch:
        cfg = replace(cfg, batch_size=auto_batch_size(base, cfg).size)
    with run_lock(out, base.model_id, enabled=distributed.world().is_main):
        rec, path = evaluate_record(
            base, cfg, out=out, progress=progress, attack_runner=attack_entry
        )
        rec = score_record(rec, None, _all_names(cfg, rec))
        if distributed.world().is_main:
            rec = _write_if_changed(rec, path)
    return rec


def _all_names(cfg: EvalConfig, record: Record) -> list[str]:
    """The run's perturbations, then the record's others: what a rescored summary averages."""
    return list(dict.fromkeys([*cfg.names(), *record.perturbations]))


def _check_baseline_ref(baseline: str | None, download: bool = False) -> None:
    """A baseline that cannot exist fails before the evaluation, not after it.

    A model spec's missing weights are fetched now when ``download`` is set; the baseline is then
    loaded from the cache.
    """
    if baseline in (None, "none", "auto"):
        return
    if baseline.startswith("zoo:"):
        resolve_zoo(baseline, verify=False)
    elif _is_result_file(baseline):
        read_record(baseline)
    elif is_model_spec(baseline):
        load_model(baseline, download=download)
    elif not Path(baseline).is_file():
        raise FileNotFoundError(
            f"baseline not found: {baseline} (give zoo:NAME, a checkpoint, a model spec such as "
            "timm:resnet18, a result .json or none)"
        )
    else:
        load_model(baseline)  # an unreadable or unsafe checkpoint is refused before any work


def run_lock(out: Path, model_id: str, *, enabled: bool = True) -> Any:
    """The lock one model's run in ``out`` holds: two processes never write the same record at once.

    A second ``evaluate`` of the same model into the same folder waits, then resumes from what the
    first one wrote; runs of different models proceed in parallel.
    """
    if not enabled:
        return contextlib.nullcontext()
    stem = run_stem(model_id, EvalConfig(), 0).rsplit("__", 3)[0]
    return file_lock(out / f".{stem}.lock", what=f"model {model_id!r} in {out}")


def _same_images(record: Record, base: Record) -> None:
    """Markers compare image by image: the baseline must have seen exactly the same images."""
    mine, theirs = record.dataset, base.dataset
    if (mine.n_images, mine.indices) != (theirs.n_images, theirs.indices):
        raise ResultError(
            f"baseline {base.model.id!r} was evaluated on other images ({theirs.n_images} vs "
            f"{mine.n_images}, or another subset); markers need the same images"
        )
    a, b = record.run_key, base.run_key
    if (a.preset, a.image_size, a.as_released) != (b.preset, b.image_size, b.as_released):
        raise ResultError(
            f"baseline {base.model.id!r} was evaluated with another preset, image size or "
            f"--as-released setting; markers need the same corrupted images"
        )


def evaluate(
    model: nn.Module | str | Path,
    *,
    dataset: str = "shapes",
    data_root: str | None = None,
    download: bool = False,
    suite: str = "mtlat24",
    perturbations: tuple[str, ...] | list[str] = (),
    n_images: int | None = 500,
    batch_size: int | str = "auto",
    device: str = "auto",
    seed: int = 0,
    out: str | Path = "results",
    resume: bool = True,
    baseline: str | None = "auto",
    surrogate: str | None = "auto",
    model_id: str | None = None,
    arch: str | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    progress: bool = False,
    write_outputs: OutputWriter | None = None,
    preset: str | None = None,
    image_size: int | None = None,
    as_released: bool = False,
    attack_on: str = "model",
) -> EvalRun:
    """Score ``model`` on the benchmark; write ``<run>.json``, ``<run>.csv``, a long CSV and plots.

    Args:
        model: an ``nn.Module`` taking [0, 1] images, a checkpoint path, ``zoo:NAME``, or a model
            spec (``timm:ARCH[.TAG]``, ``torchvision:NAME[:WEIGHTS]``, ``hf-hub:ORG/REPO[@REV]``).
        dataset: registered dataset name.
        data_root: folder of a real dataset.
        download: fetch a missing real dataset into ``data_root``, and a model spec's missing
            pretrained weights (model, baseline, surrogate) into the hub caches (the only network
            use).
        suite: suite to run (``mtlat24``: 19 corruptions + 5 attacks).
        perturbations: restrict to these names.
        n_images: fixed, seeded subset of the test split (None: all).
        batch_size: images per forward pass, or ``auto``: the most that fit the free memory,
            measured on the model at the dataset's resolution (at most 250; see
            :mod:`robench.evaluation.memory`). The size never changes a result; a part that
            runs out of memory is computed again at half the size (the record keeps the size used).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: run seed.
        out: output folder.
        resume: continue a finished part of the same run instead of recomputing it.
        baseline: ``auto`` (the zoo's ``standard`` of the dataset), ``none``, ``zoo:NAME``, a
            checkpoint, a model spec or a result JSON.
        surrogate: model crafting transfer attacks (``auto``: the zoo's VGG surrogate).
        model_id: name shown in tables (default: the file's stem).
        arch: architecture of a raw state_dict or ``.safetensors`` file (a registered name, or
            ``timm:NAME`` / ``torchvision:NAME``).
        weights: the weights of a model spec (default: its pretrained weights in the local cache).
        trust_pickle: allow a pickled ``nn.Module`` file (runs code from it).
        progress: show a progress bar: the part running (``pgd 20/24``), and the run's share
            done and time left weighted by each part's passes (:mod:`robench.evaluation.progress`).
        write_outputs: writes the derived files (CSVs, plots) beside the JSON while the run's lock
            is held; ``robench.evaluate`` passes :func:`robench.report.write_outputs`.
        preset: corruption parameters (``cifar``, ``tiny``, ``imagenet``; None: the dataset's,
            for ``imagefolder`` its image size's). Recorded, and part of the run's key.
        image_size: side of a dataset read at any size (``imagefolder``; None: 224).
        as_released: pass each computed corruption through the released set's storage (the
            uint8 cast; and the JPEG at quality 85 at the ``tiny`` and ``imagenet`` presets), so
            numbers compare with published CIFAR-10-C / Tiny-ImageNet-C / ImageNet-C ones.
        attack_on: ``model``, or ``object``: craft every white-box attack on the object network
            of a composite (fusion) model and score the model itself on the adversarials
            (Akumalla et al.'s FGSM protocol). Recorded, and part of the run's key; a baseline
            model is attacked through its own gradients.

    Returns:
        The record and the written files (under torchrun, only rank 0 lists them: the other ranks
        compute their share and write nothing).
    """
    fixed = parse_batch_size(batch_size)  # None: auto
    cfg = EvalConfig(
        dataset=dataset,
        data_root=data_root,
        download=download,
        suite=suite,
        perturbations=tuple(perturbations),
        n_images=n_images,
        batch_size=fixed or MAX_AUTO_BATCH,
        device=device,
        seed=seed,
        surrogate=surrogate,
        preset=preset,
        image_size=image_size,
        as_released=as_released,
        attack_on=attack_on,
    )
    out = Path(out)
    DATASETS.get(dataset)  # cheap checks first: a typo fails before any loading
    cfg.names()
    _check_baseline_ref(baseline, download)
    if download and is_model_spec(surrogate):
        load_model(str(surrogate), download=True)  # into the cache, where the attack step looks
    world = distributed.setup(resolve_device(device))
    if world.is_main:
        writable_dir(
            out
        )  # a read-only or impossible --out fails now, not after the first perturbation
    loaded = _as_loaded(
        model,
        model_id=model_id,
        arch=arch,
        trust_pickle=trust_pickle,
        weights=weights,
        download=download,
    )
    check_attack_on(loaded.model, attack_on)  # before any measuring or evaluating
    if fixed is None:
        cfg = replace(cfg, batch_size=auto_batch_size(loaded, cfg).size)
    with run_lock(out, loaded.model_id, enabled=world.is_main):  # held until every file is written
        record, path = evaluate_record(
            loaded, cfg, out=out, resume=resume, progress=progress, attack_runner=attack_entry
        )
        base = _baseline_record(
            baseline, loaded, cfg, out, progress=progress, auto_batch=fixed is None
        )
        if base is not None:
            _same_images(record, base)
        ref = (
            None
            if base is None
            else BaselineRef(id=base.model.id, sha256=base.model.sha256, source=base.model.source)
        )
        # R, markers and summary over everything the file holds, not only this call's perturbations
        order = _all_names(cfg, record)
        record = score_record(replace(record, baseline=ref), base, order)
        if not world.is_main:
            distributed.barrier()  # returns once rank 0 has written everything
            return EvalRun(record, {})
        record = _write_if_changed(record, path)
        paths = {"json": path, **(write_outputs(record, path) if write_outputs else {})}
        distributed.barrier()
        return EvalRun(record, paths)
