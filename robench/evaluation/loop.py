"""``evaluate``: one model x the benchmark's perturbations -> a resumable result record.

Every model sees the same images: the subset comes from the seed, each corrupted image's
randomness from (seed, perturbation, severity, image index), and transfer adversarials are
crafted once per (dataset, surrogate, eps, seed) and cached. The record is rewritten atomically
after every perturbation, so an interrupted run resumes where it stopped.

On a released ``-C`` dataset (``cifar10-c``, ``imagenet-c``...) the corruptions the release holds
are read from its files, batch by batch, and their column's ``source`` names the file; the other
perturbations are computed on the clean images as usual.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from robench import _distributed as distributed
from robench import perturbations as P
from robench._distributed import resolve_device
from robench._io import first_line
from robench._seeding import derive_seed
from robench._version import __version__
from robench.data import (
    DATASETS,
    DatasetInfo,
    ImageDataset,
    ReleasedCorruptions,
    check_image_size,
    load_dataset,
)
from robench.data.storage import storage_of, stored
from robench.evaluation.components import ATTACK_ON, Tally, check_attack_on
from robench.evaluation.memory import StepDown, is_out_of_memory
from robench.evaluation.progress import MASKING, Part, RunProgress, run_parts
from robench.evaluation.record import (
    CleanResult,
    DatasetEntry,
    ModelEntry,
    PerturbationResult,
    Record,
    ResultError,
    RunConfig,
    RunKey,
    SeverityResult,
    new_record,
    read_record,
    write_record,
)
from robench.models.loading import LoadedModel

__all__ = [
    "EvalConfig",
    "evaluate_record",
    "select_indices",
    "resolve_device",
    "run_key",
    "run_stem",
    "predict",
    "severities_of",
]

log = logging.getLogger(__name__)
Progress = Callable[[int], None]
T = TypeVar("T")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run (everything that changes the numbers is here).

    Args:
        dataset: registered dataset name.
        data_root: folder of a real dataset.
        download: fetch a missing real dataset (network, only when asked).
        suite: suite whose order and members are evaluated.
        perturbations: restrict to these names (empty: the whole suite).
        n_images: evaluate a fixed, seeded subset of the test split (None: all of it).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: run seed (image subset, corruption and attack randomness).
        surrogate: model crafting the transfer attacks (``auto``: the zoo's VGG surrogate).
        preset: corruption parameter table (``cifar``, ``tiny``, ``imagenet``; None: the
            dataset's, for ``imagefolder`` its image size's).
        image_size: the side of a dataset read at any size (``imagefolder``; None: its own).
        as_released: pass each computed corruption through the storage of the preset's released
            set (:func:`robench.data.storage.stored`: the uint8 cast, plus the JPEG at quality 85
            for ``tiny`` and ``imagenet``) before the model sees it, so accuracies compare with
            published CIFAR-10-C / Tiny-ImageNet-C / ImageNet-C numbers. Clean images, attacks
            and columns read from released files are as loaded.
        attack_on: ``model`` (the white-box attacks differentiate the evaluated model) or
            ``object`` (a composite model's object network crafts them, Akumalla et al.'s
            protocol; the evaluated model is scored on them).
    """

    dataset: str = "shapes"
    data_root: str | None = None
    download: bool = False
    suite: str = "mtlat24"
    perturbations: tuple[str, ...] = ()
    n_images: int | None = None
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    surrogate: str | None = "auto"
    preset: str | None = None
    image_size: int | None = None
    as_released: bool = False
    attack_on: str = "model"

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in P.PRESETS:
            raise ValueError(f"preset must be one of {', '.join(P.PRESETS)}, got {self.preset!r}")
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"the image size must be a positive whole number, got {size!r}")
        if self.dataset in DATASETS:
            check_image_size(self.dataset, size)  # one sentence before any loading
        if not isinstance(self.as_released, bool):
            raise ValueError(f"as_released must be True or False, got {self.as_released!r}")
        if self.attack_on not in ATTACK_ON:
            raise ValueError(f"attack_on must be model or object, got {self.attack_on!r}")

    def load(self) -> ImageDataset:
        """The run's test split (at ``image_size`` when one is given)."""
        return load_dataset(
            self.dataset,
            "test",
            root=self.data_root,
            download=self.download,
            image_size=self.image_size,
        )

    def preset_for(self, info: DatasetInfo) -> str:
        """The corruption preset of the run on ``info``: ``preset``, else the dataset's."""
        return self.preset or info.preset

    def names(self) -> list[str]:
        """Perturbations of this run, in the suite's order.

        A dataset's file-only corruptions (ImageNet-3DCC's) follow the suite's, when it has
        corruptions; ``-p`` may name them.
        """
        members = P.names(suite=self.suite)
        only = file_only(self.dataset)
        if not self.perturbations:
            has_corruptions = any(P.get(n).kind == "corruption" for n in members)
            return members + [n for n in only if n not in members and has_corruptions]
        for n in self.perturbations:
            if n not in only:
                P.get(n)  # unknown names fail here with close matches
        return [n for n in members if n in self.perturbations] + [
            n for n in self.perturbations if n not in members
        ]


