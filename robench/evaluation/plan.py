"""``robench evaluate --dry-run``: the passes a run will make, and its time from a calibration.

Passes are counted per image from each algorithm (:meth:`AttackSpec.cost`: PGD = 10 forward +
backward passes + a clean and a final forward pass; C&W = 40 + 2; a transfer attack = 10 on the
surrogate, unless its adversarials are cached, + 2 on the model), for what is still to do: finished
parts of a run that would be resumed are left out, and so is a baseline already evaluated. The
calibration times one forward pass and one forward + backward pass (gradient to the input, as the
attacks take it) of each model on a few of the run's images (1, doubled until a pass takes
:data:`CALIBRATION_SECONDS` or reaches the run's batch: seconds on any model, where timing whole
batches of a ResNet-50 at 224 px took minutes and gigabytes), and each pending corruption on
images worth :data:`CORRUPTION_PROBE_PIXELS` pixels (at least one) at its middle severity; the
estimate multiplies, so it is an estimate: small calibration batches time a GPU pessimistically,
and overheads (Foolbox's bookkeeping, data, files) are not in it. ``batch_size="auto"`` is resolved
as ``evaluate`` resolves it (:mod:`robench.evaluation.memory`); the header says what it chose.
On a released ``-C`` dataset a column read from files costs its forward passes plus the measured
time to read its images (no corruption is generated).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import perturbations as P
from robench._distributed import resolve_device
from robench.data import DatasetInfo, ReleasedCorruptions
from robench.data.storage import storage_of, stored
from robench.evaluation.loop import (
    EvalConfig,
    run_key,
    run_stem,
    scores_whitebox,
    select_indices,
    severities_of,
)
from robench.evaluation.record import ResultError, read_record
from robench.models.loading import LoadedModel

__all__ = ["PassCount", "Plan", "plan", "plan_evaluation", "time_forward", "time_gradient"]

MASKING_IMAGES = 64  # gradient_masking_checks' max_images
CORRUPTION_PROBE = 32  # at most this many images per corruption timing
CORRUPTION_PROBE_PIXELS = 32 * 32 * 32  # 32 images at 32 px, 8 at 64 px, 1 at 224 px
CALIBRATION_SECONDS = 0.25  # a calibration batch doubles until one pass takes this long


@dataclass
class PassCount:
    """Image-passes of one part of a run (multiply by nothing: they already count images).

    Args:
        what: ``clean``, a perturbation name or ``gradient-masking checks``.
        model: ``model`` or ``baseline``.
        images: images it covers.
        forward: forward passes on the model (no gradient).
        gradient: forward + backward passes on the model.
        surrogate_forward: forward passes on the transfer surrogate.
        surrogate_gradient: forward + backward passes on the surrogate.
        corrupted: corrupted images generated.
        seconds: estimated time.
    """

    what: str
    model: str
    images: int
    forward: int = 0
    gradient: int = 0
    surrogate_forward: int = 0
    surrogate_gradient: int = 0
    corrupted: int = 0
    seconds: float = 0.0


@dataclass
class Plan:
    """What a run will compute and how long it should take."""

    header: str
    counts: list[PassCount] = field(default_factory=list)
    calibration: dict[str, float] = field(default_factory=dict)
    corruption: dict[str, float] = field(default_factory=dict)
    batch_size: int = 250
    calibration_images: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Estimated seconds in one process."""
        return sum(c.seconds for c in self.counts)

    def total(self, key: str) -> int:
        """Sum of one pass column over the run."""
        return sum(int(getattr(c, key)) for c in self.counts)

    def __str__(self) -> str:
        head = (
            f"{'part':<34}{'images':>7}{'forward':>10}{'fwd+bwd':>10}{'surr. fwd':>10}"
            f"{'surr. f+b':>10}{'corrupted':>10}{'est. s':>9}"
        )
        rows = [self.header, "", head]
        for c in self.counts:
            name = c.what if c.model == "model" else f"[baseline] {c.what}"
            rows.append(
                f"{name:<34}{c.images:>7}{c.forward:>10,}{c.gradient:>10,}{c.surrogate_forward:>10,}"
                f"{c.surrogate_gradient:>10,}{c.corrupted:>10,}{c.seconds:>9.1f}"
            )
        keys = ("forward", "gradient", "surrogate_forward", "surrogate_gradient", "corrupted")
        rows.append(
            f"{'total':<34}{'':>7}"
            + "".join(f"{self.total(k):>10,}" for k in keys)
            + f"{self.seconds:>9.1f}"
        )
        passes = (
            self.total("forward")
            + self.total("gradient")
            + self.total("surrogate_forward")
            + self.total("surrogate_gradient")
        )
        cal = ", ".join(
            f"{k} {v * 1e3:.3g} ms/image"
            + (f" (on {self.calibration_images[k]})" if k in self.calibration_images else "")
            for k, v in self.calibration.items()
        )
        if self.corruption:
            mean = sum(self.corruption.values()) / len(self.corruption)
            cal += (
                f", corruption generation {mean * 1e3:.3g} ms/image "
                f"(mean of {len(self.corruption)})"
            )
        rows += [
            "",
            f"{passes:,} image-passes "
            f"(about {-(-passes // self.batch_size):,} batches of {self.batch_size})",
            f"calibration: {cal}",
            f"estimated time: {_duration(self.seconds)} in one process (passes x calibrated cost;"
            " overheads not counted; N processes share it about N ways)",
        ]
        if any(c.what.startswith("autoattack") for c in self.counts):
            rows.append(
                "AutoAttack rows are upper bounds: every stage is counted for every image, but each"
                " runs only on the images still classified correctly (often far fewer passes)"
            )
        if self.sources:
            read = ", ".join(f"{k} ({v})" for k, v in self.sources.items())
            rows.append(f"read from the released files, not generated: {read}")
        return "\n".join(rows)


