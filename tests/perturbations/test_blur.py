"""Blur corruptions and snow against literal transcriptions of the original ImageNet-C code.

The references below are slow numpy/scipy/skimage/OpenCV re-statements of what
``make_{cifar,tinyimagenet,imagenet}_c.py`` do, fed with the same random draws as the kernels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import zoom as scipy_zoom
from skimage.filters import gaussian as sk_gaussian

from robench import perturbations as P
from robench.perturbations import _ops
from robench.perturbations.blur import (
    defocus_blur,
    disk_kernel,
    glass_blur,
    glass_shuffle,
    motion_blur,
    zoom_blur,
)
from robench.perturbations.snow import snow

NAMES = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur", "snow")
STOCHASTIC = ("glass_blur", "motion_blur", "snow")


class Draws:
    """Stand-in for RandomSource that hands the kernel pre-chosen draws (in call order)."""

    def __init__(self, *values: torch.Tensor) -> None:
        self.values = list(values)

    def _next(self, *_: object, **__: object) -> torch.Tensor:
        return self.values.pop(0)

    randint = uniform = per_image = randn = rand = _next


def images(
    n: int, side: int, channels: int = 3, seed: int = 0, width: int | None = None
) -> torch.Tensor:
    """Random 8-bit images with a flat patch and a ramp (the cases where rounding bites).

    ``side`` x ``side``, or ``side`` x ``width`` (H x W) when a width is given.
    """
    w = width or side
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, size=(n, channels, side, w))
    x[:, :, : side // 4, : w // 4] = g.integers(0, 256, size=(n, channels, 1, 1))
    x[:, :, -side // 4 :, :] = np.arange(w)[None, None, None, :] * 255 // (w - 1)
    return torch.from_numpy(x).float() / 255.0


def hwc(x: torch.Tensor) -> np.ndarray:
    """Image i of a batch as the originals see it: H x W x C uint8."""
    return np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


# ------------------------------------------------------------------ references (slow, literal)


def ref_clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
    """The original's centred crop of ceil(n / z) per axis, scipy zoom, centred trim.

    imagecorruptions keeps the top-left [:H, :W] instead: the same pixels for zoom blur's
    factors (<= 1.31, the zoomed size exceeds n by 0 or 1), a shift of a pixel or two of the
    random flake layer for snow's larger ones.
    """
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = scipy_zoom(img[top : top + ch, left : left + cw], (z, z, 1), order=1)
    trim_h, trim_w = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[trim_h : trim_h + h, trim_w : trim_w + w]


def ref_im_motion(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick MotionBlurImage on an 8-bit H x W (x C) array, as 8 bits (one tap at a time)."""
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k /= k.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(px, py)
    h, w = img.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w]
    acc = np.zeros(img.shape, dtype=np.float64)
    for i in range(width):
        ox, oy = math.ceil(i * py / hyp - 0.5), math.ceil(i * px / hyp - 0.5)
        acc += k[i] * img[np.clip(rows + oy, 0, h - 1), np.clip(cols + ox, 0, w - 1)]
    return np.floor(acc + 1 / 514)  # Q16 rounding to 1/257 steps, then the 8-bit write


def ref_glass_loop(x: np.ndarray, offsets: np.ndarray, d: int) -> np.ndarray:
    """The original loop, statement for statement (offsets[k, t] = (dx, dy) in visiting order)."""
    x = x.copy()
    for k in range(offsets.shape[0]):
        t = 0
        for h in range(x.shape[0] - d, d, -1):
            for w in range(x.shape[1] - d, d, -1):
                dx, dy = offsets[k, t]
                t += 1
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


def ref_glass(img: np.ndarray, sigma: float, d: int, offsets: np.ndarray) -> np.ndarray:
    x = np.uint8(sk_gaussian(np.array(img) / 255.0, sigma=sigma, channel_axis=-1) * 255)
    x = ref_glass_loop(x, offsets, d)
    return np.clip(sk_gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1)


def codes_of(offsets: np.ndarray, d: int) -> torch.Tensor:
    """The kernel's one-draw-per-target code for (dx, dy) offsets."""
    return torch.from_numpy((offsets[..., 1] + d) * 2 * d + (offsets[..., 0] + d))


