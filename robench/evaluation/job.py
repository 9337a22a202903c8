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
from robench.evaluation.loop import EvalConfig, evaluate_record, run_stem
from robench.evaluation.record import BaselineRef, Record, ResultError, read_record, write_record
from robench.evaluation.scoring import score_record
from robench.models.loading import LoadedModel, load_model
from robench.models.zoo import resolve_zoo

__all__ = ["EvalRun", "OutputWriter", "evaluate", "resolve_baseline", "run_lock"]

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
) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        digest = sha256_bytes_of_state(model)
        return LoadedModel(model, model_id or type(model).__name__, "python", digest, "python")
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
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


def _baseline_record(
    baseline: str | None, loaded: LoadedModel, cfg: EvalConfig, out: Path, *, progress: bool
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
        # R from its raw counts, whatever state it was left in
        return score_record(rec, None, cfg.names())
    base = load_model(baseline)
    if base.sha256 == loaded.sha256:
        return None  # the model is its own baseline: no markers
    with run_lock(out, base.model_id, enabled=distributed.world().is_main):
        rec, path = evaluate_record(
            base, cfg, out=out, progress=progress, attack_runner=attack_entry
        )
        rec = score_record(rec, None, cfg.names())
        if distributed.world().is_main:
            rec = write_record(rec, path)
    return rec


def _check_baseline_ref(baseline: str | None) -> None:
    """A baseline that cannot exist fails before the evaluation, not after it."""
    if baseline in (None, "none", "auto"):
        return
    if baseline.startswith("zoo:"):
        resolve_zoo(baseline, verify=False)
    elif _is_result_file(baseline):
        read_record(baseline)
    elif not Path(baseline).is_file():
        raise FileNotFoundError(
            f"baseline not found: {baseline} (give zoo:NAME, a checkpoint, a result .json or none)"
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


def evaluate(
    model: nn.Module | str | Path,
    *,
    dataset: str = "shapes",
    data_root: str | None = None,
    download: bool = False,
    suite: str = "mtlat24",
    perturbations: tuple[str, ...] | list[str] = (),
    n_images: int | None = 500,
    batch_size: int = 250,
    device: str = "auto",
    seed: int = 0,
    out: str | Path = "results",
    resume: bool = True,
    baseline: str | None = "auto",
    surrogate: str | None = "auto",
    model_id: str | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    progress: bool = False,
    write_outputs: OutputWriter | None = None,
) -> EvalRun:
    """Score ``model`` on the benchmark; write ``<run>.json``, ``<run>.csv``, a long CSV and plots.

    Args:
        model: an ``nn.Module`` taking [0, 1] images, a checkpoint path or ``zoo:NAME``.
        dataset: registered dataset name.
        data_root: folder of a real dataset.
        download: fetch a missing real dataset into ``data_root`` (the only network use).
        suite: suite to run (``mtlat24``: 19 corruptions + 5 attacks).
        perturbations: restrict to these names.
        n_images: fixed, seeded subset of the test split (None: all).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: run seed.
        out: output folder.
        resume: continue a finished part of the same run instead of recomputing it.
        baseline: ``auto`` (the zoo's ``standard`` of the dataset), ``none``, ``zoo:NAME`` or a
            result JSON.
        surrogate: model crafting transfer attacks (``auto``: the zoo's VGG surrogate).
        model_id: name shown in tables (default: the file's stem).
        arch: architecture of a raw state_dict.
        trust_pickle: allow a pickled ``nn.Module`` file (runs code from it).
        progress: show a progress bar.
        write_outputs: writes the derived files (CSVs, plots) beside the JSON while the run's lock
            is held; ``robench.evaluate`` passes :func:`robench.report.write_outputs`.

    Returns:
        The record and the written files (under torchrun, only rank 0 lists them: the other ranks
        compute their share and write nothing).
    """
    cfg = EvalConfig(
        dataset=dataset,
        data_root=data_root,
        download=download,
        suite=suite,
        perturbations=tuple(perturbations),
        n_images=n_images,
        batch_size=batch_size,
        device=device,
        seed=seed,
        surrogate=surrogate,
    )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = Path(out)
    DATASETS.get(dataset)  # cheap checks first: a typo fails before any loading
    cfg.names()
    _check_baseline_ref(baseline)
    world = distributed.setup(resolve_device(device))
    if world.is_main:
        writable_dir(
            out
        )  # a read-only or impossible --out fails now, not after the first perturbation
    loaded = _as_loaded(model, model_id=model_id, arch=arch, trust_pickle=trust_pickle)
    with run_lock(out, loaded.model_id, enabled=world.is_main):  # held until every file is written
        record, path = evaluate_record(
            loaded, cfg, out=out, resume=resume, progress=progress, attack_runner=attack_entry
        )
        base = _baseline_record(baseline, loaded, cfg, out, progress=progress)
        if base is not None:
            _same_images(record, base)
        ref = (
            None
            if base is None
            else BaselineRef(id=base.model.id, sha256=base.model.sha256, source=base.model.source)
        )
        # R, markers and summary over everything the file holds, not only this call's perturbations
        order = list(dict.fromkeys([*cfg.names(), *record.perturbations]))
        record = score_record(replace(record, baseline=ref), base, order)
        if not world.is_main:
            distributed.barrier()  # returns once rank 0 has written everything
            return EvalRun(record, {})
        record = write_record(record, path)
        paths = {"json": path, **(write_outputs(record, path) if write_outputs else {})}
        distributed.barrier()
        return EvalRun(record, paths)
