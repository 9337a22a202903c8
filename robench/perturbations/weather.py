"""Weather corruptions of ImageNet-C: frost, fog and spatter, at the three resolution presets.

Faithful to the original ``make_cifar_c.py`` / ``make_tinyimagenet_c.py`` / ``make_imagenet_c.py``
code (see ``reference/corruptions.md`` sections 4.9, 4.10, 4.18 and 4.20); every image draws its own
random numbers from ``rng``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robench.perturbations._base import RandomSource, image_side, register_corruption
from robench.perturbations._ops import banded_matmul
from robench.perturbations.elastic import gaussian_matrix

__all__ = ["frost", "fog", "spatter", "plasma_fractal", "frost_textures", "water_distance"]

_SRC = "ImageNet-C (Hendrycks & Dietterich 2019)"
_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_LUMA = (0.299, 0.587, 0.114)
_WATER_RGB = (175.0, 238.0, 238.0)
_MUD_RGB = (63.0, 42.0, 20.0)
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)


def _colour(rgb: tuple[float, float, float], channels: int, like: Tensor) -> Tensor:
    """A 0-255 RGB colour as a (1, C, 1, 1) tensor in [0, 1]; its luma for one channel."""
    c = torch.tensor(rgb, dtype=torch.float64) / 255.0
    if channels == 1:
        c = (c * torch.tensor(_LUMA, dtype=torch.float64)).sum(0, keepdim=True)
    return c.to(device=like.device, dtype=like.dtype).view(1, channels, 1, 1)


# --------------------------------------------------------------------------------------- frost


def _frost_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None:
        raise FileNotFoundError(
            "frost needs the textures shipped with imagecorruptions: pip install imagecorruptions"
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin is not None:
        roots = [str(Path(spec.origin).parent)]
    return Path(roots[0]) / "frost"


@functools.lru_cache(maxsize=4)
def frost_textures(scale: float, cover: tuple[int, int] = (0, 0)) -> tuple[Tensor, Tensor]:
    """The five frost textures, decoded like the originals and rescaled by ``scale``.

    Read with ``cv2.imread`` (alpha dropped), resized with ``cv2.resize(fx=fy=scale)``
    (INTER_LINEAR) unless ``scale == 1``, converted to RGB. A read-only asset cache.

    A texture still smaller than ``cover`` (H, W) in either dimension is enlarged as
    imagecorruptions does for images larger than its textures: by the larger of the two ratios
    it lacks, times 1.1, to ``ceil`` of the scaled size, with ``INTER_CUBIC``.

    Returns:
        ``(stack, sizes)``: uint8 (5, Hmax, Wmax, 3) zero-padded textures and int64 (5, 2) sizes.
    """
    import cv2

    folder = _frost_dir()
    images = []
    for name in _FROST_FILES:
        path = folder / name
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if img is None:
            raise FileNotFoundError(
                f"frost texture {path} is missing: pip install imagecorruptions"
            )
        if scale != 1.0:
            img = cv2.resize(img, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        img = _cover(img, cover)
        images.append(np.ascontiguousarray(img[..., ::-1]))
    hmax, wmax = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    stack = torch.zeros(len(images), hmax, wmax, 3, dtype=torch.uint8)
    for k, img in enumerate(images):
        stack[k, : img.shape[0], : img.shape[1]] = torch.from_numpy(img)
    sizes = torch.tensor([i.shape[:2] for i in images], dtype=torch.int64)
    return stack, sizes


def _cover(img: np.ndarray, cover: tuple[int, int]) -> np.ndarray:
    """``img`` enlarged like imagecorruptions' frost when it is smaller than ``cover`` (H, W)."""
    import cv2

    h, w = img.shape[:2]
    if h >= cover[0] and w >= cover[1]:
        return img
    factor = 1.1 * max(cover[0] / h, cover[1] / w)
    size = (math.ceil(w * factor), math.ceil(h * factor))
    return cv2.resize(img, dsize=size, interpolation=cv2.INTER_CUBIC)


