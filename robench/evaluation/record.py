"""The result record: one JSON file per run, typed, versioned, written atomically after every step.

Frozen dataclasses mirror ``robench/schemas/result.schema.json`` field for field (a test holds
them together): :class:`Record` is the run; :class:`PerturbationResult` (one perturbation),
:class:`SeverityResult` (one severity) and :class:`Scores` (its R and the comparison with the
baseline) live in :mod:`robench.evaluation.entries` and are re-exported here.
:meth:`Record.from_dict` validates (:func:`validate_record`) and builds; :meth:`Record.to_dict`
gives back the JSON, key for key and in the same order.
``SCHEMA_VERSION`` changes whenever a field changes meaning.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from robench._io import atomic_write_text
from robench._version import __version__
from robench.evaluation.entries import (
    FLATTEN,
    OMIT,
    Accuracy,
    CleanComparison,
    CleanResult,
    Components,
    JsonSection,
    PerturbationResult,
    Scores,
    SeverityResult,
    SurrogateRef,
    component_accuracies,
    dump,
    plain,
)
from robench.evaluation.validation import SCHEMA, SCHEMA_VERSION, ResultError, validate_record

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "Accuracy",
    "BaselineMce",
    "BaselineRef",
    "CleanComparison",
    "CleanResult",
    "Components",
    "DatasetEntry",
    "Environment",
    "MaskingCheck",
    "ModelEntry",
    "PerturbationResult",
    "Record",
    "ResultError",
    "RunConfig",
    "RunKey",
    "Scores",
    "SeverityResult",
    "SurrogateRef",
    "Summary",
    "component_accuracies",
    "environment",
    "new_record",
    "read_record",
    "validate_record",
    "write_record",
]


@dataclass(frozen=True, kw_only=True)
class RunKey(JsonSection):
    """What identifies a run: a rerun with an equal key resumes it.

    ``preset`` is the corruption preset used; ``image_size`` is set only for a dataset read at
    another size than its own (``imagefolder --image-size``), ``as_released`` only when true,
    ``attack_on`` only when the white-box attacks were crafted on a sub-network (``object``).
    """

    model_sha256: str | None
    dataset: str
    n_images: int
    seed: int
    preset: str
    image_size: int | None = field(default=None, metadata=OMIT)
    as_released: bool = field(default=False, metadata=OMIT)
    attack_on: str = field(default="model", metadata=OMIT)


@dataclass(frozen=True, kw_only=True)
class ModelEntry(JsonSection):
    """The evaluated model: display name (untrusted text), where it came from, its hash."""

    id: str
    source: str
    sha256: str | None
    kind: str  # the file's format, or the library that built a model spec (timm, torchvision, ...)
    meta: Mapping[str, Any] | None = None  # a checkpoint's metadata, or a spec's (preprocess too)
    card: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class DatasetEntry(JsonSection):
    """The evaluated images: dataset, split, and the fixed, seeded subset (``indices``)."""

    name: str
    split: str
    size: int
    n_images: int
    preset: str
    image_size: int
    num_classes: int
    indices_seed: int | None
    indices: tuple[int, ...] | None


@dataclass(frozen=True, kw_only=True)
class RunConfig(JsonSection):
    """The resolved settings of the run (``perturbations``: those computed so far, sorted)."""

    dataset: str | None = None
    data_root: str | None = None
    download: bool = False
    suite: str | None
    perturbations: tuple[str, ...]
    n_images: int | None = None
    batch_size: int
    device: str
    seed: int
    surrogate: str | None = None
    # as asked (None: the dataset's own); written only when set, as older files lack them
    preset: str | None = field(default=None, metadata=OMIT)
    image_size: int | None = field(default=None, metadata=OMIT)
    as_released: bool = field(default=False, metadata=OMIT)
    # --attack-on: the network the white-box attacks' gradients come from (written when not
    # ``model``, the evaluated model itself; ``object``: a composite model's object network)
    attack_on: str = field(default="model", metadata=OMIT)


@dataclass(frozen=True, kw_only=True)
class Environment(JsonSection):
    """Versions and machine facts recorded with every result."""

    python: str
    platform: str | None = field(default=None, metadata=OMIT)
    machine: str | None = field(default=None, metadata=OMIT)
    torch: str
    numpy: str
    device: str
    torchvision: str | None = None
    foolbox: str | None = None
    device_name: str | None = field(default=None, metadata=OMIT)
    # the writing process's peak memory when the record was last written (MiB; not in older files)
    peak_rss_mib: float | None = field(default=None, metadata=OMIT)
    peak_cuda_mib: float | None = field(default=None, metadata=OMIT)


@dataclass(frozen=True, kw_only=True)
class BaselineMce(JsonSection):
    """mCE and relative mCE against the baseline (None where no corruption is shared)."""

    mce_vs_baseline: float | None
    relative_mce_vs_baseline: float | None


@dataclass(frozen=True, kw_only=True)
class Summary(JsonSection):
    """Mean R per family group (never averaged across groups) and the mCE values."""

    mean_R: Mapping[str, float] = field(default_factory=dict)
    mce_corruptions: tuple[str, ...] = ()
    vs_baseline: BaselineMce | None = field(default=None, metadata=FLATTEN)
    mce_vs_alexnet: float | None = None
    relative_mce_vs_alexnet: float | None = field(default=None, metadata=OMIT)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """From its JSON object (validated)."""
        keys = ("mce_vs_baseline", "relative_mce_vs_baseline")
        return cls(
            mean_R=dict(data.get("mean_R", {})),
            mce_corruptions=tuple(data.get("mce_corruptions", ())),
            vs_baseline=BaselineMce(**{k: data.get(k) for k in keys})
            if any(k in data for k in keys)
            else None,
            mce_vs_alexnet=data.get("mce_vs_alexnet"),
            relative_mce_vs_alexnet=data.get("relative_mce_vs_alexnet"),
        )


@dataclass(frozen=True, kw_only=True)
class BaselineRef(JsonSection):
    """The model the markers compare with."""

    id: str
    sha256: str | None
    source: str


@dataclass(frozen=True, kw_only=True)
class MaskingCheck(JsonSection):
    """One gradient-masking sanity check: ``passed`` is None when it could not run."""

    name: str
    passed: bool | None = None
    detail: str


@dataclass(frozen=True, kw_only=True)
class Record(JsonSection):
    """One run of ``robench evaluate``: one model on one dataset's fixed image subset, one seed.

    ``clean`` is None only while the run has not scored its clean images yet, and ``summary``
    None (``{}`` in the file) until :func:`robench.evaluation.scoring.score_record` ran.
    """

    schema: str
    schema_version: int
    robench_version: str
    run_key: RunKey
    created: str
    updated: str
    model: ModelEntry
    dataset: DatasetEntry
    config: RunConfig
    environment: Environment
    clean: CleanResult | None
    perturbations: Mapping[str, PerturbationResult]
    summary: Summary | None
    baseline: BaselineRef | None = None
    gradient_masking: tuple[MaskingCheck, ...] | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "result") -> Record:
        """Validate a parsed result file and build its record.

        Raises:
            ResultError: one sentence naming the first problem (see :func:`validate_record`).
        """
        validate_record(data, where)
        masking = data.get("gradient_masking")
        base = data.get("baseline")
        return cls(
            schema=data["schema"],
            schema_version=data["schema_version"],
            robench_version=data["robench_version"],
            run_key=plain(RunKey, data["run_key"]),
            created=data["created"],
            updated=data["updated"],
            model=plain(ModelEntry, data["model"]),
            dataset=plain(DatasetEntry, data["dataset"]),
            config=plain(RunConfig, data["config"]),
            environment=plain(Environment, data["environment"]),
            clean=CleanResult.from_dict(data["clean"]),
            perturbations={
                k: PerturbationResult.from_dict(e) for k, e in data["perturbations"].items()
            },
            summary=Summary.from_dict(data["summary"]) if data["summary"] else None,
            baseline=None if base is None else plain(BaselineRef, base),
            gradient_masking=None
            if masking is None
            else tuple(plain(MaskingCheck, c) for c in masking),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file (strict JSON: undefined ratios are null)."""
        out = dump(self)
        out["summary"] = out["summary"] or {}
        return out

    @classmethod
    def from_json(cls, text: str, where: str = "result") -> Record:
        """Parse and validate the text of a result file.

        Raises:
            ResultError: not JSON, or not a valid result.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultError(
                f"{where} is not a readable result file (truncated or corrupt?): {exc}"
            ) from None
        return cls.from_dict(data, where)

    def to_json(self) -> str:
        """The text of the result file (what :func:`write_record` writes)."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def done(self) -> dict[str, PerturbationResult]:
        """The computed (not skipped) perturbations, in the file's order."""
        return {k: e for k, e in self.perturbations.items() if e.done}

    def crafted_elsewhere(self, sha256: str | None, names: Collection[str]) -> list[str]:
        """The transfer columns among ``names`` crafted on a surrogate not hashing to ``sha256``.

        A resumed run recomputes them: a retrained surrogate changes every transfer column, and a
        record must not keep numbers from the old one under the new one's name.
        """
        if sha256 is None:
            return []
        return [
            k
            for k, e in self.perturbations.items()
            if k in names and e.surrogate is not None and e.surrogate.sha256 not in (None, sha256)
        ]

    def with_result(self, name: str, result: PerturbationResult) -> Record:
        """This record with perturbation ``name`` set (and listed in ``config.perturbations``)."""
        names = tuple(sorted({*self.config.perturbations, name}))
        return replace(
            self,
            perturbations={**self.perturbations, name: result},
            config=replace(self.config, perturbations=names),
        )


