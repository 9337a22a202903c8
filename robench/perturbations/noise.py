"""Noise corruptions of ImageNet-C (gaussian, shot, impulse, speckle), one draw per element."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robench.perturbations._base import _PARALLEL_NUMEL, RandomSource, register_corruption

_SRC = "ImageNet-C (Hendrycks & Dietterich 2019)"


def _sigma(p: Any) -> str:
    return f"sigma={p['sigma']}"


Finish = Callable[[Tensor, Tensor, torch.Generator], object]


def _fused(x: Tensor, rng: RandomSource, finish: Finish) -> Tensor | None:
    """Draw and finish each large image in place (CPU float32): ``finish(out_i, x_i, gen_i)``.

    The draw and the arithmetic touch one image while it is in cache, in the generators'
    thread pool, instead of passing over the whole batch once per operation. The arithmetic is
    numpy's: single-threaded and GIL-free, where a torch op on a whole image would start an
    OpenMP team per worker whose spin-waiting threads take the cores the other worker needs.
    The values are bit-identical to the batched formulas. Returns None where it does not apply
    (other devices or dtypes, or images too small for the pool); the kernel then uses those
    formulas.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dtype != torch.get_default_dtype():
        return None
    if x[0].numel() < _PARALLEL_NUMEL:  # small images: whole-batch ops beat per-image calls
        return None
    if any(g.device.type != "cpu" for g in rng.generators):
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    rng.map(lambda i, g: finish(out[i], x[i], g), large=True)
    return out


@register_corruption(
    "gaussian_noise",
    table={
        "cifar": [{"sigma": s} for s in (0.04, 0.06, 0.08, 0.09, 0.10)],
        "tiny": [{"sigma": s} for s in (0.04, 0.08, 0.12, 0.15, 0.18)],
        "imagenet": [{"sigma": s} for s in (0.08, 0.12, 0.18, 0.26, 0.38)],
    },
    family="noise",
    description="additive Gaussian noise, independent per pixel and channel",
    source=_SRC,
    describe=_sigma,
)
def gaussian_noise(x: Tensor, *, rng: RandomSource, sigma: float) -> Tensor:
    """Add N(0, sigma^2) to each element: ``x + noise``."""
    return additive_gaussian(x, rng, sigma)


def additive_gaussian(x: Tensor, rng: RandomSource, sigma: float) -> Tensor:
    """``x + sigma * N(0, 1)`` per element, one ``torch.randn`` draw per image (the noise kernels').

    Fused per image on the CPU (:func:`_fused`), the batched formula elsewhere; same values.
    """

    def finish(o: Tensor, xi: Tensor, g: torch.Generator) -> None:
        a = o.normal_(generator=g).numpy()
        np.add(np.multiply(a, np.float32(sigma), out=a), xi.numpy(), out=a)

    out = _fused(x, rng, finish)
    return x + sigma * rng.randn(*x.shape[1:], dtype=x.dtype) if out is None else out


@register_corruption(
    "shot_noise",
    table={
        "cifar": [{"c": c} for c in (500, 250, 100, 75, 50)],
        "tiny": [{"c": c} for c in (250, 100, 50, 30, 15)],
        "imagenet": [{"c": c} for c in (60, 25, 12, 5, 3)],
    },
    family="noise",
    description="Poisson (photon) noise: Poisson(x * c) / c",
    source=_SRC,
    describe=lambda p: f"photons c={p['c']}",
)
def shot_noise(x: Tensor, *, rng: RandomSource, c: float) -> Tensor:
    """Poisson(x * c) / c per element."""
    return rng.poisson(x * c) / c


@register_corruption(
    "impulse_noise",
    table={
        "cifar": [{"amount": a} for a in (0.01, 0.02, 0.03, 0.05, 0.07)],
        "tiny": [{"amount": a} for a in (0.01, 0.02, 0.05, 0.08, 0.14)],
        "imagenet": [{"amount": a} for a in (0.03, 0.06, 0.09, 0.17, 0.27)],
    },
    family="noise",
    description="salt-and-pepper noise, flipped independently per channel (skimage 's&p')",
    source=_SRC,
    describe=lambda p: f"amount={p['amount']}",
)
def impulse_noise(x: Tensor, *, rng: RandomSource, amount: float) -> Tensor:
    """Each element flips with probability ``amount``; flipped ones become 0 or 1 with p=0.5.

    One uniform draw u per element decides both: u < amount/2 is salt, amount/2 <= u < amount is
    pepper, the same joint distribution as skimage's two independent Bernoulli draws with half
    the random numbers.
    """

    def finish(o: Tensor, xi: Tensor, g: torch.Generator) -> None:
        u = torch.empty_like(xi).uniform_(generator=g).numpy()
        a = o.numpy()
        np.copyto(a, xi.numpy())
        a[u < np.float32(amount)] = 0.0  # pepper, then salt over its lower half
        a[u < np.float32(amount / 2)] = 1.0

    out = _fused(x, rng, finish)
    if out is not None:
        return out
    u = rng.rand(*x.shape[1:])
    salt, pepper = u < amount / 2, (u >= amount / 2) & (u < amount)
    return x.masked_fill(salt, 1.0).masked_fill_(pepper, 0.0)


@register_corruption(
    "speckle_noise",
    table={
        "cifar": [{"sigma": s} for s in (0.06, 0.10, 0.12, 0.16, 0.20)],
        "tiny": [{"sigma": s} for s in (0.15, 0.20, 0.25, 0.30, 0.35)],
        "imagenet": [{"sigma": s} for s in (0.15, 0.20, 0.35, 0.45, 0.60)],
    },
    family="noise",
    description="multiplicative noise: x + x * N(0, sigma^2)",
    source=_SRC,
    describe=_sigma,
)
def speckle_noise(x: Tensor, *, rng: RandomSource, sigma: float) -> Tensor:
    """Add multiplicative noise to each element: ``x + x * N(0, sigma^2)``."""

    def finish(o: Tensor, xi: Tensor, g: torch.Generator) -> None:
        a, b = o.normal_(generator=g).numpy(), xi.numpy()
        np.add(np.multiply(np.multiply(a, np.float32(sigma), out=a), b, out=a), b, out=a)

    out = _fused(x, rng, finish)
    return x + x * (sigma * rng.randn(*x.shape[1:], dtype=x.dtype)) if out is None else out
