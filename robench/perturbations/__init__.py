"""The perturbation registry: corruptions and attacks under one roof.

Importing this package registers every entry; nothing global is changed.

Example:
    >>> import torch
    >>> from robench import perturbations
    >>> c = perturbations.get("gaussian_noise")
    >>> y = c(torch.rand(2, 3, 32, 32), severity=3, seed=0)
    >>> y.shape
    torch.Size([2, 3, 32, 32])

With no ``preset``, the parameters follow the image size (the shorter side), and any H x W works:

    >>> photo = torch.rand(1, 3, 200, 300)
    >>> perturbations.resolve_preset(photo)
    'imagenet'
    >>> fog = perturbations.get("fog")
    >>> torch.equal(fog(photo, 3, seed=0), fog(photo, 3, seed=0, preset="imagenet"))
    True
"""

from __future__ import annotations

from typing import Any, TypeVar

from robench.perturbations import (  # noqa: F401  (importing registers the entries)
    attack_specs,
    blur,
    context,
    deepcorrect,
    digital,
    elastic,
    geometric,
    noise,
    sensor,
    snow,
    weather,
)
from robench.perturbations._base import (
    PERTURBATIONS,
    PRESETS,
    SUITES,
    CorruptionSpec,
    RandomSource,
    preset_for_size,
    register_corruption,
    register_suite,
    resolve_preset,
)
from robench.perturbations._checks import check_batch

__all__ = [
    "PERTURBATIONS",
    "get",
    "names",
    "register",
    "suites",
    "CorruptionSpec",
    "RandomSource",
    "PRESETS",
    "check_batch",
    "preset_for_size",
    "resolve_preset",
    "register_corruption",
    "register_suite",
    "IMAGENET_C",
    "MTLAT_EXTRA",
]

IMAGENET_C = (
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
)
MTLAT_EXTRA = ("occlusion", "color_distortion", "translation", "rotation")

register_suite("mtlat24", IMAGENET_C + MTLAT_EXTRA + attack_specs.ATTACK_NAMES)
register_suite("imagenet-c", IMAGENET_C)
register_suite("corruptions19", IMAGENET_C + MTLAT_EXTRA)
register_suite("attacks", attack_specs.ATTACK_NAMES)
register_suite("imagenet-c-extra", ("speckle_noise", "gaussian_blur", "spatter", "saturate"))
register_suite(
    "sensor",
    ("dead_pixels", "hot_pixels", "stuck_pixels", "gaussian_noise_std", "gaussian_blur_sigma"),
)
register_suite("deepcorrect", ("awgn", "blur"))
register_suite("context", ("foreground_blur",))

_Spec = TypeVar("_Spec", CorruptionSpec, attack_specs.AttackSpec)


def get(name: str) -> Any:
    """The registered perturbation called ``name`` (a :class:`CorruptionSpec` or an attack spec)."""
    return PERTURBATIONS.get(name)


def names(kind: str | None = None, suite: str | None = None) -> list[str]:
    """Perturbation names, optionally of one ``kind`` and/or one ``suite``.

    With ``suite``, the suite's own order is kept (the paper's Table 1 order for ``mtlat24``);
    otherwise names are sorted.
    """
    if kind not in (None, "corruption", "attack"):
        raise ValueError(f"kind must be 'corruption' or 'attack', got {kind!r}")
    if suite is not None:
        if suite not in SUITES:
            import difflib

            close = difflib.get_close_matches(suite, list(SUITES), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown suite {suite!r}{hint} (known: {', '.join(SUITES)})")
        members = [n for n in SUITES[suite] if n in PERTURBATIONS]
    else:
        members = PERTURBATIONS.names()
    return [n for n in members if kind is None or PERTURBATIONS.get(n).kind == kind]


def suites() -> dict[str, tuple[str, ...]]:
    """Every suite name and its ordered members."""
    return dict(SUITES)


def register(spec: _Spec) -> _Spec:
    """Register a ready-made spec (a :class:`CorruptionSpec` or an attack spec) under its name."""
    PERTURBATIONS.add(spec.name, spec)
    return spec
