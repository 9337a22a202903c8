"""The ``imagecorruptions`` reference engine: the authors' ImageNet-C functions, image by image.

``CorruptionSpec.__call__(..., engine="imagecorruptions")`` lands here. Each image goes through
``imagecorruptions.corrupt`` (bethgelab, v1.1.2) exactly as the authors' pipeline feeds it: a
``uint8`` H x W x 3 array in, the function's float result cast with ``np.uint8`` (truncation) out.
It is a fidelity reference, not a fast path: everything runs on the CPU, one image at a time.

Conventions:
    * **Input quantisation: round.** The originals receive PIL ``uint8`` images. A robench batch
      that came from ``uint8`` data holds ``k / 255`` values, and ``round(x * 255)`` returns ``k``
      for any float dtype, whereas ``floor`` can drop to ``k - 1`` on a representation error
      (``x * 255 = k - 1e-6``). For other inputs, rounding is the nearest ``uint8`` image.
    * **Output quantisation: truncation**, as ``corrupt()`` (and every original script) does it;
      the result is ``k / 255`` in ``x``'s dtype, on ``x``'s device.
    * **Parameters:** imagecorruptions uses the ImageNet-C tables at every image size, so only the
      ``imagenet`` preset is accepted. Images must be at least 32 x 32 (``corrupt()``'s limit).
    * **One channel:** the image is replicated to RGB (as ``corrupt()`` does) and the first output
      channel is returned, which keeps per-channel noise at its original strength.
    * **Randomness:** the authors' code draws from numpy's global legacy RNG. Per image, that RNG
      is seeded with ``seed % 2**32`` and restored afterwards, so the caller's numpy state is
      untouched. scikit-image's ``random_noise`` (impulse noise) ignores that RNG; the module-local
      name is wrapped to pass an ``rng`` drawn from the seeded legacy RNG, so impulse noise is
      reproducible too.

Compatibility layer (imagecorruptions 1.1.2 predates numpy 2, scikit-image 0.19 and setuptools 82),
applied on first use and local to the imported ``imagecorruptions.corruptions`` module:
    * ``pkg_resources`` (gone in setuptools >= 82) is provided only while the package is imported,
      as a stub whose ``resource_filename`` locates the bundled frost textures; the stub is removed
      from ``sys.modules`` afterwards (a ``pkg_resources`` already imported is left alone).
    * the module's ``np`` name is rebound to a proxy that adds ``float_ = float64`` and delegates
      everything else to numpy; ``numpy`` itself is not modified.
    * the module's ``gaussian`` name is rebound to a wrapper mapping ``multichannel=`` to
      ``channel_axis=``; ``skimage.filters.gaussian`` itself is not modified.
    * the module's ``sk`` name is rebound to a proxy whose ``util.random_noise`` passes ``rng``.
Importing robench does not import imagecorruptions; :func:`load_imagecorruptions` does, once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robench.perturbations._checks import check_batch

__all__ = ["REFERENCE_NAMES", "corrupt_reference", "load_imagecorruptions", "to_uint8_images"]

REFERENCE_NAMES: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
"""The 15 ImageNet-C corruptions and the 4 extra ones, in imagecorruptions' order."""

_MIN_SIDE = 32
_PATCHED = "_robench_compat"


class _Delegate:
    """Attribute proxy: the given overrides first, then everything else from ``target``."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def _resource_filename(package: str, relative: str) -> str:
    """``pkg_resources.resource_filename`` for a file inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot locate package {package!r} to find {relative!r}")
    return os.path.normpath(os.path.join(os.path.dirname(spec.origin), relative))


@contextmanager
def _pkg_resources_stub() -> Iterator[None]:
    """Put a minimal ``pkg_resources`` in ``sys.modules`` for the duration, if none is loaded."""
    if "pkg_resources" in sys.modules:
        yield
        return
    stub = types.ModuleType("pkg_resources")
    stub.resource_filename = _resource_filename  # type: ignore[attr-defined]  # a stub module
    sys.modules["pkg_resources"] = stub
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stub:
            del sys.modules["pkg_resources"]


def _gaussian(
    image: Any, sigma: Any = 1.0, *, multichannel: bool | None = None, **kwargs: Any
) -> Any:
    """``skimage.filters.gaussian`` accepting the removed ``multichannel=`` keyword."""
    from skimage.filters import gaussian

    if multichannel is not None:
        kwargs.setdefault("channel_axis", -1 if multichannel else None)
    return gaussian(image, sigma, **kwargs)  # type: ignore[no-untyped-call]  # skimage: no hints


