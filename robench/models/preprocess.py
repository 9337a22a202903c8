"""A model's own preprocessing (resize, crop, normalisation), wrapped inside it.

Pretrained models come with the preprocessing they were trained with. robench states it in timm's
pretrained-config terms (input size, ``crop_pct``, ``crop_mode``, interpolation, mean and std),
whichever library the model comes from, and runs timm's own evaluation transform on batched
tensors inside the model's ``forward``: the model takes [0, 1] images of any size, gradients reach
the pixels, and attack budgets stay in pixel units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

from torch import Tensor, nn

from robench.models.checkpoint import CheckpointError

__all__ = ["Preprocess", "PreprocessedModel"]

# PIL's codes NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING: tensors resize with the first of
# nearest, bilinear, bicubic; the others take their closest kin
_PIL_RESAMPLE = {
    0: "nearest",
    1: "bicubic",
    2: "bilinear",
    3: "bicubic",
    4: "bilinear",
    5: "bicubic",
}


def _crop_pct(crop: int, resize: int) -> float:
    """``crop / resize``, nudged so that timm's ``floor(crop / crop_pct)`` gives back ``resize``."""
    pct = crop / resize
    while math.floor(crop / pct) < resize:
        pct = math.nextafter(pct, 0.0)
    return pct


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its images, in timm's pretrained-config terms.

    Images are resized so that their sides are ``floor(side / crop_pct)`` of ``input_size``
    (``center``: the shorter side, keeping the aspect ratio; ``squash``: both sides), centre-cropped
    to ``input_size``, then normalised with ``mean`` and ``std``.

    Args:
        input_size: channels, height and width the model takes.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        mean: per channel, in [0, 1] pixel units.
        std: per channel.
        crop_pct: crop side over resized side.
        crop_mode: ``center``, ``squash`` or ``border`` (timm's modes).
        source: whose convention the numbers come from (``timm``, ``torchvision``,
            ``transformers``).

    Example:
        >>> p = Preprocess((3, 224, 224), "bilinear", (0.5,) * 3, (0.5,) * 3, crop_pct=0.875)
        >>> p.resize_size
        (256, 256)
    """

    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    crop_mode: str = "center"
    source: str = "timm"

    @property
    def resize_size(self) -> tuple[int, int]:
        """Height and width after the resize, before the crop."""
        return (
            math.floor(self.input_size[1] / self.crop_pct),
            math.floor(self.input_size[2] / self.crop_pct),
        )

    @classmethod
    def from_timm(cls, config: Mapping[str, Any], source: str = "timm") -> Preprocess:
        """From a timm data config (``timm.data.resolve_model_data_config(model)``)."""
        c, h, w = (int(v) for v in config["input_size"])
        return cls(
            (c, h, w),
            str(config.get("interpolation") or "bilinear"),
            tuple(float(v) for v in config["mean"]),
            tuple(float(v) for v in config["std"]),
            float(config.get("crop_pct") or 1.0),
            str(config.get("crop_mode") or "center"),
            source,
        )

    @classmethod
    def from_torchvision(cls, transform: Any) -> Preprocess:
        """From a torchvision weights' ``transforms()`` (an ``ImageClassification``)."""
        crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
        return cls(
            (3, crop, crop),
            str(transform.interpolation.value),
            tuple(float(v) for v in transform.mean),
            tuple(float(v) for v in transform.std),
            _crop_pct(crop, resize),
            "center",
            "torchvision",
        )

    @classmethod
    def from_transformers(cls, processor: Any) -> Preprocess:
        """From a ``transformers`` image processor's size, crop, resample, mean and std."""
        size = processor.size
        normalize = getattr(processor, "do_normalize", True)
        mean = tuple(float(v) for v in processor.image_mean) if normalize else (0.0,) * 3
        std = tuple(float(v) for v in processor.image_std) if normalize else (1.0,) * 3
        interp = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 2) or 2), "bilinear")
        crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
        short, pct = _get(size, "shortest_edge"), getattr(processor, "crop_pct", None)
        if short and pct and short < 384:  # ConvNeXt: resize to short / crop_pct, crop short
            return cls((3, short, short), interp, mean, std, float(pct), "center", "transformers")
        if short:
            h, w = (_get(crop, "height"), _get(crop, "width")) if crop else (short, short)
            return cls((3, h, w), interp, mean, std, _crop_pct(h, short), "center", "transformers")
        height, width = _get(size, "height"), _get(size, "width")
        if not (height and width):
            raise CheckpointError(f"robench cannot follow this image processor's size {size}")
        h, w = (_get(crop, "height"), _get(crop, "width")) if crop else (height, width)
        return cls((3, h, w), interp, mean, std, _crop_pct(h, height), "squash", "transformers")

    def transform(self) -> Callable[[Tensor], Tensor]:
        """The evaluation transform timm builds for these numbers (batched tensors, with grads)."""
        from timm.data.transforms_factory import create_transform

        return cast(
            Callable[[Tensor], Tensor],
            create_transform(
                input_size=self.input_size,
                interpolation=self.interpolation,
                mean=self.mean,
                std=self.std,
                crop_pct=self.crop_pct,
                crop_mode=self.crop_mode,
                is_training=False,
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields (lists for tuples) plus ``resize_size``, for the result record."""
        out = json.loads(json.dumps(asdict(self)))
        out["resize_size"] = list(self.resize_size)
        return cast(dict[str, Any], out)


class PreprocessedModel(nn.Module):
    """A classifier behind its own preprocessing: takes [0, 1] images of any size, returns logits.

    Resize, crop and normalisation are torch operations, so gradients reach the [0, 1] pixels and
    attack budgets stay in pixel units. A ``transformers`` output's ``logits`` are unwrapped.

    Args:
        model: the classifier, on normalised images of ``preprocess.input_size``.
        preprocess: how it wants its images.

    Example:
        >>> import timm, torch
        >>> net = timm.create_model("test_resnet", num_classes=3)
        >>> pre = Preprocess.from_timm(timm.data.resolve_model_data_config(net))
        >>> PreprocessedModel(net, pre)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self._transform = preprocess.transform()

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the model on the resized, cropped and normalised ``x``."""
        out = self.model(self._transform(x))
        logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
        if not isinstance(logits, Tensor):
            raise ValueError(f"the model returned a {type(out).__name__} without logits")
        return logits
