"""ImageNet-C snow: a zoomed, thresholded noise layer streaked by ImageMagick's motion blur.

Follows ``snow`` of ``make_cifar_c.py`` / ``make_tinyimagenet_c.py`` / ``make_imagenet_c.py``
(``reference/corruptions.md`` section 4.8): the layer goes through an 8-bit PNG into Wand's
``motion_blur`` and comes back as 8 bits, which :func:`~robench.perturbations._ops.im_motion_blur`
reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from robench.perturbations._base import RandomSource, register_corruption
from robench.perturbations._ops import clipped_zoom, im_motion_blur

_KEYS = ("loc", "scale", "zoom", "threshold", "blur_radius", "blur_sigma", "blend")
_LAYER = [
    (0.1, 0.2, 1, 0.6, 8, 3),
    (0.1, 0.2, 1, 0.5, 10, 4),
    (0.15, 0.3, 1.75, 0.55, 10, 4),
    (0.25, 0.3, 2.25, 0.6, 12, 6),
    (0.3, 0.3, 1.25, 0.65, 14, 12),
]
_IMAGENET = [
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
]


def _table(rows: Sequence[tuple[float, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(_KEYS, r, strict=True)) for r in rows]


def _describe(p: Any) -> str:
    return (
        f"flakes N({p['loc']}, {p['scale']}^2) zoom {p['zoom']} > {p['threshold']}, "
        f"motion r={p['blur_radius']} sigma={p['blur_sigma']}, blend {p['blend']}"
    )


def snow_layer(
    normal: Tensor,
    angles: Tensor,
    *,
    zoom: float,
    threshold: float,
    blur_radius: float,
    blur_sigma: float,
) -> Tensor:
    """The snow layer in [0, 1] from a (N, 1, S, S) float64 normal draw and (N,) angles (degrees).

    clipped_zoom -> values below ``threshold`` set to 0 -> uint8 truncation of clip(L, 0, 1)
    -> ImageMagick motion blur written back as 8 bits -> /255. Returns float32.
    """
    layer = clipped_zoom(normal, zoom)
    layer = layer.masked_fill_(layer < threshold, 0.0).clamp_(0.0, 1.0).mul_(255.0).floor_()
    return im_motion_blur(layer, blur_radius, blur_sigma, angles).div_(255.0)


def whiten(x: Tensor, blend: float) -> Tensor:
    """``blend * x + (1 - blend) * max(x, gray * 1.5 + 0.5)`` in float32, gray = OpenCV RGB2GRAY.

    A 1-channel image is its own gray.
    """
    x32 = x.to(torch.float32)
    if x32.shape[1] == 3:
        gray = 0.299 * x32[:, 0:1] + 0.587 * x32[:, 1:2] + 0.114 * x32[:, 2:3]
        bright = gray.mul_(1.5).add_(0.5)
    else:
        bright = x32 * 1.5 + 0.5
    return torch.maximum(x32, bright).mul_(1.0 - blend).add_(x32, alpha=blend)


@register_corruption(
    "snow",
    table={
        "cifar": _table(
            [r + (b,) for r, b in zip(_LAYER, (0.95, 0.9, 0.9, 0.85, 0.8), strict=True)]
        ),
        "tiny": _table([r + (b,) for r, b in zip(_LAYER, (0.8, 0.8, 0.7, 0.65, 0.6), strict=True)]),
        "imagenet": _table(_IMAGENET),
    },
    family="weather",
    description="snow: whitened image plus a streaked flake layer and its 180-degree rotation",
    source="ImageNet-C (Hendrycks & Dietterich 2019); ImageMagick MotionBlurImage",
    describe=_describe,
)
def snow(
    x: Tensor,
    *,
    rng: RandomSource,
    loc: float,
    scale: float,
    zoom: float,
    threshold: float,
    blur_radius: float,
    blur_sigma: float,
    blend: float,
) -> Tensor:
    """``whiten(x) + L + rot180(L)`` with the :func:`snow_layer` L (float32, like the original).

    Per image: flakes ~ N(loc, scale^2) on an H x W grid, streak angle ~ U(-135, -45) degrees.
    """
    side_h, side_w = x.shape[-2:]
    normal = loc + scale * rng.randn(1, side_h, side_w, dtype=torch.float64)
    angles = rng.uniform(-135.0, -45.0)
    layer = snow_layer(
        normal,
        angles,
        zoom=zoom,
        threshold=threshold,
        blur_radius=blur_radius,
        blur_sigma=blur_sigma,
    )
    return whiten(x, blend).add_(layer.add_(layer.flip(-2, -1)))
