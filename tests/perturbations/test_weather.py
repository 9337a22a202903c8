"""frost, fog, spatter and elastic_transform against independent references of the originals.

Every reference below is a plain numpy / OpenCV / scipy / skimage transcription of the original
ImageNet-C algorithms (reference/corruptions.md 4.9, 4.10, 4.13, 4.18), fed the same random numbers
as the batched kernels (re-drawn from identically seeded generators, in the kernels' documented
draw order).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from skimage.filters import gaussian

from robench import perturbations as P
from robench._seeding import make_generator
from robench.perturbations import elastic as E
from robench.perturbations import weather as W
from robench.perturbations._base import RandomSource

SIDES = {"cifar": 32, "tiny": 64, "imagenet": 224}
NAMES = ("frost", "fog", "spatter", "elastic_transform")


def _rng(seeds: list[int]) -> RandomSource:
    return RandomSource([make_generator(s) for s in seeds])


def _images(
    n: int, side: int, seed: int = 0, hi: float = 1.0, width: int | None = None
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return hi * torch.rand(n, 3, side, width or side, generator=g)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------- parameter tables


def test_defining_parameters_per_preset() -> None:
    frost, fog, spatter, elastic = (P.get(n) for n in NAMES)
    assert [frost.params(1, p)["scale"] for p in SIDES] == [0.2, 0.3, 1.0]
    assert [(frost.params(3, p)["a"], frost.params(3, p)["b"]) for p in SIDES] == [
        (0.9, 0.4),
        (0.8, 0.45),
        (0.7, 0.7),
    ]
    assert [(fog.params(5, p)["s"], fog.params(5, p)["decay"]) for p in SIDES] == [
        (1.5, 1.75),
        (2, 1.75),
        (3, 1.4),
    ]
    assert [spatter.params(s, "tiny")["mode"] for s in range(1, 6)] == ["water"] * 3 + ["mud"] * 2
    assert spatter.params(5, "imagenet")["k"] == 1.5 and spatter.params(1, "cifar")["k"] == 0.5
    got = {
        p: tuple(elastic.params(s, p)[k] for k in ("alpha", "sigma", "delta", "size"))
        for p, s in (("cifar", 2), ("tiny", 5), ("imagenet", 1))
    }
    want = {
        "cifar": (1.6, 6.4, 2.24, 32),
        "tiny": (10.24, 1.92, 1.28, 64),
        "imagenet": (488, 170.8, 24.4, 224),
    }
    for p in want:
        assert got[p] == pytest.approx(want[p], rel=1e-12)
    assert elastic.params(1, "cifar")["alpha"] == 0 and elastic.params(1, "cifar")["sigma"] == 0
    assert (frost.family, fog.family, spatter.family, elastic.family) == (
        "weather",
        "weather",
        "weather",
        "digital",
    )
    assert "spatter" in P.suites()["imagenet-c-extra"]
    assert {"frost", "fog", "elastic_transform"} <= set(P.suites()["imagenet-c"])


# ---------------------------------------------------------------------------------------- frost


def _frost_folder() -> Path:
    return W._frost_dir()


def _frost_texture(k: int, scale: float, cover: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Texture k as the original reads and scales it; enlarged as imagecorruptions does (x1.1
    the missing ratio, INTER_CUBIC) where it is smaller than ``cover`` (H, W)."""
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
    tex = cv2.imread(str(_frost_folder() / names[k]))
    if scale != 1:
        tex = cv2.resize(tex, (0, 0), fx=scale, fy=scale)
    h, w = tex.shape[:2]
    if h < cover[0] or w < cover[1]:
        f = max(cover[0] / h, cover[1] / w) * 1.1
        tex = cv2.resize(
            tex, (int(np.ceil(w * f)), int(np.ceil(h * f))), interpolation=cv2.INTER_CUBIC
        )
    return tex


