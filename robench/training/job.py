"""``robench.train``: build data, model and defense, run ``fit``, write the checkpoint and card."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from robench import _distributed as distributed
from robench._distributed import resolve_device
from robench._io import file_lock
from robench._seeding import derive_seed
from robench._version import __version__
from robench.data import SubsetDataset, load_dataset
from robench.defenses import Setup, SetupContext, build_defense
from robench.models import create_model
from robench.models.checkpoint import CheckpointMeta, save_checkpoint
from robench.models.zoo import ZooCard, write_card
from robench.training.loop import TrainConfig, evaluate_accuracy, fit

__all__ = ["train", "default_epochs"]


def default_epochs(dataset: str) -> int:
    """Epochs when none are given: short for the embedded data, longer for real datasets."""
    return 6 if dataset.startswith("shapes") else 30


def train(
    defense: str = "standard",
    *,
    dataset: str = "shapes",
    data_root: str | None = None,
    download: bool = False,
    arch: str = "small_cnn",
    arch_kwargs: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    train_images: int | None = None,
    batch_size: int = 256,
    lr: float = 0.002,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    options: Mapping[str, str] | None = None,
    device: str = "auto",
    progress: bool = False,
    command: str | None = None,
) -> Path:
    """Train a model with a defense and write a robench checkpoint plus a model card (``.json``).

    Under torchrun every process calls this; they train one model with DDP (``batch_size`` is the
    global batch) and rank 0 writes the checkpoint and the card.

    Returns:
        The checkpoint path.
    """
    dev = resolve_device(device)
    world = distributed.setup(dev)
    out_path = (
        Path(out)
        if out is not None
        else Path("checkpoints") / f"{arch}-{defense}-{dataset}-s{seed}.pt"
    )
    # one writer per checkpoint: a second `robench train --out` of the same file stops at once
    # (rank 0 holds it under torchrun; the other ranks follow rank 0)
    lock = (
        file_lock(
            out_path.with_name(f".{out_path.name}.lock"),
            what=f"training into {out_path}",
            wait=False,
        )
        if world.is_main
        else contextlib.nullcontext()
    )
    with lock:
        return _train(
            defense,
            dataset=dataset,
            data_root=data_root,
            download=download,
            arch=arch,
            arch_kwargs=arch_kwargs,
            epochs=epochs,
            train_images=train_images,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            out_path=out_path,
            resume=resume,
            options=options,
            dev=dev,
            world=world,
            progress=progress,
            command=command,
        )


def _train(
    defense: str,
    *,
    dataset: str,
    data_root: str | None,
    download: bool,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    epochs: int | None,
    train_images: int | None,
    batch_size: int,
    lr: float,
    seed: int,
    out_path: Path,
    resume: bool,
    options: Mapping[str, str] | None,
    dev: str,
    world: distributed.World,
    progress: bool,
    command: str | None,
) -> Path:
    cfg = TrainConfig(
        epochs=epochs or default_epochs(dataset),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=dev,
    )
    cfg.validate()
    d = build_defense(defense, options)
    train_ds = load_dataset(dataset, "train", root=data_root, download=download)
    if train_images is not None and train_images < len(train_ds):
        train_ds = SubsetDataset(train_ds, train_images)
    test_ds = load_dataset(dataset, "test", root=data_root)
    info = train_ds.info
    akw = dict(arch_kwargs or {})
    notes = ""
    setup = getattr(d, "setup", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", arch))
        if setup is None:
            model = create_model(arch, info.num_classes, in_chans=info.channels, **akw)
        else:
            ctx = SetupContext(
                arch=arch,
                arch_kwargs=akw,
                info=info,
                train_ds=train_ds,
                test_ds=test_ds,
                seed=seed,
                device=dev,
                workdir=out_path.with_name(out_path.name + ".setup"),
                batch_size=batch_size,
                lr=lr,
                progress=progress and world.is_main,
                fit=fit,
            )
            built = _setup_rank_by_rank(setup, ctx)
            model, arch, akw, notes = built.model, built.arch, dict(built.arch_kwargs), built.notes
    fingerprint = {
        "train_images": len(train_ds),
        "defense": defense,
        "defense_config": repr(d),
        "dataset": dataset,
        "arch": arch,
        "arch_kwargs": akw,
    }
    result = fit(
        model,
        d,
        train_ds,
        cfg,
        out=out_path,
        eval_ds=test_ds,
        resume=resume,
        progress=progress,
        fingerprint=fingerprint,
    )
    if not world.is_main:
        distributed.barrier()  # rank 0 writes the checkpoint and its card
        return out_path
    acc = evaluate_accuracy(model, test_ds, device=dev)
    meta = CheckpointMeta(
        arch=arch,
        arch_kwargs=akw,
        num_classes=info.num_classes,
        in_chans=info.channels,
        input_size=info.image_size,
        mean=tuple(model.normalize.mean.flatten().tolist()),
        std=tuple(model.normalize.std.flatten().tolist()),
        dataset=dataset,
        defense=defense,
        defense_config={k: v for k, v in vars(d).items()},
        train_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        extra={"clean_accuracy": acc, "history": result.history, "wall_time_s": result.wall_time_s},
    )
    digest = save_checkpoint(model.cpu(), out_path, meta)
    cmd = command or "robench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_card(
        ZooCard(
            name=out_path.stem,
            dataset=dataset,
            defense=defense,
            arch=arch,
            arch_kwargs=akw,
            command=cmd,
            seed=seed,
            epochs=cfg.epochs,
            wall_time_s=round(result.wall_time_s, 1),
            clean_accuracy=acc,
            sha256=digest,
            robench_version=__version__,
            notes=notes,
            accuracy_curve=[
                round(float(h["test_acc"]), 4) for h in result.history if "test_acc" in h
            ],
        ),
        out_path.with_suffix(".json"),
    )
    partial = out_path.with_name(out_path.name + ".partial")
    if partial.exists():
        partial.unlink()
    workdir = out_path.with_name(out_path.name + ".setup")
    if workdir.is_dir():
        shutil.rmtree(workdir)
    distributed.barrier()  # the checkpoint exists on return, on every rank
    return out_path


def _setup_rank_by_rank(setup: Callable[[SetupContext], Setup], ctx: SetupContext) -> Setup:
    """A defense's setup, rank 0 first (its resumable work lands in the workdir), then the others.

    Each runs as a lone process (a setup's own training is not shared); DDP then starts every rank
    from rank 0's weights.
    """
    main = distributed.world().is_main
    if not main:
        distributed.barrier()  # rank 0 first
    with distributed.local():
        built = setup(ctx)
    if main:
        distributed.barrier()
    return built
