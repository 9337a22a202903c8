"""M-TLAT's 4 corruptions and the sensor, deepcorrect and context suites: defining behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.filters import gaussian as sk_gaussian

from robench import perturbations as P

M_TLAT = ("occlusion", "color_distortion", "translation", "rotation")
SENSOR = ("dead_pixels", "hot_pixels", "stuck_pixels", "gaussian_noise_std", "gaussian_blur_sigma")


def _images(n: int, size: int, seed: int = 0, lo: float = 0.02, hi: float = 0.45) -> torch.Tensor:
    """Random images in [lo, hi]: never 0, 0.5 or 1, so every painted pixel is visible."""
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 3, size, size, generator=g)


def test_suites_and_tables() -> None:
    assert P.names(suite="sensor") == list(SENSOR)
    assert P.names(suite="deepcorrect") == ["awgn", "blur"]
    assert P.names(suite="context") == ["foreground_blur"]
    assert [P.get(n).family for n in M_TLAT] == ["occlusion", "color", "geometric", "geometric"]
    ranges = {
        "occlusion": (60, 127),
        "color_distortion": (0.08, 0.30),
        "translation": (15, 62),
        "rotation": (8, 40),
    }
    for name, (lo, hi) in ranges.items():
        values = [next(iter(P.get(name).params(s, "cifar").values())) for s in range(1, 6)]
        assert values == pytest.approx(list(np.linspace(lo, hi, 5))), name
        assert "M-TLAT" in P.get(name).source
    assert P.get("awgn").severities == P.get("blur").severities == (1, 2, 3, 4, 5, 6)
    assert [P.get("awgn").params(s, "imagenet")["sigma255"] for s in range(1, 7)] == [
        10,
        20,
        40,
        60,
        80,
        100,
    ]
    assert [P.get("blur").params(s, "cifar")["sigma"] for s in range(1, 7)] == [
        0.5,
        1,
        1.5,
        2,
        2.5,
        3,
    ]
    with pytest.raises(ValueError, match="severity"):
        P.get("blur")(_images(1, 8), 7)
    assert P.get("foreground_blur").needs_boxes


# ----------------------------------------------------------------------------- M-TLAT (geometric)


@pytest.mark.parametrize(("size", "severity"), [(32, 1), (32, 5), (64, 3), (224, 5)])
def test_occlusion_paints_one_grey_square_of_the_scaled_side(size: int, severity: int) -> None:
    x = _images(6, size, seed=severity)
    y = P.get("occlusion")(x, severity, seed=0)
    side = int(P.get("occlusion").params(severity)["side"] * size / 224 + 0.5)
    for img, out in zip(x, y, strict=True):
        changed = (out != img).any(0)
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        assert len(rows) == len(cols) == side and int(changed.sum()) == side * side
        assert rows[-1] - rows[0] == side - 1 and cols[-1] - cols[0] == side - 1
        assert torch.all(out[:, changed] == 0.5)
    corners = {tuple(((o != i).any(0)).nonzero()[0].tolist()) for o, i in zip(y, x, strict=True)}
    assert len(corners) > 1, "every image got the same position"


def test_color_distortion_raises_exactly_one_channel() -> None:
    x = _images(24, 16, seed=1)
    for severity in (1, 5):
        shift = P.get("color_distortion").params(severity)["shift"]
        y = P.get("color_distortion")(x, severity, seed=2)
        diff = y - x
        moved = diff.abs().amax(dim=(2, 3)) > 0
        assert torch.all(moved.sum(1) == 1)
        assert torch.allclose(diff[moved], torch.full_like(diff[moved], shift), atol=1e-6)
        assert set(moved.float().argmax(1).tolist()) == {0, 1, 2}


def _find_shift(img: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """The integer (dy, dx) with ``out`` = ``img`` moved by it and zero-filled, or fail."""
    h, w = img.shape[-2:]
    where = (img[0] == out[0, h // 2, w // 2]).nonzero()  # random values: one match
    assert len(where) == 1
    dy, dx = h // 2 - int(where[0, 0]), w // 2 - int(where[0, 1])
    shifted = torch.zeros_like(img)
    src = img[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    shifted[:, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] = src
    assert torch.equal(shifted, out), "the output is no zero-filled integer shift of the input"
    return dy, dx


@pytest.mark.parametrize(("size", "severity"), [(32, 5), (64, 2), (224, 1)])
def test_translation_is_an_integer_shift_of_the_scaled_distance(size: int, severity: int) -> None:
    x = _images(8, size, seed=3)
    y = P.get("translation")(x, severity, seed=4)
    distance = P.get("translation").params(severity)["shift"] * size / 224
    directions = set()
    for img, out in zip(x, y, strict=True):
        dy, dx = _find_shift(img, out)
        assert abs(math.hypot(dx, dy) - distance) <= math.sqrt(0.5) + 1e-9
        directions.add((int(np.sign(dx)), int(np.sign(dy))))
    assert len(directions) >= 3, "directions are not random"


def _centroid_angle(img: torch.Tensor) -> float:
    """Angle in degrees (counter-clockwise as displayed) of the brightness centroid."""
    h, w = img.shape[-2:]
    m = img.sum(0)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=m.dtype), torch.arange(w, dtype=m.dtype), indexing="ij"
    )
    cx = float((m * xs).sum() / m.sum()) - (w - 1) / 2
    cy = float((m * ys).sum() / m.sum()) - (h - 1) / 2
    return math.degrees(math.atan2(-cy, cx))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_rotation_turns_by_the_angle_with_a_random_sign(severity: int) -> None:
    size = 64
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    blob = torch.exp(-((xs - 52) ** 2 + (ys - 31.5) ** 2) / 8.0)  # right of the centre: angle 0
    x = blob.expand(12, 3, size, size).clone()
    y = P.get("rotation")(x, severity, seed=5)
    degrees = P.get("rotation").params(severity)["degrees"]
    angles = [_centroid_angle(out) for out in y]
    assert all(abs(abs(a) - degrees) < 0.5 for a in angles), angles
    assert {np.sign(a) for a in angles} == {-1.0, 1.0}
    ones = P.get("rotation")(torch.ones(2, 3, size, size), severity, seed=5)
    assert torch.all(ones[:, :, 0, 0] == 0) and torch.all(ones[:, :, 32, 32] == 1)


@pytest.mark.parametrize("name", M_TLAT + SENSOR[:4] + ("awgn",))
def test_seeded_per_image_randomness_is_batch_independent(name: str) -> None:
    spec = P.get(name)
    x = _images(6, 32, seed=6)
    full = spec(x, 3, seed=9, indices=range(100, 106))
    part = spec(x[2:4], 3, seed=9, indices=[102, 103])
    assert torch.equal(full[2:4], part)
    assert torch.equal(full, spec(x, 3, seed=9, indices=range(100, 106)))
    assert not torch.equal(full, spec(x, 3, seed=10, indices=range(100, 106)))


# ------------------------------------------------------------------------------------------ sensor


@pytest.mark.parametrize("name", ["dead_pixels", "hot_pixels", "stuck_pixels"])
def test_defective_pixels_change_exactly_k_pixels(name: str) -> None:
    x = _images(8, 32, seed=7, lo=0.01, hi=0.99)
    for k in range(1, 6):
        y = P.get(name)(x, k, seed=k)
        changed = (y != x).any(1)
        assert torch.all(changed.flatten(1).sum(1) == k)
        values = y.permute(0, 2, 3, 1)[changed]
        if name == "dead_pixels":
            assert torch.all(values == 0)
        elif name == "hot_pixels":
            assert torch.all(values == 1)
        else:
            assert torch.all((values >= 0) & (values < 1))
            assert torch.all(values.std(1) > 0), "a stuck pixel's channels are drawn independently"
        kept = ~changed.unsqueeze(1).expand_as(y)
        assert torch.equal(y[kept], x[kept])


def test_gaussian_noise_std_levels_are_standard_deviations() -> None:
    stds = [P.get("gaussian_noise_std").params(s)["std"] for s in range(1, 6)]
    assert stds == pytest.approx(list(np.linspace(0.001, 0.05, 5)))
    # On a large mid-grey batch nothing reaches 0 or 1 (0.5 is 10 std away at the top level),
    # so the output minus 0.5 is the noise itself: its std is the level, not sqrt(level).
    x = torch.full((64, 3, 32, 32), 0.5)
    for s in (1, 3, 5):
        d = P.get("gaussian_noise_std")(x, s, seed=s) - 0.5
        assert float(d.std()) == pytest.approx(stds[s - 1], rel=0.05)
        assert abs(float(d.mean())) < 0.01
    top = P.get("gaussian_noise_std")(x, 5, seed=11) - 0.5
    assert 0.045 <= float(top.std()) <= 0.055  # std 0.05 +/- 10 % (a variance of 0.05: 0.22)


@pytest.mark.parametrize("severity", [1, 5])
def test_sensor_blur_is_skimage_gaussian(severity: int) -> None:
    x = _images(2, 24, seed=8).double()
    sigma = P.get("gaussian_blur_sigma").params(severity)["sigma"]
    assert sigma == pytest.approx(np.linspace(0.4, 1.0, 5)[severity - 1])
    y = P.get("gaussian_blur_sigma")(x, severity)
    for img, out in zip(x.numpy(), y.numpy(), strict=True):
        ref = sk_gaussian(img, sigma=sigma, mode="nearest", truncate=4.0, channel_axis=0)
        np.testing.assert_allclose(out, ref, atol=1e-12)


# ------------------------------------------------------------------------------------- deepcorrect


def test_awgn_standard_deviation_on_the_255_scale() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for preset, s in (("cifar", 1), ("cifar", 6), ("imagenet", 2)):
        sigma = P.get("awgn").params(s, preset)["sigma255"] / 255
        d = P.get("awgn")(x, s, seed=s, preset=preset) - 0.5
        assert float(d.std()) == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_deepcorrect_blur_kernel_spans_four_sigma(preset: str) -> None:
    spec = P.get("blur")
    for s in spec.severities:
        sigma = spec.params(s, preset)["sigma"]
        impulse = torch.zeros(1, 1, 41, 41, dtype=torch.float64)
        impulse[..., 20, 20] = 1.0
        row = spec(impulse, s, preset=preset)[0, 0, 20]
        assert int((row > 0).sum()) == round(4 * sigma) + 1
        assert float(spec(impulse, s, preset=preset).sum()) == pytest.approx(1.0)
        x = _images(1, 16, seed=s).double()
        ref = ndimage.gaussian_filter(
            x[0].numpy(), sigma=(0, sigma, sigma), mode="nearest", truncate=2.0
        )
        np.testing.assert_allclose(spec(x, s, preset=preset)[0].numpy(), ref, atol=1e-12)
    assert P.get("blur").params(1, "tiny") == P.get("blur").params(1, "cifar")


# ----------------------------------------------------------------------------------------- context


def _blur_crop_reference(img: np.ndarray, box: tuple[int, ...], sigma: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = img.copy()
    crop = img[:, y0:y1, x0:x1]
    blurred = ndimage.gaussian_filter(crop, (0, sigma, sigma), mode="reflect", truncate=4.0)
    out[:, y0:y1, x0:x1] = blurred
    return out


@pytest.mark.parametrize("severity", [1, 2, 5])
def test_foreground_blur_only_inside_the_box(severity: int) -> None:
    size = 48
    x = _images(3, size, seed=severity).double()
    boxes = torch.tensor([[4.3, 6.0, 30.0, 40.6], [0.0, 0.0, 48.0, 48.0], [10.0, 20.0, 17.0, 23.0]])
    int_boxes = [(4, 6, 30, 41), (0, 0, 48, 48), (10, 20, 17, 23)]
    sigma = P.get("foreground_blur").params(severity)["sigma"] * size / 224
    y = P.get("foreground_blur")(x, severity, boxes=boxes)
    for img, out, box in zip(x.numpy(), y.numpy(), int_boxes, strict=True):
        np.testing.assert_allclose(out, _blur_crop_reference(img, box, sigma), atol=1e-12)
        x0, y0, x1, y1 = box
        outside = np.ones(img.shape[1:], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(out[:, outside], img[:, outside])


def test_foreground_blur_empty_box_and_missing_boxes() -> None:
    x = _images(2, 16, seed=0)
    empty = torch.tensor([[5.0, 5.0, 5.0, 12.0], [20.0, 20.0, 30.0, 30.0]])
    assert torch.equal(P.get("foreground_blur")(x, 5, boxes=empty), x)
    with pytest.raises(ValueError, match="boxes"):
        P.get("foreground_blur")(x, 1)