def file_only(dataset: str) -> Mapping[str, str]:
    """The corruptions of ``dataset`` that exist only as its files (name -> family)."""
    if dataset not in DATASETS:
        return {}
    found: Mapping[str, str] = DATASETS.get(dataset).extra.get("file_only", {})
    return found


def severities_of(name: str) -> tuple[int, ...]:
    """The severities of perturbation ``name`` (1..5 for a file-only corruption)."""
    if name in P.PERTURBATIONS:
        return tuple(P.get(name).severities)
    return (1, 2, 3, 4, 5)


def select_indices(n_total: int, n_images: int | None, seed: int, dataset: str) -> np.ndarray:
    """The evaluated test images: all, or a seeded subset (sorted), the same for every model."""
    if n_total == 0:
        raise ValueError(f"dataset {dataset!r} has no test images")
    if n_images is None or n_images >= n_total:
        return np.arange(n_total)
    if n_images < 1:
        raise ValueError(f"--n-images must be at least 1, got {n_images}")
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "subset", dataset)))
    return np.sort(rng.choice(n_total, size=n_images, replace=False))


def run_stem(model_id: str, cfg: EvalConfig, n: int) -> str:
    """File stem of a run: model, dataset, seed and image count (not the perturbations)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id).strip("._") or "model"
    return f"{safe}__{cfg.dataset}__s{cfg.seed}__n{n}"


def run_key(loaded: LoadedModel, cfg: EvalConfig, info: DatasetInfo, n: int) -> RunKey:
    """What identifies the run of ``loaded`` on ``n`` images of ``info`` with ``cfg``.

    The preset used is always in it, the image size when the dataset was read at another size
    than its registered one, and ``as_released``: a run that differs in any never resumes another.
    """
    spec_size = DATASETS.get(cfg.dataset).image_size if cfg.dataset in DATASETS else None
    return RunKey(
        model_sha256=loaded.sha256,
        dataset=cfg.dataset,
        n_images=int(n),
        seed=cfg.seed,
        preset=cfg.preset_for(info),
        image_size=None if info.image_size == spec_size else info.image_size,
        as_released=cfg.as_released,
        attack_on=cfg.attack_on,
    )


def predict(model: nn.Module, x: Tensor, num_classes: int) -> Tensor:
    """Arg-max predictions, with one-sentence errors for wrong shapes and NaN outputs."""
    with torch.no_grad():
        try:
            logits = model(x)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise  # not the model's fault: the run steps its batch size down
            raise ValueError(
                f"the model failed on a batch of shape {tuple(x.shape)} "
                f"(wrong input size or channels?): {first_line(exc, 200)}"
            ) from None
    return check_logits(logits, x.shape[0], num_classes).argmax(1)


def check_logits(logits: Any, n: int, num_classes: int) -> Tensor:
    """``logits`` if it is a finite N x num_classes tensor; a one-sentence ValueError otherwise."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return N x classes logits, got {shape}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"the model outputs {logits.shape[1]} classes but the dataset has {num_classes}"
        )
    if not logits.is_floating_point() or not bool(torch.isfinite(logits.detach()).all()):
        raise ValueError(f"the model produced NaN, Inf or non-float logits (dtype {logits.dtype})")
    return logits


