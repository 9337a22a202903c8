"""A drop-in for imagecorruptions: ``corrupt`` and ``get_corruption_names`` on one HWC image.

imagecorruptions (bethgelab) corrupts one ``uint8`` H x W (x C) image at a time, of any size,
which is why detection and segmentation benchmarks (COCO-C, Cityscapes-C) are built on it. The
migration is one line::

    from imagecorruptions import corrupt, get_corruption_names   # before
    from robench import corrupt, get_corruption_names            # after

and every call keeps its arguments: ``corrupt(image, corruption_name="fog", severity=3)`` or
``corrupt(image, corruption_number=9, severity=3)``, ``get_corruption_names("all")``. The image
goes through robench's batched torch kernels as a batch of one; to corrupt many images, the fast
path is a float batch: ``robench.perturbations.get("fog")(x, 3, seed=0)``.

What differs from imagecorruptions, on purpose:
    * **Parameters follow the image size** unless ``preset=`` says otherwise
      (:func:`~robench.perturbations.resolve_preset`): from 129 px on (the shorter side) they are
      imagecorruptions' own ImageNet-C tables; smaller images get CIFAR-10-C's (<= 48 px) or
      Tiny-ImageNet-C's (<= 128 px) tables, where imagecorruptions applies ImageNet's at every size.
      ``preset="imagenet"`` gives imagecorruptions' numbers at any size.
    * **elastic_transform** is the original ImageNet-C algorithm (random affine, then a smooth
      displacement field); imagecorruptions ships a different one. ``engine="imagecorruptions"``
      runs imagecorruptions' own functions instead (it must be installed).
    * **Randomness** comes from ``seed=`` (or ``generator=``), never from numpy's global RNG, which
      is left untouched: ``np.random.seed`` does not make calls repeatable, ``seed=`` does.
    * Errors are ``ValueError`` (imagecorruptions raises ``AttributeError``); images smaller than
      32 px are accepted.

Kept as imagecorruptions does it: a greyscale image (H x W or H x W x 1) is treated as RGB and
comes back as H x W x 3; the result is the corrupted float image truncated to ``uint8``
(``np.uint8``), clipped to [0, 255]; a PIL image in gives a PIL image (RGB) out.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from PIL import Image

from robench.perturbations._base import PERTURBATIONS, CorruptionSpec
from robench.perturbations.reference import REFERENCE_NAMES

__all__ = ["SUBSETS", "corrupt", "get_corruption_names"]

SUBSETS: dict[str, tuple[str, ...]] = {
    "common": REFERENCE_NAMES[:15],
    "validation": REFERENCE_NAMES[15:],
    "all": REFERENCE_NAMES,
    "noise": REFERENCE_NAMES[0:3],
    "blur": REFERENCE_NAMES[3:7],
    "weather": REFERENCE_NAMES[7:11],
    "digital": REFERENCE_NAMES[11:15],
}
"""imagecorruptions' subsets, in its order: the 15 ImageNet-C corruptions, the 4 validation ones."""


def get_corruption_names(subset: str = "common") -> list[str]:
    """The corruption names of one of imagecorruptions' subsets, in its order.

    Args:
        subset: ``common`` (the 15 ImageNet-C corruptions), ``validation`` (the 4 extra ones),
            ``all`` (the 19), or one family of the 15: ``noise``, ``blur``, ``weather``,
            ``digital``.

    Returns:
        The names, as ``imagecorruptions.get_corruption_names(subset)`` returns them.

    Raises:
        ValueError: for another subset.

    Example:
        >>> get_corruption_names("noise")
        ['gaussian_noise', 'shot_noise', 'impulse_noise']
        >>> len(get_corruption_names()), len(get_corruption_names("all"))
        (15, 19)
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    return list(SUBSETS[subset])


def _spec_of(corruption_name: str | None, corruption_number: int) -> CorruptionSpec:
    """The corruption a call names, by name (any registered corruption) or by number (0..18)."""
    if corruption_name is None:
        if corruption_number == -1:
            raise ValueError("Either corruption_name or corruption_number must be passed")
        if (
            isinstance(corruption_number, bool)
            or not isinstance(corruption_number, int | np.integer)
            or not 0 <= corruption_number < len(REFERENCE_NAMES)
        ):
            raise ValueError(
                f"corruption_number must be an integer in 0..{len(REFERENCE_NAMES) - 1}, "
                f"got {corruption_number!r}"
            )
        corruption_name = REFERENCE_NAMES[int(corruption_number)]
    if not isinstance(corruption_name, str):
        raise ValueError(f"corruption_name must be a string, got {type(corruption_name).__name__}")
    spec = PERTURBATIONS.get(corruption_name)
    if not isinstance(spec, CorruptionSpec):
        raise ValueError(f"{corruption_name!r} is an attack, not a corruption")
    return spec


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """``image`` as imagecorruptions sees it: an H x W x 3 ``uint8`` array (grey replicated)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode in ("RGB", "L") else image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy uint8 array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (values 0..255), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack((image,) * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"expected an H x W, H x W x 1 or H x W x 3 image, got shape {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an image of at least 1 x 1 pixels, got {tuple(image.shape)}")
    return image