# ------------------------------------------------------------------ tables and registration


def test_the_stochastic_flag_tells_the_truth() -> None:
    x = images(2, 32, seed=3)
    for name in NAMES:
        spec = P.get(name)
        other_seed_same = torch.equal(spec(x, 5, seed=1), spec(x, 5, seed=2))
        assert other_seed_same == (name not in STOCHASTIC) == (not spec.stochastic), name


@pytest.mark.parametrize(
    ("preset", "lengths", "last"),
    [
        ("cifar", [7, 12, 16, 21, 26], [1.06, 1.11, 1.15, 1.20, 1.25]),
        ("tiny", [7, 12, 16, 21, 26], [1.06, 1.11, 1.15, 1.20, 1.25]),
        ("imagenet", [12, 16, 11, 13, 11], [1.11, 1.15, 1.20, 1.24, 1.30]),
    ],
)
def test_zoom_lists_keep_the_float_arange_quirks(
    preset: str, lengths: list[int], last: list[float]
) -> None:
    spec = P.get("zoom_blur")
    for s in range(5):
        factors = spec.params(s + 1, preset)["factors"]
        assert len(factors) == lengths[s]
        assert factors[0] == 1.0 and factors[-1] == pytest.approx(last[s])
    steps = {"cifar": (0.01,) * 5, "imagenet": (0.01, 0.01, 0.02, 0.02, 0.03)}
    stops = {"cifar": (1.06, 1.11, 1.16, 1.21, 1.26), "imagenet": (1.11, 1.16, 1.21, 1.26, 1.31)}
    key = "imagenet" if preset == "imagenet" else "cifar"
    for s in range(5):
        expected = np.arange(1, stops[key][s], steps[key][s]).tolist()
        assert list(spec.params(s + 1, preset)["factors"]) == expected  # bit-identical floats


def test_defining_parameters_per_preset() -> None:
    def p(name: str, s: int, preset: str) -> tuple[object, ...]:
        return tuple(P.get(name).params(s, preset).values())

    assert p("defocus_blur", 5, "cifar") == (1.5, 0.1)
    assert p("defocus_blur", 4, "tiny") == (2.5, 0.01)
    assert p("defocus_blur", 5, "imagenet") == (10, 0.5)
    assert p("glass_blur", 1, "cifar") == (0.05, 1, 1)
    assert p("glass_blur", 5, "tiny") == (0.9, 2, 2)
    assert p("glass_blur", 5, "imagenet") == (1.5, 4, 2)
    assert p("motion_blur", 5, "cifar") == (9, 2.5)
    assert p("motion_blur", 5, "tiny") == (12, 3)
    assert p("motion_blur", 1, "imagenet") == (10, 3)
    assert p("gaussian_blur", 5, "cifar") == (1.0,)
    assert p("gaussian_blur", 2, "tiny") == (0.75,)
    assert p("gaussian_blur", 5, "imagenet") == (6,)
    assert p("snow", 1, "cifar") == (0.1, 0.2, 1, 0.6, 8, 3, 0.95)
    assert p("snow", 1, "tiny") == (0.1, 0.2, 1, 0.6, 8, 3, 0.8)
    assert p("snow", 4, "imagenet") == (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65)


# ------------------------------------------------------------------ deterministic building blocks


