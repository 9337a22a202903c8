"""Digital corruptions against the libraries the originals call: scikit-image HSV and PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import hsv2rgb, rgb2hsv

from robench import perturbations as P

PRESETS = ("cifar", "tiny", "imagenet")


def _uint8_images(
    n: int, size: int, seed: int, channels: int = 3, width: int | None = None
) -> np.ndarray:
    """Random uint8 images with grey pixels, channel ties, pure black and pure white."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (n, size, width or size, channels), dtype=np.uint8)
    if channels == 3:
        a[:, 0, :] = a[:, 0, :, :1]  # grey row (max == min)
        a[:, 1, :, 1] = a[:, 1, :, 0]  # red == green ties
        a[:, 2, :, 2] = a[:, 2, :, 1]  # green == blue ties
    a[:, 3, :4] = 0
    a[:, 3, 4:8] = 255
    return a


def _to_tensor(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).to(dtype) / 255.0


def _off_grid(a: np.ndarray, frac: float, dtype: torch.dtype) -> torch.Tensor:
    """``(a + frac) / 255`` below 255 (still in [0, 1]): ``uint8(x * 255)`` gives back ``a``."""
    t = torch.from_numpy(a).permute(0, 3, 1, 2).to(dtype)
    return (t + frac * (t < 255).to(dtype)) / 255.0


def _to_hwc(y: torch.Tensor) -> np.ndarray:
    return y.permute(0, 2, 3, 1).double().numpy()


def _skimage_hsv(x: np.ndarray, channel: int, scale: float, shift: float) -> np.ndarray:
    hsv = rgb2hsv(x)
    hsv[..., channel] = np.clip(hsv[..., channel] * scale + shift, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_brightness_and_saturate_match_skimage(preset: str) -> None:
    a = _uint8_images(3, 16, seed=0)
    x = _to_tensor(a)
    for s in range(1, 6):
        delta = P.get("brightness").params(s, preset)["delta"]
        ab = P.get("saturate").params(s, preset)
        got_b = _to_hwc(P.get("brightness")(x, s, preset=preset))
        got_s = _to_hwc(P.get("saturate")(x, s, preset=preset))
        for i, img in enumerate(a / 255.0):
            np.testing.assert_allclose(got_b[i], _skimage_hsv(img, 2, 1.0, delta), atol=1e-12)
            np.testing.assert_allclose(got_s[i], _skimage_hsv(img, 1, ab["a"], ab["b"]), atol=1e-12)


def test_hsv_corruptions_in_float32_stay_within_float32_rounding() -> None:
    a = _uint8_images(2, 16, seed=1)
    x = _to_tensor(a, torch.float32)
    got = _to_hwc(P.get("saturate")(x, 5, preset="imagenet"))
    ref = np.stack([_skimage_hsv(img, 1, 20, 0.2) for img in a / 255.0])
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_saturate_tints_grey_red_and_single_channel_rules() -> None:
    grey = torch.full((1, 3, 4, 4), 0.6, dtype=torch.float64)
    y = P.get("saturate")(grey, 4, preset="imagenet")  # S = 0 * 5 + 0.1 at hue 0
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.6, 0.54, 0.54], dtype=torch.float64))
    one = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    assert torch.equal(P.get("saturate")(one, 5), one)
    assert torch.allclose(P.get("brightness")(one, 2, preset="cifar"), one + 0.1)


@pytest.mark.parametrize("preset", PRESETS)
def test_contrast_is_per_channel_mean_scaling(preset: str) -> None:
    x = _to_tensor(_uint8_images(2, 12, seed=2))
    for s in range(1, 6):
        c = P.get("contrast").params(s, preset)["c"]
        a = x.numpy()
        mu = a.mean(axis=(2, 3), keepdims=True)
        ref = np.clip((a - mu) * c + mu, 0, 1)
        np.testing.assert_allclose(P.get("contrast")(x, s, preset=preset).numpy(), ref, atol=1e-12)


def _pil_pixelate(img: np.ndarray, f: float, up: Image.Resampling = Image.NEAREST) -> np.ndarray:
    """imagecorruptions' pixelate (BOX down, NEAREST up); ``up=BOX`` is the original scripts'."""
    h, w = img.shape[:2]
    im = Image.fromarray(img).resize((max(1, int(w * f)), max(1, int(h * f))), Image.BOX)
    return np.asarray(im.resize((w, h), up))


