"""Real datasets read from their standard on-disk formats: CIFAR-10/100, SVHN, MNIST, ImageFolder.

Nothing touches the network unless ``download=True``: only then are torchvision's downloaders
imported to fetch the official files, which robench's own readers below then read. A missing file
raises :class:`DataError` saying where the files must go; a truncated or corrupt one raises it
naming the file. CIFAR batches are Python pickles, so they are read with an unpickler that only
rebuilds numpy arrays and refuses every other global.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robench.data._base import (
    DATASETS,
    ArrayDataset,
    DataError,
    DatasetInfo,
    DatasetSpec,
    ImageDataset,
)

try:
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy < 2 has no numpy._core
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "read_cifar_batch",
    "read_idx",
    "read_svhn",
    "decode_image",
    "load_cifar",
    "load_mnist",
    "load_svhn",
    "load_imagefolder",
    "imagefolder_resize",
    "preset_of_side",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_LoadFn = Callable[..., ImageDataset]


def _check_rgb(name: str, channels: int | None) -> None:
    if channels == 1:
        raise ValueError(f"{name} has 3 channels; channels=1 is not supported")


def _need_root(root: Path | None, layout: str) -> Path:
    if root is None:
        raise DataError(f"no data root given: {layout}")
    return root


def _fetch(title: str, root: Path, fetch: Callable[[Any], object]) -> None:
    """Download with torchvision (imported only here, so nothing else ever reaches the network)."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch(tvd)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"could not download {title} into {root}: {exc}") from exc


# --- restricted unpickling of CIFAR batches -----------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A new wrapper per lookup, so a pickle's BUILD opcode can only set attributes on its copy."""

    def call(*args: Any) -> Any:
        return fn(*args)

    return call


def _safe_global(module: str, name: str) -> Any:
    """The few globals a CIFAR pickle needs (numpy arrays, dtypes, scalars), or None."""
    # Arrays pickle as _reconstruct + ndarray + dtype (protocols 0-4) or _frombuffer (protocol 5).
    # Python functions are wrapped (C functions and types cannot have attributes set).
    frombuffer = _fresh(_np_numeric._frombuffer)  # type: ignore[attr-defined]  # private, no stub
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
        ("numpy._core.multiarray", "scalar"): _np_multiarray.scalar,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("_codecs", "encode"): _fresh(_latin1_encode),
    }
    # Python 2 and numpy 1 write numpy.core.*, numpy 2 writes numpy._core.*: the same functions.
    return allowed.get((module.replace("numpy.core.", "numpy._core.", 1), name))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and lists but refuses any other global."""

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR was written by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        obj = _safe_global(module, name)
        if obj is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self._path}")
        return obj


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _unpickle(path: Path) -> dict[str | bytes, Any]:
    try:
        obj = _CifarUnpickler(io.BytesIO(_read_bytes(path)), path).load()
    except DataError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise DataError(f"{path} is truncated or not a CIFAR python batch: {exc}") from exc
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        raise DataError(f"{path} is not a CIFAR python batch (it holds a {kind}, not a dict)")
    return obj


def _field(batch: dict[str | bytes, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path} is not a CIFAR python batch: it has no {key!r} entry")


def read_cifar_batch(path: Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N x 32 x 32 x 3) and labels (int64 N) of one CIFAR python batch file."""
    batch = _unpickle(path)
    data, labels = _field(batch, "data", path), _field(batch, label_key, path)
    ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not ok or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {label_key!r} is not a list of integers") from exc
    if len(labels) != len(data):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


# --- CIFAR-10 / CIFAR-100 ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cifar:
    name: str
    title: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    classes: tuple[str, ...]
    tv_class: str

    @property
    def layout(self) -> str:
        """Where the files go, with a ``<root>`` placeholder."""
        files = "data_batch_1..5 and test_batch" if len(self.train) > 1 else "train and test"
        return (
            f"expected <root>/{self.folder}/{files} (the '{self.title} python version'); "
            "pass --download to fetch it"
        )