def _frost_draw(g: torch.Generator, sizes: Tensor, height: int, width: int) -> Tensor:
    """One image's (texture, row, col): randint(5), then crop starts in [0, h-H) and [0, w-W)."""
    k = int(torch.randint(0, len(sizes), (), generator=g, device=g.device))
    h, w = (int(v) for v in sizes[k])
    row = int(torch.randint(0, max(h - height, 1), (), generator=g, device=g.device))
    col = int(torch.randint(0, max(w - width, 1), (), generator=g, device=g.device))
    return torch.tensor([k, row, col], device=g.device)


@register_corruption(
    "frost",
    table={
        "cifar": [
            {"a": a, "b": b, "scale": 0.2, "size": 32}
            for a, b in ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
        ],
        "tiny": [
            {"a": a, "b": b, "scale": 0.3, "size": 64}
            for a, b in ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55))
        ],
        "imagenet": [
            {"a": a, "b": b, "scale": 1.0, "size": 224}
            for a, b in ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
        ],
    },
    family="weather",
    description="a random crop of one of 5 frost textures blended over the image",
    source=_SRC + "; textures from the installed imagecorruptions package",
    describe=lambda p: f"{p['a']}*image + {p['b']}*frost (texture x{p['scale']})",
    cpu_chunk=1 << 19,  # no page faults: 39 -> 16 ms per 32 images at 224 px
)
def frost(x: Tensor, *, rng: RandomSource, a: float, b: float, scale: float, size: int) -> Tensor:
    """``a * x + b * crop`` with an H x W crop of a texture rescaled by ``scale`` (x0.2/x0.3/x1).

    Images whose shorter side S (:func:`~robench.perturbations._base.image_side`) differs from
    ``size`` use the texture scale ``scale * S / size``. Where a texture at that scale is still
    smaller than the image (a tall image, or one much larger than the textures), it is enlarged
    as imagecorruptions does (see :func:`frost_textures`). One-channel images get the crop's luma
    (0.299, 0.587, 0.114).
    """
    c, (height, width) = x.shape[1], x.shape[-2:]
    side = image_side(x)
    texture_scale = scale if side == size else scale * side / size
    stack, sizes = frost_textures(texture_scale)
    if int(sizes[:, 0].min()) < height or int(sizes[:, 1].min()) < width:
        stack, sizes = frost_textures(texture_scale, (height, width))
    draws = rng.per_image(lambda g: _frost_draw(g, sizes, height, width)).cpu()
    # (N, H, W, 3) uint8; slices, not an advanced-index gather (which took 45% of the time)
    crops = torch.stack([stack[k, r : r + height, q : q + width] for k, r, q in draws.tolist()])
    crops = crops.to(device=x.device).permute(0, 3, 1, 2).to(x.dtype) * (b / 255.0)
    if c == 1:
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        crops = (crops * luma).sum(1, keepdim=True)
    return a * x + crops


# ----------------------------------------------------------------------------------------- fog


def plasma_fractal(uniforms: list[Tensor], decay: float) -> Tensor:
    """Diamond-square plasma maps on an M x M torus, batched, normalised to [0, 1] per map.

    Args:
        uniforms: per level (step M, M/2, ..., 2) a (N, 3, k, k) tensor of U(-1, 1) draws with
            ``k = M / step``: the squares, the diamonds on corner rows, those on centre rows.
        decay: the wibble decay; the wibble starts at 100 and is divided by ``decay`` per level.

    Returns:
        float64 (N, M, M).
    """
    n, m = uniforms[0].shape[0], 2 * uniforms[-1].shape[-1]
    grid = torch.zeros(n, m, m, dtype=torch.float64, device=uniforms[0].device)
    wibble, step = 100.0, m
    for u in uniforms:
        u = u.to(torch.float64)
        h = step // 2
        corners = grid[:, ::step, ::step]
        sq = corners + corners.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        grid[:, h::step, h::step] = sq / 4 + wibble * (wibble * u[:, 0])
        centres, corners = grid[:, h::step, h::step], grid[:, ::step, ::step]
        left = (centres + centres.roll(1, 1)) + (corners + corners.roll(-1, 2))
        top = (centres + centres.roll(1, 2)) + (corners + corners.roll(-1, 1))
        grid[:, ::step, h::step] = left / 4 + wibble * (wibble * u[:, 1])
        grid[:, h::step, ::step] = top / 4 + wibble * (wibble * u[:, 2])
        step //= 2
        wibble /= decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