class _CheckedModel(nn.Module):
    """The evaluated model with every output checked, attacks' forward passes included.

    A model whose logits turn NaN only on perturbed images would otherwise be scored by
    ``argmax`` of NaNs (class 0): a silent, wrong count.
    """

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def forward(self, x: Tensor) -> Tensor:
        return check_logits(self.model(x), x.shape[0], self.num_classes)


class _Batches:
    """This process's batches of the evaluated images on the device, with their dataset indices.

    Batch ``b`` always holds images ``b * batch_size ...`` of the run; under torchrun, rank ``r``
    of ``size`` makes batches ``r, r + size, ...`` (``indices`` stays the whole run's).
    """

    def __init__(
        self,
        ds: ImageDataset,
        indices: np.ndarray,
        batch_size: int,
        device: str,
        rank: int = 0,
        size: int = 1,
    ) -> None:
        self.ds, self.indices, self.bs, self.device = ds, indices, batch_size, device
        self.ids = range(rank, (len(indices) + batch_size - 1) // batch_size, size)

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self) -> Iterator[tuple[np.ndarray, Tensor]]:
        """``(dataset indices, labels on the device)`` per batch, without reading any image."""
        for b in self.ids:
            idx = self.indices[b * self.bs : (b + 1) * self.bs]
            yield idx, self.ds.targets[torch.from_numpy(idx)].to(self.device)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for b in self.ids:
            idx = self.indices[b * self.bs : (b + 1) * self.bs]
            x, y = self.ds.get_batch(torch.from_numpy(idx))
            boxes = (
                None
                if self.ds.boxes is None
                else self.ds.boxes[torch.from_numpy(idx)].to(self.device)
            )
            yield idx, x.to(self.device), y.to(self.device), boxes

    def positions(self) -> np.ndarray:
        """Positions in the run of this process's images, in the order it meets them."""
        n = len(self.indices)
        return np.concatenate(
            [np.arange(b * self.bs, min((b + 1) * self.bs, n)) for b in self.ids]
            or [np.zeros(0, int)]
        )

    def gather(self, parts: list[np.ndarray]) -> np.ndarray:
        """The whole run's per-image results in run order, from this process's ``parts``."""
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        return distributed.gather_rows(self.positions(), rows, len(self.indices))


def _corruption_entry(
    spec: Any,
    model: nn.Module,
    batches: _Batches,
    cfg: EvalConfig,
    preset: str,
    num_classes: int,
    tick: Progress,
) -> PerturbationResult:
    sevs, tally = [], Tally(model, num_classes)
    for s in spec.severities:
        correct = []
        for idx, x, y, boxes in batches:
            if spec.needs_boxes and boxes is None:
                raise ValueError(
                    f"{spec.name} needs bounding boxes, "
                    f"which dataset {cfg.dataset!r} does not provide"
                )
            xc = spec(x, s, seed=cfg.seed, indices=idx.tolist(), preset=preset, boxes=boxes)
            if cfg.as_released:
                xc = stored(xc, storage_of(preset))
            correct.append((predict(model, xc, num_classes) == y).cpu().numpy())
            tally.add(xc, y)
            tick(1)
        parameter = spec.parameter_text(preset)[s - 1]
        parts = tally.take(batches.gather)
        sevs.append(SeverityResult.of(batches.gather(correct), s, parameter, parts))
    return PerturbationResult(
        kind="corruption", family=spec.family, severities=tuple(sevs), status="done"
    )