def _duration(s: float) -> str:
    return (
        f"{s:.0f} s"
        if s < 90
        else f"{int(s // 60)} min {s % 60:.0f} s"
        if s < 5400
        else f"{s / 3600:.1f} h"
    )


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _median_time(fn: Callable[[], Any], x: Tensor, repeats: int) -> float:
    fn()  # warm-up (allocators, kernel choice)
    times = []
    for _ in range(repeats):
        _sync(x)
        t0 = time.perf_counter()
        fn()
        _sync(x)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_forward(model: nn.Module, x: Tensor, *, repeats: int = 3) -> float:
    """Median seconds of one forward pass (no gradient, eval mode) of the batch ``x``."""
    from robench.attacks import attack_mode  # Foolbox loads on first use, not with robench

    with attack_mode(model), torch.no_grad():
        return _median_time(lambda: model(x), x, repeats)


def time_gradient(model: nn.Module, x: Tensor, y: Tensor, *, repeats: int = 3) -> float:
    """Median seconds of one forward + backward pass to the input (how attacks use the model)."""

    def once() -> Tensor:
        xr = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0]

    from robench.attacks import attack_mode

    with attack_mode(model):
        return _median_time(once, x, repeats)


def _corruption_cost(
    spec: Any,
    x: Tensor,
    idx: list[int],
    boxes: Tensor | None,
    seed: int,
    preset: str,
    as_released: bool = False,
) -> float:
    """Seconds per corrupted image at the middle severity (it stands for all: one call, not 5).

    With ``as_released`` the released storage (uint8, JPEG) of the corrupted images is timed too.
    """
    middle = spec.severities[len(spec.severities) // 2]
    _sync(x)
    t0 = time.perf_counter()
    xc = spec(x, middle, seed=seed, indices=idx, preset=preset, boxes=boxes)
    if as_released:
        stored(xc, storage_of(preset))
    _sync(x)
    return (time.perf_counter() - t0) / len(x)


def _pending(
    loaded: LoadedModel,
    cfg: EvalConfig,
    out: Path,
    n: int,
    info: DatasetInfo,
    resume: bool,
    surrogate: LoadedModel | None = None,
) -> tuple[bool, list[str], bool]:
    """(clean to do, perturbations to do, masking checks to do) of a run that would resume."""
    names = cfg.names()
    whitebox = scores_whitebox(names)
    path = out / f"{run_stem(loaded.model_id, cfg, n)}.json"
    key = run_key(loaded, cfg, info, n)
    if not (resume and path.exists()):
        return True, names, whitebox
    try:
        rec = read_record(path)
    except ResultError:
        return True, names, whitebox
    if rec.run_key != key:
        return True, names, whitebox
    stale = rec.crafted_elsewhere(None if surrogate is None else surrogate.sha256, names)
    done = {k: e for k, e in rec.done().items() if k not in stale}
    todo = [k for k in names if k not in done]
    masking = rec.gradient_masking is None or bool(stale)
    return rec.clean is None, todo, whitebox and masking


def _per_image(timer: Callable[[int], float], limit: int) -> tuple[float, int]:
    """(seconds per image, images timed): 1 image, doubled until a pass is long enough to time."""
    k = 1
    while True:
        seconds = timer(k)
        if seconds >= CALIBRATION_SECONDS or k >= limit:
            return seconds / k, k
        k = min(2 * k, limit)


class _Costs:
    """Per-image seconds of each kind of pass, measured once per model on a few images."""

    def __init__(self, x: Tensor, y: Tensor, plan: Plan) -> None:
        self.x, self.y, self.plan = x, y, plan
        self.cache: dict[int, tuple[float, float]] = {}

    def of(self, model: nn.Module, label: str) -> tuple[float, float]:
        if id(model) not in self.cache:
            x, y, b = self.x, self.y, len(self.x)
            fwd, kf = _per_image(lambda k: time_forward(model, x[:k], repeats=1), b)
            grad, kg = _per_image(lambda k: time_gradient(model, x[:k], y[:k], repeats=1), b)
            self.cache[id(model)] = (fwd, grad)
            for what, value, k in (("forward", fwd, kf), ("forward+backward", grad, kg)):
                self.plan.calibration[f"{label} {what}"] = value
                self.plan.calibration_images[f"{label} {what}"] = k
        return self.cache[id(model)]


def _count_model(
    loaded: LoadedModel, who: str, cfg: EvalConfig, ctx: dict[str, Any], costs: _Costs, resume: bool
) -> list[PassCount]:
    """The pass counts of one model's run (the evaluated model or the baseline)."""
    from robench._io import cache_dir
    from robench.attacks import masking_checks_cost
    from robench.evaluation.attack_step import _transfer_key

    n, sur, out = ctx["n"], ctx["surrogate"], ctx["out"]
    clean, todo, masking = _pending(loaded, cfg, out, n, ctx["info"], resume, sur)
    model = loaded.model.to(ctx["device"]).eval()
    fwd, grad = costs.of(model, who)
    sfwd, sgrad = (
        costs.of(sur.model.to(ctx["device"]).eval(), "surrogate") if sur is not None else (0.0, 0.0)
    )
    rows = [PassCount("clean", who, n, forward=n, seconds=n * fwd)] if clean else []
    for name in todo:
        if name in ctx["corruption"]:  # generated, or read from a released file
            k = len(severities_of(name)) * n
            made = 0 if name in ctx["sources"] else k
            seconds = k * (fwd + ctx["corruption"][name])
            rows.append(PassCount(name, who, n, forward=k, corrupted=made, seconds=seconds))
            continue
        spec = P.get(name)
        if spec.mode == "transfer":
            if sur is None:
                continue  # skipped: no surrogate
            c, one = spec.cost(), spec.at(spec.severities[0]).cost()
            crafted = sum(  # a sweep caches each strength's adversarials apart
                not (
                    cache_dir()
                    / "transfer"
                    / f"{_transfer_key(spec.at(s), sur, cfg.dataset, cfg.seed, ctx['indices'])}.pt"
                ).exists()
                for s in spec.severities
            )
            g = one.surrogate_gradient_passes * n * crafted
            f = one.surrogate_forward_passes * n * crafted
            rows.append(
                PassCount(
                    name,
                    who,
                    n,
                    forward=c.forward_passes * n,
                    surrogate_gradient=g,
                    surrogate_forward=f,
                    seconds=c.forward_passes * n * fwd + g * sgrad + f * sfwd,
                )
            )
        else:
            c = spec.cost()
            rows.append(
                PassCount(
                    name,
                    who,
                    n,
                    forward=c.forward_passes * n,
                    gradient=c.gradient_passes * n,
                    seconds=n * (c.forward_passes * fwd + c.gradient_passes * grad),
                )
            )
    if masking:
        m, c = (
            min(MASKING_IMAGES, cfg.batch_size, n),
            masking_checks_cost(surrogate=sur is not None),
        )
        rows.append(
            PassCount(
                "gradient-masking checks",
                who,
                m,
                forward=c.forward_passes * m,
                gradient=c.gradient_passes * m,
                surrogate_forward=c.surrogate_forward_passes * m,
                surrogate_gradient=c.surrogate_gradient_passes * m,
                seconds=m
                * (
                    c.forward_passes * fwd
                    + c.gradient_passes * grad
                    + c.surrogate_forward_passes * sfwd
                    + c.surrogate_gradient_passes * sgrad
                ),
            )
        )
    return rows


def plan(
    loaded: LoadedModel,
    cfg: EvalConfig,
    *,
    out: Path,
    resume: bool = True,
    baseline: LoadedModel | None = None,
    batch_note: str | None = None,
) -> Plan:
    """Count the passes of ``evaluate`` (and of the baseline it would evaluate); estimate the time.

    Args:
        loaded: the evaluated model.
        cfg: the run's settings.
        out: the output folder (a run found there is resumed, so its finished parts cost nothing).
        resume: whether the run would resume.
        baseline: the baseline model ``evaluate`` would score on the same images, if any.
        batch_note: how the batch size was chosen (shown in the header), if automatically.

    Returns:
        A :class:`Plan`; ``str(plan)`` is the table the CLI prints.
    """
    from robench.evaluation.attack_step import resolve_surrogate

    device = resolve_device(cfg.device)
    ds = cfg.load()
    indices = select_indices(len(ds), cfg.n_images, cfg.seed, cfg.dataset)
    n, b, preset = len(indices), min(cfg.batch_size, len(indices)), cfg.preset_for(ds.info)
    x, y = ds.get_batch(torch.from_numpy(indices[:b]))
    x, y = x.to(device), y.to(device)
    names = cfg.names()
    attacks = any(  # transfer attacks and the masking checks use it
        k in P.PERTURBATIONS and P.get(k).kind == "attack" for k in names
    )
    ctx: dict[str, Any] = {
        "n": n,
        "out": Path(out),
        "preset": preset,
        "info": ds.info,
        "device": device,
        "indices": indices,
        "surrogate": resolve_surrogate(cfg.surrogate, cfg.dataset, device) if attacks else None,
    }
    pixels = int(x.shape[-1] * x.shape[-2])
    probe = indices[: max(1, min(CORRUPTION_PROBE, b, CORRUPTION_PROBE_PIXELS // pixels))]
    boxes = None if ds.boxes is None else ds.boxes[torch.from_numpy(probe)].to(device)
    ctx["sources"] = _sources(ds.released, names)
    ctx["corruption"] = {
        k: _read_cost(ds.released, k, probe.tolist())
        if k in ctx["sources"]
        else _corruption_cost(
            P.get(k), x[: len(probe)], probe.tolist(), boxes, cfg.seed, preset, cfg.as_released
        )
        for k in names
        if k in ctx["sources"] or P.get(k).kind == "corruption"
    }
    how = "" if batch_note is None else f" ({batch_note})"
    result = Plan(
        f"dry run: {loaded.model_id} on {cfg.dataset}, {n} images, batch {cfg.batch_size}{how}, "
        f"device {device}, seed {cfg.seed} (nothing is evaluated)",
        batch_size=cfg.batch_size,
    )
    costs = _Costs(x, y, result)
    result.counts = _count_model(loaded, "model", cfg, ctx, costs, resume)
    if baseline is not None:
        result.counts += _count_model(baseline, "baseline", cfg, ctx, costs, resume)
    result.corruption = dict(ctx["corruption"])
    result.sources = dict(ctx["sources"])
    return result


def _sources(released: ReleasedCorruptions | None, names: list[str]) -> dict[str, str]:
    """The columns read from released files and where (a missing file fails here, as in a run)."""
    if released is None:
        return {}
    found = {}
    for k in names:
        if k in released:
            released.check(k)
            found[k] = released.source(k)
    return found


def _read_cost(released: Any, name: str, idx: list[int]) -> float:
    """Seconds per image to read released images (severity 1 stands for all)."""
    t0 = time.perf_counter()
    released.get_batch(name, 1, idx)
    return (time.perf_counter() - t0) / max(1, len(idx))


def _baseline(baseline: str | None, loaded: LoadedModel, dataset: str) -> LoadedModel | None:
    """The baseline model ``evaluate`` would score (as its ``baseline`` argument resolves)."""
    from robench.evaluation.job import _is_result_file, resolve_baseline
    from robench.models.loading import load_model

    ref = resolve_baseline(baseline, dataset)
    if ref is None or _is_result_file(ref):
        return None
    base = load_model(ref)
    return None if base.sha256 == loaded.sha256 else base


def plan_evaluation(
    model: nn.Module | str | Path,
    *,
    dataset: str = "shapes",
    data_root: str | None = None,
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
    trust_pickle: bool = False,
    weights: str | Path | None = None,
    preset: str | None = None,
    image_size: int | None = None,
    as_released: bool = False,
    attack_on: str = "model",
) -> Plan:
    """:func:`plan` with :func:`robench.evaluate`'s arguments (what ``--dry-run`` calls)."""
    from robench.data import DATASETS
    from robench.evaluation.components import check_attack_on
    from robench.evaluation.job import _as_loaded, auto_batch_size
    from robench.evaluation.memory import MAX_AUTO_BATCH, parse_batch_size

    fixed = parse_batch_size(batch_size)  # None: auto, measured as evaluate measures it
    cfg = EvalConfig(
        dataset=dataset,
        data_root=data_root,
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
        attack_on=attack_on,  # part of the run key: a resumed object-network run is seen as such
    )
    DATASETS.get(dataset)
    cfg.names()
    loaded = _as_loaded(
        model, model_id=model_id, arch=arch, trust_pickle=trust_pickle, weights=weights
    )
    check_attack_on(loaded.model, attack_on)  # the same sentence evaluate gives
    note = None
    if fixed is None:
        choice = auto_batch_size(loaded, cfg)
        cfg, note = replace(cfg, batch_size=choice.size), str(choice)
    return plan(
        loaded,
        cfg,
        out=Path(out),
        resume=resume,
        baseline=_baseline(baseline, loaded, dataset),
        batch_note=note,
    )
