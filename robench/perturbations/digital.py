"""Digital corruptions of ImageNet-C: brightness, contrast, saturate, pixelate, JPEG compression.

Brightness and saturate change V or S in the HSV model of ``skimage.color.rgb2hsv`` /
``hsv2rgb``, in a closed form that needs no hue. Pixelate reproduces PIL's ``BOX`` downscaling
bit for bit, including its fixed-point weights and the 8-bit rounding between its horizontal and
vertical passes, and PIL's ``NEAREST`` upscaling. JPEG goes through PIL itself, one image at a
time, because no batched codec matches libjpeg.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from robench.perturbations._base import RandomSource, register_corruption
from robench.perturbations._ops import banded_matmul

__all__ = ["brightness", "contrast", "saturate", "pixelate", "jpeg_compression"]

_SRC = "ImageNet-C (Hendrycks & Dietterich 2019)"
_PRECISION_BITS = 22  # PIL's fixed-point precision for 8-bit resampling: 32 - 8 - 2


def _work_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _hsv_value_and_weight(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """HSV value ``v``, saturation ``s`` and the per-channel position ``w`` of an RGB batch.

    In the HSV model of ``skimage.color`` every channel is ``c = v * (1 - s * w_c)`` with
    ``w_c = (v - c) / (v - min)`` in [0, 1] (0 for the largest channel, 1 for the smallest), and
    the hue is a function of ``w`` alone. So ``hsv2rgb(h, s', v')`` of ``rgb2hsv(rgb)`` is
    ``v' * (1 - s' * w)``: changing S or V never needs the hue. Grey pixels (max == min) get
    hue 0 in scikit-image, i.e. ``w = (0, 1, 1)``; that is what they get here too.
    """
    v = rgb.amax(1, keepdim=True)
    delta = v - rgb.amin(1, keepdim=True)
    grey = delta == 0
    safe = torch.where(grey, torch.ones_like(delta), delta)
    s = torch.where(grey, torch.zeros_like(v), delta / torch.where(grey, torch.ones_like(v), v))
    grey_w = torch.tensor([0.0, 1.0, 1.0], dtype=rgb.dtype, device=rgb.device)[None, :, None, None]
    w = torch.where(grey, grey_w, (v - rgb) / safe)
    return v, s, w


@register_corruption(
    "brightness",
    table={
        "cifar": [{"delta": d} for d in (0.05, 0.1, 0.15, 0.2, 0.3)],
        "tiny": [{"delta": d} for d in (0.1, 0.2, 0.3, 0.4, 0.5)],
        "imagenet": [{"delta": d} for d in (0.1, 0.2, 0.3, 0.4, 0.5)],
    },
    family="weather",
    description="brighter image: HSV value channel + delta, clipped",
    source=_SRC,
    describe=lambda p: f"V + {p['delta']}",
    stochastic=False,
    cpu_chunk=1 << 19,  # no page faults: 40 -> 14 ms per 32 images at 224 px
)
def brightness(x: Tensor, *, rng: RandomSource, delta: float) -> Tensor:
    """HSV ``V = clip(V + delta, 0, 1)``, as skimage's rgb2hsv / hsv2rgb round trip computes it.

    Computed in closed form (see :func:`_hsv_value_and_weight`), in ``x``'s dtype (float32 for
    half precision). A one-channel image is its own V: ``x + delta``.

    ImageNet-C lists brightness among its weather corruptions, so its family is ``weather``.
    """
    if x.shape[1] != 3:
        return x + delta
    rgb = x.to(_work_dtype(x))
    v, s, w = _hsv_value_and_weight(rgb)
    return ((v + delta).clamp(0.0, 1.0) * (1.0 - s * w)).to(x.dtype)


@register_corruption(
    "contrast",
    table={
        "cifar": [{"c": c} for c in (0.75, 0.5, 0.4, 0.3, 0.15)],
        "tiny": [{"c": c} for c in (0.4, 0.3, 0.2, 0.1, 0.05)],
        "imagenet": [{"c": c} for c in (0.4, 0.3, 0.2, 0.1, 0.05)],
    },
    family="digital",
    description="contrast reduced towards each channel's mean: (x - mean) * c + mean",
    source=_SRC,
    describe=lambda p: f"factor {p['c']}",
    stochastic=False,
    cpu_chunk=1 << 19,  # no page faults: 15 -> 4 ms per 32 images at 224 px
)
def contrast(x: Tensor, *, rng: RandomSource, c: float) -> Tensor:
    """``(x - mu) * c + mu`` with ``mu`` the per-image, per-channel mean over H and W.

    The mean is accumulated in float64; the rest runs in ``x``'s dtype as ``c * x + (1 - c) * mu``.
    """
    mu = x.mean(dim=(2, 3), keepdim=True, dtype=torch.float64)
    return torch.add((mu * (1.0 - c)).to(x.dtype), x, alpha=c)


def _ab(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"a": a, "b": b} for a, b in pairs]


@register_corruption(
    "saturate",
    table={
        "cifar": _ab((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        "tiny": _ab((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)),
        "imagenet": _ab((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    },
    family="digital",
    description="saturation changed in HSV: S * a + b, clipped",
    source=_SRC + ", extra (validation) corruption",
    describe=lambda p: f"S * {p['a']} + {p['b']}",
    stochastic=False,
    cpu_chunk=1 << 19,  # no page faults: 35 -> 12 ms per 32 images at 224 px
)
def saturate(x: Tensor, *, rng: RandomSource, a: float, b: float) -> Tensor:
    """HSV ``S = clip(S * a + b, 0, 1)``, as skimage's rgb2hsv / hsv2rgb round trip computes it.

    Computed in closed form (see :func:`_hsv_value_and_weight`). Grey pixels have hue 0 in
    scikit-image, so a positive ``b`` tints them red, as in ImageNet-C.

    A one-channel image has no saturation to change and is returned unchanged.
    """
    if x.shape[1] != 3:
        return x.clone()
    rgb = x.to(_work_dtype(x))
    v, s, w = _hsv_value_and_weight(rgb)
    return (v * (1.0 - (s * a + b).clamp(0.0, 1.0) * w)).to(x.dtype)


def _uint8_values(x: Tensor) -> Tensor:
    """The originals' ``np.uint8(x * 255)`` levels as floats of ``x``'s dtype: the product, floored.

    Truncation equals floor for the non-negative products, so the levels are identical (for data
    that came from ``uint8``, values ``k / 255``, they are ``k`` exactly in float16, bfloat16,
    float32 and float64); torch's float -> uint8 cast is about ten times slower on the CPU than
    these in-place float passes.
    """
    return x.clamp(0.0, 1.0).mul_(255.0).floor_()


def _pil_box_window(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """PIL ``BOX`` resampling of one axis as a 0/1 window matrix and PIL's integer weight per row.

    PIL computes, in double precision, ``center = (o + 0.5) * scale`` and keeps source pixel ``j``
    when ``-0.5 < (j - center + 0.5) / max(scale, 1) <= 0.5`` inside its rounded support bounds;
    every kept pixel weighs ``1 / count``, stored as ``int(0.5 + w * 2**22)``. The same double
    arithmetic is repeated here so that the windows agree at exact ties.

    Returns:
        ``window`` (n_out, n_in) float64 of 0/1 and ``weight`` (n_out,) int64.

    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    o = torch.arange(n_out, dtype=torch.float64)[:, None]
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    center = (o + 0.5) * scale
    lo = torch.trunc(center - support + 0.5).clamp(min=0)
    hi = torch.trunc(center + support + 0.5).clamp(max=n_in)
    t = ((j - center) + 0.5) * (1.0 / filterscale)
    window = (t > -0.5) & (t <= 0.5) & (j >= lo) & (j < hi)
    count = window.sum(1).to(torch.float64)
    weight = torch.floor(0.5 + (1.0 / count) * float(1 << _PRECISION_BITS)).to(torch.int64)
    return window.to(torch.float64), weight


