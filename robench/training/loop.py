"""``fit``: the one training loop every defense plugs into; resumable, seeded end to end.

Each epoch starts from seeds derived from (seed, epoch): the shuffle, the defense's generator
and the global RNG that dropout draws from (fenced, restored afterwards). A run killed at any
point and restarted from its last epoch checkpoint therefore ends with the same weights as an
uninterrupted run (on the same device and threads).

Under torchrun (see :mod:`robench._distributed`; gloo on the CPU, nccl on CUDA) the ranks train one
model data-parallel, as DistributedDataParallel does: rank 0's weights at the start, the mean of
the ranks' gradients after every backward (:class:`~robench._distributed.GradientAverager`, which
also works for defenses that call sub-modules directly). ``batch_size`` stays the global batch:
every rank takes an equal, contiguous slice of each batch of the epoch's permutation, so the images
of a step, the steps per epoch and the LR schedule are those of a one-process run. Each rank's
defense generator and global RNG derive from (seed, epoch, rank, world size). Rank 0 alone writes
``<out>.partial`` and reads it on resume, then broadcasts it.

What equals what: a W-process run is reproducible (same W: the same weights, bit for bit, also
after a kill and resume). It equals the one-process run up to float summation order when the
defense draws no randomness per batch and the model has no batch-coupled layer in training mode:
the averaged gradient of W equal slices is the gradient of the mean loss over the whole batch.
BatchNorm breaks that (each rank normalises its own slice, as under DDP; SyncBatchNorm is GPU-only;
the running statistics are rank 0's), and so do dropout masks and defense draws (they come from
per-rank generators).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from torch import nn

from robench import _distributed as distributed
from robench._io import atomic_torch_save, first_line
from robench._seeding import derive_seed, make_generator
from robench.data import ImageDataset
from robench.defenses import Defense, StepContext, TrainConfig

if TYPE_CHECKING:
    from tqdm.auto import tqdm

__all__ = ["TrainConfig", "TrainResult", "fit", "evaluate_accuracy"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What ``fit`` returns."""

    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    resumed_from: int = 0


def evaluate_accuracy(
    model: nn.Module, ds: ImageDataset, *, device: str = "cpu", batch_size: int = 500
) -> float:
    """Clean top-1 accuracy of ``model`` on ``ds`` (restores the model's mode)."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            x, y = ds.get_batch(torch.arange(start, min(start + batch_size, len(ds))))
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    model.train(was)
    return correct / max(1, len(ds))


def _optimizer(
    model: nn.Module, cfg: TrainConfig, steps_total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    marks = sorted({max(1, int(round(f * steps_total))) for f in cfg.milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def fit(
    model: nn.Module,
    defense: Defense,
    train_ds: ImageDataset,
    cfg: TrainConfig,
    *,
    out: Path,
    eval_ds: ImageDataset | None = None,
    resume: bool = True,
    progress: bool = True,
    fingerprint: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``defense``; checkpoint every epoch to ``<out>.partial`` (atomic).

    Args:
        model: the model to train (modified in place).
        defense: a registered defense instance (``step(model, x, y, ctx) -> StepOutput``).
        train_ds: training images.
        cfg: optimiser and loop settings.
        out: final checkpoint path; the resumable state lives beside it as ``<out>.partial``.
        eval_ds: test images for the per-epoch accuracy.
        resume: continue from ``<out>.partial`` when it belongs to the same run.
        progress: show a progress bar with loss, accuracy and ETA.
        fingerprint: what identifies the run (defense, data, arch...), checked on resume.

    Returns:
        A :class:`TrainResult` (the model holds the final weights).
    """
    cfg.validate()
    world = distributed.world()
    device = cfg.device
    model.to(device)
    n = len(train_ds)
    _check_shares(cfg.batch_size, n, world.size)
    steps_per_epoch = max(
        1, n // cfg.batch_size
    )  # drop the last partial batch: constant batch statistics
    opt, sched = _optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    run_id = {"config": asdict(cfg), **dict(fingerprint or {})}
    result = TrainResult(0)
    start_epoch = _maybe_resume(out, run_id, model, opt, sched, result) if resume else 0
    t0 = time.perf_counter() - result.wall_time_s
    bar = _bar(
        progress and world.is_main, cfg.epochs * steps_per_epoch, start_epoch * steps_per_epoch
    )
    sync = distributed.GradientAverager(model) if world.active else None
    for epoch in range(start_epoch, cfg.epochs):
        stats = _run_epoch(
            model, sync, defense, train_ds, cfg, opt, sched, epoch, steps_per_epoch, bar
        )
        if eval_ds is not None and world.is_main:
            stats["test_acc"] = evaluate_accuracy(model, eval_ds, device=device)
        stats = distributed.broadcast(stats)
        result.history.append(stats)
        result.epochs_done = epoch + 1
        result.wall_time_s = time.perf_counter() - t0
        if world.is_main:
            atomic_torch_save(
                {
                    "run_id": run_id,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "history": result.history,
                    "wall_time_s": result.wall_time_s,
                },
                _state_path(out),
            )
        distributed.barrier()
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, stats)
    if bar is not None:
        bar.close()
    return result


