"""Foreground blur of Akumalla et al.: Gaussian blur of the object's bounding box only.

The paper blurs "the portion of the image within the object bounding box" of 224 px images
with Gaussian kernels of standard deviation from 0.001 to 45, reporting results at sigma = 5 and
10 and showing sigma = 45 as its strong example. robench's 5 severities are sigma = 1, 5, 10, 20, 45
at 224 px: the paper's named values plus a mild (1) and an intermediate (20) level. Sigma scales
with the image side (``sigma * S / 224``), so a 32 px image gets the blur the same picture would
get at 224 px (the paper resized CIFAR-10 to 224 before blurring).
"""

from __future__ import annotations

import torch
from torch import Tensor

from robench.perturbations._base import RandomSource, image_side, register_corruption
from robench.perturbations._ops import gaussian_kernel1d

__all__ = ["foreground_blur", "box_blur_matrices", "REFERENCE_SIDE"]

_SRC = "Akumalla et al., Contextual Fusion for Adversarial Robustness, sections 2.3 and 3.1"
REFERENCE_SIDE = 224


def _pixel_span(lo: Tensor, hi: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Integer pixels [start, stop) touched by the float box edges [lo, hi), within the image."""
    start = torch.floor(lo).clamp(0, size).to(torch.int64)
    stop = torch.ceil(hi).clamp(0, size).to(torch.int64)
    return start, torch.maximum(stop, start)


def _fold_symmetric(index: Tensor, start: Tensor, length: Tensor) -> Tensor:
    """Half-sample symmetric fold (edge pixel repeated) of ``index`` into [start, start+length)."""
    period = 2 * length
    i = torch.remainder(index - start, period)
    return start + torch.where(i >= length, period - 1 - i, i)


def box_blur_matrices(start: Tensor, stop: Tensor, size: int, kernel: Tensor) -> Tensor:
    """Per-image (N, size, size) matrices that blur one axis inside [start, stop) and copy the rest.

    Row ``i`` of an image's matrix is the unit row ``e_i`` outside its span; inside, it holds the
    1-D ``kernel`` centred on ``i``, with taps that leave the span folded back into it (symmetric
    border, as ``scipy.ndimage`` / skimage mode 'reflect'). Pixels outside the box are never read,
    however wide the kernel: the crop is blurred on its own, then pasted back.
    """
    n = start.shape[0]
    radius = kernel.numel() // 2
    device = start.device
    i = torch.arange(size, device=device)
    offsets = torch.arange(-radius, radius + 1, device=device)
    length = (stop - start).clamp(min=1)
    taps = _fold_symmetric(
        i[None, :, None] + offsets[None, None, :], start[:, None, None], length[:, None, None]
    )
    taps = taps.clamp(0, size - 1)
    weights = kernel.to(device)[None, None, :].expand(n, size, -1)
    blurred = torch.zeros(n, size, size, dtype=kernel.dtype, device=device)
    blurred.scatter_add_(2, taps, weights)
    inside = _span_mask(start, stop, size, device)
    eye = torch.eye(size, dtype=kernel.dtype, device=device).expand(n, size, size)
    return torch.where(inside[:, :, None], blurred, eye)


@register_corruption(
    "foreground_blur",
    table={"all": [{"sigma": s} for s in (1.0, 5.0, 10.0, 20.0, 45.0)]},
    family="blur",
    description="Gaussian blur inside each image's object bounding box only; the context is kept",
    source=_SRC,
    describe=lambda p: f"sigma {p['sigma']:g} px at 224 px (x S/224), inside the box",
    stochastic=False,
    needs_boxes=True,
    cpu_chunk=1 << 20,  # no page faults: 69 -> 58 ms per 32 images at 224 px
)
def foreground_blur(x: Tensor, *, rng: RandomSource, sigma: float, boxes: Tensor) -> Tensor:
    """Blur the pixels of each image's box (x0, y0, x1, y1) with a Gaussian of ``sigma * S / 224``.

    S is the image side (the shorter one of an H x W image).

    The box covers every pixel it touches: columns ``floor(x0)`` to ``ceil(x1)`` (exclusive),
    rows likewise, clamped to the image; an empty box leaves the image unchanged. The crop is
    blurred by itself (its own pixels only, symmetric border) with a separable kernel of radius
    ``int(4 * sigma + 0.5)`` (skimage's), then pasted back; pixels outside the box are unchanged.
    Per-image boxes are applied at once as per-image matrix products ``B_y @ X @ B_x^T`` (kept
    inside the box only), so the cost does not depend on sigma.
    """
    n, c, h, w = x.shape
    kernel = gaussian_kernel1d(sigma * image_side(x) / REFERENCE_SIDE, dtype=torch.float64)
    b = boxes.to(device=x.device, dtype=torch.float64)
    x0, x1 = _pixel_span(b[:, 0], b[:, 2], w)
    y0, y1 = _pixel_span(b[:, 1], b[:, 3], h)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    rows = box_blur_matrices(y0, y1, h, kernel.to(x.device)).to(dtype)
    cols = box_blur_matrices(x0, x1, w, kernel.to(x.device)).to(dtype)
    out = (rows[:, None] @ x.to(dtype) @ cols[:, None].transpose(-1, -2)).to(x.dtype)
    in_rows = _span_mask(y0, y1, h, x.device)
    in_cols = _span_mask(x0, x1, w, x.device)
    inside = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return torch.where(inside, out, x)


def _span_mask(start: Tensor, stop: Tensor, size: int, device: torch.device) -> Tensor:
    i = torch.arange(size, device=device)[None, :]
    return (i >= start[:, None]) & (i < stop[:, None])
