"""Pure scoring functions: accuracies, robustness R, markers, paired tests, intervals, mCE.

Nothing here does I/O; every function takes numbers or arrays and returns numbers.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "wilson_interval",
    "relative_robustness",
    "marker",
    "mcnemar_p",
    "pack_bits",
    "unpack_bits",
    "corruption_error",
    "mce",
    "ALEXNET_ERRORS",
    "ALEXNET_CLEAN_ERROR",
    "FAMILY_GROUPS",
]

# AlexNet's top-1 errors on ImageNet-C per corruption and severity (s1..s5), as published with the
# benchmark (copies in augmix / mmpretrain / timm agree to 1e-6; see reference/corruptions.md §10).
ALEXNET_ERRORS: Mapping[str, tuple[float, ...]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
ALEXNET_CLEAN_ERROR = 0.43478  # torchvision's AlexNet top-1 accuracy 56.522 %

# Families are summarised separately, never averaged together (threat models differ).
FAMILY_GROUPS: Mapping[str, str] = {
    "noise": "corruption",
    "blur": "corruption",
    "weather": "corruption",
    "digital": "corruption",
    "geometric": "corruption",
    "occlusion": "corruption",
    "color": "corruption",
    "white-box": "white-box",
    "black-box": "transfer",
}


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy k / n (well-behaved at 0 and 1).

    Example:
        >>> lo, hi = wilson_interval(50, 100)
        >>> round(lo, 3), round(hi, 3)
        (0.404, 0.596)
    """
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def relative_robustness(acc_perturbed: float, acc_clean: float) -> float:
    """R = A_perturbed / A_clean (Laugros et al., eq. 7); NaN when the clean accuracy is 0."""
    return float("nan") if acc_clean <= 0 else acc_perturbed / acc_clean


def marker(value: float, baseline: float | None) -> str:
    """``+`` / ``-`` / ``""`` comparing both rounded to 2 decimals, as in the paper's tables."""
    if baseline is None or math.isnan(value) or math.isnan(baseline):
        return ""
    a, b = round(value, 2), round(baseline, 2)
    return "+" if a > b else "-" if a < b else ""


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired per-image correctness of two models.

    Only discordant images count: b = A right & B wrong, c = A wrong & B right; under H0 each
    discordant image is a fair coin, so p = 2 * P(Binom(b + c, 0.5) <= min(b, c)).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired test needs the same images: {a.shape} vs {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    term = total = 1  # C(n, 0); exact integers: 2.0**n overflows a float past n = 1023
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        total += term
    return min(1.0, (2 * total) / (1 << n))  # int / int is correctly rounded, never overflows


def pack_bits(correct: Sequence[bool] | np.ndarray) -> str:
    """Per-image correctness as base64 of packed bits (1 bit per image)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` for ``n`` images."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    bits = np.unpackbits(raw)[:n].astype(bool)
    if bits.shape[0] != n:
        raise ValueError(f"packed correctness holds {bits.shape[0]} images, expected {n}")
    return bits


def corruption_error(errors: Sequence[float], reference: Sequence[float]) -> float:
    """CE = sum of errors over severities / the same sum for the reference model."""
    den = float(sum(reference))
    return float("nan") if den <= 0 else float(sum(errors)) / den


def mce(
    errors: Mapping[str, Sequence[float]],
    reference: Mapping[str, Sequence[float]],
    *,
    clean_error: float | None = None,
    reference_clean_error: float | None = None,
) -> float:
    """Mean CE over the corruptions present in both; relative mCE when clean errors are given.

    Relative CE subtracts each model's clean error from every severity's error first
    (Hendrycks & Dietterich 2019).
    """
    names = [n for n in errors if n in reference]
    if not names:
        return float("nan")
    ces = []
    for n in names:
        e, r = list(errors[n]), list(reference[n])
        if clean_error is not None and reference_clean_error is not None:
            e = [v - clean_error for v in e]
            r = [v - reference_clean_error for v in r]
        ces.append(corruption_error(e, r))
    return float(np.mean(ces))
