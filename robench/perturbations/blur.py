"""ImageNet-C blur corruptions (defocus, glass, motion, zoom, gaussian), as the originals do them.

Every kernel follows ``make_cifar_c.py`` / ``make_tinyimagenet_c.py`` / ``make_imagenet_c.py``
(see ``reference/corruptions.md`` sections 3 and 4.4-4.7, 4.17, 11), including their quirks:
glass blur's uint8 truncation and sequential *copy* loop, ImageMagick's one-sided motion
kernel written back as 8 bits, and the float ``arange`` zoom lists. None of them hard-codes the
image side, so the parameters apply unchanged at any size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from robench.perturbations._base import RandomSource, register_corruption
from robench.perturbations._ops import (
    clipped_zoom,
    fft_correlate,
    im_motion_blur,
    scipy_gaussian,
    scipy_gaussian_weights,
    separable_filter,
    uint8_levels,
)

_SRC = "ImageNet-C (Hendrycks & Dietterich 2019)"


def _arange(start: float, stop: float, step: float) -> tuple[float, ...]:
    """The originals' ``np.arange`` zoom lists, float quirks included (1.06 is in 1..1.06)."""
    return tuple(float(v) for v in np.arange(start, stop, step))


_ZOOM_SMALL = [_arange(1, stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)]
_ZOOM_IMAGENET = [
    _arange(1, 1.11, 0.01),
    _arange(1, 1.16, 0.01),
    _arange(1, 1.21, 0.02),
    _arange(1, 1.26, 0.02),
    _arange(1, 1.31, 0.03),
]


def _rows(keys: tuple[str, ...], values: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(keys, v, strict=True)) for v in values]


# --------------------------------------------------------------------------- defocus


def cv2_gaussian_blur_small(a: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(a, (ksize, ksize), sigma)`` on a small float32 array (reflect-101).

    The 1-D kernel is OpenCV's ``getGaussianKernel`` (normalised float64, stored as float32);
    rows are filtered first, then columns, and the result is float32.
    """
    t = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    g = (g / g.sum()).astype(np.float32).astype(np.float64)
    r = ksize // 2
    p = np.pad(a.astype(np.float64), r, mode="reflect")
    h, w = a.shape
    rows = sum(g[k] * p[:, k : k + w] for k in range(ksize))
    out = sum(g[k] * rows[k : k + h, :] for k in range(ksize))
    return np.asarray(out, dtype=np.float32)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's anti-aliased disk (float32).

    A 17x17 grid and a 3x3 alias blur for r <= 8, else a (2r+1)^2 grid and a 5x5 blur.
    """
    coords: np.ndarray  # integer offsets for r <= 8, else float ones from -r to r
    if radius <= 8:
        coords, ksize = np.arange(-8, 8 + 1), 3
    else:
        coords, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(coords, coords)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2_gaussian_blur_small(disk, ksize, alias_blur)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@register_corruption(
    "defocus_blur",
    table={
        "cifar": _rows(
            ("radius", "alias_blur"), [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]
        ),
        "tiny": _rows(
            ("radius", "alias_blur"), [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)]
        ),
        "imagenet": _rows(
            ("radius", "alias_blur"), [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]
        ),
    },
    family="blur",
    description="out-of-focus lens: correlation with an anti-aliased disk (reflect-101 borders)",
    source=_SRC,
    describe=lambda p: f"disk radius={p['radius']}, alias sigma={p['alias_blur']}",
    stochastic=False,
)
def defocus_blur(x: Tensor, *, rng: RandomSource, radius: float, alias_blur: float) -> Tensor:
    """``cv2.filter2D`` of every channel with :func:`disk_kernel` (border reflect-101)."""
    kernel = torch.from_numpy(disk_kernel(radius, alias_blur))[None]
    r = kernel.shape[-1] // 2
    return fft_correlate(x, kernel, (r, r), "reflect", dtype=_work_dtype(x))


# --------------------------------------------------------------------------- glass


