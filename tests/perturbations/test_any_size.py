"""Any image size: with no preset the parameters follow the image, and every corruption takes H x W.

The per-kernel H x W checks against transcriptions of the originals live with each kernel's tests
(test_blur.py, test_weather.py, test_digital.py); the comparison with imagecorruptions on
non-square photos is in test_fidelity.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from robench import perturbations as P
from robench.transforms import Corrupt

CORRUPTIONS = P.names(kind="corruption")


def _images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth content plus texture on the 8-bit grid, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, max(1, height // 8), max(1, width // 8), generator=g)
    x = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear")
    x = (0.85 * x + 0.15 * torch.rand(n, 3, height, width, generator=g)).clamp(0, 1)
    return torch.round(x * 255) / 255


def _kw(spec: Any, n: int, height: int, width: int) -> dict[str, Any]:
    """The boxes of a corruption that needs them (one box inside each image), else nothing."""
    if not spec.needs_boxes:
        return {}
    return {"boxes": torch.tensor([[0.2 * width, 0.25 * height, 0.7 * width, 0.8 * height]] * n)}


# ------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_no_preset_on_224px_photos_is_the_imagenet_preset(name: str) -> None:
    spec = P.get(name)
    x = _images(1, 224, 224, seed=1)
    kw = _kw(spec, 1, 224, 224)
    sev = spec.severities[2]
    assert torch.equal(spec(x, sev, seed=0, **kw), spec(x, sev, seed=0, preset="imagenet", **kw))


@pytest.mark.parametrize(
    ("shape", "preset"),
    [
        ((32, 32), "cifar"),
        ((48, 48), "cifar"),
        ((49, 49), "tiny"),
        ((64, 64), "tiny"),
        ((128, 128), "tiny"),
        ((129, 129), "imagenet"),
        ((224, 224), "imagenet"),
        ((200, 300), "imagenet"),
        ((300, 100), "tiny"),
        ((40, 1000), "cifar"),
    ],
)
def test_resolve_preset_follows_the_shorter_side(shape: tuple[int, int], preset: str) -> None:
    assert P.resolve_preset(torch.zeros(2, 3, *shape)) == preset
    assert P.resolve_preset(torch.zeros(3, *shape)) == preset  # one image
    assert P.resolve_preset(shape) == preset
    assert P.resolve_preset(min(shape)) == preset == P.preset_for_size(min(shape))


def test_an_explicit_preset_wins_and_is_checked() -> None:
    assert P.resolve_preset(torch.zeros(1, 3, 224, 224), "cifar") == "cifar"
    assert P.resolve_preset(32, "imagenet") == "imagenet"
    with pytest.raises(ValueError, match="preset must be one of"):
        P.resolve_preset(224, "mnist")
    with pytest.raises(ValueError, match="H, W"):
        P.resolve_preset(torch.zeros(5))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (40, 90), (96, 200)])
def test_no_preset_uses_the_table_resolve_preset_reads_back(height: int, width: int) -> None:
    x = _images(2, height, width, seed=2)
    chosen = P.resolve_preset(x)
    for name in ("gaussian_noise", "defocus_blur", "frost", "elastic_transform"):
        spec = P.get(name)
        auto = spec(x, 4, seed=3)
        assert torch.equal(auto, spec(x, 4, seed=3, preset=chosen)), (name, chosen)
        others = [p for p in P.PRESETS if p != chosen]
        assert not any(torch.equal(auto, spec(x, 4, seed=3, preset=p)) for p in others), name


def test_the_reference_engine_defaults_to_its_own_imagenet_table() -> None:
    spec = P.get("gaussian_noise")
    x = _images(1, 32, 48, seed=4)
    ref = spec(x, 2, seed=1, engine="imagecorruptions")
    assert torch.equal(ref, spec(x, 2, seed=1, engine="imagecorruptions", preset="imagenet"))
    with pytest.raises(ValueError, match="ImageNet-C parameters only"):
        spec(x, 2, seed=1, engine="imagecorruptions", preset="cifar")


def test_the_transform_follows_the_image_size_unless_told() -> None:
    x = _images(2, 224, 224, seed=5)
    spec = P.get("gaussian_noise")
    auto = Corrupt("gaussian_noise", severity=3, generator=torch.Generator().manual_seed(0))
    fixed = Corrupt(
        "gaussian_noise", severity=3, preset="cifar", generator=torch.Generator().manual_seed(0)
    )
    # the transform draws its choices first, then hands its generator to the corruption
    g = torch.Generator().manual_seed(0)
    torch.rand(2, generator=g), torch.randint(1, (2,), generator=g)
    want = spec(x, 3, generator=g, preset="imagenet")
    assert torch.equal(auto(x), want)
    assert not torch.equal(fixed(x), want)
    assert "preset=None" in repr(auto) and "preset='cifar'" in repr(fixed)


# -------------------------------------------------------------------------------- any H x W


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize(("height", "width"), [(200, 300), (300, 200), (23, 37)])
def test_every_corruption_runs_on_an_h_by_w_batch(name: str, height: int, width: int) -> None:
    spec = P.get(name)
    n = 2 if height == 200 or height < 100 else 1
    x = _images(n, height, width, seed=6)
    before = x.clone()
    kw = _kw(spec, n, height, width)
    top = spec.severities[-1]
    y = spec(x, top, seed=1, indices=range(10, 10 + n), **kw)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(x, before), "input was modified"
    assert not torch.equal(y, x), "the strongest severity changed nothing"
    assert torch.equal(y, spec(x, top, seed=1, indices=range(10, 10 + n), **kw))
    alone = spec(x[-1:], top, seed=1, indices=[9 + n], **{k: v[-1:] for k, v in kw.items()})
    assert torch.allclose(alone, y[-1:], atol=1e-6), "an image alone differs from it in a batch"


def test_rotation_of_an_h_by_w_image_is_rigid() -> None:
    """A blob 60 px right of the centre stays 60 px from it, turned by the angle (no shear)."""
    h, w = 120, 200
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    blob = torch.exp(-((xs - cx - 60) ** 2 + (ys - cy) ** 2) / 8.0)
    x = blob.expand(8, 3, h, w).clone()
    for severity in (2, 5):
        degrees = P.get("rotation").params(severity)["degrees"]
        y = P.get("rotation")(x, severity, seed=5)
        signs = set()
        for out in y:
            m = out.sum(0)
            px = float((m * xs).sum() / m.sum()) - cx
            py = float((m * ys).sum() / m.sum()) - cy
            assert abs(math.hypot(px, py) - 60) < 0.5, (severity, px, py)
            angle = math.degrees(math.atan2(-py, px))
            assert abs(abs(angle) - degrees) < 0.5, (severity, angle)
            signs.add(math.copysign(1.0, angle))
        assert signs == {-1.0, 1.0}


def test_occlusion_on_h_by_w_is_a_square_scaled_by_the_shorter_side() -> None:
    x = _images(6, 150, 260, seed=7)
    y = P.get("occlusion")(x, 4, seed=0)
    side = int(P.get("occlusion").params(4)["side"] * 150 / 224 + 0.5)
    for img, out in zip(x, y, strict=True):
        changed = (out != img).any(0)
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        assert len(rows) == len(cols) == side and int(changed.sum()) == side * side


def test_translation_on_h_by_w_moves_by_the_distance_at_the_shorter_side() -> None:
    x = torch.rand(8, 3, 120, 300, generator=torch.Generator().manual_seed(8))
    y = P.get("translation")(x, 5, seed=4)
    distance = P.get("translation").params(5)["shift"] * 120 / 224
    for img, out in zip(x, y, strict=True):
        where = (img[0] == out[0, 60, 150]).nonzero()
        assert len(where) == 1
        dy, dx = 60 - int(where[0, 0]), 150 - int(where[0, 1])
        assert abs(math.hypot(dx, dy) - distance) <= math.sqrt(0.5) + 1e-9


def test_foreground_blur_on_h_by_w_equals_its_square_crop() -> None:
    """Sigma scales with the shorter side, and the box is blurred by itself: the left 160 x 160
    of a 160 x 280 image with its box there comes out as the 160 px square image does."""
    x = _images(2, 160, 280, seed=9)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 140.0], [5.0, 10.0, 150.0, 100.0]])
    spec = P.get("foreground_blur")
    wide = spec(x, 3, boxes=boxes)
    square = spec(x[..., :160].contiguous(), 3, boxes=boxes)
    torch.testing.assert_close(wide[..., :160], square, atol=1e-6, rtol=0)
    assert torch.equal(wide[..., 160:], x[..., 160:])