def _round_fixed_point(sums: Tensor, weight: Tensor) -> Tensor:
    """PIL's ``clip8((2**21 + sum * k) >> 22)`` on integer window sums (float32, exact).

    ``sum * k`` stays below ``256 * 2**22 = 2**30``, so int32 holds every term exactly.
    """
    acc = sums.to(torch.int32) * weight.to(torch.int32) + (1 << (_PRECISION_BITS - 1))
    return (acc >> _PRECISION_BITS).clamp_(0, 255)


def pil_box_downscale(values: Tensor, size: int | tuple[int, int]) -> Tensor:
    """PIL ``resize((w', h'), BOX)`` of ``uint8`` images (N, C, H, W) to ``size = (h', w')``.

    An int ``size`` is a square ``(size, size)``; the result is int32.

    Horizontal pass first, rounded to 8 bits, then the vertical pass, as PIL does. Window sums
    of at most a few hundred ``uint8`` values are exact in float32, so the passes are float32
    matrix products with 0/1 windows followed by PIL's fixed-point rounding.
    """
    h, w = values.shape[-2:]
    size_h, size_w = (size, size) if isinstance(size, int) else size
    win_x, k_x = (t.to(values.device) for t in _pil_box_window(w, size_w))
    win_y, k_y = (t.to(values.device) for t in _pil_box_window(h, size_h))
    rows = _round_fixed_point(banded_matmul(win_x, values.float(), -1), k_x)
    return _round_fixed_point(banded_matmul(win_y, rows.float(), -2), k_y[:, None])