def _glass_pass_sources(codes: Tensor, h: int, w: int, d: int) -> tuple[Tensor, Tensor]:
    """Flat targets (T,) and, per image, the flat pixel each target finally copies (N, T).

    The original loop visits targets (row, col) in [d+1, h-d] x [d+1, w-d], rows then columns
    descending, and copies ``x[row + dy, col + dx]`` into ``x[row, col]`` (numpy views turn its
    tuple "swap" into a copy). A target whose source is a target visited earlier receives
    that source's final value, so following those links to their end (pointer jumping,
    O(log chain) gathers) reproduces the sequential result exactly. With d = 1 every source is
    visited later (or is the pixel itself) and there are no links.

    Args:
        codes: (N, T) int64 in [0, 4 d^2): ``dx = code % 2d - d``, ``dy = code // 2d - d``.
        h: image height.
        w: image width.
        d: the maximal shift; offsets lie in [-d, d-1].
    """
    span = w - 2 * d
    t = torch.arange(codes.shape[1], device=codes.device)
    targets = (h - d - t // span) * w + (w - d - t % span)
    # source = target + dy * w + dx = target + code + (w - 2d) * (code // 2d) - d * (w + 1)
    sources = torch.add(codes, torch.div(codes, 2 * d, rounding_mode="floor"), alpha=w - 2 * d)
    sources += (targets - d * (w + 1))[None]
    if d == 1:
        return targets, sources
    visit = torch.full((h * w,), t.numel(), dtype=torch.int64, device=codes.device)
    visit[targets] = t
    source_visit = visit.take(sources)
    link = torch.where(source_visit < t, source_visit, t)
    while True:
        jumped = link.gather(1, link)
        if torch.equal(jumped, link):
            return targets, sources.gather(1, link)
        link = jumped


def glass_shuffle(levels: Tensor, codes: Tensor, d: int) -> Tensor:
    """Run all passes of the copy loop on (N, C, H, W) ``levels``; ``codes`` is (N, passes, T)."""
    n, c, h, w = levels.shape
    index = torch.arange(h * w, device=levels.device).repeat(n, 1)
    for k in range(codes.shape[1]):
        targets, sources = _glass_pass_sources(codes[:, k], h, w, d)
        index[:, targets] = sources if k == 0 else index.gather(1, sources)
    flat = levels.reshape(n, c, h * w)
    return flat.gather(2, index[:, None].expand(n, c, -1)).reshape(levels.shape)


def _skimage_gaussian(x: Tensor, sigma: float) -> Tensor:
    """The skimage gaussian (truncate 4, mode 'nearest') at matmul speed, in ``x``'s dtype."""
    return separable_filter(x, torch.tensor(scipy_gaussian_weights(sigma)), "replicate")


@register_corruption(
    "glass_blur",
    table={
        "cifar": _rows(
            ("sigma", "max_delta", "iterations"),
            [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        ),
        "tiny": _rows(
            ("sigma", "max_delta", "iterations"),
            [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
        ),
        "imagenet": _rows(
            ("sigma", "max_delta", "iterations"),
            [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        ),
    },
    family="blur",
    description="frosted glass: gaussian, uint8, local pixel copies (the original loop), gaussian",
    source=_SRC,
    describe=lambda p: (
        f"sigma={p['sigma']}, max shift {p['max_delta']} px, {p['iterations']} pass(es)"
    ),
    cpu_chunk=1 << 21,  # no page faults: 132 -> 118 ms per 32 images at 224 px
)
def glass_blur(
    x: Tensor, *, rng: RandomSource, sigma: float, max_delta: int, iterations: int
) -> Tensor:
    """Gaussian -> uint8 truncation -> ``iterations`` passes of the copy loop -> gaussian.

    Each target and pass draws one code uniform over the (2d)^2 offset pairs, i.e. dx and dy
    independent and uniform on [-d, d-1] like numpy's ``randint(-d, d)``. Both blurs are
    skimage's (truncate 4, mode 'nearest'); the first is reproduced bit for bit, so the uint8
    truncation (flat areas included) matches the original exactly.
    """
    blurred = scipy_gaussian(uint8_levels(x).to(torch.float64).div_(255.0), sigma)
    levels = blurred.mul_(255.0).to(torch.uint8)  # truncates, like np.uint8 (values in [0, 255])
    targets = max(x.shape[-2] - 2 * max_delta, 0) * max(x.shape[-1] - 2 * max_delta, 0)
    if targets > 0:
        codes = rng.randint(0, 4 * max_delta * max_delta, iterations, targets)
        levels = glass_shuffle(levels, codes.to(x.device), max_delta)
    return _skimage_gaussian(levels.to(_work_dtype(x)).div_(255.0), sigma)


# --------------------------------------------------------------------------- motion


@register_corruption(
    "motion_blur",
    table={
        "cifar": _rows(("radius", "sigma"), [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)]),
        "tiny": _rows(("radius", "sigma"), [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)]),
        "imagenet": _rows(("radius", "sigma"), [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]),
    },
    family="blur",
    description="camera shake: ImageMagick's one-sided half-Gaussian motion blur, angle U(-45, 45)",
    source=_SRC + "; ImageMagick MotionBlurImage",
    describe=lambda p: (
        f"radius={p['radius']}, sigma={p['sigma']} ({2 * int(np.ceil(p['radius'])) + 1} taps)"
    ),
    cpu_chunk=1 << 21,  # no page faults: 58 -> 49 ms per 32 images at 224 px
)
def motion_blur(x: Tensor, *, rng: RandomSource, radius: float, sigma: float) -> Tensor:
    """Wand ``motion_blur(radius, sigma, angle ~ U(-45, 45))`` on the 8-bit image, per image.

    Edge pixels repeat (ImageMagick's edge virtual pixels) and the result is 8-bit, exactly
    as ImageMagick 6 Q16 writes it (:func:`~robench.perturbations._ops.im_motion_blur`).
    """
    angles = rng.uniform(-45.0, 45.0)
    return im_motion_blur(uint8_levels(x), radius, sigma, angles).div_(255.0)


# --------------------------------------------------------------------------- zoom


def _zoom_text(p: Any) -> str:
    f = p["factors"]
    return f"zoom {f[0]:.2f}..{f[-1]:.2f} ({len(f)} factors)"


@register_corruption(
    "zoom_blur",
    table={
        "cifar": [{"factors": z} for z in _ZOOM_SMALL],
        "tiny": [{"factors": z} for z in _ZOOM_SMALL],
        "imagenet": [{"factors": z} for z in _ZOOM_IMAGENET],
    },
    family="blur",
    description="zoom during exposure: mean of the image and its centre zooms",
    source=_SRC,
    describe=_zoom_text,
    stochastic=False,
    cpu_chunk=1 << 19,  # no page faults: 229 -> 79 ms per 32 images at 224 px
)
def zoom_blur(x: Tensor, *, rng: RandomSource, factors: tuple[float, ...]) -> Tensor:
    """``(x + sum_z clipped_zoom(x, z)) / (len(factors) + 1)``.

    z = 1 is in every list, so x counts twice, as in the original; the zooms are summed in
    float32 like the original (float64 for float64 input).
    """
    v = x.to(_work_dtype(x))
    out = torch.zeros_like(v)
    for z in factors:
        out += clipped_zoom(v, z)
    return out.add_(v).div_(len(factors) + 1)


# --------------------------------------------------------------------------- gaussian


@register_corruption(
    "gaussian_blur",
    table={
        "cifar": [{"sigma": s} for s in (0.4, 0.6, 0.7, 0.8, 1.0)],
        "tiny": [{"sigma": s} for s in (0.5, 0.75, 1.0, 1.25, 1.5)],
        "imagenet": [{"sigma": s} for s in (1, 2, 3, 4, 6)],
    },
    family="blur",
    description="Gaussian blur (skimage, truncate 4, edge pixels repeated)",
    source=_SRC,
    describe=lambda p: f"sigma={p['sigma']}",
    stochastic=False,
    cpu_chunk=1 << 21,  # no page faults (940 per 32 images at 224 px unchunked)
)
def gaussian_blur(x: Tensor, *, rng: RandomSource, sigma: float) -> Tensor:
    """``skimage.filters.gaussian(x, sigma)`` per channel: radius int(4 sigma + 0.5), 'nearest'."""
    return _skimage_gaussian(x.to(_work_dtype(x)), sigma)
