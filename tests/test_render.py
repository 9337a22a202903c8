"""``robench render``: the released layouts written with robench's corruptions, and read back.

The round trip: evaluating a render (``--dataset cifar10-c`` / ``imagenet-c``) gives exactly the
accuracies of the on-the-fly evaluation of the same images and seed with the storage applied
(``stored``: the uint8 cast, plus the JPEG at quality 85 for ``imagenet-c``). The on-the-fly
corrupted images used here are checked against ``evaluate_record`` on the source dataset itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench import perturbations as P
from robench.cli import main as cli
from robench.data import ArrayDataset, DatasetInfo, load_dataset
from robench.evaluation import EvalConfig, evaluate_record
from robench.evaluation import render as R
from robench.evaluation.loop import select_indices
from robench.models.loading import LoadedModel, load_model

NAMES = ("fog", "gaussian_noise", "contrast")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def test_quantize_truncates_like_np_uint8() -> None:
    k = torch.arange(256, dtype=torch.uint8)
    x = k.float().div(255.0).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    assert torch.equal(R.quantize(x)[0, 0, :, 0], k)  # an unchanged pixel comes back as itself
    y = torch.tensor([0.99999, 0.5, -0.1, 1.5]).view(1, 1, 2, 2)
    assert R.quantize(y).flatten().tolist() == [254, 127, 0, 255]


def test_cifar10_c_round_trip_equals_on_the_fly_evaluation(tmp_path: Path) -> None:
    seed, n = 3, 48
    out = tmp_path / "render"
    res = R.render("shapes", "cifar10-c", out, perturbations=NAMES, n_images=n, seed=seed)
    assert res.dataset == "cifar10-c" and res.written == len(NAMES) + 3  # + labels, batch, meta
    model = load_model("zoo:standard")
    kw = {"perturbations": NAMES, "seed": seed, "batch_size": n}
    back, _ = evaluate_record(
        model,
        EvalConfig(dataset="cifar10-c", data_root=str(out), n_images=None, **kw),
        out=tmp_path / "r1",
        progress=False,
    )
    fly, _ = evaluate_record(
        model, EvalConfig(dataset="shapes", n_images=n, **kw), out=tmp_path / "r2", progress=False
    )
    ds = load_dataset("shapes")
    idx = select_indices(len(ds), n, seed, "shapes")
    assert np.array_equal(res.indices, idx)
    x, y = ds.get_batch(torch.from_numpy(idx))
    assert back.clean is not None and fly.clean is not None
    assert np.array_equal(back.clean.bits(), fly.clean.bits())
    net = model.model.eval()
    for name in NAMES:
        assert back.perturbations[name].source == f"CIFAR-10-C/{name}.npy"
        for s, b, f in zip(
            (1, 2, 3, 4, 5),
            back.perturbations[name].severities,
            fly.perturbations[name].severities,
            strict=True,
        ):
            xc = P.get(name)(x, s, seed=seed, indices=idx.tolist(), preset="cifar")
            assert np.array_equal(f.bits(), (_predict(net, xc) == y).numpy())  # = evaluate's
            on_the_fly_stored = (_predict(net, R.stored(xc, "cifar10-c")) == y).numpy()
            assert np.array_equal(b.bits(), on_the_fly_stored)
            assert b.accuracy == on_the_fly_stored.mean()


def _photos(n: int = 6, side: int = 224) -> ArrayDataset:
    """Smooth colour images of 3 classes (mean colour decides the class), as an ArrayDataset."""
    g = np.random.default_rng(0)
    labels = np.arange(n) % 3
    base = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200]], dtype=np.float64)
    yy, xx = np.mgrid[0:side, 0:side] / side
    images = np.stack(
        [
            np.clip(
                base[c] + 40 * np.sin(6 * xx + g.uniform(0, 6))[..., None] * g.uniform(0.5, 1, 3),
                0,
                255,
            )
            + 20 * yy[..., None]
            for c in labels
        ]
    )
    info = DatasetInfo("photos", 3, side, 3, "imagenet", ("red", "green", "blue"))
    return ArrayDataset(np.clip(images, 0, 255).astype(np.uint8), labels, info)


class MeanColour(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.eye(3) * 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=(2, 3)) - 0.45) @ self.w


def test_imagenet_c_round_trip_equals_on_the_fly_with_jpeg(tmp_path: Path) -> None:
    ds, seed, names = _photos(), 1, ("fog", "contrast")
    out = tmp_path / "render"
    res = R.render(ds, "imagenet-c", out, perturbations=names, seed=seed)
    assert res.dataset == "imagenet-c"
    assert sorted(p.name for p in (out / "val").iterdir()) == ["0_red", "1_green", "2_blue"]
    jpeg = out / "ImageNet-C" / "fog" / "3" / "2_blue" / "00000002.JPEG"
    assert jpeg.is_file() and jpeg.read_bytes()[:2] == b"\xff\xd8"
    model = LoadedModel(MeanColour().eval(), "mean", "python", "0" * 64, "python")
    back, _ = evaluate_record(
        model,
        EvalConfig(dataset="imagenet-c", data_root=str(out), perturbations=names, seed=seed),
        out=tmp_path / "r",
        progress=False,
    )
    x, y = ds.get_batch(torch.arange(len(ds)))
    order = np.argsort(y.numpy(), kind="stable")  # the render lists images class by class
    assert back.clean is not None
    assert np.array_equal(back.clean.bits(), (_predict(model.model, x) == y).numpy()[order])
    for name in names:
        assert back.perturbations[name].source == f"ImageNet-C/{name}"
        for s, b in enumerate(back.perturbations[name].severities, 1):
            xc = P.get(name)(x, s, seed=seed, indices=list(range(len(ds))), preset="imagenet")
            want = (_predict(model.model, R.stored(xc, "imagenet-c")) == y).numpy()[order]
            assert np.array_equal(b.bits(), want)


def test_render_resumes_and_writes_each_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "render"
    first = R.render("shapes", "cifar10-c", out, perturbations=NAMES[:2], n_images=20)
    folder = out / "CIFAR-10-C"
    digests = {p.name: _digest(p) for p in folder.iterdir()}
    (folder / "fog.npy").unlink()
    again = R.render("shapes", "cifar10-c", out, perturbations=NAMES[:2], n_images=20)
    assert again.written == 1 and again.kept == first.written - 1
    assert {p.name: _digest(p) for p in folder.iterdir()} == digests  # deterministic

    calls = {"n": 0}
    real = R.quantize

    def dies(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(R, "quantize", dies)
    with pytest.raises(KeyboardInterrupt):
        R.render("shapes", "cifar10-c", out, perturbations=("contrast",), n_images=20, batch_size=8)
    assert not (folder / "contrast.npy").exists()
    assert not list(folder.glob(".*.tmp"))  # the half-written column left nothing behind
    monkeypatch.setattr(R, "quantize", real)
    R.render("shapes", "cifar10-c", out, perturbations=("contrast",), n_images=20, batch_size=8)
    arr = np.load(folder / "contrast.npy")
    assert arr.shape == (100, 32, 32, 3) and arr.dtype == np.uint8

    with pytest.raises(ValueError, match="other settings"):
        R.render("shapes", "cifar10-c", out, perturbations=("fog",), n_images=20, seed=1)


def test_render_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="224 px"):
        R.render("shapes", "imagenet-c", tmp_path / "a", perturbations=("fog",), n_images=2)
    with pytest.raises(ValueError, match="computed by evaluate"):
        R.render("shapes", "cifar10-c", tmp_path / "b", perturbations=("rotation",), n_images=2)
    with pytest.raises(ValueError, match="format must be"):
        R.render("shapes", "cifar10", tmp_path / "c")
    res = R.render(_photos(3), "cifar10-c", tmp_path / "d", perturbations=("contrast",))
    assert res.dataset is None  # a 224 px .npy render has no CIFAR test batch to read it back
    assert np.load(tmp_path / "d" / "CIFAR-10-C" / "contrast.npy").shape == (15, 224, 224, 3)


def test_cli_render_then_evaluate(tmp_path: Path) -> None:
    out = tmp_path / "c10c"
    args = ["render", "--dataset", "shapes", "--format", "cifar10-c", "--out", str(out)]
    res = CliRunner().invoke(cli, [*args, "-p", "fog", "--n-images", "16"])
    assert res.exit_code == 0, res.output
    assert "--dataset cifar10-c --data-root" in res.output
    settings = json.loads((out / "render.json").read_text())
    assert settings["n_images"] == 16 and settings["format"] == "cifar10-c"
    bad = CliRunner().invoke(cli, [*args, "-p", "rotation"])
    assert bad.exit_code != 0 and bad.output.startswith("Error:") and "rotation" in bad.output
    ev = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "zoo:standard",
            "--dataset",
            "cifar10-c",
            "--data-root",
            str(out),
            "-p",
            "fog",
            "--out",
            str(tmp_path / "r"),
            "--no-plots",
        ],
    )
    assert ev.exit_code == 0, ev.output
