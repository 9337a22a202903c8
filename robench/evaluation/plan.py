"""``robench evaluate --dry-run``: the passes a run will make, and its time from a calibration.

Passes are counted per image from each algorithm (:meth:`AttackSpec.cost`: PGD = 10 forward +
backward passes + a clean and a final forward pass; C&W = 40 + 2; a transfer attack = 10 on the
surrogate, unless its adversarials are cached, + 2 on the model), for what is still to do: finished
parts of a run that would be resumed are left out, and so is a baseline already evaluated. The
calibration times one forward pass and one forward + backward pass (gradient to the input, as the
attacks take it) of each model on a batch of the run's images, and each pending corruption on a
few images; the estimate multiplies. Overheads (Foolbox's bookkeeping, data, files) are not in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import perturbations as P
from robench._distributed import resolve_device
from robench.data import load_dataset
from robench.evaluation.loop import EvalConfig, run_stem, select_indices
from robench.evaluation.record import ResultError, RunKey, read_record
from robench.models.loading import LoadedModel

__all__ = ["PassCount", "Plan", "plan", "plan_evaluation", "time_forward", "time_gradient"]

MASKING_IMAGES = 64  # gradient_masking_checks' max_images
CORRUPTION_PROBE = 32  # images per corruption timing


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
        cal = ", ".join(f"{k} {v * 1e3:.3g} ms/image" for k, v in self.calibration.items())
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
    spec: Any, x: Tensor, idx: list[int], boxes: Tensor | None, seed: int, preset: str
) -> float:
    """Seconds per corrupted image, averaged over the severities."""
    total = 0.0
    for s in spec.severities:
        _sync(x)
        t0 = time.perf_counter()
        spec(x, s, seed=seed, indices=idx, preset=preset, boxes=boxes)
        _sync(x)
        total += time.perf_counter() - t0
    return total / (len(spec.severities) * len(x))


def _pending(
    loaded: LoadedModel, cfg: EvalConfig, out: Path, n: int, preset: str, resume: bool
) -> tuple[bool, list[str], bool]:
    """(clean to do, perturbations to do, masking checks to do) of a run that would resume."""
    names = cfg.names()
    whitebox = any(getattr(P.get(k), "family", "") == "white-box" for k in names)
    path = out / f"{run_stem(loaded.model_id, cfg, n)}.json"
    key = RunKey(
        model_sha256=loaded.sha256, dataset=cfg.dataset, n_images=n, seed=cfg.seed, preset=preset
    )
    if not (resume and path.exists()):
        return True, names, whitebox
    try:
        rec = read_record(path)
    except ResultError:
        return True, names, whitebox
    if rec.run_key != key:
        return True, names, whitebox
    done = rec.done()
    todo = [k for k in names if k not in done]
    return rec.clean is None, todo, whitebox and rec.gradient_masking is None


class _Costs:
    """Per-image seconds of each kind of pass, measured once per model."""

    def __init__(self, x: Tensor, y: Tensor, calibration: dict[str, float]) -> None:
        self.x, self.y, self.calibration = x, y, calibration
        self.cache: dict[int, tuple[float, float]] = {}

    def of(self, model: nn.Module, label: str) -> tuple[float, float]:
        if id(model) not in self.cache:
            b = len(self.x)
            fwd, grad = time_forward(model, self.x) / b, time_gradient(model, self.x, self.y) / b
            self.cache[id(model)] = (fwd, grad)
            self.calibration[f"{label} forward"], self.calibration[f"{label} forward+backward"] = (
                fwd,
                grad,
            )
        return self.cache[id(model)]


def _count_model(
    loaded: LoadedModel, who: str, cfg: EvalConfig, ctx: dict[str, Any], costs: _Costs, resume: bool
) -> list[PassCount]:
    """The pass counts of one model's run (the evaluated model or the baseline)."""
    from robench._io import cache_dir
    from robench.attacks import masking_checks_cost
    from robench.evaluation.attack_step import _transfer_key

    n, sur, out = ctx["n"], ctx["surrogate"], ctx["out"]
    clean, todo, masking = _pending(loaded, cfg, out, n, ctx["preset"], resume)
    model = loaded.model.to(ctx["device"]).eval()
    fwd, grad = costs.of(model, who)
    sfwd, sgrad = (
        costs.of(sur.model.to(ctx["device"]).eval(), "surrogate") if sur is not None else (0.0, 0.0)
    )
    rows = [PassCount("clean", who, n, forward=n, seconds=n * fwd)] if clean else []
    for name in todo:
        spec = P.get(name)
        if spec.kind == "corruption":
            k = len(spec.severities) * n
            rows.append(
                PassCount(
                    name,
                    who,
                    n,
                    forward=k,
                    corrupted=k,
                    seconds=k * (fwd + ctx["corruption"][name]),
                )
            )
        elif spec.mode == "transfer":
            if sur is None:
                continue  # skipped: no surrogate
            c = spec.cost()
            cached = (
                cache_dir()
                / "transfer"
                / f"{_transfer_key(spec, sur, cfg.dataset, cfg.seed, ctx['indices'])}.pt"
            ).exists()
            g, f = (
                (0, 0)
                if cached
                else (c.surrogate_gradient_passes * n, c.surrogate_forward_passes * n)
            )
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
) -> Plan:
    """Count the passes of ``evaluate`` (and of the baseline it would evaluate); estimate the time.

    Args:
        loaded: the evaluated model.
        cfg: the run's settings.
        out: the output folder (a run found there is resumed, so its finished parts cost nothing).
        resume: whether the run would resume.
        baseline: the baseline model ``evaluate`` would score on the same images, if any.

    Returns:
        A :class:`Plan`; ``str(plan)`` is the table the CLI prints.
    """
    from robench.evaluation.attack_step import resolve_surrogate

    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, "test", root=cfg.data_root, download=cfg.download)
    indices = select_indices(len(ds), cfg.n_images, cfg.seed, cfg.dataset)
    n, b, preset = len(indices), min(cfg.batch_size, len(indices)), ds.info.preset
    x, y = ds.get_batch(torch.from_numpy(indices[:b]))
    x, y = x.to(device), y.to(device)
    names = cfg.names()
    attacks = any(
        P.get(k).kind == "attack" for k in names
    )  # transfer attacks and the masking checks use it
    ctx: dict[str, Any] = {
        "n": n,
        "out": Path(out),
        "preset": preset,
        "device": device,
        "indices": indices,
        "surrogate": resolve_surrogate(cfg.surrogate, cfg.dataset, device) if attacks else None,
    }
    probe = indices[: min(CORRUPTION_PROBE, b)]
    boxes = None if ds.boxes is None else ds.boxes[torch.from_numpy(probe)].to(device)
    ctx["corruption"] = {
        k: _corruption_cost(P.get(k), x[: len(probe)], probe.tolist(), boxes, cfg.seed, preset)
        for k in names
        if P.get(k).kind == "corruption"
    }
    result = Plan(
        f"dry run: {loaded.model_id} on {cfg.dataset}, {n} images, batch {cfg.batch_size}, "
        f"device {device}, seed {cfg.seed} (nothing is evaluated)",
        batch_size=cfg.batch_size,
    )
    costs = _Costs(x, y, result.calibration)
    result.counts = _count_model(loaded, "model", cfg, ctx, costs, resume)
    if baseline is not None:
        result.counts += _count_model(baseline, "baseline", cfg, ctx, costs, resume)
    result.corruption = dict(ctx["corruption"])
    return result


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
) -> Plan:
    """:func:`plan` with :func:`robench.evaluate`'s arguments (what ``--dry-run`` calls)."""
    from robench.data import DATASETS
    from robench.evaluation.job import _as_loaded

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cfg = EvalConfig(
        dataset=dataset,
        data_root=data_root,
        suite=suite,
        perturbations=tuple(perturbations),
        n_images=n_images,
        batch_size=batch_size,
        device=device,
        seed=seed,
        surrogate=surrogate,
    )
    DATASETS.get(dataset)
    cfg.names()
    loaded = _as_loaded(model, model_id=model_id, arch=arch, trust_pickle=trust_pickle)
    return plan(
        loaded, cfg, out=Path(out), resume=resume, baseline=_baseline(baseline, loaded, dataset)
    )
