"""``robench render``: write the released corruption layouts with robench's corruptions.

Formats (``OUT`` is the output folder):

- ``cifar10-c``: ``OUT/CIFAR-10-C/<corruption>.npy`` (uint8 5N x S x S x 3, severity s in rows
  (s-1)N .. sN-1) and ``OUT/CIFAR-10-C/labels.npy``, as the authors' CIFAR-10-C, plus the clean
  images as a CIFAR test batch (``OUT/cifar-10-batches-py/test_batch`` and ``batches.meta``), so
  that ``robench evaluate MODEL --dataset cifar10-c --data-root OUT`` reads the render back. A
  100-class dataset gets ``CIFAR-100-C`` and ``cifar-100-python/test`` (``--dataset cifar100-c``).
  The CIFAR test batch holds 32 px images only: other sides get the ``.npy`` files alone.
- ``imagenet-c``: ``OUT/ImageNet-C/<corruption>/<s>/<class>/<image>.JPEG``, saved as the authors
  saved ImageNet-C (PIL, quality 85, ``optimize=True``, 4:2:0 chroma), plus the clean images as
  lossless PNG in ``OUT/val/<class>/<image>.png`` (``--dataset imagenet-c --data-root OUT``);
  224 px datasets only, the size ImageNet-C holds. Class folders keep the label order when
  sorted (they are prefixed with the label's index when the class names are not sorted).

Pixels are quantised as the authors' scripts did, ``np.uint8`` of the 0-255 value, which
truncates (an unchanged pixel k / 255 comes back as k). Every corrupted image is the one
``robench evaluate`` computes on the fly for the same dataset, images and seed (the same
per-image seeds), so evaluating a render gives exactly the accuracies of the on-the-fly evaluation
of those images with the storage applied: :func:`stored` is that storage, the uint8 cast (and the
JPEG round trip for ``imagenet-c``).

The render is resumable and atomic per file: a finished file is kept, and each file is written
under a temporary name and renamed when complete. A ``.npy`` column is filled through a memory
map, batch by batch, so memory stays bounded at any image count. ``OUT/render.json`` records the
settings; rendering into a folder that holds a render of other settings is refused.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robench import perturbations as P
from robench._distributed import resolve_device
from robench._io import atomic_write_bytes, atomic_write_text, file_lock, writable_dir
from robench._version import __version__
from robench.data import ImageDataset, load_dataset
from robench.data.released import IMAGENET_C_CATEGORIES
from robench.data.storage import JPEG_QUALITY, quantize, stored
from robench.data.storage import jpeg_bytes as _jpeg
from robench.evaluation.loop import select_indices

__all__ = [
    "FORMATS",
    "JPEG_QUALITY",
    "RENDERABLE",
    "RenderResult",
    "quantize",
    "render",
    "stored",
]

FORMATS = ("cifar10-c", "imagenet-c")
RENDERABLE: tuple[str, ...] = tuple(IMAGENET_C_CATEGORIES)  # what the released sets hold (15 + 4)
SEVERITIES = (1, 2, 3, 4, 5)
Tick = Callable[[int], None]
Corrupt = Callable[[str, Tensor, int, np.ndarray], Tensor]


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` did.

    Attributes:
        out: the output folder.
        format: ``cifar10-c`` or ``imagenet-c``.
        dataset: the dataset that reads the render back (``cifar10-c``, ``cifar100-c``,
            ``imagenet-c``), or None when the clean images could not be written in the format.
        names: the corruptions rendered.
        indices: the source dataset's images, in the render's order.
        written: files written by this call.
        kept: files already complete (a resumed render).
    """

    out: Path
    format: str
    dataset: str | None
    names: tuple[str, ...]
    indices: np.ndarray
    written: int
    kept: int


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _names(perturbations: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(perturbations)) or RENDERABLE[:15]
    for n in names:
        P.get(n)  # unknown names fail with close matches
        if n not in RENDERABLE:
            raise ValueError(
                f"render writes the corruptions the released sets hold (the 15 of ImageNet-C, "
                f"speckle_noise, gaussian_blur, spatter, saturate); {n} is computed by evaluate"
            )
    return names


# --- the two layouts -----------------------------------------------------------------------------