def _random_noise(image: Any, **kwargs: Any) -> Any:
    """``skimage.util.random_noise`` seeded from numpy's (fenced) legacy global RNG."""
    from skimage.util import random_noise

    kwargs.setdefault("rng", int(np.random.randint(0, 2**31 - 1)))
    return random_noise(image, **kwargs)  # type: ignore[no-untyped-call]  # skimage: no hints


def _patch(module: types.ModuleType) -> None:
    """Rebind the names inside ``imagecorruptions.corruptions`` that break on a modern stack."""
    import skimage
    import skimage.util

    # the three rebinds below patch a third-party module's globals, unknown to the type checker
    module.np = _Delegate(np, float_=np.float64)  # type: ignore[attr-defined]
    module.gaussian = _gaussian  # type: ignore[attr-defined]
    util = _Delegate(skimage.util, random_noise=_random_noise)
    module.sk = _Delegate(skimage, util=util)  # type: ignore[attr-defined]
    setattr(module, _PATCHED, True)


def load_imagecorruptions() -> types.ModuleType:
    """Import ``imagecorruptions`` with the local compatibility layer (idempotent).

    Returns:
        The ``imagecorruptions`` package, whose ``corrupt`` runs on numpy 2 / scikit-image 0.26.

    Raises:
        ImportError: if imagecorruptions is not installed.
    """
    try:
        with _pkg_resources_stub(), warnings.catch_warnings():
            # its `scipy.ndimage.interpolation` import is deprecated; nothing to act on here
            warnings.simplefilter("ignore", DeprecationWarning)
            package = importlib.import_module("imagecorruptions")
    except ModuleNotFoundError as err:
        if err.name != "imagecorruptions":
            raise
        raise ImportError(
            "engine='imagecorruptions' needs the imagecorruptions package "
            "(pip install imagecorruptions)"
        ) from err
    module = sys.modules["imagecorruptions.corruptions"]
    if not getattr(module, _PATCHED, False):
        _patch(module)
    return package


@contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's legacy global RNG for the duration, then restore its previous state."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_reference_args(
    name: str, x: Tensor, severity: int, seeds: Sequence[int], preset: str
) -> None:
    if name not in REFERENCE_NAMES:
        raise ValueError(
            f"engine='imagecorruptions' covers only the 15 + 4 ImageNet-C corruptions, not {name!r}"
        )
    if preset != "imagenet":
        raise ValueError(
            "engine='imagecorruptions' reproduces the ImageNet-C parameters only; "
            f"use preset='imagenet', got {preset!r}"
        )
    if isinstance(severity, bool) or severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if len(seeds) != x.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {x.shape[0]} images")
    if x.shape[0] and min(x.shape[-2:]) < _MIN_SIDE:
        raise ValueError(
            f"engine='imagecorruptions' needs images of at least {_MIN_SIDE}x{_MIN_SIDE}, "
            f"got {tuple(x.shape[-2:])}"
        )


def to_uint8_images(x: Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) ``uint8``, rounded (see the module doc)."""
    q = x.detach().to("cpu")
    if q.dtype not in (torch.float32, torch.float64):
        q = q.to(torch.float32)
    q = torch.round(q.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return q.permute(0, 2, 3, 1).contiguous().numpy()


def corrupt_reference(
    name: str, x: Tensor, severity: int, *, seeds: Sequence[int], preset: str
) -> Tensor:
    """Corrupt ``x`` with imagecorruptions' own function for ``name``, image by image on CPU.

    Args:
        name: one of :data:`REFERENCE_NAMES`.
        x: float batch in [0, 1] of at least 32 x 32 pixels, any device; never modified.
        severity: 1..5.
        seeds: one integer per image; image ``i`` runs with numpy's global RNG seeded by
            ``seeds[i] % 2**32`` (restored afterwards).
        preset: must be ``imagenet``, the only table imagecorruptions implements.

    Returns:
        The corrupted batch, quantised to ``k / 255`` (the authors' ``np.uint8`` cast), with
        ``x``'s shape, dtype and device.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    check_batch(x)
    _check_reference_args(name, x, severity, seeds, preset)
    if x.shape[0] == 0:
        return x.clone()
    corrupt = load_imagecorruptions().corrupt
    images = to_uint8_images(x)
    outs = []
    for image, seed in zip(images, seeds, strict=True):
        with _numpy_seed(int(seed)):
            arr = image[..., 0] if image.shape[-1] == 1 else image
            outs.append(corrupt(arr, severity=severity, corruption_name=name))
    out = torch.from_numpy(np.stack(outs)[..., : x.shape[1]]).permute(0, 3, 1, 2)
    return (out.to(x.dtype) / 255.0).contiguous().to(x.device)
