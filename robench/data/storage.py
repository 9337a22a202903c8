"""How the released ``-C`` sets stored their corrupted images, applied to a float batch.

The authors' generators cast each corrupted image with ``np.uint8`` (a truncation of the 0-255
value): ``make_cifar_c.py`` keeps the array as CIFAR-10-C's ``.npy``; ``make_imagenet_c.py`` and
``make_tinyimagenet_c.py`` then save it with PIL as a JPEG, ``quality=85, optimize=True``.
:func:`stored` is that step, read back as the ``-C`` datasets read their files, so a model sees
the same pixels as from a render (``robench render``) or from ``evaluate --as-released``.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robench.data.released import decode_rgb

__all__ = ["JPEG_QUALITY", "STORAGE", "jpeg_bytes", "quantize", "storage_of", "stored"]

JPEG_QUALITY = (
    85  # make_imagenet_c.py / make_tinyimagenet_c.py: save(path, quality=85, optimize=True)
)
STORAGE = ("cifar10-c", "imagenet-c")  # the uint8 array; the uint8 array saved as JPEG
_OF_PRESET = {"cifar": "cifar10-c", "tiny": "imagenet-c", "imagenet": "imagenet-c"}


def quantize(x: Tensor) -> Tensor:
    """Float N x C x H x W in [0, 1] -> uint8 N x H x W x C on the CPU, truncated like ``np.uint8``.

    Example:
        >>> import torch
        >>> quantize(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)).flatten().tolist()
        [0, 127, 255]
    """
    u8 = x.detach().float().mul(255.0).clamp_(0.0, 255.0).floor_().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu()


def jpeg_bytes(image: np.ndarray) -> bytes:
    """One uint8 H x W x 3 image as the JPEG file the authors wrote (PIL, quality 85, optimized)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def storage_of(preset: str) -> str:
    """The storage of the released set of a corruption preset.

    ``cifar`` (CIFAR-10/100-C) keeps uint8 arrays; ``tiny`` (Tiny-ImageNet-C) and ``imagenet``
    (ImageNet-C) hold JPEG files.

    Example:
        >>> storage_of("cifar"), storage_of("tiny")
        ('cifar10-c', 'imagenet-c')
    """
    try:
        return _OF_PRESET[preset]
    except KeyError:
        raise ValueError(f"preset must be one of {', '.join(_OF_PRESET)}, got {preset!r}") from None


def stored(x: Tensor, fmt: str) -> Tensor:
    """The batch ``x`` as a released-format file holds it, read back as the ``-C`` datasets read it.

    ``cifar10-c``: the uint8 cast; ``imagenet-c``: the uint8 cast, then a JPEG at quality 85 (at
    any image size, as Tiny-ImageNet-C's 64 px files). The result equals the file's images bit for
    bit, so ``stored(corrupted, fmt)`` is the on-the-fly counterpart of an evaluation of a render.

    Args:
        x: float N x 3 x H x W in [0, 1] (``imagenet-c``: square images).
        fmt: ``cifar10-c`` or ``imagenet-c`` (:func:`storage_of` gives a preset's).

    Returns:
        Float N x 3 x H x W in [0, 1] on ``x``'s device.

    Example:
        >>> import torch
        >>> x = torch.full((1, 3, 2, 2), 0.5)  # 127.5 in 0-255: np.uint8 truncates it to 127
        >>> stored(x, "cifar10-c").mul(255).round().unique().tolist()
        [127.0]
    """
    if fmt not in STORAGE:
        raise ValueError(f"format must be one of {', '.join(STORAGE)}, got {fmt!r}")
    if fmt == "imagenet-c" and x.shape[-3] != 3:
        raise ValueError(
            f"the released JPEG storage holds RGB images; these have {x.shape[-3]} channel(s) "
            f"(use the cifar preset, whose storage is the uint8 array)"
        )
    u8 = quantize(x)
    if fmt == "cifar10-c":
        out = u8.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    else:
        side = x.shape[-1]
        out = torch.stack(
            [decode_rgb(io.BytesIO(jpeg_bytes(a)), resize=side, crop=side) for a in u8.numpy()]
        )
    return out.to(x.device)
