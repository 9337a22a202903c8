"""``evaluate --preset``, ``--image-size`` and ``--as-released``, and what the record keeps of them.

``--as-released`` passes each computed corruption through the released sets' storage (the uint8
cast; the JPEG at quality 85 for the ``tiny`` and ``imagenet`` presets) with the same per-image
seeds, so it equals evaluating a ``robench render`` of the same images, image by image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from robench import evaluate
from robench import perturbations as P
from robench.cli import main as cli
from robench.data import load_dataset
from robench.data.storage import storage_of, stored
from robench.evaluation import EvalConfig, evaluate_record
from robench.evaluation import render as R
from robench.evaluation.loop import select_indices
from robench.evaluation.record import Record
from robench.models.loading import LoadedModel, load_model

NAMES = ("fog", "contrast")


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


class PixelChecksum(nn.Module):
    """Class = the sum of the 0-255 pixel values mod 3: any change of a pixel moves it.

    A stand-in for "the model saw exactly these pixels": a missing uint8 cast or JPEG round trip
    changes about two predictions in three.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = (x.double() * 255).round().sum(dim=(1, 2, 3))
        return nn.functional.one_hot((total % 3).long(), 3).float()


def _checksum() -> LoadedModel:
    return LoadedModel(PixelChecksum().eval(), "checksum", "python", "0" * 64, "python")


def _folder(root: Path, side: int, per_class: int = 2) -> Path:
    """An ImageFolder tree of smooth PNGs (3 colour classes), ``side`` x ``side`` px."""
    g = np.random.default_rng(5)
    base = np.array([[190, 70, 70], [70, 190, 70], [70, 70, 190]], dtype=np.float64)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for c, name in enumerate(("a_red", "b_green", "c_blue")):
        for k in range(per_class):
            wave = 50 * np.sin(5 * xx + g.uniform(0, 6))[..., None] * g.uniform(0.4, 1, 3)
            img = np.clip(base[c] + wave + 25 * yy[..., None], 0, 255).astype(np.uint8)
            path = root / "val" / name / f"img{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return root


def test_as_released_on_shapes_equals_evaluating_its_cifar10_c_render(tmp_path: Path) -> None:
    seed, n = 2, 24
    out = tmp_path / "render"
    res = R.render("shapes", "cifar10-c", out, perturbations=NAMES, n_images=n, seed=seed)
    model = load_model("zoo:standard")
    kw = {"perturbations": NAMES, "seed": seed, "batch_size": 16}
    back, _ = evaluate_record(
        model,
        EvalConfig(dataset=res.dataset or "", data_root=str(out), n_images=None, **kw),
        out=tmp_path / "r1",
        progress=False,
    )
    fly, _ = evaluate_record(
        model,
        EvalConfig(dataset="shapes", n_images=n, as_released=True, **kw),
        out=tmp_path / "r2",
        progress=False,
    )
    assert fly.run_key.as_released and fly.config.as_released and not back.run_key.as_released
    assert back.clean is not None and fly.clean is not None
    assert np.array_equal(back.clean.bits(), fly.clean.bits())  # clean images stay as loaded
    for name in NAMES:
        assert back.perturbations[name].source is not None  # read from the render's file
        assert fly.perturbations[name].source is None  # computed, then stored as released
        for b, f in zip(
            back.perturbations[name].severities, fly.perturbations[name].severities, strict=True
        ):
            assert np.array_equal(b.bits(), f.bits()), (name, b.severity)
    # and it is the on-the-fly corruption stored as uint8, not the float one
    ds = load_dataset("shapes")
    idx = select_indices(len(ds), n, seed, "shapes")
    x, y = ds.get_batch(torch.from_numpy(idx))
    xc = P.get("fog")(x, 5, seed=seed, indices=idx.tolist(), preset="cifar")
    want = (_predict(model.model.eval(), stored(xc, "cifar10-c")) == y).numpy()
    assert np.array_equal(fly.perturbations["fog"].severities[4].bits(), want)