def _released_entry(
    name: str,
    released: ReleasedCorruptions,
    model: nn.Module,
    batches: _Batches,
    num_classes: int,
    tick: Progress,
) -> PerturbationResult:
    """A corruption column read from the released files (no image is corrupted here)."""
    family = P.get(name).family if name in P.PERTURBATIONS else released.families[name]
    sevs, tally = [], Tally(model, num_classes)
    for s in severities_of(name):
        correct = []
        for idx, y in batches.labels():
            x = released.get_batch(name, s, idx.tolist()).to(batches.device)
            correct.append((predict(model, x, num_classes) == y).cpu().numpy())
            tally.add(x, y)
            tick(1)
        parts = tally.take(batches.gather)
        sevs.append(SeverityResult.of(batches.gather(correct), s, None, parts))
    return PerturbationResult(
        kind="corruption",
        family=family,
        severities=tuple(sevs),
        status="done",
        source=released.source(name),
    )


def evaluate_record(
    loaded: LoadedModel,
    cfg: EvalConfig,
    *,
    out: Path,
    resume: bool = True,
    progress: bool = True,
    attack_runner: Callable[..., PerturbationResult] | None = None,
) -> tuple[Record, Path]:
    """Run (or resume) the evaluation; returns the raw record (no baseline yet) and its path."""
    device = resolve_device(cfg.device)
    ds = cfg.load()
    info = ds.info
    _check_fit(loaded, info)
    if cfg.as_released and info.channels != 3 and storage_of(cfg.preset_for(info)) != "cifar10-c":
        raise ValueError(
            f"--as-released at the {cfg.preset_for(info)} preset saves JPEGs of RGB images; "
            f"dataset {cfg.dataset!r} has {info.channels} channel(s) (use --preset cifar)"
        )
    indices = select_indices(len(ds), cfg.n_images, cfg.seed, cfg.dataset)
    names = cfg.names()
    model = _CheckedModel(loaded.model.to(device), info.num_classes).eval()
    check_attack_on(model, cfg.attack_on)  # one sentence for a model without an object network
    world = distributed.world()
    make = partial(_Batches, ds, indices, device=device, rank=world.rank, size=world.size)
    key = run_key(loaded, cfg, info, len(indices))
    path = out / f"{run_stem(loaded.model_id, cfg, len(indices))}.json"
    got = distributed.broadcast(  # rank 0 reads the file: every rank agrees on what is done
        _resume_or_new(path, resume, key, loaded, cfg, ds, indices, device)
        if world.is_main
        else None
    )
    if got is None:  # pragma: no cover  (rank 0 always sends a record)
        raise RuntimeError("rank 0 sent no result record")
    record = got

    steps = StepDown(cfg.batch_size, device, alone=world.size == 1)  # halves on out-of-memory

    def save(rec: Record) -> Record:
        rec = steps.noted(rec)  # the batch size actually used, once it stepped down
        return write_record(rec, path) if world.is_main else rec

    record = _forget_old_surrogate(record, names, cfg, device, path)
    pending = [n for n in names if not _complete(record, n)]
    _check_released(ds.released, pending)  # a missing released file fails now, before any work
    parts, done = _parts(record, names, pending, ds, cfg, len(indices), attack_runner)
    with RunProgress(parts, done=done, enabled=progress and world.is_main) as bar:
        if record.clean is None:
            clean = _at_size(steps, make, bar, "clean", partial(_clean, model, info.num_classes))
            record = save(replace(record, clean=clean))
        for name in pending:
            t0 = _now()
            column = partial(
                _column, name, ds, model, cfg=cfg, record=record, attack_runner=attack_runner
            )
            entry = _at_size(steps, make, bar, name, column)
            entry = replace(entry, seconds=round(_now() - t0, 3))
            record = save(record.with_result(name, entry))
        if attack_runner is not None and _wants_masking(record, names):
            from robench.evaluation.attack_step import masking_entry

            # on the run's first batch, which rank 0 holds; the others wait for its result
            checks = distributed.broadcast(
                _at_size(
                    steps,
                    make,
                    bar,
                    MASKING,
                    lambda batches, tick: masking_entry(model, batches, cfg),
                )
                if world.is_main
                else None
            )
            record = save(replace(record, gradient_masking=checks))
        bar.finish()
    return record, path