@register_corruption(
    "fog",
    table={
        "cifar": [
            {"s": s, "decay": d} for s, d in ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
        ],
        "tiny": [
            {"s": s, "decay": d} for s, d in ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75))
        ],
        "imagenet": [
            {"s": s, "decay": d} for s, d in ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))
        ],
    },
    family="weather",
    description="additive plasma-fractal haze, rescaled to keep the image maximum",
    source=_SRC,
    describe=lambda p: f"strength={p['s']}, wibble decay={p['decay']}",
    cpu_chunk=1 << 21,  # no page faults: 59 -> 40 ms per 32 images at 224 px
)
def fog(x: Tensor, *, rng: RandomSource, s: float, decay: float) -> Tensor:
    """``(x + s * F) * m / (m + s)``, F a plasma map cropped to H x W, m the image's maximum.

    The map side is the next power of two >= max(H, W) (32, 64 and 256 at the presets, as the
    originals), cropped to its top-left H x W, as imagecorruptions does for any image. Draws per
    image: per level one (3, k, k) U(-1, 1) block (see :func:`plasma_fractal`).
    """
    height, width = x.shape[-2:]
    mapsize = 1 << max(max(height, width) - 1, 1).bit_length()
    levels = mapsize.bit_length() - 1
    # one draw per image, split by level: the same numbers as one draw per level (torch's
    # uniform_ takes one 32-bit value per element), 24 Python-level draws per image fewer
    sizes = [3 << (2 * i) for i in range(levels)]
    flat = torch.split(rng.uniform(-1.0, 1.0, sum(sizes)), sizes, dim=1)
    uniforms = [u.view(-1, 3, 1 << i, 1 << i) for i, u in enumerate(flat)]
    plasma = plasma_fractal(uniforms, decay)[:, None, :height, :width]
    peak = x.amax(dim=(1, 2, 3), keepdim=True).to(torch.float64)
    haze = (s * plasma).to(device=x.device, dtype=x.dtype)
    return (x + haze) * (peak / (peak + s)).to(x.dtype)


# ------------------------------------------------------------------------------------- spatter


def water_distance(layer: np.ndarray) -> np.ndarray:
    """The originals' water texture for one uint8 liquid layer (OpenCV, CPU), float32.

    Canny(50, 150) edges -> L2 distance transform (5x5 mask) of the non-edges -> truncated at 20
    -> 3x3 box blur -> uint8 -> histogram equalisation -> emboss (saturating uint8) -> 3x3 box blur.
    """
    import cv2

    dist = cv2.distanceTransform(255 - cv2.Canny(layer, 50, 150), cv2.DIST_L2, 5)
    dist = np.minimum(dist, np.float32(20.0))
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def _nearest_matrices(maps: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """The (H x H) and (W x W) skimage gaussian matrices (mode 'nearest') of maps (..., H, W)."""
    height, width = maps.shape[-2:]
    gh = gaussian_matrix(height, sigma, truncate=4.0, border="nearest").to(maps.device)
    gw = gh if width == height else gaussian_matrix(width, sigma, truncate=4.0, border="nearest")
    return gh, gw.to(maps.device)


def _blur64(layer: Tensor, sigma: float) -> Tensor:
    """The skimage ``gaussian`` (mode 'nearest', truncate 4) of float64 maps (..., H, W) by matmul.

    Banded float64 matrix products (:func:`~robench.perturbations._ops.banded_matmul`) are much
    faster than a float64 convolution on CPU.
    """
    gh, gw = _nearest_matrices(layer, sigma)
    return banded_matmul(gw, banded_matmul(gh, layer.to(torch.float64), -2), -1)


def _blur_float32(m: Tensor, sigma: float) -> Tensor:
    """The skimage ``gaussian`` of float32 maps: float64 sums, rounded to float32 per axis."""
    gh, gw = _nearest_matrices(m, sigma)
    rows = banded_matmul(gh, m.to(torch.float64), -2).to(torch.float32)
    return banded_matmul(gw, rows.to(torch.float64), -1).to(torch.float32)


def _mud(x: Tensor, layer: Tensor, thr: float, k: float) -> Tensor:
    mask = _blur_float32((layer > thr).to(torch.float32), k)
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask).to(x.dtype)
    return x * (1 - mask) + mask * _colour(_MUD_RGB, x.shape[1], x)


