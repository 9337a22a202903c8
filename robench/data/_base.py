"""The dataset contract every loader returns: images in [0, 1], labels and what the runner needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from robench._registry import Registry

__all__ = [
    "DatasetInfo",
    "ReleasedCorruptions",
    "ImageDataset",
    "ArrayDataset",
    "SubsetDataset",
    "DatasetSpec",
    "DATASETS",
    "DataError",
]


class DataError(FileNotFoundError):
    """Data missing or unreadable; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the corruptions need to know about a dataset.

    Args:
        name: registry name (``shapes``, ``cifar10``...).
        num_classes: number of classes.
        image_size: side of the (square) images fed to models.
        channels: 1 or 3.
        preset: corruption parameter table (``cifar``, ``tiny`` or ``imagenet``).
        classes: class names, index order.
        split: ``train`` or ``test``.
    """

    name: str
    num_classes: int
    image_size: int
    channels: int
    preset: str
    classes: tuple[str, ...]
    split: str = "test"


class ReleasedCorruptions:
    """The released corrupted images of a ``-C`` dataset (CIFAR-10-C...), read on demand.

    Image ``i`` of every corruption and severity belongs to the dataset's image ``i`` (its clean
    copy, or for Tiny-ImageNet-C an image of the same class); perturbations the release does not
    hold are computed as usual. Subclasses read one batch at a time, so memory stays bounded.

    Attributes:
        title: the release's name (``CIFAR-10-C``...).
        names: the corruptions it holds.
        families: the family of each name robench has no kernel for (ImageNet-3DCC's).
        severities: the severity levels of every corruption.
    """

    title: str = ""
    names: tuple[str, ...] = ()
    families: Mapping[str, str] = MappingProxyType({})
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def source(self, name: str) -> str:
        """Where corruption ``name``'s images are, relative to the data root."""
        raise NotImplementedError

    def check(self, name: str) -> None:
        """Raise :class:`DataError` naming the expected path when ``name``'s files are missing."""
        raise NotImplementedError

    def get_batch(self, name: str, severity: int, indices: Sequence[int]) -> Tensor:
        """The released images (N x C x H x W float in [0, 1]) of dataset positions ``indices``."""
        raise NotImplementedError


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """Base class: ``ds[i] -> (float C x H x W in [0, 1], label)`` plus ``info`` and ``targets``.

    ``released`` is set by the ``-C`` datasets: the corruptions whose images come from files.
    """

    info: DatasetInfo
    targets: Tensor
    boxes: Tensor | None = None
    context: Tensor | None = None
    released: ReleasedCorruptions | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Images (N x C x H x W float in [0, 1]) and labels for dataset positions ``indices``."""
        idx = [int(i) for i in indices]
        xs = [self[i][0] for i in idx]
        return torch.stack(xs), self.targets[idx]


class ArrayDataset(ImageDataset):
    """An in-memory dataset backed by a uint8 array (N x H x W x C, as the files store it).

    Args:
        images: uint8 N x H x W x C (C = 1 or 3).
        labels: int N.
        info: dataset facts.
        boxes: optional N x 4 float (x0, y0, x1, y1) pixel boxes.
        context: optional N int context labels.
        channels: 3 replicates a grey channel, 1 keeps it as is; None keeps the stored channels.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        info: DatasetInfo,
        *,
        boxes: np.ndarray | None = None,
        context: np.ndarray | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 N x H x W x C, got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.info = info
        self.boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
        self.context = None if context is None else torch.as_tensor(context, dtype=torch.long)
        bad = (self.targets < 0) | (self.targets >= info.num_classes)
        if len(self.targets) and bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise DataError(
                f"{info.name}: label {int(self.targets[i])} of image {i} is outside "
                f"0..{info.num_classes - 1}"
            )

    def _to_float(self, u8: Tensor) -> Tensor:
        x = u8.float().div_(255.0)
        if self.info.channels == 3 and x.shape[-3] == 1:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
        return x

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self._to_float(self.images[i]), int(self.targets[i])

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Vectorised batch access (no per-image Python work)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._to_float(self.images[idx]), self.targets[idx]


class SubsetDataset(ImageDataset):
    """The first ``n`` images of ``base`` (labels, boxes and context labels follow)."""

    def __init__(self, base: ImageDataset, n: int) -> None:
        if not 1 <= n <= len(base):
            raise ValueError(f"asked for {n} images of {base.info.name}, which has {len(base)}")
        self.base = base
        self.info = base.info
        self.targets = base.targets[:n]
        self.boxes = None if base.boxes is None else base.boxes[:n]
        self.context = None if base.context is None else base.context[:n]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.base[i % len(self)]

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        return self.base.get_batch(indices)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: a loader plus what is known before loading.

    Args:
        name: registry name.
        loader: ``loader(split=, root=, download=, channels=) -> ImageDataset``.
        description: one line.
        image_size: native side (None when it depends on the files, e.g. ImageFolder resized).
        preset: corruption preset.
        num_classes: class count (None when the files decide).
        needs_root: whether a ``--data-root`` is required.
        layout: where the files must go, said when they are missing.
    """

    name: str
    loader: Callable[..., ImageDataset]
    description: str
    image_size: int | None
    preset: str
    num_classes: int | None
    needs_root: bool = True
    layout: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