def _clean(model: nn.Module, num_classes: int, batches: _Batches, tick: Progress) -> CleanResult:
    """The clean pass: which images ``model`` classifies correctly (a composite's networks too)."""
    tally, correct = Tally(model, num_classes), []
    for _, x, y, _ in batches:
        correct.append((predict(model, x, num_classes) == y).cpu().numpy())
        tally.add(x, y)
        tick(1)
    return CleanResult.of(batches.gather(correct), tally.take(batches.gather))


def _at_size(
    steps: StepDown,
    make: Callable[[int], _Batches],
    bar: RunProgress,
    part: str,
    fn: Callable[..., T],
) -> T:
    """``fn(batches=..., tick=...)`` for ``part``, at half the batch size after out-of-memory.

    The part starts over at the smaller size; the parts finished before it are kept.
    """

    def attempt(size: int) -> T:
        batches = make(size)
        return fn(batches=batches, tick=bar.start(part, len(batches)))

    return steps.run(attempt)


def _parts(
    record: Record,
    names: list[str],
    pending: list[str],
    ds: ImageDataset,
    cfg: EvalConfig,
    n: int,
    attack_runner: Callable[..., PerturbationResult] | None,
) -> tuple[list[Part], list[str]]:
    """The run's parts for the progress bar, weighted as the dry run counts them, and those done."""
    checks = attack_runner is not None and scores_whitebox(names)
    parts = run_parts(
        names,
        n,
        severities=severities_of,
        released=[k for k in names if ds.released is not None and k in ds.released],
        masking_batch=min(cfg.batch_size, n) if checks else 0,
        surrogate=cfg.surrogate not in (None, "none"),
    )
    done = [k for k in names if k not in pending] + ["clean"] * (record.clean is not None)
    return parts, done + [MASKING] * (record.gradient_masking is not None)


def _column(
    name: str,
    ds: ImageDataset,
    model: nn.Module,
    batches: _Batches,
    cfg: EvalConfig,
    tick: Progress,
    record: Record,
    attack_runner: Callable[..., PerturbationResult] | None,
) -> PerturbationResult:
    """Compute perturbation ``name``'s column: read from released files, corrupted, or attacked."""
    info = replace(ds.info, preset=cfg.preset_for(ds.info))
    if ds.released is not None and name in ds.released:
        return _released_entry(name, ds.released, model, batches, info.num_classes, tick)
    spec = P.get(name)
    if spec.kind == "corruption":
        return _corruption_entry(spec, model, batches, cfg, info.preset, info.num_classes, tick)
    if attack_runner is None:
        return PerturbationResult(
            kind="attack", family=spec.family, status="skipped", reason="attacks unavailable"
        )
    return attack_runner(spec, model, batches, cfg, info, tick, record)


def _check_released(released: ReleasedCorruptions | None, names: list[str]) -> None:
    """Every released column to compute has its files (else one sentence naming the path)."""
    for n in names:
        if released is not None and n in released:
            released.check(n)


def _forget_old_surrogate(
    record: Record, names: list[str], cfg: EvalConfig, device: str, path: Path
) -> Record:
    """``record`` without the transfer columns of ``names`` crafted on another surrogate.

    Its masking checks (one compares against a transfer attack) go too when this run redoes them,
    i.e. when it scores a white-box attack; columns this run does not compute are left as they are.
    """
    if not any(
        record.perturbations[k].surrogate is not None for k in names if k in record.perturbations
    ):
        return record
    from robench.evaluation.attack_step import resolve_surrogate

    sur = resolve_surrogate(cfg.surrogate, cfg.dataset, device)
    stale = record.crafted_elsewhere(None if sur is None else sur.sha256, names)
    if not stale:
        return record
    log.warning(
        "%s: %s crafted on another surrogate than %s; computing them again",
        path.name,
        ", ".join(stale),
        "?" if sur is None else sur.source,
    )
    kept = {k: e for k, e in record.perturbations.items() if k not in stale}
    masking = None if scores_whitebox(names) else record.gradient_masking
    return replace(record, perturbations=kept, gradient_masking=masking)


