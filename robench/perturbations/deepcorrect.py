"""The DeepCorrect distortions: additive white Gaussian noise and Gaussian blur at 6 levels.

Borkar & Karam (section 3.2) use, for CIFAR-100, noise standard deviations 5, 10, ..., 30 on the
0-255 scale and blur standard deviations 0.5, 1, ..., 3; for ImageNet, noise 10, 20, 40, 60, 80,
100 and blur 1, 2, ..., 6; the blur kernel is "4 times the blur standard deviation" wide. The paper
has no 64 px dataset: the ``tiny`` preset uses the CIFAR levels, whose images are the closer in
size (robench's choice). The levels are the paper's own, not rescaled with the image side.
Severities run from 1 to 6 (6 entries per table).
"""

from __future__ import annotations

from torch import Tensor

from robench.perturbations._base import RandomSource, register_corruption
from robench.perturbations._ops import gaussian_blur
from robench.perturbations.noise import additive_gaussian

__all__ = ["awgn", "blur", "KERNEL_TRUNCATE"]

_SRC = "Borkar & Karam, DeepCorrect: Correcting DNN Models against Image Distortions, section 3.2"
KERNEL_TRUNCATE = 2.0  # kernel radius int(2 * sigma + 0.5): about 4 * sigma wide, see blur()

_NOISE_CIFAR = (5, 10, 15, 20, 25, 30)
_NOISE_IMAGENET = (10, 20, 40, 60, 80, 100)
_BLUR_CIFAR = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
_BLUR_IMAGENET = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


@register_corruption(
    "awgn",
    table={
        "cifar": [{"sigma255": s} for s in _NOISE_CIFAR],
        "tiny": [{"sigma255": s} for s in _NOISE_CIFAR],
        "imagenet": [{"sigma255": s} for s in _NOISE_IMAGENET],
    },
    family="noise",
    description="additive white Gaussian noise, standard deviation given on the 0-255 scale",
    source=_SRC,
    describe=lambda p: f"sigma_n {p['sigma255']:g}/255",
)
def awgn(x: Tensor, *, rng: RandomSource, sigma255: float) -> Tensor:
    """``x + N(0, (sigma255 / 255)^2)`` independently per element, then clipped to [0, 1]."""
    return additive_gaussian(x, rng, sigma255 / 255.0)


@register_corruption(
    "blur",
    table={
        "cifar": [{"sigma": s} for s in _BLUR_CIFAR],
        "tiny": [{"sigma": s} for s in _BLUR_CIFAR],
        "imagenet": [{"sigma": s} for s in _BLUR_IMAGENET],
    },
    family="blur",
    description="Gaussian blur with a kernel about 4 standard deviations wide",
    source=_SRC,
    describe=lambda p: f"sigma_b {p['sigma']:g} px",
    stochastic=False,
)
def blur(x: Tensor, *, rng: RandomSource, sigma: float) -> Tensor:
    """Gaussian blur whose kernel spans ``sigma * 4`` pixels, made odd so that it stays centred.

    The paper's width ``4 * sigma_b`` is even at every level (2, 4, ..., 24), which would shift
    the image by half a pixel. robench takes radius ``int(2 * sigma + 0.5)`` (= ``2 * sigma`` at
    every listed level), i.e. ``4 * sigma + 1`` taps reaching 2 sigma on each side, normalised to
    sum 1, separable, with edge pixels replicated at the border (the paper names no border rule).
    """
    return gaussian_blur(x, sigma, truncate=KERNEL_TRUNCATE, border="replicate")