@pytest.mark.parametrize("sigma", [0.05, 0.4, 0.5, 1.1, 1.5, 6])
@pytest.mark.parametrize("use_scipy", [True, False])
def test_scipy_gaussian_is_bit_identical_to_skimage(sigma: float, use_scipy: bool) -> None:
    x = images(2, 24, seed=1)
    got = _ops.scipy_gaussian(_ops.uint8_levels(x).double() / 255.0, sigma, use_scipy=use_scipy)
    for i in range(2):
        ref = sk_gaussian(hwc(x[i]) / 255.0, sigma=sigma, channel_axis=-1)
        assert np.array_equal(got[i].permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("sigma", [0.4, 1.1])
def test_flat_areas_floor_like_the_original(sigma: float) -> None:
    # For these sigmas skimage's float64 sums put some flat grey levels just below an
    # integer, which the originals' uint8 cast then truncates; the exact filter must agree.
    levels = torch.arange(256, dtype=torch.float64)[:, None, None, None].expand(256, 1, 12, 12)
    ref = np.stack(
        [np.uint8(sk_gaussian(np.full((12, 12), k / 255.0), sigma=sigma) * 255) for k in range(256)]
    )
    got = torch.floor(_ops.scipy_gaussian(levels / 255.0, sigma, use_scipy=False) * 255)[:, 0]
    assert np.array_equal(got.numpy(), ref)
    assert (ref[:, 0, 0] != np.arange(256)).any()  # the quirk exists


@pytest.mark.parametrize(("side", "sigma"), [(32, 0.4), (32, 1.0), (64, 1.5), (224, 6.0)])
def test_gaussian_blur_matches_skimage(side: int, sigma: float) -> None:
    x = images(2, side, seed=2)
    got = P.get("gaussian_blur").kernel(x, rng=None, sigma=sigma)
    for i in range(2):
        ref = sk_gaussian(hwc(x[i]) / 255.0, sigma=sigma, channel_axis=-1)
        assert np.abs(got[i].permute(1, 2, 0).numpy() - ref).max() < 2e-6


@pytest.mark.parametrize("border", ["replicate", "reflect", "symmetric"])
def test_separable_filter_matches_torch_padding(border: str) -> None:
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    w = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    ref = _ops.depthwise_conv2d(x, w[:, None] * w[None, :], border)  # type: ignore[arg-type]
    got = _ops.separable_filter(x, w, border)  # type: ignore[arg-type]
    assert torch.allclose(got, ref, atol=1e-12)


def test_disk_kernel_matches_opencv() -> None:
    radii = [(0.3, 0.4), (0.5, 0.6), (1, 0.2), (1.5, 0.1), (2.5, 0.01), (3, 0.1), (8, 0.5)]
    for radius, alias in radii + [(10, 0.5)]:
        size, ksize = (17, 3) if radius <= 8 else (2 * radius + 1, 5)
        grid = np.arange(size) - size // 2
        xx, yy = np.meshgrid(grid, grid)
        disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
        disk /= np.sum(disk)
        ref = cv2.GaussianBlur(disk, ksize=(ksize, ksize), sigmaX=alias)
        got = disk_kernel(radius, alias)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() < 1e-8


@pytest.mark.parametrize(
    ("side", "radius", "alias"), [(32, 1.5, 0.1), (32, 0.3, 0.4), (64, 3, 0.1), (224, 10, 0.5)]
)
def test_defocus_matches_opencv_filter2d(side: int, radius: float, alias: float) -> None:
    x = images(2, side, seed=3)
    got = defocus_blur(x, rng=None, radius=radius, alias_blur=alias)
    kernel = disk_kernel(radius, alias)
    for i in range(2):
        img = hwc(x[i]) / 255.0
        ref = np.stack([cv2.filter2D(img[:, :, c], -1, kernel) for c in range(3)], axis=2)
        assert np.abs(got[i].permute(1, 2, 0).numpy() - ref).max() < 1e-6


@pytest.mark.parametrize(("side", "width"), [(32, 32), (64, 64), (224, 224), (40, 64), (200, 300)])
def test_clipped_zoom_matches_scipy(side: int, width: int) -> None:
    img = torch.rand(1, 3, side, width, dtype=torch.float64)
    for z in (1.0, 1.01, 1.06, 1.12, 1.3, 1.75, 2.25, 3.0, 4.5):
        ref = ref_clipped_zoom(img[0].permute(1, 2, 0).numpy(), z)
        got = _ops.clipped_zoom(img, z)[0].permute(1, 2, 0).numpy()
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-12


@pytest.mark.parametrize(
    ("preset", "severity", "side", "width"),
    [("cifar", 1, 32, 32), ("cifar", 5, 32, 32), ("imagenet", 5, 64, 64), ("imagenet", 3, 48, 80)],
)
def test_zoom_blur_matches_the_original(preset: str, severity: int, side: int, width: int) -> None:
    x = images(2, side, seed=4, width=width)
    factors = P.get("zoom_blur").params(severity, preset)["factors"]
    got = zoom_blur(x, rng=None, factors=factors)
    for i in range(2):
        img = (hwc(x[i]) / 255.0).astype(np.float32)
        out = np.zeros_like(img)
        for z in factors:
            out += ref_clipped_zoom(img, z)
        ref = (img + out) / (len(factors) + 1)
        assert np.abs(got[i].permute(1, 2, 0).numpy() - ref).max() < 1e-6


# ------------------------------------------------------------------ glass blur


@pytest.mark.parametrize(
    ("h", "w", "d", "passes"),
    [
        (16, 16, 1, 2),
        (20, 20, 2, 3),
        (24, 24, 3, 2),
        (32, 32, 4, 2),
        (14, 14, 6, 1),
        (18, 27, 3, 2),
    ],
)
def test_glass_copy_loop_is_exact(h: int, w: int, d: int, passes: int) -> None:
    g = np.random.default_rng(h * w * d)
    img = g.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    offsets = g.integers(-d, d, size=(passes, (h - 2 * d) * (w - 2 * d), 2))
    ref = ref_glass_loop(img, offsets, d)
    got = glass_shuffle(chw(img)[None], codes_of(offsets, d)[None], d)[0]
    assert np.array_equal(got.permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize(
    ("side", "width", "params"),
    [
        (32, 32, (0.05, 1, 1)),
        (32, 32, (0.4, 1, 2)),
        (64, 64, (0.9, 2, 2)),
        (40, 40, (1.5, 4, 2)),
        (36, 52, (1.1, 3, 2)),
        (50, 30, (0.7, 1, 2)),
    ],
)
def test_glass_blur_matches_the_original(
    side: int, width: int, params: tuple[float, int, int]
) -> None:
    """The loop runs over rows and columns of the image's own H x W, as imagecorruptions does."""
    sigma, d, passes = params
    x = images(2, side, seed=5, width=width)
    g = np.random.default_rng(7)
    offsets = g.integers(-d, d, size=(2, passes, (side - 2 * d) * (width - 2 * d), 2))
    got = glass_blur(
        x, rng=Draws(codes_of(offsets, d)), sigma=sigma, max_delta=d, iterations=passes
    )
    for i in range(2):
        ref = ref_glass(hwc(x[i]), sigma, d, offsets[i])
        assert np.abs(got[i].permute(1, 2, 0).numpy() - ref).max() < 1e-6


@pytest.mark.parametrize(("side", "d", "passes"), [(32, 1, 2), (40, 3, 2)])
def test_glass_draws_one_uniform_code_per_target_and_pass(side: int, d: int, passes: int) -> None:
    calls: list[tuple[int, ...]] = []
    real = P.RandomSource([torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])

    class Spy:
        def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
            calls.append((low, high, *shape))
            return real.randint(low, high, *shape)

    x = images(2, side, seed=13)
    glass_blur(x, rng=Spy(), sigma=0.5, max_delta=d, iterations=passes)  # type: ignore[arg-type]
    assert calls == [(0, 4 * d * d, passes, (side - 2 * d) ** 2)]
    # codes -> (dx, dy) is a bijection onto [-d, d-1]^2, so uniform codes give uniform offsets
    grid = np.stack(np.meshgrid(np.arange(-d, d), np.arange(-d, d)), -1).reshape(-1, 2)
    assert sorted(codes_of(grid, d).tolist()) == list(range(4 * d * d))


# ------------------------------------------------------------------ motion blur and snow


@pytest.mark.parametrize(
    ("side", "width", "radius", "sigma"),
    [(32, 32, 6, 1), (32, 32, 9, 2.5), (64, 64, 12, 3), (224, 224, 20, 15), (48, 90, 15, 8)],
)
def test_motion_blur_matches_imagemagick_formula(
    side: int, width: int, radius: float, sigma: float
) -> None:
    x = images(3, side, seed=6, width=width)
    angles = torch.tensor([-44.9, 0.0, 31.7], dtype=torch.float64)
    got = motion_blur(x, rng=Draws(angles), radius=radius, sigma=sigma)
    for i in range(3):
        ref = ref_im_motion(hwc(x[i]).astype(np.float64), radius, sigma, float(angles[i]))
        assert np.array_equal(np.round(got[i].permute(1, 2, 0).numpy() * 255), ref)


def test_float32_fft_error_stays_inside_the_exactness_margin() -> None:
    v = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255.0).expand(2, 3, 64, 64)
    kernel = torch.rand(2, 25, 25, dtype=torch.float64)
    kernel /= kernel.sum((1, 2), keepdim=True)
    fast = _ops.fft_correlate(v, kernel, (12, 12), "replicate", dtype=torch.float32)
    exact = _ops.fft_correlate(v, kernel, (12, 12), "replicate", dtype=torch.float64)
    assert (fast.double() - exact).abs().max() < _ops._FFT_MARGIN / 3


@pytest.mark.parametrize(
    ("preset", "severity", "side", "width"),
    [
        ("cifar", 4, 32, 32),
        ("tiny", 5, 64, 64),
        ("imagenet", 4, 224, 224),
        ("imagenet", 2, 90, 150),
    ],
)
def test_snow_matches_the_original(preset: str, severity: int, side: int, width: int) -> None:
    p = P.get("snow").params(severity, preset)
    n = 2 if side < 224 else 1
    x = images(n, side, seed=8, width=width)
    g = torch.Generator().manual_seed(severity)
    normal = torch.randn(n, 1, side, width, generator=g, dtype=torch.float64)
    angles = torch.tensor([-130.0, -52.5][:n], dtype=torch.float64)
    got = snow(x, rng=Draws(normal, angles), **p)
    for i in range(n):
        img = hwc(x[i]).astype(np.float32) / 255.0
        layer = ref_clipped_zoom(
            (p["loc"] + p["scale"] * normal[i, 0].numpy())[..., None], p["zoom"]
        )
        layer[layer < p["threshold"]] = 0
        layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
        layer = (
            ref_im_motion(layer, p["blur_radius"], p["blur_sigma"], float(angles[i]))[..., None]
            / 255.0
        )
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        img = p["blend"] * img + (1 - p["blend"]) * np.maximum(img, gray * 1.5 + 0.5)
        ref = np.clip(img + layer + np.rot90(layer, k=2), 0, 1)
        assert np.abs(got[i].clamp(0, 1).permute(1, 2, 0).numpy() - ref).max() < 1e-6


def test_snow_on_one_channel_uses_the_image_as_its_gray() -> None:
    x = images(1, 32, channels=1, seed=9)
    p = dict(P.get("snow").params(1, "cifar"))
    normal = torch.full((1, 1, 32, 32), -5.0, dtype=torch.float64)  # no flakes
    got = snow(x, rng=Draws(normal, torch.tensor([-90.0])), **p)
    expected = p["blend"] * x + (1 - p["blend"]) * torch.maximum(x, x * 1.5 + 0.5)
    assert torch.allclose(got.float(), expected, atol=1e-6)


# ------------------------------------------------------------------ the contract, per image


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_grayscale(name: str) -> None:
    spec = P.get(name)
    x = images(3, 32, seed=10)
    a, b = spec(x, 3, seed=1), spec(x, 3, seed=1)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, x)
    if name in STOCHASTIC:
        assert not torch.equal(a, spec(x, 3, seed=2))
    gray = spec(x[:, :1], 3, seed=1)
    assert gray.shape == (3, 1, 32, 32) and 0 <= float(gray.min()) and float(gray.max()) <= 1


@pytest.mark.parametrize("name", STOCHASTIC)
@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_image_alone_equals_image_in_batch(name: str, preset: str) -> None:
    spec = P.get(name)
    x = images(4, 32, seed=11)
    batch = spec(x, 5, seed=3, indices=[10, 11, 12, 13], preset=preset)
    for i in (0, 2):
        alone = spec(x[i : i + 1], 5, seed=3, indices=[10 + i], preset=preset)
        # the random draws and every 8-bit step are exact; float32 products may differ by ulps
        assert torch.allclose(alone[0], batch[i], atol=1e-6)
        if name == "motion_blur":  # 8-bit output: exact
            assert torch.equal(alone[0], batch[i])


def test_input_is_not_modified() -> None:
    x = images(2, 32, seed=12)
    before = x.clone()
    for name in NAMES:
        P.get(name)(x, 5, seed=0)
    assert torch.equal(x, before)