def _class_names(path: Path, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if not path.is_file():
        return default
    raw = _field(_unpickle(path), key, path)
    names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw)
    if len(names) != len(default):
        raise DataError(f"{path} names {len(names)} classes in {key!r}, expected {len(default)}")
    return names


def load_cifar(
    variant: _Cifar, *, split: str, root: Path | None, download: bool, channels: int | None
) -> ArrayDataset:
    """Read a CIFAR split from ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``."""
    _check_rgb(variant.name, channels)
    root = _need_root(root, variant.layout)
    folder = root / variant.folder
    files = [folder / f for f in (variant.train if split == "train" else variant.test)]
    if download and not all(f.is_file() for f in files):

        def fetch(tvd: Any) -> object:  # one archive holds both splits; the test one loads fastest
            return getattr(tvd, variant.tv_class)(str(root), train=False, download=True)

        _fetch(variant.title, root, fetch)
    if not all(f.is_file() for f in files):
        raise DataError(f"{variant.title} not found: {variant.layout.replace('<root>', str(root))}")
    images, labels = zip(*(read_cifar_batch(f, variant.label_key) for f in files), strict=True)
    classes = _class_names(folder / variant.meta, variant.names_key, variant.classes)
    info = DatasetInfo(
        name=variant.name,
        num_classes=len(classes),
        image_size=32,
        channels=3,
        preset="cifar",
        classes=classes,
        split=split,
    )
    return ArrayDataset(np.concatenate(images), np.concatenate(labels), info)


_CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10 = _Cifar(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    label_key="labels",
    names_key="label_names",
    classes=_CIFAR10_NAMES,
    tv_class="CIFAR10",
)
# The 'fine_label_names' of the meta file (alphabetical), used when the meta file is absent.
_CIFAR100_NAMES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)
CIFAR100 = _Cifar(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    meta="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    classes=_CIFAR100_NAMES,
    tv_class="CIFAR100",
)


# --- SVHN -----------------------------------------------------------------------------------------

_SVHN_LAYOUT = (
    "expected <root>/train_32x32.mat and <root>/test_32x32.mat (SVHN format 2, cropped digits); "
    "pass --download to fetch them"
)


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N x 32 x 32 x 3) and labels 0..9 (the file stores digit 0 as 10)."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except (
        OSError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        EOFError,
        NotImplementedError,
        MatReadError,
        zlib.error,
    ) as exc:
        raise DataError(f"{path} is truncated or not an SVHN MATLAB v5 file: {exc}") from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataError(f"{path} is not an SVHN file: it lacks the 'X' and 'y' variables")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3 or x.shape[0] != x.shape[1]:
        raise DataError(f"{path}: 'X' must be uint8 S x S x 3 x N, got {x.dtype} {x.shape}")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(labels) != x.shape[3]:
        raise DataError(f"{path} holds {x.shape[3]} images but {len(labels)} labels")
    return np.transpose(x, (3, 0, 1, 2)), np.where(labels == 10, 0, labels)


def load_svhn(
    *, split: str, root: Path | None, download: bool, channels: int | None
) -> ArrayDataset:
    """Read an SVHN split from ``<root>/{train,test}_32x32.mat``."""
    _check_rgb("svhn", channels)
    root = _need_root(root, _SVHN_LAYOUT)
    path = root / f"{split}_32x32.mat"
    if download and not path.is_file():
        _fetch("SVHN", root, lambda tvd: tvd.SVHN(str(root), split=split, download=True))
    if not path.is_file():
        raise DataError(f"SVHN not found: {_SVHN_LAYOUT.replace('<root>', str(root))}")
    images, labels = read_svhn(path)
    info = DatasetInfo(
        name="svhn",
        num_classes=10,
        image_size=images.shape[1],
        channels=3,
        preset="cifar",
        classes=tuple(str(d) for d in range(10)),
        split=split,
    )
    return ArrayDataset(images, labels, info)