class _Layout:
    """Where a format puts the clean images and each corruption's, and how it writes them."""

    def __init__(self, out: Path, ds: ImageDataset, indices: np.ndarray, batch_size: int) -> None:
        self.out, self.ds, self.indices, self.bs = out, ds, indices, batch_size
        self.n = len(indices)
        self.written = self.kept = 0

    def batches(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first position, dataset indices)`` of each batch of the rendered images."""
        for p in range(0, self.n, self.bs):
            yield p, self.indices[p : p + self.bs]

    def n_batches(self) -> int:
        """Batches per severity."""
        return -(-self.n // self.bs)

    def images(self, idx: np.ndarray) -> Tensor:
        """The clean images of dataset positions ``idx``."""
        return self.ds.get_batch(torch.from_numpy(idx))[0]

    def reader(self) -> str | None:
        """The dataset that reads this render back."""
        raise NotImplementedError

    def write_clean(self) -> None:
        """Write the clean images and labels (skipping those already there)."""
        raise NotImplementedError

    def write_column(self, name: str, corrupt: Corrupt, tick: Tick) -> None:
        """Write corruption ``name`` at every severity (skipping what is already there)."""
        raise NotImplementedError


_CIFAR = {
    10: ("CIFAR-10-C", "cifar10-c", "cifar-10-batches-py", "test_batch", "batches.meta", "labels"),
    100: ("CIFAR-100-C", "cifar100-c", "cifar-100-python", "test", "meta", "fine_labels"),
}


class _NpyLayout(_Layout):
    """``cifar10-c``: one memory-mapped uint8 ``.npy`` per corruption, plus the CIFAR test batch."""

    def __init__(self, out: Path, ds: ImageDataset, indices: np.ndarray, batch_size: int) -> None:
        super().__init__(out, ds, indices, batch_size)
        info = ds.info
        if info.channels != 3:
            raise ValueError(f"the cifar10-c format holds RGB images; {info.name} has 1 channel")
        k = info.num_classes
        self.names = _CIFAR.get(k, _CIFAR[10])
        self.clean = info.image_size == 32 and k in _CIFAR
        self.folder = out / self.names[0]
        self.side = info.image_size

    def reader(self) -> str | None:
        """``cifar10-c`` or ``cifar100-c`` (None when no CIFAR test batch could be written)."""
        return self.names[1] if self.clean else None

    def _labels(self) -> np.ndarray:
        return self.ds.targets[torch.from_numpy(self.indices)].numpy().astype(np.int64)

    def write_clean(self) -> None:
        """``labels.npy`` and, for 32 px 10- or 100-class data, the CIFAR test batch and meta."""
        labels = self._labels()
        self._file(self.folder / "labels.npy", lambda: _npy_bytes(np.tile(labels, 5)))
        if not self.clean:
            return
        _, _, folder, test, meta, key = self.names
        info = self.ds.info

        def batch() -> bytes:
            u8 = np.concatenate([quantize(self.images(idx)).numpy() for _, idx in self.batches()])
            data = u8.transpose(0, 3, 1, 2).reshape(len(u8), -1)  # CIFAR rows: R, G, B planes
            return pickle.dumps(
                {
                    b"batch_label": f"robench render of {info.name}".encode(),
                    key.encode(): [int(v) for v in labels],
                    b"data": np.ascontiguousarray(data),
                    b"filenames": [f"{int(i):08d}.png".encode() for i in self.indices],
                },
                protocol=2,
            )

        names_key = b"fine_label_names" if key == "fine_labels" else b"label_names"
        self._file(self.out / folder / test, batch)
        self._file(
            self.out / folder / meta,
            lambda: pickle.dumps({names_key: [c.encode() for c in info.classes]}, protocol=2),
        )

    def _file(self, path: Path, data: Callable[[], bytes]) -> None:
        if path.is_file():
            self.kept += 1
            return
        atomic_write_bytes(path, data())
        self.written += 1

    def _complete(self, path: Path, shape: tuple[int, ...]) -> bool:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return False
        return bool(arr.dtype == np.uint8 and arr.shape == shape)

    def write_column(self, name: str, corrupt: Corrupt, tick: Tick) -> None:
        """Fill ``<name>.npy`` through a memory map under a temporary name, then rename it."""
        path = self.folder / f"{name}.npy"
        shape = (len(SEVERITIES) * self.n, self.side, self.side, 3)
        if path.is_file() and self._complete(path, shape):
            self.kept += 1
            tick(len(SEVERITIES) * self.n_batches())
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f".{name}.npy.*.tmp"):  # left by a killed render
            stale.unlink()
        tmp = self.folder / f".{name}.npy.{os.getpid()}.tmp"
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for p, idx in self.batches():
                x = self.images(idx)
                for s in SEVERITIES:
                    row = (s - 1) * self.n + p
                    mm[row : row + len(idx)] = quantize(corrupt(name, x, s, idx)).numpy()
                    tick(1)
            mm.flush()
            del mm
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.written += 1


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class _JpegLayout(_Layout):
    """``imagenet-c``: one JPEG (quality 85) per image, class folders, clean images as PNG."""

    def __init__(self, out: Path, ds: ImageDataset, indices: np.ndarray, batch_size: int) -> None:
        super().__init__(out, ds, indices, batch_size)
        info = ds.info
        if info.image_size != 224 or info.channels != 3:
            raise ValueError(
                f"the imagenet-c format holds 224 px RGB images, as ImageNet-C; {info.name} has "
                f"{info.image_size} px (use --format cifar10-c, or a 224 px dataset)"
            )
        self.classes = _class_folders(info.classes)
        labels = ds.targets[torch.from_numpy(indices)].tolist()
        self.rel = dict(
            zip(indices.tolist(), _relative(ds, indices, labels, self.classes), strict=True)
        )

    def reader(self) -> str | None:
        """``imagenet-c``."""
        return "imagenet-c"

    def _write_missing(self, paths: list[Path], make: Callable[[], list[bytes]]) -> None:
        missing = [not p.is_file() for p in paths]
        if not any(missing):
            self.kept += len(paths)
            return
        for path, todo, data in zip(paths, missing, make(), strict=True):
            if todo:
                atomic_write_bytes(path, data)
                self.written += 1
            else:
                self.kept += 1

    def write_clean(self) -> None:
        """``val/<class>/<image>.png``; every class gets its folder (the class count is kept)."""
        for cls in self.classes:
            (self.out / "val" / cls).mkdir(parents=True, exist_ok=True)
        for _, idx in self.batches():
            paths = [self.out / "val" / self.rel[int(i)].with_suffix(".png") for i in idx]
            self._write_missing(paths, partial(self._pngs, idx))

    def _pngs(self, idx: np.ndarray) -> list[bytes]:
        return [_png(a) for a in quantize(self.images(idx)).numpy()]

    def write_column(self, name: str, corrupt: Corrupt, tick: Tick) -> None:
        """``ImageNet-C/<name>/<s>/<class>/<image>.JPEG``, written batch by batch."""
        base = self.out / "ImageNet-C" / name
        for _, idx in self.batches():
            clean: list[Tensor] = []  # read once per batch, and only when a file is missing

            def make(s: int, idx: np.ndarray = idx, clean: list[Tensor] = clean) -> list[bytes]:
                if not clean:
                    clean.append(self.images(idx))
                return [_jpeg(a) for a in quantize(corrupt(name, clean[0], s, idx)).numpy()]

            for s in SEVERITIES:
                paths = [base / str(s) / self.rel[int(i)].with_suffix(".JPEG") for i in idx]
                self._write_missing(paths, partial(make, s))
                tick(1)


def _class_folders(classes: Sequence[str]) -> list[str]:
    """Folder names whose sorted order is the label order (prefixed when the names are not)."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", c).strip(".") or "class" for c in classes]
    if safe == sorted(safe) and len(set(safe)) == len(safe):
        return safe
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}_{s}" for i, s in enumerate(safe)]


