"""The 4 corruptions M-TLAT adds to ImageNet-C: occlusion, color distortion, translation, rotation.

Laugros et al. (section 4.1) give each a range whose lower end costs a standard ResNet-50 about
5 points of accuracy and whose upper end about 30: occlusion squares of side 60 -> 127 px, one RGB
channel raised by 8% -> 30% of the maximum value, translations of 15 -> 62 px and rotations of
8 -> 40 degrees, on 224 px ImageNet images. robench spaces 5 severities linearly over each range.
Pixel quantities are stored at 224 px and scaled by ``S / 224`` for an image of side ``S`` (the
table is therefore the same for every preset); an H x W image scales them by its shorter side
``S = min(H, W)``, and the paper's square occluder stays square.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robench.perturbations._base import RandomSource, image_side, register_corruption

__all__ = ["occlusion", "color_distortion", "translation", "rotation", "REFERENCE_SIDE"]

_SRC = (
    "Laugros et al., Addressing Neural Network Robustness with Mixup and Targeted Labeling "
    "Adversarial Training (M-TLAT), section 4.1"
)
REFERENCE_SIDE = 224  # the paper's pixel quantities are given for 224 x 224 images


def _linspace(lo: float, hi: float) -> list[float]:
    return [round(lo + (hi - lo) * i / 4, 6) for i in range(5)]


def _scaled_pixels(value: float, side: int) -> float:
    """Scale a length given at 224 px to an image of ``side`` px."""
    return value * side / REFERENCE_SIDE


@register_corruption(
    "occlusion",
    table={"all": [{"side": s} for s in _linspace(60, 127)]},
    family="occlusion",
    description="a grey (0.5) square at a uniformly random position inside the image",
    source=_SRC,
    describe=lambda p: f"square side {p['side']:g} px at 224 px (x S/224)",
)
def occlusion(x: Tensor, *, rng: RandomSource, side: float) -> Tensor:
    """Paint a square of value 0.5 (all channels) over each image.

    The side is ``round(side * S / 224)`` pixels with S the shorter image side (at least 1, at
    most S), and the square lies entirely inside the image: its top-left corner is uniform over
    every valid integer position, drawn per image.
    """
    n, _, h, w = x.shape
    k = min(h, w, max(1, int(_scaled_pixels(side, image_side(x)) + 0.5)))
    top = rng.randint(0, h - k + 1).to(x.device)
    left = rng.randint(0, w - k + 1).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < k))[:, :, None] & ((cols >= 0) & (cols < k))[:, None, :]
    return torch.where(inside[:, None], torch.full_like(x, 0.5), x)


@register_corruption(
    "color_distortion",
    table={"all": [{"shift": s} for s in _linspace(0.08, 0.30)]},
    family="color",
    description="one random RGB channel raised by a constant fraction of the maximum value",
    source=_SRC,
    describe=lambda p: f"+{p['shift'] * 100:g}% on one channel",
)
def color_distortion(x: Tensor, *, rng: RandomSource, shift: float) -> Tensor:
    """Add ``shift`` (a fraction of the maximum value 1) to one uniformly chosen channel per image.

    The paper adds "a constant" to "all the pixels" of the channel; values are then clipped to
    [0, 1] by the spec. A one-channel image always gets its only channel shifted.
    """
    channel = rng.randint(0, x.shape[1]).to(x.device)
    onehot = F.one_hot(channel, x.shape[1]).to(x.dtype)
    return x + shift * onehot[:, :, None, None]


def _shift_integer(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Move every image's content by its own integer (dy, dx); uncovered pixels become 0."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    row_ok = (rows >= 0) & (rows < h)
    col_ok = (cols >= 0) & (cols < w)
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    keep = row_ok[:, None, :, None] & col_ok[:, None, None, :]
    return torch.where(keep, out, torch.zeros_like(out))


@register_corruption(
    "translation",
    table={"all": [{"shift": s} for s in _linspace(15, 62)]},
    family="geometric",
    description="image moved by a fixed distance in a random direction, uncovered area set to 0",
    source=_SRC,
    describe=lambda p: f"shift {p['shift']:g} px at 224 px (x S/224)",
    cpu_chunk=1 << 20,  # no page faults: 15 -> 12 ms per 32 images at 224 px
)
def translation(x: Tensor, *, rng: RandomSource, shift: float) -> Tensor:
    """Translate each image by ``shift * S / 224`` pixels (S the shorter side) at a random angle.

    The paper does not say how the direction is chosen; here it is an angle uniform on
    [0, 2 pi) per image. The displacement ``(d cos a, d sin a)`` is rounded to whole pixels, so
    the content is copied without interpolation (its length is the requested one to within
    half a pixel per axis). Pixels the shifted image no longer covers are 0, as in the paper.
    """
    distance = _scaled_pixels(shift, image_side(x))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    dx = torch.round(distance * torch.cos(angle)).to(device=x.device, dtype=torch.int64)
    dy = torch.round(distance * torch.sin(angle)).to(device=x.device, dtype=torch.int64)
    return _shift_integer(x, dy, dx)


def rotation_theta(degrees: Tensor, aspect: float = 1.0) -> Tensor:
    """``affine_grid`` matrices (N, 2, 3) turning images by ``degrees``, counter-clockwise as shown.

    ``affine_grid`` maps output to input coordinates, so the matrix is the inverse rotation.
    Normalised coordinates stretch each axis to [-1, 1]; for an image of ``aspect = H / W`` the
    off-diagonal terms carry that ratio, so the rotation stays rigid in pixels (no shear).
    """
    a = torch.deg2rad(degrees.to(torch.float64))
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    top = torch.stack((cos, -sin * aspect, zero), -1)
    return torch.stack((top, torch.stack((sin / aspect, cos, zero), -1)), 1)


@register_corruption(
    "rotation",
    table={"all": [{"degrees": d} for d in _linspace(8, 40)]},
    family="geometric",
    description="rotation about the centre by a fixed angle with a random sign, outside set to 0",
    source=_SRC,
    describe=lambda p: f"rotate +/-{p['degrees']:g} degrees",
    cpu_chunk=1 << 20,  # no page faults: 30 -> 24 ms per 32 images at 224 px
)
def rotation(x: Tensor, *, rng: RandomSource, degrees: float) -> Tensor:
    """Rotate each image about its centre by ``+degrees`` or ``-degrees`` (fair coin per image).

    Bilinear resampling (``grid_sample``, ``align_corners=False``); positive angles turn the
    content counter-clockwise as displayed. Samples falling outside the source image read 0,
    which is the paper's "set to zero" (the boundary pixels blend with that 0 bilinearly).
    """
    sign = rng.randint(0, 2).to(torch.float64) * 2.0 - 1.0
    aspect = x.shape[-2] / x.shape[-1]
    theta = rotation_theta(sign * degrees, aspect).to(device=x.device, dtype=_grid_dtype(x))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(
        x.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.to(x.dtype)


def _grid_dtype(x: Tensor) -> torch.dtype:
    """Pick the sampling dtype: ``x``'s own for float32/float64, float32 for half precision."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