def _frost_reference(
    x: np.ndarray, a: float, b: float, tex: np.ndarray, draw: tuple[int, ...]
) -> np.ndarray:
    h, w = x.shape[:2]
    crop = tex[draw[1] : draw[1] + h, draw[2] : draw[2] + w][..., [2, 1, 0]]
    return np.clip(a * (x * 255.0) + b * crop, 0, 255) / 255.0


@pytest.mark.parametrize("preset,severity", [("cifar", 3), ("tiny", 5), ("imagenet", 2)])
def test_frost_matches_original(preset: str, severity: int) -> None:
    side, n = SIDES[preset], 6 if preset != "imagenet" else 2
    p = dict(P.get("frost").params(severity, preset))
    x = _images(n, side, seed=1)
    seeds = list(range(100, 100 + n))
    out = W.frost(x, rng=_rng(seeds), **p).clamp(0, 1)
    _, sizes = W.frost_textures(p["scale"])
    for i, s in enumerate(seeds):  # the documented draws: texture, row start, column start
        g = make_generator(s)
        k = int(torch.randint(0, 5, (), generator=g))
        h, w = sizes[k].tolist()
        draw = (
            k,
            int(torch.randint(0, h - side, (), generator=g)),
            int(torch.randint(0, w - side, (), generator=g)),
        )
        tex = _frost_texture(k, p["scale"])
        ref = _frost_reference(_hwc(x[i]).astype(np.float64), p["a"], p["b"], tex, draw)
        np.testing.assert_allclose(_hwc(out[i]), ref, atol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(200, 300), (300, 200), (120, 700)])
def test_frost_crops_h_by_w_and_enlarges_textures_too_small(height: int, width: int) -> None:
    """The texture scale follows the shorter side; a texture still too small for the image
    (a tall or very wide image) is enlarged as imagecorruptions does, then cropped H x W."""
    p = dict(P.get("frost").params(4, "imagenet"))
    x = _images(3, height, seed=2, width=width)
    seeds = [7, 8, 9]
    out = W.frost(x, rng=_rng(seeds), **p).clamp(0, 1)
    scale = p["scale"] * min(height, width) / 224
    textures = [_frost_texture(k, scale) for k in range(5)]
    if any(t.shape[0] < height or t.shape[1] < width for t in textures):
        textures = [_frost_texture(k, scale, (height, width)) for k in range(5)]
    assert all(t.shape[0] >= height and t.shape[1] >= width for t in textures)
    for i, s in enumerate(seeds):
        g = make_generator(s)
        k = int(torch.randint(0, 5, (), generator=g))
        h, w = textures[k].shape[:2]
        rows = int(torch.randint(0, max(h - height, 1), (), generator=g))
        draw = (k, rows, int(torch.randint(0, max(w - width, 1), (), generator=g)))
        ref = _frost_reference(_hwc(x[i]).astype(np.float64), p["a"], p["b"], textures[k], draw)
        np.testing.assert_allclose(_hwc(out[i]), ref, atol=1e-6)


def test_frost_texture_sizes_and_single_channel() -> None:
    _, sizes = W.frost_textures(0.2)
    assert sizes.tolist() == [[120, 180], [63, 112], [63, 112], [70, 105], [99, 132]]
    _, sizes = W.frost_textures(0.3)
    assert sizes[0].tolist() == [180, 270] and sizes[1].tolist() == [94, 168]
    p = dict(P.get("frost").params(1, "cifar"))
    rgb = W.frost(torch.zeros(3, 3, 32, 32), rng=_rng([1, 2, 3]), **p)
    gray = W.frost(torch.zeros(3, 1, 32, 32), rng=_rng([1, 2, 3]), **p)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(gray, (rgb * luma).sum(1, keepdim=True), atol=1e-6, rtol=0)
    # several textures are really used, and they differ
    used = {W.frost(torch.zeros(1, 3, 32, 32), rng=_rng([s]), **p).sum().item() for s in range(12)}
    assert len(used) > 6


