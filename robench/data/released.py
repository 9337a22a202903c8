"""The released corruption datasets, read in their own on-disk layouts (``--data-root DIR``).

- ``cifar10-c`` / ``cifar100-c``: ``DIR/CIFAR-10-C/<corruption>.npy`` (uint8 5N x 32 x 32 x 3,
  severity s in rows (s-1)N .. sN-1) and ``labels.npy``, beside the clean test batch
  (``DIR/cifar-10-batches-py/test_batch``; ``cifar-100-python/test``), whose first N images they
  corrupt. N is 10,000 in the release; smaller files (fixtures, renders of a subset) work too.
- ``tiny-imagenet-c``: ``DIR/Tiny-ImageNet-C/<corruption>/<s>/<wnid>/*.JPEG`` beside
  ``DIR/tiny-imagenet-200/`` (``wnids.txt`` and ``val/``). The authors made Tiny-ImageNet-C from
  ImageNet val crops, not from Tiny-ImageNet val, so images are matched class by class in
  file-name order (both hold 50 images of each of the 200 classes): the clean column is
  Tiny-ImageNet val, as in the papers that report on it.
- ``imagenet-c``: ``DIR/ImageNet-C/<corruption>/<s>/<wnid>/<file>`` (flat) or the release's
  category folders ``DIR/ImageNet-C/<category>/<corruption>/<s>/<wnid>/<file>`` (noise, blur,
  weather, digital, extra), beside ImageNet val ``DIR/val/<wnid>/<file>``; a corrupted image has
  its val image's file name.
- ``imagenet-3dcc``: ``DIR/ImageNet-3DCC/<corruption>/<s>/<wnid>/<file>`` beside ``DIR/val``; its
  12 corruptions exist only as files.

Nothing is held in memory beyond a batch: ``.npy`` files are memory-mapped and JPEG folders are
decoded batch by batch; there is no cap on the image count. Corruptions the release does not hold
(the M-TLAT extras, attacks) are computed on the clean images as for any dataset. A missing file
raises :class:`DataError` naming the path it expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robench.data._base import (
    DATASETS,
    DataError,
    DatasetInfo,
    DatasetSpec,
    ImageDataset,
    ReleasedCorruptions,
)
from robench.data.real import (
    CIFAR10,
    CIFAR100,
    IMG_EXTENSIONS,
    _Cifar,
    _class_dirs,
    _resize_center_crop,
    _scan,
    load_cifar,
)

__all__ = [
    "IMAGENET_C_CATEGORIES",
    "THREEDCC_FAMILIES",
    "ReleasedDataset",
    "NpyRelease",
    "FolderRelease",
    "decode_rgb",
    "load_cifar_c",
    "load_tiny_imagenet_c",
    "load_imagenet_c",
    "load_imagenet_3dcc",
]

# The category folder of each ImageNet-C corruption in the release's tar files (15 + 4 extra).
IMAGENET_C_CATEGORIES: Mapping[str, str] = {
    "gaussian_noise": "noise",
    "shot_noise": "noise",
    "impulse_noise": "noise",
    "defocus_blur": "blur",
    "glass_blur": "blur",
    "motion_blur": "blur",
    "zoom_blur": "blur",
    "snow": "weather",
    "frost": "weather",
    "fog": "weather",
    "brightness": "weather",
    "contrast": "digital",
    "elastic_transform": "digital",
    "pixelate": "digital",
    "jpeg_compression": "digital",
    "speckle_noise": "extra",
    "gaussian_blur": "extra",
    "spatter": "extra",
    "saturate": "extra",
}
_FIFTEEN = tuple(IMAGENET_C_CATEGORIES)[:15]
# ImageNet-3DCC's 12 corruptions (robench has no kernel for them) and the family each is scored in.
THREEDCC_FAMILIES: Mapping[str, str] = {
    "near_focus": "blur",
    "far_focus": "blur",
    "xy_motion_blur": "blur",
    "z_motion_blur": "blur",
    "fog_3d": "weather",
    "flash": "weather",
    "low_light": "weather",
    "iso_noise": "noise",
    "bit_error": "digital",
    "color_quant": "digital",
    "h265_abr": "digital",
    "h265_crf": "digital",
}
_SEVERITIES = (1, 2, 3, 4, 5)
_JPEG_SUFFIXES = (".JPEG", ".jpg", ".jpeg", ".png")


def _need_root(root: Path | None, layout: str) -> Path:
    if root is None:
        raise DataError(f"no data root given: {layout}")
    return root


def _test_only(name: str, split: str) -> None:
    if split != "test":
        raise DataError(f"{name} has only a test split (the released corrupted test images)")


def _no_download(title: str, download: bool) -> None:
    if download:
        raise DataError(f"robench does not download {title}: place the released files by hand")


def decode_rgb(source: Path | IO[bytes], *, resize: int, crop: int, name: object = None) -> Tensor:
    """Decode an image to float 3 x crop x crop in [0, 1], as the ``-C`` datasets read them.

    An image already ``crop`` x ``crop`` (the released ImageNet-C files, the clean images
    ``robench render`` writes) is used as it is; another is resized (shorter side ``resize``,
    bilinear) and centre-cropped.

    Args:
        source: a file path or an open binary file.
        resize: shorter side before the centre crop (256 for ImageNet val, ``crop`` for released
            images, as RobustBench reads them).
        crop: output side.
        name: how to name the image in an error (default: ``source``).
    """
    try:
        with Image.open(source) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {name or source}: {exc}") from exc
    if rgb.size != (crop, crop):
        rgb = _resize_center_crop(rgb, resize, crop)
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0).contiguous()


def _decode_all(paths: Sequence[Path], *, resize: int, crop: int) -> Tensor:
    """Decode a batch of image files (a few threads: PIL releases the GIL while decoding)."""
    if len(paths) < 4:
        return torch.stack([decode_rgb(p, resize=resize, crop=crop) for p in paths])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(paths))) as pool:
        return torch.stack(list(pool.map(lambda p: decode_rgb(p, resize=resize, crop=crop), paths)))


# --- the dataset: clean images of the matching clean set, released corruptions attached ----------


class ReleasedDataset(ImageDataset):
    """A ``-C`` dataset: the first ``n`` images of its clean set, and the released corruptions.

    Args:
        clean: the matching clean test set (CIFAR-10 test batch, ImageNet val...).
        n: images of the release (at most ``len(clean)``).
        info: dataset facts (named after the release).
        released: where the corrupted images come from.
    """

    def __init__(
        self, clean: ImageDataset, n: int, info: DatasetInfo, released: ReleasedCorruptions
    ) -> None:
        self.clean = clean
        self.info = info
        self.targets = clean.targets[:n]
        self.released = released

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.clean[i % len(self)]

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """The clean images and labels of dataset positions ``indices``."""
        return self.clean.get_batch(indices)


class _FolderImages(ImageDataset):
    """Clean images listed from class folders, decoded per batch (ImageNet val, Tiny val)."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        rels: Sequence[Path],
        info: DatasetInfo,
        resize: int,
    ) -> None:
        self.paths = [p for p, _ in samples]
        self.rels = list(rels)
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.info, self.resize = info, resize

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = decode_rgb(self.paths[i], resize=self.resize, crop=self.info.image_size)
        return img, int(self.targets[i])

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        idx = [int(i) for i in indices]
        x = _decode_all([self.paths[i] for i in idx], resize=self.resize, crop=self.info.image_size)
        return x, self.targets[idx]