def _bar(progress: bool, total: int, initial: int) -> tqdm[NoReturn] | None:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", dynamic_ncols=True)


def _check_shares(batch_size: int, n: int, ranks: int) -> None:
    if batch_size % ranks:
        raise ValueError(
            f"--batch-size {batch_size} must be a multiple of the {ranks} processes "
            "(one equal share each)"
        )
    if n < ranks:
        raise ValueError(f"{n} training images cannot be shared by {ranks} processes")


def _read_state(out: Path, run_id: Mapping[str, Any]) -> dict[str, Any] | None:
    path = _state_path(out)
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a torn file of any kind means: start again)
        log.warning(
            "ignoring unreadable %s (%s); starting from scratch", path, first_line(exc, 100)
        )
        return None
    if state.get("run_id") != run_id:
        log.warning("%s belongs to another run (different settings); starting from scratch", path)
        return None
    return state


def _maybe_resume(
    out: Path,
    run_id: Mapping[str, Any],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    result: TrainResult,
) -> int:
    state = distributed.broadcast(_read_state(out, run_id) if distributed.world().is_main else None)
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    result.history = list(state["history"])
    result.wall_time_s = float(state["wall_time_s"])
    result.epochs_done = result.resumed_from = int(state["epoch"])
    log.info("resuming %s after epoch %d", out, result.epochs_done)
    return result.epochs_done


def _rank_seed(seed: int, what: str, epoch: int) -> int:
    """Per-epoch seed of ``what``; under torchrun each rank draws its own."""
    w = distributed.world()
    return (
        derive_seed(seed, what, epoch)
        if not w.active
        else derive_seed(seed, what, epoch, "rank", w.rank, w.size)
    )


def _run_epoch(
    model: nn.Module,
    sync: distributed.GradientAverager | None,
    defense: Defense,
    ds: ImageDataset,
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    steps: int,
    bar: tqdm[NoReturn] | None,
) -> dict[str, float]:
    """One epoch; under torchrun ``sync`` keeps the ranks' models equal."""
    w = distributed.world()
    order = torch.randperm(
        len(ds), generator=make_generator(derive_seed(cfg.seed, "shuffle", epoch))
    )
    gen = make_generator(_rank_seed(cfg.seed, "defense", epoch))
    model.train()
    hook = getattr(defense, "on_train", None)
    if hook is not None:
        hook(model)
    loss_sum = correct = seen = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_rank_seed(cfg.seed, "global", epoch))  # dropout and friends
        for step in range(steps):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size].tensor_split(w.size)[
                w.rank
            ]
            x, y = ds.get_batch(idx)
            x, y = x.to(cfg.device), y.to(cfg.device)
            ctx_labels = None if ds.context is None else ds.context[idx].to(cfg.device)
            if sync is not None:
                sync.sync_buffers()
            out = defense.step(
                model,
                x,
                y,
                StepContext(
                    epoch, step, gen, ds.info.num_classes, idx, ctx_labels, cfg.epochs, cfg.seed
                ),
            )
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(out.loss)  # what Tensor.backward runs (and it is typed)
            if sync is not None:
                sync.average_gradients()
            opt.step()
            sched.step()
            loss_sum += float(out.loss.detach()) * len(y)
            correct += (
                float((out.logits.argmax(1) == y[: out.logits.shape[0]]).sum())
                if out.logits.shape[0] == len(y)
                else 0.0
            )
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}"
                )
    loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen])
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen}