def _water(x: Tensor, layer: Tensor, k: float) -> Tensor:
    # uint8 cast of the originals: truncation, wrapping above 255 (practically never reached)
    lu = torch.remainder(torch.floor(layer * 255.0), 256.0)
    maps = [water_distance(img) for img in lu[:, 0].to("cpu", torch.uint8).numpy()]
    dist = torch.from_numpy(np.stack(maps)).to(x.device, torch.float64)[:, None]
    m = lu * dist
    # m holds integers, so a non-empty layer has peak >= 1; the originals' 0/0 -> NaN for an empty
    # layer becomes 0 / 1 = no water
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1.0) * k
    return x + m.to(x.dtype) * _colour(_WATER_RGB, x.shape[1], x)


def _spatter_row(
    mu: float, sigma: float, blur: float, thr: float, k: float, mode: str
) -> dict[str, Any]:
    return {"mu": mu, "sigma": sigma, "blur": blur, "thr": thr, "k": k, "mode": mode}


@register_corruption(
    "spatter",
    table={
        "cifar": [
            _spatter_row(*r)
            for r in (
                (0.62, 0.1, 0.7, 0.7, 0.5, "water"),
                (0.65, 0.1, 0.8, 0.7, 0.5, "water"),
                (0.65, 0.3, 1, 0.69, 0.5, "water"),
                (0.65, 0.1, 0.7, 0.69, 0.6, "mud"),
                (0.65, 0.1, 0.5, 0.68, 0.6, "mud"),
            )
        ],
        "tiny": [
            _spatter_row(*r)
            for r in (
                (0.62, 0.1, 0.7, 0.7, 0.6, "water"),
                (0.65, 0.1, 0.8, 0.7, 0.6, "water"),
                (0.65, 0.3, 1, 0.69, 0.6, "water"),
                (0.65, 0.1, 0.7, 0.68, 0.6, "mud"),
                (0.65, 0.1, 0.5, 0.67, 0.6, "mud"),
            )
        ],
        "imagenet": [
            _spatter_row(*r)
            for r in (
                (0.65, 0.3, 4, 0.69, 0.6, "water"),
                (0.65, 0.3, 3, 0.68, 0.6, "water"),
                (0.65, 0.3, 2, 0.68, 0.5, "water"),
                (0.65, 0.3, 1, 0.65, 1.5, "mud"),
                (0.67, 0.4, 1, 0.65, 1.5, "mud"),
            )
        ],
    },
    family="weather",
    description="water drops or mud splashes from a thresholded, blurred noise layer",
    source=_SRC + " (validation corruption)",
    describe=lambda p: f"{p['mode']}: N({p['mu']}, {p['sigma']}) blur {p['blur']}, thr {p['thr']}",
    cpu_chunk=1 << 21,  # no page faults: 69 -> 55 ms per 32 images at 224 px
)
def spatter(
    x: Tensor,
    *,
    rng: RandomSource,
    mu: float,
    sigma: float,
    blur: float,
    thr: float,
    k: float,
    mode: str,
) -> Tensor:
    """Liquid layer ``gaussian(N(mu, sigma), blur)``, zeroed below ``thr``, as water or mud.

    Mud (batched torch): ``m = gaussian(layer > thr, k)`` zeroed below 0.8, blended with brown.
    Water: the edge / distance-transform texture of :func:`water_distance` runs through OpenCV
    image by image on CPU (Canny, distanceTransform and equalizeHist have no faithful batched
    torch equivalent); the rest is batched. An empty layer, where the originals produce NaN,
    leaves the image unchanged. Draws per image: one (H, W) standard normal field.
    """
    layer = mu + sigma * rng.randn(1, *x.shape[-2:], dtype=torch.float64)
    layer = _blur64(layer, blur)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    if mode == "mud":
        return _mud(x, layer, thr, k)
    if mode == "water":
        return _water(x, layer, k)
    raise ValueError(f"spatter mode must be 'water' or 'mud', got {mode!r}")
