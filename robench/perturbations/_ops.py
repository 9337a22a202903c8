"""Batched image operators shared by the corruption kernels (filters with the originals' borders)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_kernel1d", "gaussian_blur", "depthwise_conv2d", "separable_conv2d", "to_uint8_floor"]

Border = Literal["replicate", "reflect", "symmetric", "constant", "circular"]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised 1-D Gaussian with scipy/skimage's radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=dtype)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype)


def _pad(x: Tensor, pad: tuple[int, int, int, int], mode: Border) -> Tensor:
    """Pad (left, right, top, bottom); 'symmetric' is scipy's half-sample 'reflect' (edge repeated)."""
    if not any(pad):
        return x
    if mode == "symmetric":
        return _pad_symmetric(x, pad)
    if mode == "reflect":  # reflect-101 (OpenCV default, torch 'reflect'); may need several folds
        h, w = x.shape[-2:]
        if max(pad[0], pad[1]) >= w or max(pad[2], pad[3]) >= h:
            return _pad_index(x, pad, _reflect101_index)
    if mode == "replicate" or mode == "reflect" or mode == "circular":
        return F.pad(x, pad, mode=mode)
    return F.pad(x, pad, mode="constant", value=0.0)


def _reflect101_index(i: Tensor, n: int) -> Tensor:
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _symmetric_index(i: Tensor, n: int) -> Tensor:
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - 1 - i, i)


def _pad_index(x: Tensor, pad: tuple[int, int, int, int], fold: object) -> Tensor:
    h, w = x.shape[-2:]
    rows = fold(torch.arange(-pad[2], h + pad[3], device=x.device), h)  # type: ignore[operator]
    cols = fold(torch.arange(-pad[0], w + pad[1], device=x.device), w)  # type: ignore[operator]
    return x.index_select(-2, rows).index_select(-1, cols)


def _pad_symmetric(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    return _pad_index(x, pad, _symmetric_index)


def depthwise_conv2d(x: Tensor, kernel: Tensor, border: Border = "replicate") -> Tensor:
    """Correlate every channel of ``x`` (N, C, H, W) with one 2-D ``kernel`` (kh, kw), same size out.

    Correlation, like OpenCV's ``filter2D`` and scipy's ``correlate``; odd kernel sizes centre
    on the pixel, as the originals do.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    pad = (kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2)
    xp = _pad(x.reshape(n * c, 1, h, w), pad, border)
    k = kernel.to(device=x.device, dtype=x.dtype)[None, None]
    return F.conv2d(xp, k).reshape(n, c, h, w)


def separable_conv2d(x: Tensor, k1d: Tensor, border: Border = "replicate") -> Tensor:
    """Apply the same 1-D kernel along H and then W of every channel."""
    if k1d.numel() == 1:
        return x * k1d.to(x).reshape(())
    n, c, h, w = x.shape
    r = k1d.numel() // 2
    k = k1d.to(device=x.device, dtype=x.dtype)
    y = _pad(x.reshape(n * c, 1, h, w), (r, r, r, r), border)
    y = F.conv2d(y, k.reshape(1, 1, -1, 1))
    y = F.conv2d(y, k.reshape(1, 1, 1, -1))
    return y.reshape(n, c, h, w)


def gaussian_blur(
    x: Tensor, sigma: float, *, truncate: float = 4.0, border: Border = "replicate"
) -> Tensor:
    """``skimage.filters.gaussian`` per channel: radius ``int(truncate*sigma+0.5)``, mode 'nearest'.

    ``border='symmetric'`` gives skimage's mode 'reflect' (half-sample symmetric).
    """
    return separable_conv2d(x, gaussian_kernel1d(sigma, truncate, dtype=torch.float64), border)


def to_uint8_floor(x: Tensor) -> Tensor:
    """Values in [0,1] -> the originals' ``np.uint8(x * 255)`` (truncation), back in [0,1] steps."""
    return torch.floor(x.clamp(0, 1) * 255.0) / 255.0


def radius_for(sigma: float, truncate: float = 4.0) -> int:
    """Kernel radius skimage/scipy use for ``sigma``."""
    return int(truncate * sigma + 0.5) if sigma > 0 else 0