def scores_whitebox(names: list[str]) -> bool:
    """Whether a run of ``names`` scores a white-box attack (and so runs the masking checks)."""
    return any(k in P.PERTURBATIONS and P.get(k).family == "white-box" for k in names)


def _complete(record: Record, name: str) -> bool:
    """Whether ``name`` is finished and whole in the record (a resumed run skips it)."""
    entry = record.perturbations.get(name)
    return entry is not None and entry.complete(severities_of(name))


def _wants_masking(record: Record, names: list[str]) -> bool:
    """Run the gradient-masking checks once, when the run scored a white-box attack."""
    done = record.done()
    return record.gradient_masking is None and any(
        n in done and done[n].family == "white-box" for n in names
    )


def _check_fit(loaded: LoadedModel, info: Any) -> None:
    """A checkpoint that states its input size and classes must match the dataset's."""
    meta = loaded.meta
    if meta is None:
        return
    if meta.num_classes != info.num_classes:
        raise ValueError(
            f"{loaded.source} has {meta.num_classes} classes "
            f"but dataset {info.name!r} has {info.num_classes}"
        )
    if meta.input_size != info.image_size:
        raise ValueError(
            f"{loaded.source} takes {meta.input_size} px images "
            f"but dataset {info.name!r} has {info.image_size} px images"
        )
    if meta.in_chans != info.channels:
        raise ValueError(
            f"{loaded.source} takes {meta.in_chans}-channel images "
            f"but dataset {info.name!r} has {info.channels}"
        )


def _resume_or_new(
    path: Path,
    resume: bool,
    run_key: RunKey,
    loaded: LoadedModel,
    cfg: EvalConfig,
    ds: ImageDataset,
    indices: np.ndarray,
    device: str,
) -> Record:
    if resume and path.exists():
        try:
            old = read_record(path)
        except ResultError as exc:
            log.warning(
                "%s; starting this run again (the damaged file is kept as %s)",
                exc,
                _set_aside(path).name,
            )
        else:
            if old.run_key == run_key and old.robench_version == __version__:
                log.info("resuming %s (%d perturbations done)", path, len(old.perturbations))
                return old
            why = (
                "another robench version"
                if old.run_key == run_key
                else "other settings or another checkpoint"
            )
            log.warning(
                "%s was computed with %s; starting again (the old file is kept as %s)",
                path,
                why,
                _set_aside(path).name,
            )
    whole = len(indices) == len(ds)
    model_info = ModelEntry(
        id=loaded.model_id,
        source=loaded.source,
        sha256=loaded.sha256,
        kind=loaded.kind,
        meta=loaded.record_meta(),
        card=loaded.card,
    )
    dataset_info = DatasetEntry(
        name=cfg.dataset,
        split="test",
        size=len(ds),
        n_images=int(len(indices)),
        preset=cfg.preset_for(ds.info),  # the preset used (the corruptions' parameters)
        image_size=ds.info.image_size,
        num_classes=ds.info.num_classes,
        indices_seed=None if whole else derive_seed(cfg.seed, "subset", cfg.dataset),
        indices=None if whole else tuple(indices.tolist()),
    )
    config = RunConfig(**asdict(cfg) | {"perturbations": (), "device": device})
    return new_record(
        run_key=run_key, model=model_info, dataset=dataset_info, config=config, device=device
    )


def _set_aside(path: Path) -> Path:
    """Rename a record that is not resumed to ``<name>.<time>.old``: finished work is kept."""
    import time

    aside = path.with_name(
        f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}.old"
    )
    path.replace(aside)
    return aside


def _now() -> float:
    import time

    return time.perf_counter()