# --- CIFAR-10-C / CIFAR-100-C: memory-mapped .npy files ----------------------------------------


class NpyRelease(ReleasedCorruptions):
    """CIFAR-10-C-style files: ``<folder>/<corruption>.npy``, uint8 5N x S x S x 3, memory-mapped.

    Args:
        root: the data root.
        folder: the release folder under it (``CIFAR-10-C``).
        n: images per severity.
        side: image side.
        names: the corruptions the release holds.
    """

    def __init__(self, root: Path, folder: str, n: int, side: int, names: Sequence[str]) -> None:
        self.root, self.folder, self.n, self.side = root, folder, n, side
        self.title = folder
        self.names = tuple(names)
        self._arrays: dict[str, np.ndarray] = {}

    def source(self, name: str) -> str:
        """``<folder>/<name>.npy``."""
        return f"{self.folder}/{name}.npy"

    def check(self, name: str) -> None:
        """Open (memory-map) the file and check its dtype and shape."""
        self._array(name)

    def _array(self, name: str) -> np.ndarray:
        if name in self._arrays:
            return self._arrays[name]
        path = self.root / self.folder / f"{name}.npy"
        shape = (len(_SEVERITIES) * self.n, self.side, self.side, 3)
        if not path.is_file():
            raise DataError(
                f"{self.title} file missing: expected {path} (uint8 {' x '.join(map(str, shape))})"
            )
        try:
            arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path} is truncated or not a .npy file: {exc}") from exc
        if arr.dtype != np.uint8 or arr.shape != shape:
            raise DataError(
                f"{path} holds {arr.dtype} {tuple(arr.shape)}, expected uint8 {shape} "
                f"(5 severities of the {self.n} images of labels.npy)"
            )
        self._arrays[name] = arr
        return arr

    def get_batch(self, name: str, severity: int, indices: Sequence[int]) -> Tensor:
        """Rows ``(severity - 1) * n + indices`` of the file, as float N x 3 x S x S."""
        arr = self._array(name)
        rows = (severity - 1) * self.n + np.asarray(indices, dtype=np.int64)
        u8 = torch.from_numpy(np.ascontiguousarray(arr[rows]))  # reads these rows only
        return u8.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _cifar_c_layout(title: str, clean: _Cifar) -> str:
    return (
        f"expected <root>/{title}/<corruption>.npy and <root>/{title}/labels.npy (the released "
        f"{title}.tar, extracted) beside the clean test set in <root>/{clean.folder}/ "
        f"(pass --download to fetch the clean {clean.title} only)"
    )