@pytest.mark.parametrize(
    ("size", "width"),
    [(8, 8), (13, 13), (20, 20), (31, 31), (32, 32), (45, 45), (64, 64), (97, 97), (224, 224)]
    + [(200, 300), (300, 200), (33, 57), (50, 70)],
)
def test_pixelate_is_bit_exact_with_pil(size: int, width: int) -> None:
    """PIL's fixed-point weights and its 8-bit rounding between the two passes are reproduced,
    and the NEAREST upscaling's ties (80 -> 200 px at f = 0.4), on square and H x W images."""
    a = _uint8_images(2, size, seed=size, width=width)
    x = _to_tensor(a, torch.float32)
    tables = {P.get("pixelate").params(s, p)["f"] for s in range(1, 6) for p in PRESETS}
    spec = P.get("pixelate")
    for f in sorted(tables | {0.33, 0.77}):
        got = spec.kernel(x, rng=None, f=f)
        ref = np.stack([_pil_pixelate(img, f) for img in a])
        assert np.array_equal(np.round(_to_hwc(got) * 255).astype(np.uint8), ref), (size, f)


@pytest.mark.parametrize("preset", PRESETS)
def test_pixelate_equals_the_original_box_upscaling_at_the_preset_size(preset: str) -> None:
    """The original scripts upscale with BOX: the same pixels at their own size and factors."""
    size = {"cifar": 32, "tiny": 64, "imagenet": 224}[preset]
    a = _uint8_images(2, size, seed=3)
    spec = P.get("pixelate")
    for s in spec.severities:
        got = spec(_to_tensor(a, torch.float32), s, preset=preset)
        f = spec.params(s, preset)["f"]
        ref = np.stack([_pil_pixelate(img, f, Image.BOX) for img in a])
        assert np.array_equal(np.round(_to_hwc(got) * 255).astype(np.uint8), ref), (preset, s)
    # elsewhere the two upscalings break some ties differently, and robench follows NEAREST
    tie = _uint8_images(1, 200, seed=4, width=300)[0]
    assert not np.array_equal(_pil_pixelate(tie, 0.4), _pil_pixelate(tie, 0.4, Image.BOX))


def test_pixelate_quantises_input_by_truncation_and_handles_one_channel() -> None:
    a = _uint8_images(2, 32, seed=5, channels=1)
    x = _off_grid(a, 0.9, torch.float32)  # truncates back to a
    got = P.get("pixelate")(x, 5, preset="cifar")
    ref = np.stack([_pil_pixelate(img[..., 0], 0.65) for img in a])
    assert np.array_equal(np.round(got[:, 0].numpy() * 255).astype(np.uint8), ref)


def _pil_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


@pytest.mark.parametrize(("preset", "size"), [("cifar", 32), ("tiny", 64), ("imagenet", 224)])
def test_jpeg_is_bit_exact_with_pil(preset: str, size: int) -> None:
    a = _uint8_images(2, size, seed=7)
    x = _to_tensor(a, torch.float32)
    for s in range(1, 6):
        q = P.get("jpeg_compression").params(s, preset)["quality"]
        got = np.round(_to_hwc(P.get("jpeg_compression")(x, s, preset=preset)) * 255)
        ref = np.stack([_pil_jpeg(img, q) for img in a])
        assert np.array_equal(got.astype(np.uint8), ref), s


def test_jpeg_grey_images_and_truncation() -> None:
    a = _uint8_images(2, 32, seed=8, channels=1)
    x = _off_grid(a, 0.99, torch.float64)
    got = P.get("jpeg_compression")(x, 5, preset="cifar")
    assert got.shape == x.shape and got.dtype == torch.float64
    ref = np.stack([_pil_jpeg(img[..., 0], 40) for img in a])
    assert np.array_equal(np.round(got[:, 0].numpy() * 255).astype(np.uint8), ref)


DIGITAL = ("brightness", "contrast", "saturate", "pixelate", "jpeg_compression")


# the registration's stochastic=False, checked by what it promises (family, suite and source are
# table entries, not behaviour, and are not restated here)
@pytest.mark.parametrize("name", DIGITAL)
def test_deterministic_and_independent_of_the_batch(name: str) -> None:
    spec = P.get(name)
    assert not spec.stochastic
    x = _to_tensor(_uint8_images(3, 32, seed=9), torch.float32)
    a = spec(x, 3, seed=0)
    assert torch.equal(a, spec(x, 3, seed=123))
    assert torch.equal(a, spec(x, 3, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(a[1:2], spec(x[1:2], 3, seed=0))