# --- MNIST (IDX files) ---------------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_LAYOUT = (
    "expected <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (optionally .gz, "
    "or directly in <root>); pass --download to fetch them"
)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file (magic ``00 00 08 ndim``), gzipped or not, size-checked."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path} is not an unsigned-byte IDX file of {ndim} dimensions (bad magic)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its {len(raw)} bytes end inside the IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_mnist(root: Path, stem: str) -> Path | None:
    for folder in (root / "MNIST" / "raw", root):
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist(
    *, split: str, root: Path | None, download: bool, channels: int | None
) -> ArrayDataset:
    """Read an MNIST split from its IDX files (grey; ``channels=3`` replicates the channel)."""
    root = _need_root(root, _MNIST_LAYOUT)
    paths = [_find_mnist(root, stem) for stem in _MNIST_FILES[split]]
    if download and None in paths:
        _fetch("MNIST", root, lambda tvd: tvd.MNIST(str(root), train=False, download=True))
        paths = [_find_mnist(root, stem) for stem in _MNIST_FILES[split]]
    if paths[0] is None or paths[1] is None:
        raise DataError(f"MNIST not found: {_MNIST_LAYOUT.replace('<root>', str(root))}")
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if images.shape[1] != images.shape[2]:
        h, w = images.shape[1:]
        raise DataError(f"{paths[0]} holds {h} x {w} images, not square ones")
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} {len(labels)} labels")
    info = DatasetInfo(
        name="mnist",
        num_classes=10,
        image_size=images.shape[1],
        channels=3 if channels == 3 else 1,
        preset="cifar",
        classes=tuple(str(d) for d in range(10)),
        split=split,
    )
    return ArrayDataset(images[..., None], labels, info)


# --- ImageFolder ---------------------------------------------------------------------------------

MIN_IMAGE_SIZE = 8
_FOLDER_LAYOUT = (
    "expected <root>/train/<class>/<image> and <root>/val/<class>/<image> (or <root>/test/...), "
    "one folder per class (ImageFolder data cannot be downloaded)"
)


