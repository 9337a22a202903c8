"""The model zoo: ``<zoo>/<dataset>/<name>.pt`` plus a JSON model card each.

``zoo:NAME`` (dataset ``shapes``) or ``zoo:DATASET/NAME`` resolves to a checkpoint whose SHA-256
must equal the one its card states: a tampered file is refused.

The zoo ships inside the package (``robench/models/zoo_files/``, package data of every install:
a source checkout, ``pip install .``, a wheel), so ``zoo:standard``, the automatic baseline and the
transfer surrogate work from any folder and without a network. ``$ROBENCH_ZOO`` points at another
zoo folder instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robench._io import atomic_write_text, sha256_file
from robench.models.checkpoint import CheckpointError

__all__ = [
    "ZooCard",
    "zoo_root",
    "resolve_zoo",
    "list_zoo",
    "read_card",
    "write_card",
    "zoo_model_id",
    "DEFAULT_ZOO_DATASET",
    "PACKAGED_ZOO",
]

DEFAULT_ZOO_DATASET = "shapes"
_ZOO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class ZooCard:
    """A zoo entry's model card.

    Args:
        name: entry name (usually the defense).
        dataset: training dataset.
        defense: defense name.
        arch: architecture name.
        command: the ``robench train`` command that produced it.
        seed: training seed.
        epochs: epochs trained.
        wall_time_s: training time.
        clean_accuracy: test accuracy at the end of training.
        sha256: SHA-256 of the checkpoint file.
        robench_version: version that trained it.
        notes: anything a reader should know.
        accuracy_curve: test accuracy after each epoch (from the first), to show where training
            plateaued; empty on cards written before robench recorded it.
    """

    name: str
    dataset: str
    defense: str
    arch: str
    command: str
    seed: int
    epochs: int
    wall_time_s: float
    clean_accuracy: float
    sha256: str
    robench_version: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    accuracy_curve: list[float] = field(default_factory=list)


PACKAGED_ZOO = Path(__file__).resolve().parent / "zoo_files"
"""The zoo installed with the package (its checkpoints and cards are package data)."""


def zoo_root() -> Path:
    """``$ROBENCH_ZOO`` or the zoo installed with the package (``robench/models/zoo_files``)."""
    env = os.environ.get("ROBENCH_ZOO")
    return Path(env) if env else PACKAGED_ZOO


def zoo_model_id(name: str) -> str:
    """The model id of a zoo reference, the same for every spelling of it.

    ``zoo:standard`` and ``zoo:shapes/standard`` are one checkpoint, so one id (``standard``) and
    one run file: a zoo entry scored directly and as another model's baseline share their record.
    Entries of other datasets keep the dataset in the id (``cifar10-standard``).
    """
    dataset, entry = _split(name)
    return entry if dataset == DEFAULT_ZOO_DATASET else f"{dataset}-{entry}"


def _split(name: str) -> tuple[str, str]:
    ref = name.removeprefix("zoo:")
    dataset, _, entry = ref.rpartition("/")
    dataset = dataset or DEFAULT_ZOO_DATASET
    if not all(
        _ZOO_PART.fullmatch(part) for part in (dataset, entry)
    ):  # one plain name each: no /, .., \\
        raise ValueError(f"invalid zoo reference {name!r}; use zoo:NAME or zoo:DATASET/NAME")
    return dataset, entry


def read_card(path: Path) -> ZooCard:
    """Read a model card JSON (one-sentence errors)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ZooCard(**{k: data[k] for k in ZooCard.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"model card {path} is unreadable: {exc}") from None


def write_card(card: ZooCard, path: Path) -> Path:
    """Write a model card atomically."""
    return atomic_write_text(path, json.dumps(asdict(card), indent=2, sort_keys=True) + "\n")


def resolve_zoo(name: str, *, verify: bool = True) -> tuple[Path, ZooCard | None]:
    """Checkpoint path and card of a zoo reference, verifying the card's SHA-256.

    Raises:
        FileNotFoundError: unknown entry (the message lists the entries that exist).
        CheckpointError: the file's hash differs from its card's.
    """
    dataset, entry = _split(name)
    folder = zoo_root() / dataset
    ckpt = folder / f"{entry}.pt"
    if not ckpt.is_file():
        have = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
        import difflib

        close = difflib.get_close_matches(entry, have, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('zoo:' + c for c in close)}?" if close else ""
        listed = (
            f" (entries: {', '.join(have)})"
            if have
            else f" (no zoo for {dataset!r} under {zoo_root()})"
        )
        raise FileNotFoundError(f"unknown zoo entry {name!r}{hint}{listed}")
    card_path = folder / f"{entry}.json"
    card = read_card(card_path) if card_path.is_file() else None
    if verify and card is not None:
        actual = sha256_file(ckpt)
        if actual != card.sha256:
            raise CheckpointError(
                f"{ckpt} does not match its model card "
                f"(sha256 {actual[:12]}... != {card.sha256[:12]}...); "
                "refusing a tampered or corrupted zoo file"
            )
    return ckpt, card


def list_zoo() -> list[tuple[str, str]]:
    """``(zoo:DATASET/NAME, one-line description)`` for every entry on disk."""
    rows = []
    root = zoo_root()
    for ckpt in sorted(root.glob("*/*.pt")) if root.is_dir() else []:
        card_path = ckpt.with_suffix(".json")
        desc = "(no model card)"
        if card_path.is_file():
            try:
                c = read_card(card_path)
                desc = (
                    f"{c.defense} {c.arch}, clean acc {c.clean_accuracy:.3f}, "
                    f"{c.epochs} epochs, seed {c.seed}"
                )
            except CheckpointError as exc:
                desc = str(exc)
        rows.append((f"zoo:{ckpt.parent.name}/{ckpt.stem}", desc))
    return rows