def test_as_released_at_224_equals_evaluating_its_imagenet_c_render(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", 224)
    seed, model = 4, _checksum()
    out = tmp_path / "render"
    res = R.render("imagefolder", "imagenet-c", out, perturbations=NAMES, seed=seed, data_root=root)
    assert res.dataset == "imagenet-c"
    back, _ = evaluate_record(
        model,
        EvalConfig(dataset="imagenet-c", data_root=str(out), perturbations=NAMES, seed=seed),
        out=tmp_path / "r1",
        progress=False,
    )
    fly, _ = evaluate_record(
        model,
        EvalConfig(
            dataset="imagefolder",
            data_root=str(root),
            perturbations=NAMES,
            seed=seed,
            as_released=True,
        ),
        out=tmp_path / "r2",
        progress=False,
    )
    assert fly.run_key.preset == "imagenet" and storage_of("imagenet") == "imagenet-c"
    for name in NAMES:  # the render lists the images in the ImageFolder's order
        for b, f in zip(
            back.perturbations[name].severities, fly.perturbations[name].severities, strict=True
        ):
            assert np.array_equal(b.bits(), f.bits()), (name, b.severity)


def test_imagefolder_at_64_px_gets_tiny_and_its_jpeg_storage(tmp_path: Path) -> None:
    root = _folder(tmp_path, 64)
    model, seed = _checksum(), 1
    cfg = EvalConfig(
        dataset="imagefolder",
        data_root=str(root),
        perturbations=("fog",),
        seed=seed,
        image_size=64,
        as_released=True,
    )
    rec, path = evaluate_record(model, cfg, out=tmp_path / "r", progress=False)
    assert (rec.dataset.image_size, rec.dataset.preset, rec.run_key.preset) == (64, "tiny", "tiny")
    assert rec.run_key.image_size == 64 and rec.config.image_size == 64
    assert rec.config.preset is None  # not asked: it followed the side
    ds = load_dataset("imagefolder", root=root, image_size=64)
    x, y = ds.get_batch(torch.arange(len(ds)))
    texts = P.get("fog").parameter_text("tiny")
    for sev in rec.perturbations["fog"].severities:
        xc = P.get("fog")(x, sev.severity, seed=seed, indices=list(range(len(ds))), preset="tiny")
        want = (_predict(model.model, stored(xc, "imagenet-c")) == y).numpy()  # uint8 + JPEG
        assert np.array_equal(sev.bits(), want) and sev.parameter == texts[sev.severity - 1]
    again = Record.from_json(path.read_text(encoding="utf-8"))
    assert again.run_key == rec.run_key and again.config == rec.config


def test_preset_is_recorded_and_changes_the_corruption(tmp_path: Path) -> None:
    model = load_model("zoo:standard")
    kw = {"perturbations": ("fog",), "n_images": 60, "seed": 0, "batch_size": 60}
    runs = {}
    for preset in ("cifar", "imagenet"):
        runs[preset], _ = evaluate_record(
            model,
            EvalConfig(dataset="shapes", preset=preset, **kw),
            out=tmp_path / preset,
            progress=False,
        )
    rec = runs["imagenet"]
    assert (rec.run_key.preset, rec.config.preset, rec.dataset.preset) == ("imagenet",) * 3
    sevs = {p: r.perturbations["fog"].severities for p, r in runs.items()}
    assert [s.parameter for s in sevs["imagenet"]] == list(P.get("fog").parameter_text("imagenet"))
    assert [s.parameter for s in sevs["cifar"]] != [s.parameter for s in sevs["imagenet"]]
    assert any(
        not np.array_equal(a.bits(), b.bits())
        for a, b in zip(sevs["cifar"], sevs["imagenet"], strict=True)
    )
    default, _ = evaluate_record(
        model, EvalConfig(dataset="shapes", **kw), out=tmp_path / "cifar", progress=False
    )
    assert default.created == runs["cifar"].created  # the dataset's preset: the same run, resumed


def test_another_preset_or_storage_never_resumes_a_record(tmp_path: Path) -> None:
    model = load_model("zoo:standard")
    kw = {"dataset": "shapes", "perturbations": ("contrast",), "n_images": 16, "batch_size": 16}
    first, path = evaluate_record(model, EvalConfig(**kw), out=tmp_path, progress=False)
    assert "as_released" not in first.to_dict()["run_key"]  # older files' keys stay equal
    keys = [first.run_key]
    for n, change in enumerate(({"preset": "tiny"}, {"as_released": True}), 1):
        rec, again = evaluate_record(
            model, EvalConfig(**kw, **change), out=tmp_path, progress=False
        )
        assert again == path and rec.run_key not in keys
        keys.append(rec.run_key)
        assert len(list(tmp_path.glob("*.old"))) == n  # the earlier record is set aside, not reused
    assert keys[1].preset == "tiny" and keys[2].as_released and keys[2].preset == "cifar"
    same, _ = evaluate_record(
        model, EvalConfig(**kw, as_released=True), out=tmp_path, progress=False
    )
    assert same.created == rec.created and len(list(tmp_path.glob("*.old"))) == 2  # resumed


def test_bad_values_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^preset must be one of cifar, tiny, imagenet, got 'x'$"):
        evaluate(nn.Flatten(), preset="x", out=tmp_path)
    with pytest.raises(ValueError, match="has 32 px images"):
        EvalConfig(dataset="cifar10", image_size=64)
    with pytest.raises(ValueError, match="positive whole number"):
        EvalConfig(dataset="imagefolder", image_size=6.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JPEG storage holds RGB images; these have 1 channel"):
        stored(torch.rand(1, 1, 8, 8), storage_of("tiny"))
    with pytest.raises(ValueError, match="format must be one of cifar10-c, imagenet-c"):
        stored(torch.rand(1, 3, 8, 8), "png")
    run = CliRunner()
    res = run.invoke(cli, ["evaluate", "zoo:standard", "--preset", "huge", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "'huge' is not one of 'cifar', 'tiny', 'imagenet'" in res.output
    res = run.invoke(
        cli, ["evaluate", "zoo:standard", "--dataset", "cifar10", "--image-size", "64"]
    )
    assert res.exit_code == 1 and res.output.startswith("Error: dataset 'cifar10' has 32 px")
    assert res.output.count("\n") == 1 and "Traceback" not in res.output


def test_cli_as_released_and_preset_reach_the_record(tmp_path: Path) -> None:
    args = ["evaluate", "zoo:standard", "-p", "contrast", "--n-images", "16", "--batch-size", "16"]
    args += ["--baseline", "none", "--out", str(tmp_path), "--no-plots"]
    dry = CliRunner().invoke(cli, [*args, "--preset", "imagenet", "--as-released", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    res = CliRunner().invoke(cli, [*args, "--preset", "imagenet", "--as-released"])
    assert res.exit_code == 0, res.output
    assert "preset imagenet, as released" in res.output
    (path,) = tmp_path.glob("*.json")
    rec = Record.from_json(path.read_text(encoding="utf-8"))
    assert (rec.config.preset, rec.config.as_released, rec.run_key.as_released) == (
        "imagenet",
        True,
        True,
    )
