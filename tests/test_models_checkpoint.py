from __future__ import annotations

import os
import pickle

import pytest
import torch

from robench.models import create_model, list_models
from robench.models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


@pytest.mark.parametrize("name", ["small_cnn", "allconv", "vgg11", "resnet18_cifar"])
def test_small_models_take_unit_range_images(name: str) -> None:
    m = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_imagenet_models(name: str) -> None:
    m = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 224, 224)).shape == (1, 5)
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_registry_lists_every_architecture_and_normalises_inside() -> None:
    assert {
        "small_cnn",
        "allconv",
        "vgg11",
        "resnet18_cifar",
        "resnet50",
        "resnext50_32x4d",
    } <= set(list_models())
    m = create_model("small_cnn", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(m.normalize(x), (x - 0.5) / 0.25)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("small_cnn", num_classes=0)
    grey = create_model("small_cnn", in_chans=1).eval()
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def _meta(m: torch.nn.Module) -> CheckpointMeta:
    return CheckpointMeta(
        arch="small_cnn",
        num_classes=10,
        input_size=32,
        arch_kwargs={"width": 8},
        mean=tuple(m.normalize.mean.flatten().tolist()),
        std=tuple(m.normalize.std.flatten().tolist()),
        dataset="shapes",
        defense="standard",
        train_config={"epochs": 1, "seed": 0},
    )


def test_checkpoint_roundtrip_weights_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = create_model("small_cnn", width=8).eval()
    path = tmp_path / "m.pt"
    digest = save_checkpoint(m, path, _meta(m))
    assert len(digest) == 64
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["arch_kwargs"] == {"width": 8} and raw["meta"]["dataset"] == "shapes"
    m2, meta = load_checkpoint(path)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert meta.defense == "standard" and not m2.training
    assert oct(os.stat(path).st_mode & 0o777) != oct(
        0o600
    )  # readable like any file, not tmp-private


def test_checkpoint_errors_are_one_sentence(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    m = create_model("small_cnn", width=8)
    path = tmp_path / "m.pt"
    save_checkpoint(m, path, _meta(m))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    raw = tmp_path / "raw.pt"
    torch.save(m.state_dict(), raw)
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(raw)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.target, "w"))


def test_pickled_objects_are_refused_and_never_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(str(marker))}, bad, pickle_module=pickle)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing"):
        read_checkpoint(bad)
    assert not marker.exists()
    module_file = tmp_path / "module.pt"
    torch.save(create_model("small_cnn", width=8), module_file)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        read_checkpoint(module_file)
