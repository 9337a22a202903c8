"""Real-dataset readers, on tiny fixtures the tests write in each dataset's real on-disk format."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from robench.data import DATASETS, DataError, load_dataset, real

RNG = np.random.default_rng(0)


# --- writers of the real formats -----------------------------------------------------------------


def _cifar_batch(n: int, label_key: str, num_classes: int) -> dict[bytes, Any]:
    """A batch dict as CIFAR's python version holds it (bytes keys, uint8 N x 3072 in CHW order)."""
    return {
        b"batch_label": b"testing batch 1 of 1",
        label_key.encode(): [int(v) for v in RNG.integers(0, num_classes, n)],
        b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _dump(obj: Any, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _write_cifar10(root: Path, n: int = 3, protocol: int = 4) -> dict[str, dict[bytes, Any]]:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: _cifar_batch(n, "labels", 10) for name in names}
    for name, batch in batches.items():
        _dump(batch, folder / name, protocol)
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    _dump(meta, folder / "batches.meta", protocol)
    return batches


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    return b"K" + bytes([v]) if v < 256 else b"J" + struct.pack("<i", v)


def _py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR batch as Python 2's cPickle wrote the official files (protocol 2, numpy.core)."""
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
    array += _py2_str(b"b") + b"\x87R"
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|")
    dtype += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    state = b"(K\x01" + _py2_int(len(data)) + _py2_int(3072) + b"\x86" + dtype + b"\x89"
    state += _py2_str(data.tobytes()) + b"tb"
    lab = b"](" + b"".join(_py2_int(v) for v in labels) + b"e"
    return b"\x80\x02}(" + _py2_str(b"data") + array + state + _py2_str(b"labels") + lab + b"u."


def _idx(arr: np.ndarray) -> bytes:
    """IDX bytes: magic 00 00 08 ndim, big-endian int32 dimensions, then the uint8 data."""
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist(folder: Path, n: int = 5, gz: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n, dtype=np.uint8),
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n + 1, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n + 1, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        raw = _idx(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def _write_svhn(path: Path, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]][:n], dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def _image(path: Path, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = RNG.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path)


def _write_imagefolder(root: Path) -> None:
    _image(root / "train" / "dog" / "a.png", (64, 48))
    _image(root / "train" / "cat" / "b.jpg", (40, 60))
    _image(root / "val" / "dog" / "c.png", (300, 200))  # landscape, not square
    _image(root / "val" / "dog" / "sub" / "d.JPEG", (200, 320))
    _image(root / "val" / "cat" / "e.png", (50, 50), mode="L")
    _image(root / "val" / "cat" / "f.png", (90, 70), mode="RGBA")
    (root / "val" / "cat" / "notes.txt").write_text("not an image")
    (root / "val" / ".ipynb_checkpoints").mkdir()
    (root / "train" / ".ipynb_checkpoints").mkdir()


# --- CIFAR ---------------------------------------------------------------------------------------


def _chw(row: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255)


def test_cifar10_reads_batches_in_order_with_meta_names(tmp_path: Path) -> None:
    batches = _write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert len(train) == 15 and len(test) == 3
    info = train.info
    assert (info.num_classes, info.image_size, info.channels, info.preset) == (10, 32, 3, "cifar")
    assert info.classes == tuple(f"c{i}" for i in range(10)) and test.info.split == "test"
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    for i in (0, 4, 14):
        x, y = train[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert torch.allclose(x, _chw(data[i])) and y == labels[i]
    xb, yb = test.get_batch([2, 0])
    assert xb.shape == (2, 3, 32, 32) and 0 <= xb.min() and xb.max() <= 1
    assert torch.allclose(xb[0], _chw(batches["test_batch"][b"data"][2]))
    assert yb.tolist() == [batches["test_batch"][b"labels"][k] for k in (2, 0)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_accepts_every_pickle_protocol_and_str_keys(tmp_path: Path, protocol: int) -> None:
    batches = _write_cifar10(tmp_path, protocol=protocol)
    str_keys = {k.decode(): v for k, v in batches["test_batch"].items()}
    _dump(str_keys, tmp_path / "cifar-10-batches-py" / "test_batch", protocol)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert torch.allclose(ds[1][0], _chw(str_keys["data"][1])) and ds[1][1] == str_keys["labels"][1]


def test_cifar_reads_a_python2_cpickle_file(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    data = RNG.integers(0, 256, (4, 3072), dtype=np.uint8)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(_py2_cifar_pickle(data, [3, 0, 9, 1]))
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert ds.targets.tolist() == [3, 0, 9, 1] and torch.allclose(ds[3][0], _chw(data[3]))
    assert ds.info.classes[0] == "airplane" and ds.info.classes[9] == "truck"  # no meta: defaults


def test_cifar100_uses_fine_labels_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    batch = _cifar_batch(6, "fine_labels", 100)
    batch[b"coarse_labels"] = [99] * 6  # out of range for 20 coarse classes: must be ignored
    _dump(batch, folder / "test")
    ds = load_dataset("cifar100", "test", root=tmp_path)
    assert ds.targets.tolist() == batch[b"fine_labels"] and ds.info.num_classes == 100
    assert ds.info.classes[0] == "apple" and ds.info.classes[-1] == "worm"
    _dump({b"fine_label_names": [f"n{i}".encode() for i in range(100)]}, folder / "meta")
    assert load_dataset("cifar100", "test", root=tmp_path).info.classes[42] == "n42"
    with pytest.raises(DataError, match=r"cifar-100-python.*train and test.*--download"):
        load_dataset("cifar100", "train", root=tmp_path)


def test_missing_cifar_says_where_the_files_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(real, "_fetch", lambda *a: pytest.fail("fetched without download=True"))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1..5 and test_batch" in msg
    assert "--download" in msg and "\n" not in msg
    with pytest.raises(DataError, match="needs --data-root.*cifar-10-batches-py"):
        load_dataset("cifar10", "test")
    with pytest.raises(ValueError, match="channels=1"):
        load_dataset("cifar10", "test", root=tmp_path, channels=1)


@pytest.mark.parametrize(
    "damage", ["truncate", "garbage", "not_a_dict", "wrong_shape", "no_labels"]
)
def test_corrupt_cifar_batch_is_named(tmp_path: Path, damage: str) -> None:
    batches = _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif damage == "not_a_dict":
        _dump([1, 2, 3], path)
    elif damage == "wrong_shape":
        _dump({**batches["test_batch"], b"data": np.zeros((3, 100), np.uint8)}, path)
    else:
        _dump({b"data": batches["test_batch"][b"data"]}, path)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(path) in str(err.value)


class _OpenFile:
    """Unpickling this with plain pickle creates ``path`` (what a malicious dataset would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.path), "w"))


class _Shell:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.path}'",))


def _unpickle_plainly(path: Path) -> None:
    """Load ``path`` with plain pickle (what robench refuses to do), closing what it opened."""
    with path.open("rb") as f:
        loaded = pickle.load(f)  # the control: this is what runs the payload
    for value in [*loaded.values(), *loaded.get(b"label_names", [])]:
        if hasattr(value, "close"):
            value.close()


@pytest.mark.parametrize("payload", [_OpenFile, _Shell])
@pytest.mark.parametrize("where", ["test_batch", "batches.meta"])
def test_malicious_pickle_is_refused(tmp_path: Path, payload: type, where: str) -> None:
    root, target = tmp_path / "data", tmp_path / "pwned"
    batches = _write_cifar10(root)
    if where == "test_batch":
        evil = {**batches["test_batch"], b"labels": payload(target)}
    else:
        evil = {b"label_names": [payload(target)]}
    path = root / "cifar-10-batches-py" / where
    _dump(evil, path)
    with pytest.raises(DataError, match=rf"refusing to unpickle \w+\.(open|system) from .*{where}"):
        load_dataset("cifar10", "test", root=root)
    assert not target.exists()
    # control: the very same file runs its payload under plain pickle, so the refusal is what
    # kept `target` from existing
    _unpickle_plainly(path)
    assert target.exists()


def test_pickle_cannot_modify_the_allowed_functions(tmp_path: Path) -> None:
    # GLOBAL _codecs.encode, then BUILD (None, {"__defaults__": ("rot13",)}) on it.
    poison = b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__"
    poison += b"X\x05\x00\x00\x00rot13\x85s\x86b."
    path = tmp_path / "poison"
    path.write_bytes(poison)
    with pytest.raises(DataError, match="not a dict"):
        real.read_cifar_batch(path)
    assert real._latin1_encode.__defaults__ == ("latin1",)


# --- SVHN ----------------------------------------------------------------------------------------


def test_svhn_reads_mat_and_maps_10_to_0(tmp_path: Path) -> None:
    x, y = _write_svhn(tmp_path / "test_32x32.mat")
    ds = load_dataset("svhn", "test", root=tmp_path)
    assert ds.targets.tolist() == [0, 1, 9, 0] and ds.info.classes[0] == "0"
    assert (ds.info.image_size, ds.info.preset, ds.info.num_classes) == (32, "cifar", 10)
    img = torch.from_numpy(x[..., 2].transpose(2, 0, 1).astype(np.float32) / 255)
    assert torch.allclose(ds[2][0], img)
    with pytest.raises(DataError, match=r"train_32x32\.mat.*--download"):
        load_dataset("svhn", "train", root=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_y"])
def test_corrupt_svhn_is_named(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "train_32x32.mat"
    x, _ = _write_svhn(path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(b"garbage" * 100)
    else:
        scipy.io.savemat(path, {"X": x})
    with pytest.raises(DataError) as err:
        load_dataset("svhn", "train", root=tmp_path)
    assert str(path) in str(err.value)


# --- MNIST ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sub", ["MNIST/raw", "."])
def test_mnist_reads_idx_files(tmp_path: Path, gz: bool, sub: str) -> None:
    arrays = _write_mnist(tmp_path / sub, gz=gz)
    ds = load_dataset("mnist", "test", root=tmp_path)
    assert len(ds) == 5 and ds.info.channels == 1 and ds.info.image_size == 28
    assert ds.info.preset == "cifar"
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and y == int(arrays["t10k-labels-idx1-ubyte"][3])
    assert torch.allclose(x[0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"][3] / 255).float())
    assert len(load_dataset("mnist", "train", root=tmp_path)) == 6


def test_mnist_channels_3_replicates_grey(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", "test", root=tmp_path, channels=3)
    x, _ = ds[0]
    assert ds.info.channels == 3 and x.shape == (3, 28, 28)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    xb, _ = ds.get_batch([0, 1])
    assert xb.shape == (2, 3, 28, 28) and torch.equal(xb[0], x)


@pytest.mark.parametrize("damage", ["magic", "truncated", "gz_truncated", "count"])
def test_corrupt_mnist_is_named(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "MNIST" / "raw"
    arrays = _write_mnist(folder)
    path = folder / "t10k-images-idx3-ubyte"
    if damage == "magic":
        path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])  # a labels file's magic
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "gz_truncated":
        path.unlink()
        path = folder / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(_idx(arrays["t10k-images-idx3-ubyte"]))[:-20])
    else:
        path = folder / "t10k-labels-idx1-ubyte"
        path.write_bytes(_idx(arrays["t10k-labels-idx1-ubyte"][:-1]))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(path) in str(err.value)


def test_missing_mnist_says_where_the_files_go(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "train", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value) and "--download" in str(err.value)


# --- ImageFolder ---------------------------------------------------------------------------------


def test_imagefolder_lists_classes_and_crops_to_224(tmp_path: Path) -> None:
    from torchvision import transforms

    _write_imagefolder(tmp_path)
    ds = load_dataset("imagefolder", "test", root=tmp_path)
    assert ds.info.classes == ("cat", "dog") and ds.info.num_classes == 2
    assert (ds.info.image_size, ds.info.preset, ds.info.channels) == (224, "imagenet", 3)
    assert ds.targets.tolist() == [0, 0, 1, 1] and len(ds) == 4
    assert [p.name for p, _ in ds.samples] == ["e.png", "f.png", "c.png", "d.JPEG"]
    steps = [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    reference = transforms.Compose(steps)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == ds.targets[i]
        with Image.open(ds.samples[i][0]) as im:
            assert torch.allclose(x, reference(im.convert("RGB")), atol=1e-6)
    grey = ds[0][0]
    assert torch.equal(grey[0], grey[1])  # a grey PNG comes out as RGB
    xb, yb = ds.get_batch([2, 1])
    assert xb.shape == (2, 3, 224, 224) and yb.tolist() == [1, 0]
    assert len(load_dataset("imagefolder", "train", root=tmp_path)) == 2


def test_imagefolder_decodes_lazily_and_names_a_bad_file(tmp_path: Path) -> None:
    _write_imagefolder(tmp_path)
    bad = tmp_path / "val" / "cat" / "e.png"
    ds = load_dataset("imagefolder", "test", root=tmp_path)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")  # after listing: only access decodes
    assert ds[2][0].shape == (3, 224, 224)
    with pytest.raises(DataError, match=r"cannot decode image .*e\.png"):
        ds[0]
    jpeg = tmp_path / "val" / "dog" / "sub" / "d.JPEG"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=r"d\.JPEG"):
        ds[3]


def test_imagefolder_test_split_falls_back_to_test_folder(tmp_path: Path) -> None:
    _image(tmp_path / "test" / "b" / "x.bmp", (30, 20))
    _image(tmp_path / "test" / "a" / "y.png", (30, 20))
    ds = load_dataset("imagefolder", "test", root=tmp_path)
    assert ds.info.classes == ("a", "b") and ds.targets.tolist() == [0, 1]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"val/<class>/<image>") as err:
        load_dataset("imagefolder", "test", root=tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", "test", root=tmp_path)
    _image(tmp_path / "val" / "a" / "x.png", (10, 10))
    _image(tmp_path / "train" / "b" / "x.png", (10, 10))
    with pytest.raises(DataError, match="differ"):
        load_dataset("imagefolder", "test", root=tmp_path)


# --- registration, download wiring and import cost -----------------------------------------------


def test_registered_specs() -> None:
    expected = {
        "cifar10": (32, "cifar", 10),
        "cifar100": (32, "cifar", 100),
        "svhn": (32, "cifar", 10),
        "mnist": (28, "cifar", 10),
        "imagefolder": (224, "imagenet", None),
    }
    for name, facts in expected.items():
        spec = DATASETS.get(name)
        assert (spec.image_size, spec.preset, spec.num_classes) == facts and spec.needs_root
        assert "<root>" in spec.layout


class _FakeTorchvision:
    """Stands in for ``torchvision.datasets``: records the call and writes the files."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, dict[str, Any]]] = []

    def CIFAR10(self, root: Path, **kw: Any) -> None:  # noqa: N802
        self.calls.append(("CIFAR10", Path(root), kw))
        _write_cifar10(Path(root))

    def SVHN(self, root: Path, **kw: Any) -> None:  # noqa: N802
        self.calls.append(("SVHN", Path(root), kw))
        _write_svhn(Path(root) / f"{kw['split']}_32x32.mat")

    def MNIST(self, root: Path, **kw: Any) -> None:  # noqa: N802
        self.calls.append(("MNIST", Path(root), kw))
        _write_mnist(Path(root) / "MNIST" / "raw", gz=True)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "mnist"])
def test_download_fetches_then_reads_with_robench_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    fake = _FakeTorchvision()
    monkeypatch.setattr(real, "_fetch", lambda title, root, fetch: fetch(fake))
    ds = load_dataset(name, "test", root=tmp_path, download=True)
    assert len(ds) > 0 and len(fake.calls) == 1
    assert fake.calls[0][1] == tmp_path and fake.calls[0][2]["download"] is True
    load_dataset(name, "test", root=tmp_path, download=True)
    assert len(fake.calls) == 1  # files present: nothing fetched again


def test_download_failure_is_one_sentence(tmp_path: Path) -> None:
    def fail(tvd: Any) -> None:
        raise OSError("network unreachable")

    with pytest.raises(DataError, match="could not download CIFAR-10 into .*network unreachable"):
        real._fetch("CIFAR-10", tmp_path, fail)


def test_import_does_not_load_torchvision_datasets() -> None:
    code = "import sys, robench.data.real; sys.exit('torchvision.datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