@overload
def corrupt(
    image: np.ndarray,
    severity: int = 1,
    corruption_name: str | None = None,
    corruption_number: int = -1,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    preset: str | None = None,
    boxes: torch.Tensor | None = None,
    engine: str = "torch",
) -> np.ndarray: ...


@overload
def corrupt(
    image: Image.Image,
    severity: int = 1,
    corruption_name: str | None = None,
    corruption_number: int = -1,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    preset: str | None = None,
    boxes: torch.Tensor | None = None,
    engine: str = "torch",
) -> Image.Image: ...


def corrupt(
    image: np.ndarray | Image.Image,
    severity: int = 1,
    corruption_name: str | None = None,
    corruption_number: int = -1,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    preset: str | None = None,
    boxes: torch.Tensor | None = None,
    engine: str = "torch",
) -> np.ndarray | Image.Image:
    """Corrupt one image like ``imagecorruptions.corrupt`` (same signature), with robench's kernels.

    Args:
        image: an H x W x 3, H x W x 1 or H x W ``uint8`` numpy array, or a PIL image; any H, W.
        severity: 1..5 (1..6 for the DeepCorrect corruptions).
        corruption_name: any robench corruption (``robench.perturbations.names("corruption")``),
            e.g. one of :func:`get_corruption_names` ``("all")``; it wins over the number.
        corruption_number: the position in :func:`get_corruption_names` ``("all")``, 0..18.
        seed: the same image, corruption, severity and seed give the same result; without
            ``seed`` or ``generator``, fresh randomness on every call.
        generator: a ``torch.Generator`` to draw the randomness from instead.
        preset: ``cifar``, ``tiny`` or ``imagenet``; default: the image size's
            (:func:`~robench.perturbations.resolve_preset`).
        boxes: a 1 x 4 tensor (x0, y0, x1, y1), for corruptions that need a box
            (``foreground_blur``).
        engine: ``torch`` (robench's kernels) or ``imagecorruptions`` (its own functions).

    Returns:
        The corrupted image, H x W x 3 ``uint8`` (a greyscale image comes back as RGB, as in
        imagecorruptions); a PIL RGB image if a PIL image came in.

    Raises:
        ValueError: for an image, severity or name robench cannot use (one sentence).

    Example:
        >>> import numpy as np
        >>> image = np.full((200, 300, 3), 128, dtype=np.uint8)
        >>> out = corrupt(image, corruption_name="gaussian_noise", severity=3, seed=0)
        >>> out.shape, out.dtype, bool((out != image).any())
        ((200, 300, 3), dtype('uint8'), True)
        >>> corrupt(image, corruption_number=10, severity=1)[0, 0].tolist()  # brightness
        [153, 153, 153]
    """
    spec = _spec_of(corruption_name, corruption_number)
    rgb = _as_rgb_array(image)
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(torch.float32)
    y = spec(
        x.div_(255.0),
        severity,
        seed=seed,
        generator=generator,
        preset=preset,
        boxes=boxes,
        engine=engine,
    )
    # np.uint8 of the float result, as imagecorruptions does; the offset keeps values that are
    # whole numbers up to float32 rounding (127 / 255 * 255 = 126.99998) on their level
    levels = torch.floor(y[0].to(torch.float64).mul_(255.0).add_(1e-4)).clamp_(0, 255)
    out = levels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(out) if isinstance(image, Image.Image) else out