def _pil_upscale_index(n_in: int, n_out: int) -> Tensor:
    """Source index of PIL's ``NEAREST`` upscaling of ``n_in`` values to ``n_out``, exactly.

    PIL (``ImagingScaleAffine``) starts at ``a / 2`` with ``a = n_in / n_out`` and adds ``a`` once
    per output pixel in double, taking the integer part: the centre convention
    ``floor((o + 0.5) * a)`` up to the rounding of that running sum, which decides the ties
    where ``(o + 0.5) * a`` is a whole number. ``np.cumsum`` adds in the same order.
    """
    a = n_in / n_out
    steps = np.full(n_out, a)
    steps[0] = a * 0.5
    index = np.floor(np.cumsum(steps)).astype(np.int64)
    return torch.from_numpy(index).clamp(max=n_in - 1)


@register_corruption(
    "pixelate",
    table={
        "cifar": [{"f": f} for f in (0.95, 0.9, 0.85, 0.75, 0.65)],
        "tiny": [{"f": f} for f in (0.9, 0.8, 0.7, 0.6, 0.5)],
        "imagenet": [{"f": f} for f in (0.6, 0.5, 0.4, 0.3, 0.25)],
    },
    family="digital",
    description="box-filter downscale to int(S * f) pixels (8-bit), then nearest upscale back to S",
    source=_SRC,
    describe=lambda p: f"downscale factor {p['f']}",
    stochastic=False,
)
def pixelate(x: Tensor, *, rng: RandomSource, f: float) -> Tensor:
    """PIL ``BOX`` down to ``int(H * f) x int(W * f)`` and back up to H x W, bit-exact for uint8.

    The input is quantised as the original's ``uint8`` image (truncation of ``x * 255``). The
    downscale reproduces PIL's fixed-point arithmetic. The upscale is PIL's ``NEAREST``, as
    imagecorruptions does it at any size (:func:`_pil_upscale_index`); the original scripts
    upscale with ``BOX``, which reads the same pixels at every preset's size and factor (32, 64
    and 224 px) but breaks some ties the other way at other sizes (e.g. 80 -> 200 px).
    """
    h, w = x.shape[-2:]
    size_h, size_w = max(1, int(h * f)), max(1, int(w * f))
    levels = pil_box_downscale(_uint8_values(x), (size_h, size_w))
    # On the CPU, for large images, torch's nearest-exact upscaling where it reads PIL's index
    # (checked on the CPU; other devices gather): 3x faster than the gather at 224 px, which at
    # 32 px is 2.5x faster than the interpolation
    large_cpu = x.device.type == "cpu" and h * w >= 1 << 14
    if large_cpu and _reads_pil_index(size_h, h) and _reads_pil_index(size_w, w):
        small = levels.to(x.dtype).div_(255.0)
        return F.interpolate(small, size=(h, w), mode="nearest-exact")
    rows = _pil_upscale_index(size_h, h)
    cols = _pil_upscale_index(size_w, w)
    flat = (rows[:, None] * size_w + cols[None, :]).flatten().to(x.device)  # one gather, not two
    out = levels.to(torch.uint8).flatten(-2).index_select(-1, flat)
    return out.view(*levels.shape[:-2], h, w).to(x.dtype).div_(255.0)