def _read_labels(path: Path, title: str, layout: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{title} not found: {layout.replace('<root>', str(path.parents[1]))}")
    try:
        labels: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is truncated or not a .npy file: {exc}") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) % len(_SEVERITIES):
        raise DataError(
            f"{path} must hold 5 x N integer labels (one block per severity), "
            f"got {labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64)


def load_cifar_c(
    clean_variant: _Cifar,
    name: str,
    title: str,
    *,
    split: str,
    root: Path | None,
    download: bool,
    channels: int | None,
) -> ReleasedDataset:
    """CIFAR-10-C or CIFAR-100-C: the clean test batch plus the memory-mapped ``.npy`` files."""
    _test_only(name, split)
    layout = _cifar_c_layout(title, clean_variant)
    root = _need_root(root, layout)
    labels = _read_labels(root / title / "labels.npy", title, layout)
    n = len(labels) // len(_SEVERITIES)
    clean = load_cifar(clean_variant, split="test", root=root, download=download, channels=channels)
    if n > len(clean):
        raise DataError(
            f"{root / title / 'labels.npy'} labels {n} images per severity but the "
            f"{clean_variant.title} test set has only {len(clean)}"
        )
    first = clean.targets[:n].numpy()
    for s in _SEVERITIES:
        if not np.array_equal(labels[(s - 1) * n : s * n], first):
            raise DataError(
                f"the labels of severity {s} in {root / title / 'labels.npy'} differ from those of "
                f"the first {n} {clean_variant.title} test images: the files do not belong together"
            )
    names = tuple(IMAGENET_C_CATEGORIES)  # the 15 + 4 extra, as the release holds them
    info = replace(clean.info, name=name)
    return ReleasedDataset(clean, n, info, NpyRelease(root, title, n, 32, names))


# --- JPEG folders: Tiny-ImageNet-C, ImageNet-C, ImageNet-3DCC -----------------------------------


@dataclass(frozen=True)
class _Folders:
    """Where a folder release keeps its images."""

    name: str
    title: str
    names: tuple[str, ...]
    families: Mapping[str, str]
    categories: Mapping[str, str]
    side: int


class FolderRelease(ReleasedCorruptions):
    """A release stored as ``<folder>/[<category>/]<corruption>/<s>/<class>/<file>`` images.

    Args:
        root: the data root.
        spec: the release's folder, names and image side.
        clean: the clean images (their class folders name the corrupted ones).
        by_name: corrupted image ``i`` has clean image ``i``'s file name (ImageNet-C, 3DCC);
            otherwise the files of each class are matched in file-name order (Tiny-ImageNet-C).
    """

    def __init__(self, root: Path, spec: _Folders, clean: _FolderImages, by_name: bool) -> None:
        self.root, self.spec, self.clean, self.by_name = root, spec, clean, by_name
        self.title, self.names, self.families = spec.title, spec.names, dict(spec.families)
        self._dirs: dict[str, Path] = {}
        self._listing: dict[tuple[str, int], list[Path]] = {}

    def _expected(self, name: str) -> str:
        base = self.root / self.spec.title
        flat = f"{base / name}/<severity>/<class>/<image>"
        cat = self.spec.categories.get(name)
        if cat is None:
            return flat
        return f"{flat} or {base / cat / name}/<severity>/<class>/<image>"

    def _dir(self, name: str) -> Path:
        if name not in self._dirs:
            base = self.root / self.spec.title
            cat = self.spec.categories.get(name)
            found = [d for d in (base / name, base / (cat or name) / name) if d.is_dir()]
            if not found:
                raise DataError(
                    f"{self.title} images of {name} not found: expected {self._expected(name)}"
                )
            self._dirs[name] = found[0]
        return self._dirs[name]

    def source(self, name: str) -> str:
        """The corruption's folder (flat or in its category folder) under the data root."""
        return self._dir(name).relative_to(self.root).as_posix()

    def check(self, name: str) -> None:
        """The corruption's folder, its 5 severity folders and their first image exist."""
        folder = self._dir(name)
        for s in self.severities:
            if not (folder / str(s)).is_dir():
                raise DataError(
                    f"{self.title} severity {s} of {name} missing: expected "
                    f"{folder / str(s)}/<class>/<image>"
                )
            if len(self.clean):
                self._paths(name, s, [0])

    def _paths(self, name: str, severity: int, indices: Sequence[int]) -> list[Path]:
        if not self.by_name:
            listing = self._list(name, severity)
            return [listing[i] for i in indices]
        folder = self._dir(name) / str(severity)
        return [self._find(folder, self.clean.rels[i], self.clean.paths[i]) for i in indices]

    def _find(self, folder: Path, rel: Path, clean_path: Path) -> Path:
        path = folder / rel
        if path.is_file():
            return path
        for suffix in _JPEG_SUFFIXES:  # robench render writes val as PNG, its copies as .JPEG
            other = path.with_suffix(suffix)
            if other.is_file():
                return other
        raise DataError(
            f"{self.title} image missing: expected {path} (the corrupted copy of {clean_path})"
        )

    def _list(self, name: str, severity: int) -> list[Path]:
        """The files of one severity folder, class by class (clean order), checked per class."""
        key = (name, severity)
        if key in self._listing:
            return self._listing[key]
        folder = self._dir(name) / str(severity)
        classes = self.clean.info.classes
        extra = sorted(set(_class_dirs(folder)) - set(classes)) if folder.is_dir() else []
        if extra:
            raise DataError(
                f"{folder} has class folders that the clean set lacks ({', '.join(extra[:3])}...): "
                "a broken copy of the release? (the Zenodo Tiny-ImageNet-C frost has 1,000 classes;"
                " Zenodo record 8206060 is fixed)"
            )
        counts = np.bincount(self.clean.targets.numpy(), minlength=len(classes))
        files: list[Path] = []
        for label, cls in enumerate(classes):
            got = [p for p, _ in _scan(folder, (cls,))] if (folder / cls).is_dir() else []
            if len(got) != counts[label]:
                raise DataError(
                    f"{folder / cls} holds {len(got)} images but the clean set has {counts[label]} "
                    f"of class {cls}: images are matched class by class, in file-name order"
                )
            files += got
        self._listing[key] = files
        return files

    def get_batch(self, name: str, severity: int, indices: Sequence[int]) -> Tensor:
        """The images of dataset positions ``indices``, decoded now (a batch at a time)."""
        paths = self._paths(name, severity, [int(i) for i in indices])
        side = self.spec.side
        return _decode_all(paths, resize=side, crop=side)


def _listed(folder: Path, classes: tuple[str, ...]) -> tuple[list[tuple[Path, int]], list[Path]]:
    samples = _scan(folder, classes)
    rels = [Path(classes[label]) / p.relative_to(folder / classes[label]) for p, label in samples]
    return samples, rels


def _imagenet_val(root: Path, name: str, title: str) -> _FolderImages:
    val = root / "val"
    classes = _class_dirs(val) if val.is_dir() else ()
    if not classes:
        raise DataError(
            f"ImageNet val not found (the clean images of {title}): expected {val}/<wnid>/<image>"
        )
    samples, rels = _listed(val, classes)
    if not samples:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {val}/<wnid>/")
    info = DatasetInfo(
        name=name,
        num_classes=len(classes),
        image_size=224,
        channels=3,
        preset="imagenet",
        classes=classes,
    )
    return _FolderImages(samples, rels, info, resize=256)


def _tiny_classes(base: Path, found: Sequence[str]) -> tuple[str, ...]:
    wnids = base / "wnids.txt"
    if wnids.is_file():
        return tuple(sorted(w.strip() for w in wnids.read_text().split() if w.strip()))
    return tuple(sorted(set(found)))


def _tiny_val(root: Path, name: str) -> _FolderImages:
    base = root / "tiny-imagenet-200"
    val = base / "val"
    ann = val / "val_annotations.txt"
    if ann.is_file():
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        pairs = [(val / "images" / f, w) for f, w in rows]
    elif val.is_dir() and _class_dirs(val):
        pairs = [(p, _class_dirs(val)[label]) for p, label in _scan(val, _class_dirs(val))]
    else:
        raise DataError(
            f"Tiny-ImageNet val not found (the clean images of Tiny-ImageNet-C): expected {ann} "
            f"with {val}/images/*.JPEG (the tiny-imagenet-200 release) or {val}/<wnid>/*.JPEG"
        )
    classes = _tiny_classes(base, [w for _, w in pairs])
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({w for _, w in pairs if w not in index})
    if unknown:
        raise DataError(f"{val} has images of classes not in {base / 'wnids.txt'}: {unknown[:3]}")
    samples = sorted(((p, index[w]) for p, w in pairs), key=lambda s: (s[1], s[0].name))
    rels = [Path(classes[label]) / p.name for p, label in samples]
    info = DatasetInfo(
        name=name,
        num_classes=len(classes),
        image_size=64,
        channels=3,
        preset="tiny",
        classes=classes,
    )
    return _FolderImages(samples, rels, info, resize=64)


def _folder_release(
    spec: _Folders, clean_of: Callable[[Path], _FolderImages], by_name: bool, layout: str
) -> Callable[..., ImageDataset]:
    def load(
        *, split: str, root: Path | None, download: bool, channels: int | None
    ) -> ImageDataset:
        _test_only(spec.name, split)
        _no_download(spec.title, download)
        if channels == 1:
            raise ValueError(f"{spec.name} has 3 channels; channels=1 is not supported")
        root = _need_root(root, layout)
        clean = clean_of(root)
        release = FolderRelease(root, spec, clean, by_name)
        return ReleasedDataset(clean, len(clean), clean.info, release)

    return load


def _cifar_loader(variant: _Cifar, name: str, title: str) -> Callable[..., ImageDataset]:
    def load(
        *, split: str, root: Path | None, download: bool, channels: int | None
    ) -> ImageDataset:
        return load_cifar_c(
            variant, name, title, split=split, root=root, download=download, channels=channels
        )

    return load


_TINY = _Folders("tiny-imagenet-c", "Tiny-ImageNet-C", _FIFTEEN, {}, {}, 64)
_IMAGENET = _Folders(
    "imagenet-c", "ImageNet-C", tuple(IMAGENET_C_CATEGORIES), {}, IMAGENET_C_CATEGORIES, 224
)
_3DCC = _Folders(
    "imagenet-3dcc", "ImageNet-3DCC", tuple(THREEDCC_FAMILIES), THREEDCC_FAMILIES, {}, 224
)
_TINY_LAYOUT = (
    "expected <root>/Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG beside "
    "<root>/tiny-imagenet-200/ (wnids.txt and val/, the clean images)"
)
_IMAGENET_LAYOUT = (
    "expected <root>/ImageNet-C/<corruption>/<severity>/<wnid>/<image> (or the release's "
    "<root>/ImageNet-C/<category>/<corruption>/...) beside ImageNet val in <root>/val/<wnid>/"
)
_3DCC_LAYOUT = (
    "expected <root>/ImageNet-3DCC/<corruption>/<severity>/<wnid>/<image> beside ImageNet val "
    "in <root>/val/<wnid>/"
)


def load_tiny_imagenet_c(
    *, split: str, root: Path | None, download: bool, channels: int | None
) -> ImageDataset:
    """Tiny-ImageNet-C with Tiny-ImageNet val as its clean images (64 px, 200 classes)."""
    load = _folder_release(_TINY, lambda r: _tiny_val(r, _TINY.name), False, _TINY_LAYOUT)
    return load(split=split, root=root, download=download, channels=channels)


def load_imagenet_c(
    *, split: str, root: Path | None, download: bool, channels: int | None
) -> ImageDataset:
    """ImageNet-C (flat or category folders) with ImageNet val as its clean images (224 px)."""
    load = _folder_release(
        _IMAGENET, lambda r: _imagenet_val(r, _IMAGENET.name, "ImageNet-C"), True, _IMAGENET_LAYOUT
    )
    return load(split=split, root=root, download=download, channels=channels)


def load_imagenet_3dcc(
    *, split: str, root: Path | None, download: bool, channels: int | None
) -> ImageDataset:
    """ImageNet-3DCC with ImageNet val as its clean images (224 px)."""
    load = _folder_release(
        _3DCC, lambda r: _imagenet_val(r, _3DCC.name, "ImageNet-3DCC"), True, _3DCC_LAYOUT
    )
    return load(split=split, root=root, download=download, channels=channels)


# --- registration --------------------------------------------------------------------------------

_NOTE = "; released corruptions are read from the files, the others computed"
for _variant, _name, _title in (
    (CIFAR10, "cifar10-c", "CIFAR-10-C"),
    (CIFAR100, "cifar100-c", "CIFAR-100-C"),
):
    DATASETS.add(
        _name,
        DatasetSpec(
            name=_name,
            loader=_cifar_loader(_variant, _name, _title),
            image_size=32,
            preset="cifar",
            num_classes=len(_variant.classes),
            layout=_cifar_c_layout(_title, _variant),
            description=f"{_title} (released .npy files) + clean {_variant.title} test{_NOTE}",
        ),
    )
_FOLDER_SPECS: tuple[
    tuple[_Folders, Callable[..., ImageDataset], str, int | None, str, str], ...
] = (
    (_TINY, load_tiny_imagenet_c, _TINY_LAYOUT, 200, "tiny", "Tiny-ImageNet val, 64 px"),
    (_IMAGENET, load_imagenet_c, _IMAGENET_LAYOUT, None, "imagenet", "ImageNet val, 224 px"),
    (_3DCC, load_imagenet_3dcc, _3DCC_LAYOUT, None, "imagenet", "ImageNet val, 224 px"),
)
for _spec, _loader, _layout, _classes, _preset, _clean in _FOLDER_SPECS:
    extra: dict[str, Any] = {"file_only": dict(_spec.families)} if _spec.families else {}
    DATASETS.add(
        _spec.name,
        DatasetSpec(
            name=_spec.name,
            loader=_loader,
            image_size=_spec.side,
            preset=_preset,
            num_classes=_classes,
            layout=_layout,
            description=f"{_spec.title} (released JPEG folders) + clean {_clean}{_NOTE}",
            extra=extra,
        ),
    )