def _relative(
    ds: ImageDataset, indices: np.ndarray, labels: list[int], classes: list[str]
) -> list[Path]:
    """``<class folder>/<stem>`` per image: the source file's stem, else the dataset index."""
    sources = getattr(ds, "samples", None) or getattr(ds, "paths", None)
    width = max(8, len(str(len(ds))))
    stems = [f"{int(i):0{width}d}" for i in indices]
    if sources is not None:
        named = [
            Path(s[0] if isinstance(s, tuple) else s).stem for s in (sources[i] for i in indices)
        ]
        if len(set(zip(labels, named, strict=True))) == len(named):  # unique within each class
            stems = named
    return [Path(classes[c]) / s for c, s in zip(labels, stems, strict=True)]


# --- the render ----------------------------------------------------------------------------------


def _settings(
    ds: ImageDataset, fmt: str, indices: np.ndarray, seed: int, preset: str, engine: str
) -> dict[str, Any]:
    whole = len(indices) == len(ds)
    return {
        "robench_version": __version__,
        "format": fmt,
        "dataset": ds.info.name,
        "image_size": ds.info.image_size,
        "n_images": int(len(indices)),
        "indices": None if whole else [int(i) for i in indices],
        "seed": seed,
        "preset": preset,
        "engine": engine,
        "quantisation": "truncation (np.uint8 of the 0-255 value, as the authors' scripts)",
        "jpeg": f"PIL quality {JPEG_QUALITY}, optimize=True" if fmt == "imagenet-c" else None,
    }


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Write ``render.json``, or refuse a folder that holds a render of other settings."""
    path = out / "render.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != settings:
            diff = sorted(
                k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k]
            )
            raise ValueError(
                f"{out} holds a render with other settings ({', '.join(diff) or 'unreadable'} "
                f"differ): render into another folder or delete it"
            )
        return
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.bar: Any = None  # a tqdm bar once entered

    def __enter__(self) -> Tick:
        if not self.enabled or not self.total:
            return lambda n: None
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total, unit="batch", dynamic_ncols=True, desc="render")
        self.bar = bar

        def tick(n: int) -> None:
            bar.update(n)

        return tick

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def render(
    dataset: str | ImageDataset,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    perturbations: Sequence[str] = (),
    n_images: int | None = None,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    batch_size: int = 100,
    device: str = "auto",
    engine: str = "torch",
    preset: str | None = None,
    progress: bool = False,
) -> RenderResult:
    """Write a released layout (CIFAR-10-C ``.npy`` or ImageNet-C JPEG folders) of ``dataset``.

    Args:
        dataset: a registered dataset name or a loaded :class:`ImageDataset` (its test split).
        fmt: ``cifar10-c`` or ``imagenet-c``.
        out: output folder (created; a render there is resumed).
        perturbations: corruptions to render (default: the 15 of ImageNet-C).
        n_images: the seeded subset ``evaluate --n-images`` picks (None: every test image).
        seed: run seed: picks the subset and each corrupted image's randomness, as in evaluate.
        data_root: folder of a real dataset.
        download: fetch a missing real dataset (network, only when asked).
        batch_size: images corrupted at a time.
        device: ``auto``, ``cpu`` or ``cuda`` (where the corruptions run).
        engine: ``torch`` or ``imagecorruptions`` (the authors' functions, ImageNet parameters).
        preset: parameter table (default: the dataset's, as evaluate uses it).
        progress: show a progress bar.

    Returns:
        A :class:`RenderResult`; ``result.dataset`` is what ``evaluate --dataset`` reads it with.
    """
    _check_format(fmt)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    names = _names(perturbations)
    ds = (
        dataset
        if isinstance(dataset, ImageDataset)
        else load_dataset(dataset, "test", root=data_root, download=download)
    )
    indices = select_indices(len(ds), n_images, seed, ds.info.name)
    preset = preset or ds.info.preset
    dev = resolve_device(device)
    folder = writable_dir(out)
    layout_cls = _NpyLayout if fmt == "cifar10-c" else _JpegLayout
    layout = layout_cls(folder, ds, indices, batch_size)

    def corrupt(name: str, x: Tensor, severity: int, idx: np.ndarray) -> Tensor:
        spec = P.get(name)
        out: Tensor = spec(
            x.to(dev), severity, seed=seed, indices=idx.tolist(), preset=preset, engine=engine
        )
        return out

    with file_lock(folder / ".render.lock", what=f"the render in {folder}"):
        _claim(folder, _settings(ds, fmt, indices, seed, preset, engine))
        layout.write_clean()
        total = len(names) * len(SEVERITIES) * layout.n_batches()
        with _Bar(total, progress) as tick:
            for name in names:
                layout.write_column(name, corrupt, tick)
    return RenderResult(
        out=folder,
        format=fmt,
        dataset=layout.reader(),
        names=names,
        indices=indices,
        written=layout.written,
        kept=layout.kept,
    )