@functools.lru_cache(maxsize=256)
def _reads_pil_index(n_in: int, n_out: int) -> bool:
    """Whether nearest-exact upscaling n_in -> n_out reads PIL's index (cached per sizes)."""
    return _is_nearest_exact(_pil_upscale_index(n_in, n_out), n_in)


def _is_nearest_exact(index: Tensor, n_in: int) -> bool:
    """Whether torch's ``nearest-exact`` upsampling of ``n_in`` values reads exactly ``index``.

    PIL's index is computed in double, torch's in float; they agree except, possibly, where
    ``(o + 0.5) * n_in / n_out`` lands on an integer, so this is checked, not assumed.
    """
    probe = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in)
    got = F.interpolate(probe, size=(1, index.numel()), mode="nearest-exact").view(-1)
    return torch.equal(got.to(torch.int64), index)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """One H x W (x 3) ``uint8`` image through a PIL JPEG save and decode at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded, dtype=np.uint8).copy()


@register_corruption(
    "jpeg_compression",
    table={
        "cifar": [{"quality": q} for q in (80, 65, 58, 50, 40)],
        "tiny": [{"quality": q} for q in (65, 58, 50, 40, 25)],
        "imagenet": [{"quality": q} for q in (25, 18, 15, 10, 7)],
    },
    family="digital",
    description="JPEG compression (PIL/libjpeg, 4:2:0 chroma subsampling) at a quality level",
    source=_SRC,
    describe=lambda p: f"quality {p['quality']}",
    stochastic=False,
    cpu_chunk=1 << 21,  # no page faults: 30 -> 26 ms per 32 images at 224 px
)
def jpeg_compression(x: Tensor, *, rng: RandomSource, quality: int) -> Tensor:
    """PIL JPEG save at ``quality`` (PIL defaults: 4:2:0, no optimisation) and decode.

    This kernel loops over images on the CPU: libjpeg has no batched equivalent that gives the
    same bytes, and PIL is what ImageNet-C used. The input is quantised as the original's
    ``uint8`` image (truncation of ``x * 255``); one-channel images are saved as greyscale JPEGs.
    (torchvision's batched ``encode_jpeg``/``decode_jpeg`` give the same pixels about 1.7x
    faster, but are deprecated since torchvision 0.29.)
    """
    levels = _uint8_values(x).to("cpu", torch.float32).contiguous().numpy()
    values = torch.from_numpy(levels.astype(np.uint8))  # numpy's cast: torch's takes 5x longer
    hwc = values.permute(0, 2, 3, 1).contiguous().numpy()
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    decoded = np.stack([_jpeg_round_trip(v, quality) for v in hwc])
    out = torch.from_numpy(decoded).reshape(x.shape[0], x.shape[2], x.shape[3], -1)
    return out.permute(0, 3, 1, 2).to(x.device).to(x.dtype).div_(255.0)
