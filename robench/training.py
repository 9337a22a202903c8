"""``fit``: the one training loop every defense plugs into; resumable, seeded end to end.

Each epoch starts from seeds derived from (seed, epoch): the shuffle, the defense's generator
and the global RNG that dropout draws from (fenced, restored afterwards). A run killed at any
point and restarted from its last epoch checkpoint therefore ends with the same weights as an
uninterrupted run (on the same device and threads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_torch_save
from ._seeding import derive_seed, make_generator
from .data import ImageDataset
from .defenses import StepContext

__all__ = ["TrainConfig", "TrainResult", "fit", "evaluate_accuracy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings (seed 000 section 4.2 defaults).

    Args:
        epochs: passes over the training set.
        batch_size: images per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        milestones: fractions of all steps where the LR is divided by 10.
        seed: every random choice derives from it.
        device: ``cpu`` or ``cuda``.
    """

    epochs: int = 6
    batch_size: int = 256
    lr: float = 0.002
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (1 / 3, 2 / 3, 8 / 9)
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """One-sentence errors for impossible settings."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")


@dataclass
class TrainResult:
    """What ``fit`` returns."""

    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    resumed_from: int = 0


def evaluate_accuracy(model: nn.Module, ds: ImageDataset, *, device: str = "cpu", batch_size: int = 500) -> float:
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


def _optimizer(model: nn.Module, cfg: TrainConfig, steps_total: int) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    marks = sorted({max(1, int(round(f * steps_total))) for f in cfg.milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def fit(
    model: nn.Module,
    defense: Any,
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
    device = cfg.device
    model.to(device)
    n = len(train_ds)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch: constant batch statistics
    opt, sched = _optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    run_id = {"config": asdict(cfg), **dict(fingerprint or {})}
    result = TrainResult(0)
    start_epoch = _maybe_resume(out, run_id, model, opt, sched, result) if resume else 0
    t0 = time.perf_counter() - result.wall_time_s
    bar = _bar(progress, cfg.epochs * steps_per_epoch, start_epoch * steps_per_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        stats = _run_epoch(model, defense, train_ds, cfg, opt, sched, epoch, steps_per_epoch, bar)
        if eval_ds is not None:
            stats["test_acc"] = evaluate_accuracy(model, eval_ds, device=device)
        result.history.append(stats)
        result.epochs_done = epoch + 1
        result.wall_time_s = time.perf_counter() - t0
        atomic_torch_save({"run_id": run_id, "epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                           "sched": sched.state_dict(), "history": result.history, "wall_time_s": result.wall_time_s},
                          _state_path(out))  # fmt: skip
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, stats)
    if bar is not None:
        bar.close()
    return result


def _bar(progress: bool, total: int, initial: int):  # type: ignore[no-untyped-def]
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", dynamic_ncols=True)


def _maybe_resume(out: Path, run_id: Mapping[str, Any], model: nn.Module, opt: Any, sched: Any, result: TrainResult) -> int:
    path = _state_path(out)
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a torn file of any kind means: start again)
        log.warning("ignoring unreadable %s (%s); starting from scratch", path, str(exc).splitlines()[0][:100])
        return 0
    if state.get("run_id") != run_id:
        log.warning("%s belongs to another run (different settings); starting from scratch", path)
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    result.history = list(state["history"])
    result.wall_time_s = float(state["wall_time_s"])
    result.epochs_done = result.resumed_from = int(state["epoch"])
    log.info("resuming %s after epoch %d", out, result.epochs_done)
    return result.epochs_done


def _run_epoch(model: nn.Module, defense: Any, ds: ImageDataset, cfg: TrainConfig, opt: Any, sched: Any,
               epoch: int, steps: int, bar: Any) -> dict[str, float]:  # fmt: skip
    order = torch.randperm(len(ds), generator=make_generator(derive_seed(cfg.seed, "shuffle", epoch)))
    gen = make_generator(derive_seed(cfg.seed, "defense", epoch))
    model.train()
    hook = getattr(defense, "on_train", None)
    if hook is not None:
        hook(model)
    loss_sum = correct = seen = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "global", epoch))  # dropout and friends
        for step in range(steps):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = ds.get_batch(idx)
            x, y = x.to(cfg.device), y.to(cfg.device)
            ctx_labels = None if ds.context is None else ds.context[idx].to(cfg.device)
            out = defense.step(model, x, y, StepContext(epoch, step, gen, ds.info.num_classes, idx, ctx_labels))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(out.loss.detach()) * len(y)
            correct += float((out.logits.argmax(1) == y[: out.logits.shape[0]]).sum()) if out.logits.shape[0] == len(y) else 0.0
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen}