def environment(device: str) -> Environment:
    """Versions and machine facts recorded with every result."""
    import torch

    def installed(name: str) -> str | None:
        try:
            return version(name)  # from the metadata: importing torchvision costs seconds
        except PackageNotFoundError:  # pragma: no cover
            return None

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return Environment(
        python=sys.version.split()[0],
        platform=platform.platform(),
        machine=platform.machine(),
        torch=torch.__version__,
        numpy=np.__version__,
        device=device,
        torchvision=installed("torchvision"),
        foolbox=installed("foolbox"),
        device_name=torch.cuda.get_device_name(0) if cuda else None,
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_record(
    *,
    run_key: RunKey,
    model: ModelEntry,
    dataset: DatasetEntry,
    config: RunConfig,
    device: str,
) -> Record:
    """An empty record for a run (nothing computed yet)."""
    now = _now()
    return Record(
        schema=SCHEMA,
        schema_version=SCHEMA_VERSION,
        robench_version=__version__,
        run_key=run_key,
        created=now,
        updated=now,
        model=model,
        dataset=dataset,
        config=config,
        environment=environment(device),
        clean=None,
        perturbations={},
        summary=None,
    )


def write_record(record: Record, path: str | os.PathLike[str]) -> Record:
    """Write atomically (temp file + rename): a reader never sees half a record.

    Returns:
        The record as written: ``updated`` is now.
    """
    record = replace(record, updated=_now())
    atomic_write_text(path, record.to_json())
    return record


def read_record(path: str | os.PathLike[str]) -> Record:
    """Read and validate a result file.

    Raises:
        FileNotFoundError: no such file.
        ResultError: unreadable, not a result, or invalid (one sentence naming the problem).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(
            f"{p} is not a readable result file (truncated or corrupt?): {exc}"
        ) from None
    return Record.from_json(text, str(p))