def test_frost_missing_texture_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(W, "_frost_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="install imagecorruptions"):
        W.frost_textures(0.123)


# ------------------------------------------------------------------------------------------ fog


def _plasma_loops(uniforms: list[np.ndarray], decay: float) -> np.ndarray:
    """Diamond-square point by point on an M x M torus (the original's algorithm, unvectorised)."""
    m = 2 * uniforms[-1].shape[-1]
    a = np.zeros((m, m))
    wibble, step = 100.0, m
    for u in uniforms:
        h, k = step // 2, m // step
        for i in range(k):  # squares: the mean of the 4 corners plus wibble * U(-wibble, wibble)
            for j in range(k):
                r, c = i * step + h, j * step + h
                s = a[r - h, c - h] + a[(r + h) % m, c - h] + a[r - h, (c + h) % m]
                a[r, c] = (s + a[(r + h) % m, (c + h) % m]) / 4 + wibble * (wibble * u[0, i, j])
        for t, (dr, dc) in enumerate(((0, h), (h, 0)), start=1):  # diamonds: 4 axis neighbours
            for i in range(k):
                for j in range(k):
                    r, c = i * step + dr, j * step + dc
                    s = a[(r - h) % m, c] + a[(r + h) % m, c] + a[r, (c - h) % m]
                    a[r, c] = (s + a[r, (c + h) % m]) / 4 + wibble * (wibble * u[t, i, j])
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max()


@pytest.mark.parametrize("mapsize,decay", [(32, 3.0), (64, 1.75), (256, 1.4)])
def test_plasma_fractal_matches_pointwise_transcription(mapsize: int, decay: float) -> None:
    levels = mapsize.bit_length() - 1
    rng = _rng([7, 8])
    uniforms = [rng.uniform(-1, 1, 3, 1 << i, 1 << i) for i in range(levels)]
    got = W.plasma_fractal(uniforms, decay).numpy()
    for b in range(2):
        ref = _plasma_loops([u[b].numpy() for u in uniforms], decay)
        np.testing.assert_allclose(got[b], ref, atol=1e-12)
        assert got[b].min() == 0 and got[b].max() == 1


@pytest.mark.parametrize("preset,severity", [("cifar", 2), ("tiny", 5), ("imagenet", 3)])
def test_fog_matches_original(preset: str, severity: int) -> None:
    side = SIDES[preset]
    p = dict(P.get("fog").params(severity, preset))
    x = _images(2, side, seed=3, hi=0.8)
    out = W.fog(x, rng=_rng([5, 6]), **p).clamp(0, 1)
    mapsize = {32: 32, 64: 64, 224: 256}[side]
    rng = _rng([5, 6])
    uniforms = [rng.uniform(-1, 1, 3, 1 << i, 1 << i) for i in range(mapsize.bit_length() - 1)]
    for b in range(2):
        plasma = _plasma_loops([u[b].numpy() for u in uniforms], p["decay"])
        img = _hwc(x[b]).astype(np.float64)
        peak = img.max()
        img = img + p["s"] * plasma[:side, :side][..., None]
        ref = np.clip(img * peak / (peak + p["s"]), 0, 1)
        np.testing.assert_allclose(_hwc(out[b]), ref, atol=1e-6)


def test_fog_other_sizes_use_next_power_of_two() -> None:
    out = P.get("fog")(torch.rand(2, 3, 48, 48), 3, seed=0, preset="cifar")
    assert out.shape == (2, 3, 48, 48) and torch.isfinite(out).all()


@pytest.mark.parametrize(("height", "width", "mapsize"), [(40, 24, 64), (20, 33, 64), (64, 16, 64)])
def test_fog_on_h_by_w_crops_the_map_of_the_longer_side(
    height: int, width: int, mapsize: int
) -> None:
    """imagecorruptions' rule: an M x M map, M the next power of two >= max(H, W), cropped to
    its top-left H x W."""
    p = dict(P.get("fog").params(4, "cifar"))
    x = _images(2, height, seed=3, hi=0.8, width=width)
    out = W.fog(x, rng=_rng([5, 6]), **p).clamp(0, 1)
    rng = _rng([5, 6])
    uniforms = [rng.uniform(-1, 1, 3, 1 << i, 1 << i) for i in range(mapsize.bit_length() - 1)]
    for b in range(2):
        plasma = _plasma_loops([u[b].numpy() for u in uniforms], p["decay"])
        img = _hwc(x[b]).astype(np.float64)
        peak = img.max()
        img = img + p["s"] * plasma[:height, :width][..., None]
        ref = np.clip(img * peak / (peak + p["s"]), 0, 1)
        np.testing.assert_allclose(_hwc(out[b]), ref, atol=1e-6)


# -------------------------------------------------------------------------------------- spatter


def _water_reference(lu: np.ndarray) -> np.ndarray:
    dist = cv2.distanceTransform(255 - cv2.Canny(lu, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def test_water_texture_far_from_edges() -> None:
    lu = np.zeros((96, 96), np.uint8)
    lu[10:18, 12:20] = 200  # one small drop: distances reach ~100 px, truncated at 20
    got = W.water_distance(lu)
    np.testing.assert_array_equal(got, _water_reference(lu))
    assert len(np.unique(got)) > 3


def _spatter_reference(x: np.ndarray, normal: np.ndarray, p: dict) -> np.ndarray:
    """The original spatter on one float32 HWC image, given its standard normal draws."""
    layer = gaussian(p["mu"] + p["sigma"] * normal, sigma=p["blur"])
    layer[layer < p["thr"]] = 0
    if p["mode"] == "mud":
        m = gaussian(np.where(layer > p["thr"], 1, 0).astype(np.float32), sigma=p["k"])
        m[m < 0.8] = 0
        colour = np.array([63, 42, 20], dtype=np.float32) / 255
        return np.clip(x * (1 - m[..., None]) + colour * m[..., None], 0, 1)
    lu = (layer * 255).astype(np.uint8)
    m = lu * _water_reference(lu)
    m = m / m.max() * p["k"]
    colour = np.array([175, 238, 238], dtype=np.float32) / 255
    return np.clip(x + m[..., None] * colour, 0, 1)


@pytest.mark.parametrize(
    "preset,severity",
    [
        ("cifar", 1),
        ("cifar", 3),
        ("cifar", 4),
        ("tiny", 2),
        ("tiny", 5),
        ("imagenet", 3),
        ("imagenet", 5),
    ],
)
def test_spatter_matches_original(preset: str, severity: int) -> None:
    side, n = SIDES[preset], 4 if preset != "imagenet" else 2
    p = dict(P.get("spatter").params(severity, preset))
    x = _images(n, side, seed=4)
    seeds = list(range(20, 20 + n))
    out = W.spatter(x, rng=_rng(seeds), **p).clamp(0, 1)
    normals = _rng(seeds).randn(1, side, side, dtype=torch.float64)[:, 0].numpy()
    for i in range(n):
        ref = _spatter_reference(_hwc(x[i]), normals[i], p)
        np.testing.assert_allclose(_hwc(out[i]), ref, atol=2e-6)


@pytest.mark.parametrize(("preset", "severity"), [("imagenet", 2), ("imagenet", 4), ("cifar", 5)])
def test_spatter_matches_original_on_h_by_w(preset: str, severity: int) -> None:
    height, width = (90, 150) if preset == "imagenet" else (24, 40)
    p = dict(P.get("spatter").params(severity, preset))
    x = _images(2, height, seed=4, width=width)
    out = W.spatter(x, rng=_rng([20, 21]), **p).clamp(0, 1)
    normals = _rng([20, 21]).randn(1, height, width, dtype=torch.float64)[:, 0].numpy()
    for i in range(2):
        ref = _spatter_reference(_hwc(x[i]), normals[i], p)
        np.testing.assert_allclose(_hwc(out[i]), ref, atol=2e-6)


@pytest.mark.parametrize("mode", ["water", "mud"])
def test_spatter_empty_layer_leaves_image_unchanged(mode: str) -> None:
    x = _images(2, 32, seed=5)
    p = {"mu": 0.5, "sigma": 0.1, "blur": 1.0, "thr": 5.0, "k": 0.5, "mode": mode}
    out = W.spatter(x, rng=_rng([1, 2]), **p)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x, atol=0, rtol=0)


# -------------------------------------------------------------------------------------- elastic


@pytest.mark.parametrize("side,delta", [(32, 2.56), (224, 48.8)])
def test_affine_warp_matches_cv2(side: int, delta: float) -> None:
    rs = np.random.RandomState(side)
    img = rs.rand(side, side, 3).astype(np.float32)
    pts1 = _pts1(side)
    pts2 = (pts1 + rs.uniform(-delta, delta, (3, 2))).astype(np.float32)
    ref = cv2.warpAffine(
        img,
        cv2.getAffineTransform(pts1, pts2),
        (side, side),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    got = E.affine_warp(
        torch.from_numpy(img).permute(2, 0, 1)[None],
        torch.from_numpy(pts1),
        torch.from_numpy(pts2)[None],
    )
    np.testing.assert_allclose(_hwc(got[0]), ref, atol=5e-5)


@pytest.mark.parametrize(
    "side,width,sigma",
    [(32, 32, 6.4), (32, 32, 0.96), (224, 224, 170.8), (224, 224, 2.44), (40, 90, 7.0)],
)
def test_smoothing_matches_skimage_reflect(side: int, width: int, sigma: float) -> None:
    u = np.random.RandomState(1).uniform(-1, 1, (side, width))
    ref = gaussian(u, sigma, mode="reflect", truncate=3)
    got = E.smooth_field(torch.from_numpy(u)[None], sigma)[0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-13)


@pytest.mark.parametrize("side", [32, 224])
def test_sampling_matches_map_coordinates_reflect(side: int) -> None:
    rs = np.random.RandomState(2)
    img = rs.rand(side, side, 3).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    ys = rows + rs.uniform(-3 * side, 3 * side, (side, side))  # several folds on both sides
    xs = cols + rs.uniform(-2.0, 2.0, (side, side))
    ref = np.stack(
        [map_coordinates(img[..., c], (ys, xs), order=1, mode="reflect") for c in range(3)], -1
    )
    got = E.sample_symmetric(
        torch.from_numpy(img).permute(2, 0, 1)[None],
        torch.from_numpy(ys)[None],
        torch.from_numpy(xs)[None],
    )
    np.testing.assert_allclose(_hwc(got[0]), ref, atol=1e-6)


def _pts1(side: int, width: int | None = None) -> np.ndarray:
    """The original's pts1: ``center_square = float32((H, W)) // 2``, ``q = min(H, W) // 3``."""
    shape = (side, width or side)
    center, q = np.float32(shape) // 2, min(shape) // 3
    return np.float32([center + q, [center[0] + q, center[1] - q], center - q])


def test_affine_points_are_the_originals() -> None:
    for side in (32, 64, 224):
        np.testing.assert_array_equal(E.affine_points(side).numpy(), _pts1(side))
    assert E.affine_points(224)[0].tolist() == [112 + 74, 112 + 74]
    # H x W: the originals hand (H // 2, W // 2) +/- q to OpenCV as (x, y) points
    np.testing.assert_array_equal(E.affine_points((200, 300)).numpy(), _pts1(200, 300))
    assert E.affine_points((200, 300))[0].tolist() == [100 + 66, 150 + 66]


def _elastic_reference(
    img: np.ndarray, pts2: np.ndarray, u: np.ndarray | None, p: dict
) -> np.ndarray:
    """The original elastic_transform on one float32 HWC image, given its draws."""
    side, width = img.shape[:2]
    pts1 = _pts1(side, width)
    warped = cv2.warpAffine(
        img, cv2.getAffineTransform(pts1, pts2), (width, side), borderMode=cv2.BORDER_REFLECT_101
    )
    if u is None:
        return np.clip(warped, 0, 1)
    dx, dy = (
        (gaussian(f, p["sigma"], mode="reflect", truncate=3) * p["alpha"]).astype(np.float32)
        for f in u
    )
    rows, cols = np.meshgrid(np.arange(side), np.arange(width), indexing="ij")
    out = [
        map_coordinates(warped[..., c], (rows + dy, cols + dx), order=1, mode="reflect")
        for c in range(img.shape[2])
    ]
    return np.clip(np.stack(out, -1), 0, 1)


@pytest.mark.parametrize(
    "preset,severity", [("cifar", 1), ("cifar", 2), ("tiny", 3), ("imagenet", 1), ("imagenet", 4)]
)
def test_elastic_matches_original(preset: str, severity: int) -> None:
    side, n = SIDES[preset], 3 if preset != "imagenet" else 1
    p = dict(P.get("elastic_transform").params(severity, preset))
    x = _images(n, side, seed=6)
    seeds = list(range(40, 40 + n))
    out = E.elastic_transform(x, rng=_rng(seeds), **p).clamp(0, 1)
    rng = _rng(seeds)
    offsets = rng.uniform(-p["delta"], p["delta"], 3, 2).to(torch.float32).numpy()
    fields = rng.uniform(-1, 1, 2, side, side).numpy() if p["alpha"] > 0 else [None] * n
    for i in range(n):
        pts2 = _pts1(side) + offsets[i]
        ref = _elastic_reference(_hwc(x[i]), pts2, fields[i], p)
        np.testing.assert_allclose(_hwc(out[i]), ref, atol=1e-4)
    assert (out - x).abs().max() > 1e-3  # it does move the image


@pytest.mark.parametrize(
    ("preset", "severity", "height", "width"),
    [("imagenet", 2, 120, 200), ("imagenet", 5, 150, 90), ("cifar", 3, 32, 48)],
)
def test_elastic_matches_original_on_h_by_w(
    preset: str, severity: int, height: int, width: int
) -> None:
    """H x W fields, the original's triangle for that shape, pixel quantities scaled by the
    shorter side."""
    p = dict(P.get("elastic_transform").params(severity, preset))
    x = _images(2, height, seed=6, width=width)
    out = E.elastic_transform(x, rng=_rng([40, 41]), **p).clamp(0, 1)
    scale = min(height, width) / p["size"]
    scaled = {k: p[k] * scale for k in ("alpha", "sigma", "delta")}
    rng = _rng([40, 41])
    offsets = rng.uniform(-scaled["delta"], scaled["delta"], 3, 2).to(torch.float32).numpy()
    fields = rng.uniform(-1, 1, 2, height, width).numpy()
    for i in range(2):
        pts2 = _pts1(height, width) + offsets[i]
        ref = _elastic_reference(_hwc(x[i]), pts2, fields[i], scaled)
        np.testing.assert_allclose(_hwc(out[i]), ref, atol=1e-4)
    assert (out - x).abs().max() > 1e-3


def test_elastic_scales_pixel_parameters_with_the_side() -> None:
    p = dict(P.get("elastic_transform").params(3, "cifar"))
    x = _images(2, 64, seed=7)
    at_32 = E.elastic_transform(x, rng=_rng([1, 2]), **p)
    doubled = {k: 2 * p[k] for k in ("alpha", "sigma", "delta")}
    at_64 = E.elastic_transform(x, rng=_rng([1, 2]), **doubled, size=64)
    torch.testing.assert_close(at_32, at_64, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [3, 5])
def test_seeded_determinism_and_batch_independence(name: str, severity: int) -> None:
    spec = P.get(name)
    x = _images(3, 32, seed=8)
    before = x.clone()
    out = spec(x, severity, seed=11)
    torch.testing.assert_close(x, before, atol=0, rtol=0)
    torch.testing.assert_close(spec(x, severity, seed=11), out, atol=0, rtol=0)
    assert not torch.equal(spec(x, severity, seed=12), out)
    parts = [spec(x[i : i + 1], severity, seed=11, indices=[i]) for i in range(3)]
    torch.testing.assert_close(torch.cat(parts), out, atol=1e-6, rtol=0)
    assert out.dtype == x.dtype and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
