"""Datasets: the embedded procedural ``shapes``, real ones and the released ``-C`` sets."""

from __future__ import annotations

import os
from pathlib import Path

from robench.data import real, released, shapes  # noqa: F401  (importing registers the datasets)
from robench.data._base import (
    DATASETS,
    ArrayDataset,
    DataError,
    DatasetInfo,
    DatasetSpec,
    ImageDataset,
    ReleasedCorruptions,
    SubsetDataset,
)
from robench.data.released import ReleasedDataset

__all__ = [
    "check_image_size",
    "load_dataset",
    "list_datasets",
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "DatasetInfo",
    "DatasetSpec",
    "ImageDataset",
    "ReleasedCorruptions",
    "ReleasedDataset",
    "SubsetDataset",
]


def list_datasets() -> list[str]:
    """Names of every registered dataset."""
    return DATASETS.names()


def load_dataset(
    name: str,
    split: str = "test",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    channels: int | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Load a registered dataset split.

    Args:
        name: a name from :func:`list_datasets` (``shapes``, ``shapes-64``, ``cifar10``...).
        split: ``train`` or ``test``.
        root: folder holding the files (real datasets); nothing is downloaded unless ``download``.
        download: fetch missing files (real datasets only; the network is used only then).
        channels: 3 turns grey images (MNIST) into 3 identical channels; None keeps them.
        image_size: the side of a dataset read at any size (``imagefolder``: resized and
            centre-cropped to it, its preset from the side); None, or the native side of any
            other dataset, keeps the dataset's.

    Returns:
        An :class:`ImageDataset` whose items are float C x H x W in [0, 1] and int labels.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    spec = DATASETS.get(name)
    if spec.needs_root and root is None:
        raise DataError(f"dataset {name!r} needs --data-root: {spec.layout}")
    sized = {} if check_image_size(name, image_size) is None else {"image_size": image_size}
    return spec.loader(
        split=split,
        root=None if root is None else Path(root),
        download=download,
        channels=channels,
        **sized,
    )


def check_image_size(name: str, image_size: int | None) -> int | None:
    """The side to read dataset ``name`` at, or None for its own; one sentence when it cannot be.

    Only a dataset read at any size (``imagefolder``) takes a side other than its own, of at
    least :data:`robench.data.real.MIN_IMAGE_SIZE` px.

    Example:
        >>> check_image_size("imagefolder", 64), check_image_size("cifar10", 32)
        (64, None)
    """
    spec = DATASETS.get(name)
    if image_size is None or image_size == spec.image_size:
        return None
    if not spec.extra.get("any_size"):
        sized = [n for n in DATASETS.names() if DATASETS.get(n).extra.get("any_size")]
        raise ValueError(
            f"dataset {name!r} has {spec.image_size} px images; another image size applies only "
            f"to {', '.join(sized)}"
        )
    if image_size < real.MIN_IMAGE_SIZE:
        raise ValueError(
            f"the image size must be at least {real.MIN_IMAGE_SIZE} px, got {image_size}"
        )
    return image_size
