"""The released -C datasets, on fixtures the tests write in each release's real on-disk layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from robench.cli import main as cli
from robench.data import DataError, load_dataset
from robench.evaluation import EvalConfig, evaluate_record, plan_evaluation
from robench.models.loading import LoadedModel, load_model

N_CLEAN, N_C = 12, 8  # the fixtures' clean test set and the (smaller) release


# --- writers of the released layouts -------------------------------------------------------------


def _cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The clean CIFAR-10 test batch (python version) with N_CLEAN images."""
    images = rng.integers(0, 256, (N_CLEAN, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, N_CLEAN)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {
        b"labels": [int(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(N_CLEAN, -1),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return images, labels


def _cifar10_c(root: Path, names: tuple[str, ...] = ("fog",)) -> dict[str, np.ndarray]:
    """CIFAR-10-C files for the first N_C clean images: 5 severities stacked, labels tiled."""
    rng = np.random.default_rng(0)
    _, labels = _cifar10(root, rng)
    folder = root / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(labels[:N_C], 5).astype(np.uint8))
    arrays = {n: rng.integers(0, 256, (5 * N_C, 32, 32, 3), dtype=np.uint8) for n in names}
    for n, arr in arrays.items():
        np.save(folder / f"{n}.npy", arr)
    return arrays


def _jpeg(path: Path, side: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (side[1], side[0], 3), dtype=np.uint8)).save(
        path, quality=85
    )


WNIDS = ("n01440764", "n01443537", "n01484850")
VAL_FILES = {
    w: [f"ILSVRC2012_val_{3 * k + i:08d}.JPEG" for i in range(2)] for k, w in enumerate(WNIDS)
}


def _imagenet_c(root: Path, *, nested: bool, names: tuple[str, ...] = ("fog",)) -> None:
    """ImageNet val (odd sizes: resized 256 + cropped 224) and ImageNet-C copies at 224 px."""
    seed = 0
    for wnid, files in VAL_FILES.items():
        for f in files:
            _jpeg(root / "val" / wnid / f, (300, 260), seed)
            for name in names:
                cat = {"fog": "weather", "contrast": "digital"}[name]
                base = root / "ImageNet-C" / (f"{cat}/{name}" if nested else name)
                for s in range(1, 6):
                    _jpeg(base / str(s) / wnid / f, (224, 224), seed * 10 + s)
            seed += 1


class MeanColour(nn.Module):
    """A tiny classifier of any image size: mean colour -> logits (fixed weights)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, classes, generator=g) * 20)
        self.b = nn.Parameter(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.w + self.b


def _loaded(model: nn.Module) -> LoadedModel:
    return LoadedModel(model.eval(), "mean-colour", "python", "0" * 64, "python")


# --- CIFAR-10-C ----------------------------------------------------------------------------------


def test_cifar10_c_reads_rows_of_each_severity(tmp_path: Path) -> None:
    arrays = _cifar10_c(tmp_path)
    ds = load_dataset("cifar10-c", root=tmp_path)
    clean = load_dataset("cifar10", root=tmp_path)
    assert len(ds) == N_C and ds.info.name == "cifar10-c" and ds.info.preset == "cifar"
    assert torch.equal(ds.targets, clean.targets[:N_C])
    assert torch.equal(ds.get_batch([1, 5])[0], clean.get_batch([1, 5])[0])  # clean = test batch
    rel = ds.released
    assert rel is not None and "fog" in rel and "rotation" not in rel
    assert rel.source("fog") == "CIFAR-10-C/fog.npy"
    got = rel.get_batch("fog", 3, [0, 6])
    want = torch.from_numpy(arrays["fog"][[2 * N_C, 2 * N_C + 6]]).permute(0, 3, 1, 2) / 255
    assert got.shape == (2, 3, 32, 32) and torch.equal(got, want.float())


def test_cifar10_c_missing_file_is_one_sentence_naming_the_path(tmp_path: Path) -> None:
    _cifar10_c(tmp_path)
    ds = load_dataset("cifar10-c", root=tmp_path)
    assert ds.released is not None
    with pytest.raises(DataError) as err:
        ds.released.check("contrast")
    msg = str(err.value)
    assert str(tmp_path / "CIFAR-10-C" / "contrast.npy") in msg and "\n" not in msg


@pytest.mark.parametrize(
    "damage, words",
    [
        ("no-clean", "test_batch"),
        ("no-labels", "labels.npy"),
        ("labels", "differ"),
        ("shape", "expected uint8"),
        ("truncated", "truncated"),
    ],
)
def test_cifar10_c_bad_files_name_the_problem(tmp_path: Path, damage: str, words: str) -> None:
    _cifar10_c(tmp_path)
    folder = tmp_path / "CIFAR-10-C"
    if damage == "no-clean":
        (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    elif damage == "no-labels":
        (folder / "labels.npy").unlink()
    elif damage == "labels":
        labels = np.load(folder / "labels.npy")
        labels[3 * N_C] = (labels[3 * N_C] + 1) % 10  # severity 4's first label
        np.save(folder / "labels.npy", labels)
    elif damage == "shape":
        np.save(folder / "fog.npy", np.zeros((5 * N_C, 32, 32), np.uint8))
    else:
        raw = (folder / "fog.npy").read_bytes()
        (folder / "fog.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=words):
        ds = load_dataset("cifar10-c", root=tmp_path)
        assert ds.released is not None
        ds.released.check("fog")


def test_cifar10_c_has_only_a_test_split_and_needs_a_root(tmp_path: Path) -> None:
    _cifar10_c(tmp_path)
    with pytest.raises(DataError, match="only a test split"):
        load_dataset("cifar10-c", "train", root=tmp_path)
    with pytest.raises(DataError, match="CIFAR-10-C"):
        load_dataset("cifar10-c")


def test_cli_evaluates_zoo_standard_on_cifar10_c(tmp_path: Path) -> None:
    """The issue's command: fog read from fog.npy (accuracies from the file), rotation computed."""
    arrays = _cifar10_c(tmp_path)
    out = tmp_path / "res"
    args = ["evaluate", "zoo:standard", "--dataset", "cifar10-c", "--data-root", str(tmp_path)]
    res = CliRunner().invoke(cli, [*args, "-p", "fog", "-p", "rotation", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads(next(out.glob("*.json")).read_text())
    assert rec["dataset"]["name"] == "cifar10-c" and rec["dataset"]["size"] == N_C
    fog, rot = rec["perturbations"]["fog"], rec["perturbations"]["rotation"]
    assert fog["source"] == "CIFAR-10-C/fog.npy" and "source" not in rot
    model = load_model("zoo:standard").model.eval()
    labels = load_dataset("cifar10-c", root=tmp_path).targets
    for s, sev in enumerate(fog["severities"], 1):
        x = torch.from_numpy(arrays["fog"][(s - 1) * N_C : s * N_C]).permute(0, 3, 1, 2) / 255
        with torch.no_grad():
            k = int((model(x.float()).argmax(1) == labels).sum())
        assert sev["severity"] == s and sev["n_correct"] == k

    missing = CliRunner().invoke(cli, [*args, "-p", "contrast", "--out", str(out)])
    assert missing.exit_code != 0
    line = missing.output.strip()
    assert line.startswith("Error:") and "\n" not in line
    assert str(tmp_path / "CIFAR-10-C" / "contrast.npy") in line


def test_released_columns_resume_like_any_column(tmp_path: Path) -> None:
    _cifar10_c(tmp_path, ("fog", "contrast"))
    model = _loaded(MeanColour(10))
    cfg = EvalConfig(dataset="cifar10-c", data_root=str(tmp_path), perturbations=("fog",))
    first, path = evaluate_record(model, cfg, out=tmp_path / "r", progress=False)
    both = EvalConfig(
        dataset="cifar10-c", data_root=str(tmp_path), perturbations=("fog", "contrast")
    )
    second, _ = evaluate_record(model, both, out=tmp_path / "r", progress=False)
    assert second.perturbations["fog"] == first.perturbations["fog"]  # kept, not recomputed
    assert second.perturbations["contrast"].source == "CIFAR-10-C/contrast.npy"


def test_dry_run_counts_reading_not_generating(tmp_path: Path) -> None:
    _cifar10_c(tmp_path)
    plan = plan_evaluation(
        MeanColour(10),
        dataset="cifar10-c",
        data_root=str(tmp_path),
        perturbations=("fog", "rotation"),
        baseline="none",
        out=tmp_path / "r",
    )
    rows = {c.what: c for c in plan.counts}
    assert rows["fog"].corrupted == 0 and rows["fog"].forward == 5 * N_C
    assert rows["rotation"].corrupted == 5 * N_C
    assert "fog (CIFAR-10-C/fog.npy)" in str(plan)
    with pytest.raises(DataError, match="contrast.npy"):
        plan_evaluation(
            MeanColour(10),
            dataset="cifar10-c",
            data_root=str(tmp_path),
            perturbations=("contrast",),
            baseline="none",
            out=tmp_path / "r",
        )


# --- ImageNet-C (flat and category folders), Tiny-ImageNet-C, ImageNet-3DCC ----------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "category-folders"])
def test_imagenet_c_both_layouts(tmp_path: Path, nested: bool) -> None:
    _imagenet_c(tmp_path, nested=nested)
    ds = load_dataset("imagenet-c", root=tmp_path)
    assert len(ds) == 6 and ds.info.classes == WNIDS and ds.info.image_size == 224
    assert ds.released is not None
    want = "ImageNet-C/weather/fog" if nested else "ImageNet-C/fog"
    assert ds.released.source("fog") == want
    model = _loaded(MeanColour(3))
    cfg = EvalConfig(dataset="imagenet-c", data_root=str(tmp_path), perturbations=("fog",))
    rec, _ = evaluate_record(model, cfg, out=tmp_path / "r", progress=False)
    entry = rec.perturbations["fog"]
    assert entry.source == want and entry.family == "weather"
    for sev in entry.severities:  # each severity reads its own folder, image by file name
        xs = []
        for wnid, files in VAL_FILES.items():
            for f in files:
                base = tmp_path / want / str(sev.severity) / wnid / f
                arr = np.asarray(Image.open(base).convert("RGB"))
                xs.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
        with torch.no_grad():
            pred = model.model(torch.stack(xs)).argmax(1)
        assert sev.n_correct == int((pred == ds.targets).sum())


def test_imagenet_c_missing_files_name_the_expected_paths(tmp_path: Path) -> None:
    _imagenet_c(tmp_path, nested=False)
    ds = load_dataset("imagenet-c", root=tmp_path)
    assert ds.released is not None
    with pytest.raises(DataError) as err:
        ds.released.check("contrast")
    msg = str(err.value)
    assert str(tmp_path / "ImageNet-C" / "contrast") in msg
    assert str(tmp_path / "ImageNet-C" / "digital" / "contrast") in msg and "\n" not in msg
    gone = tmp_path / "ImageNet-C" / "fog" / "2" / WNIDS[1] / VAL_FILES[WNIDS[1]][0]
    gone.unlink()
    with pytest.raises(DataError, match=str(gone)):
        ds.released.get_batch("fog", 2, [2])
    for f in (tmp_path / "val").rglob("*.JPEG"):
        f.unlink()
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagenet-c", root=tmp_path)
    with pytest.raises(DataError, match="val"):
        load_dataset("imagenet-c", root=tmp_path / "elsewhere")


def _tiny(root: Path, per_class: int = 2) -> None:
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(WNIDS)) + "\n")  # any order: sorted
    rows = []
    for k, wnid in enumerate(WNIDS):
        for i in range(per_class):
            name = f"val_{10 * i + k}.JPEG"
            _jpeg(base / "val" / "images" / name, (64, 64), 100 + 10 * k + i)
            rows.append(f"{name}\t{wnid}\t0\t0\t63\t63")
            for s in range(1, 6):  # the release's own file names (ImageNet val crops)
                _jpeg(root / "Tiny-ImageNet-C" / "fog" / str(s) / wnid / f"c_{i}.JPEG", (64, 64), s)
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def test_tiny_imagenet_c_matches_images_class_by_class(tmp_path: Path) -> None:
    _tiny(tmp_path)
    ds = load_dataset("tiny-imagenet-c", root=tmp_path)
    assert ds.info.classes == WNIDS and ds.info.image_size == 64 and ds.info.preset == "tiny"
    assert ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.released is not None and ds.released.source("fog") == "Tiny-ImageNet-C/fog"
    ds.released.check("fog")
    x = ds.released.get_batch("fog", 4, [3])
    want = np.asarray(Image.open(tmp_path / "Tiny-ImageNet-C/fog/4" / WNIDS[1] / "c_1.JPEG"))
    assert torch.equal(x[0], torch.from_numpy(want.copy()).permute(2, 0, 1).float() / 255)
    (tmp_path / "Tiny-ImageNet-C/fog/5" / WNIDS[2] / "c_0.JPEG").unlink()
    again = load_dataset("tiny-imagenet-c", root=tmp_path).released
    assert again is not None
    with pytest.raises(DataError, match="holds 1 images but the clean set has 2"):
        again.check("fog")
    _jpeg(tmp_path / "Tiny-ImageNet-C/fog/1/n09999999/x.JPEG", (64, 64), 0)  # Zenodo's frost bug
    third = load_dataset("tiny-imagenet-c", root=tmp_path).released
    assert third is not None
    with pytest.raises(DataError, match="class folders that the clean set lacks"):
        third.check("fog")


def test_imagenet_3dcc_names_exist_only_as_files(tmp_path: Path) -> None:
    for wnid, files in VAL_FILES.items():
        for k, f in enumerate(files):
            _jpeg(tmp_path / "val" / wnid / f, (256, 256), k)
            for s in range(1, 6):
                _jpeg(tmp_path / "ImageNet-3DCC" / "near_focus" / str(s) / wnid / f, (224, 224), s)
    default = EvalConfig(dataset="imagenet-3dcc").names()
    assert default[-12:][0] == "near_focus" and "fog_3d" in default and "fog" in default
    cfg = EvalConfig(
        dataset="imagenet-3dcc", data_root=str(tmp_path), perturbations=("near_focus",)
    )
    assert cfg.names() == ["near_focus"]
    with pytest.raises(KeyError):
        EvalConfig(dataset="imagenet-c", perturbations=("near_focus",)).names()
    rec, _ = evaluate_record(_loaded(MeanColour(3)), cfg, out=tmp_path / "r", progress=False)
    entry = rec.perturbations["near_focus"]
    assert entry.family == "blur" and entry.source == "ImageNet-3DCC/near_focus"
    assert [s.severity for s in entry.severities] == [1, 2, 3, 4, 5]
    assert rec.clean is not None and rec.clean.n == 6