def _resize_center_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """Torchvision's ``Resize(resize)`` (shorter side, bilinear) then ``CenterCrop(crop)``."""
    w, h = img.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def decode_image(path: Path, *, resize: int = 256, crop: int = 224) -> Tensor:
    """Decode an image file to float 3 x crop x crop in [0, 1] (RGB, resized, centre-cropped)."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    arr = np.asarray(_resize_center_crop(rgb, resize, crop), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageFolderDataset(ImageDataset):
    """Images listed from class folders and decoded lazily, one per ``__getitem__``.

    Args:
        samples: ``(path, label)`` pairs.
        info: dataset facts (``image_size`` is the crop).
        resize: shorter side after resizing, before the centre crop.
    """

    def __init__(
        self, samples: Sequence[tuple[Path, int]], info: DatasetInfo, *, resize: int = 256
    ) -> None:
        self.samples = list(samples)
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.info = info
        self.resize = resize

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return decode_image(path, resize=self.resize, crop=self.info.image_size), label


def _class_dirs(folder: Path) -> tuple[str, ...]:
    # Hidden folders (.ipynb_checkpoints...) are never classes.
    names = (e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    return tuple(sorted(names))


def _scan(folder: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    samples = []
    for label, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(folder / cls, followlinks=True)):
            images = [f for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
            samples += [(Path(dirpath) / f, label) for f in images]
    return samples


def preset_of_side(side: int) -> str:
    """The corruption preset of an image side: ``cifar`` to 48 px, ``tiny`` to 128, else ImageNet.

    The rule of :func:`robench.perturbations.preset_for_size` (a test holds the two equal: this
    room may not import that one).

    Example:
        >>> preset_of_side(32), preset_of_side(64), preset_of_side(224)
        ('cifar', 'tiny', 'imagenet')
    """
    return "cifar" if side <= 48 else "tiny" if side <= 128 else "imagenet"


def imagefolder_resize(side: int) -> int:
    """The shorter side an ImageFolder image is resized to before its centre crop to ``side``.

    224 keeps ImageNet's evaluation (256, then the 224 crop ImageNet-C was made from); another
    side resizes straight to it, so an image already ``side`` x ``side`` (Tiny-ImageNet's 64 px
    validation images) is used as it is, as Tiny-ImageNet-C was made from it.

    Example:
        >>> imagefolder_resize(224), imagefolder_resize(64)
        (256, 64)
    """
    return 256 if side == 224 else side


def load_imagefolder(
    *,
    split: str,
    root: Path | None,
    download: bool,
    channels: int | None,
    image_size: int | None = None,
) -> ImageDataset:
    """List ``<root>/train`` or ``<root>/val`` (else ``<root>/test``); decode images on access.

    ``image_size`` (default 224) is the side of the centre crop (:func:`imagefolder_resize`);
    the corruption preset follows it (:func:`preset_of_side`: 64 px gets ``tiny``).
    """
    _check_rgb("imagefolder", channels)
    side = 224 if image_size is None else image_size
    if side < MIN_IMAGE_SIZE:
        raise ValueError(f"the image size must be at least {MIN_IMAGE_SIZE} px, got {side}")
    root = _need_root(root, _FOLDER_LAYOUT)
    folder = root / "train" if split == "train" else root / "val"
    if split == "test" and not folder.is_dir():
        folder = root / "test"
    classes = _class_dirs(folder) if folder.is_dir() else ()
    if not classes:
        where = _FOLDER_LAYOUT.replace("<root>", str(root))
        raise DataError(f"ImageFolder data not found: {where}")
    train = root / "train"
    if split == "test" and train.is_dir() and _class_dirs(train) != classes:
        raise DataError(f"the class folders of {folder} and {train} differ; labels would not match")
    samples = _scan(folder, classes)
    if not samples:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {folder}/<class>/")
    info = DatasetInfo(
        name="imagefolder",
        num_classes=len(classes),
        image_size=side,
        channels=3,
        preset=preset_of_side(side),
        classes=classes,
        split=split,
    )
    return ImageFolderDataset(samples, info, resize=imagefolder_resize(side))


# --- registration --------------------------------------------------------------------------------


def _cifar_loader(variant: _Cifar) -> _LoadFn:
    def load(
        *, split: str, root: Path | None, download: bool, channels: int | None
    ) -> ImageDataset:
        return load_cifar(variant, split=split, root=root, download=download, channels=channels)

    return load


for _v in (CIFAR10, CIFAR100):
    DATASETS.add(
        _v.name,
        DatasetSpec(
            name=_v.name,
            loader=_cifar_loader(_v),
            image_size=32,
            preset="cifar",
            num_classes=len(_v.classes),
            layout=_v.layout,
            description=f"{_v.title} (python version), 32 px, {len(_v.classes)} classes",
        ),
    )
DATASETS.add(
    "svhn",
    DatasetSpec(
        name="svhn",
        loader=load_svhn,
        image_size=32,
        preset="cifar",
        num_classes=10,
        layout=_SVHN_LAYOUT,
        description="SVHN cropped digits (format 2, .mat), 32 px, 10 classes",
    ),
)
DATASETS.add(
    "mnist",
    DatasetSpec(
        name="mnist",
        loader=load_mnist,
        image_size=28,
        preset="cifar",
        num_classes=10,
        layout=_MNIST_LAYOUT,
        description="MNIST digits (IDX files), 28 px grey (3 channels on request), 10 classes",
    ),
)
DATASETS.add(
    "imagefolder",
    DatasetSpec(
        name="imagefolder",
        loader=load_imagefolder,
        image_size=224,
        preset="imagenet",
        num_classes=None,
        layout=_FOLDER_LAYOUT,
        description="ImageNet-style class folders (train/, val/), resized 256, centre-cropped 224 "
        "(--image-size N: resized and cropped to N, preset from N)",
        extra={"any_size": True},
    ),
)
