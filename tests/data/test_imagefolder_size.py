"""ImageFolder at any size: ``image_size`` crops to N px and the corruption preset follows N."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robench import perturbations as P
from robench.data import check_image_size, load_dataset
from robench.data.real import imagefolder_resize, preset_of_side

RNG = np.random.default_rng(7)


def _png(path: Path, width: int, height: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_imagefolder_at_64_px_is_tiny_and_keeps_64_px_images_as_they_are(tmp_path: Path) -> None:
    same = _png(tmp_path / "val" / "ant" / "a.png", 64, 64)
    _png(tmp_path / "val" / "bee" / "b.png", 96, 80)  # landscape: resized to 64 high, cropped
    ds = load_dataset("imagefolder", "test", root=tmp_path, image_size=64)
    assert (ds.info.image_size, ds.info.preset) == (64, "tiny")
    x, y = ds.get_batch([0, 1])
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [0, 1]
    assert torch.equal(x[0], torch.from_numpy(same).permute(2, 0, 1).float() / 255)  # untouched
    with Image.open(tmp_path / "val" / "bee" / "b.png") as im:
        want = im.resize((76, 64), Image.Resampling.BILINEAR).crop((6, 0, 70, 64))
    assert torch.equal(x[1], torch.from_numpy(np.asarray(want).copy()).permute(2, 0, 1) / 255)


def test_the_preset_follows_the_side_and_224_stays_imagenet(tmp_path: Path) -> None:
    _png(tmp_path / "val" / "ant" / "a.png", 40, 30)
    sides = {32: "cifar", 64: "tiny", 128: "tiny", 160: "imagenet"}
    for side, preset in sides.items():
        info = load_dataset("imagefolder", root=tmp_path, image_size=side).info
        assert (info.image_size, info.preset) == (side, preset)
    for size in (None, 224):
        ds = load_dataset("imagefolder", root=tmp_path, image_size=size)
        assert (ds.info.image_size, ds.info.preset, getattr(ds, "resize", None)) == (
            224,
            "imagenet",
            256,
        )
    assert imagefolder_resize(224) == 256 and imagefolder_resize(64) == 64


def test_the_data_rule_is_the_perturbations_rule() -> None:
    for side in range(1, 600):
        assert preset_of_side(side) == P.preset_for_size(side), side


def test_bad_image_sizes_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^dataset 'cifar10' has 32 px images; .*imagefolder$"):
        check_image_size("cifar10", 64)
    with pytest.raises(ValueError, match="at least 8 px, got 4"):
        check_image_size("imagefolder", 4)
    assert check_image_size("cifar10", 32) is None and check_image_size("imagefolder", 224) is None
    with pytest.raises(ValueError, match="has 32 px images"):
        load_dataset("cifar10", root=tmp_path, image_size=48)
