"""Pure scoring functions: accuracies, robustness R, markers, paired tests, intervals, mCE.

Nothing here does I/O; every function takes numbers or arrays and returns numbers.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "wilson_interval",
    "relative_robustness",
    "marker",
    "mcnemar_p",
    "RDifference",
    "paired_r_bootstrap",
    "paired_r_signflip_p",
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


def marker(value: float, baseline: float | None, *, decimals: int = 2) -> str:
    """``+`` / ``-`` / ``""`` comparing both rounded to ``decimals``, as in the paper's tables.

    ``round`` rounds the binary value correctly (exact ties to even), exactly as ``f"{x:.2f}"``
    prints it, so the marker always agrees with the printed numbers: 0.845 is stored as
    0.84499..., prints as 0.84 and gets ``-`` against 0.85. The paper prints clean accuracy in
    percent with 1 decimal, i.e. ``decimals=3`` on a fraction.

    Example:
        >>> marker(0.853, 0.848), marker(0.856, 0.848), marker(0.732, 0.733, decimals=3)
        ('', '+', '-')
    """
    if baseline is None or math.isnan(value) or math.isnan(baseline):
        return ""
    a, b = round(value, decimals), round(baseline, decimals)
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


@dataclass(frozen=True)
class RDifference:
    """A paired comparison of the robustness scores R of a model and a baseline on the same images.

    Attributes:
        delta_r: R_model - R_baseline on all images (NaN when a clean accuracy is 0).
        ci_low: Lower end of the percentile interval of ``delta_r`` (level ``1 - alpha``).
        ci_high: Upper end of that interval.
        p_value: Two-sided bootstrap p-value, never below ``2 / (resamples + 1)``.
        significant: ``p_value < alpha``, which holds exactly when the interval excludes 0.
        n_images: Paired units (images); severities of a corruption never add units.
        resamples: Resamples used (those where both clean accuracies are above 0).
    """

    delta_r: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    n_images: int
    resamples: int


def _per_image(clean: ArrayLike, perturbed: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Clean correctness times k (n,) and perturbed correct count over the k severities (n,).

    Both are scaled by the number of severities k, so R = sum(perturbed) / sum(clean) is unchanged
    and, for 0/1 correctness, every entry is a whole number: the (re)sampled column sums are then
    exact in float64 whatever order a multi-threaded BLAS adds them in. With the mean over
    severities they were not, and a resample whose dR* is 0 in exact arithmetic could land on
    either side of 0 depending on the thread count, moving the p-value.
    """
    c = np.asarray(clean, dtype=np.float64)
    p = np.asarray(perturbed, dtype=np.float64)
    if c.ndim != 1 or p.ndim not in (1, 2) or p.shape[-1] != c.shape[0]:
        raise ValueError(
            f"need clean (n,) and perturbed (n,) or (severities, n), got {c.shape} and {p.shape}"
        )
    return (c, p) if p.ndim == 1 else (c * p.shape[0], p.sum(axis=0))


def _paired_table(
    model_clean: ArrayLike,
    model_perturbed: ArrayLike,
    baseline_clean: ArrayLike,
    baseline_perturbed: ArrayLike,
) -> NDArray[np.float64]:
    """Columns: model clean, model perturbed, baseline clean, baseline perturbed; row: an image."""
    m = _per_image(model_clean, model_perturbed)
    b = _per_image(baseline_clean, baseline_perturbed)
    if m[0].shape != b[0].shape or np.shape(model_perturbed) != np.shape(baseline_perturbed):
        raise ValueError(
            "paired test needs the same images and severities: "
            f"{np.shape(model_perturbed)} vs {np.shape(baseline_perturbed)}"
        )
    return np.stack([m[0], m[1], b[0], b[1]], axis=1)


def _delta_r(sums: NDArray[np.float64]) -> NDArray[np.float64]:
    """The dR of each row of column sums, keeping only rows where both clean sums are above 0."""
    ok = (sums[:, 0] > 0) & (sums[:, 2] > 0)
    s = sums[ok]
    out: NDArray[np.float64] = s[:, 1] / s[:, 0] - s[:, 3] / s[:, 2]
    return out


def _bootstrap_p(tail: int, resamples: int) -> float:
    return min(1.0, 2 * (1 + tail) / (resamples + 1))


def _largest_significant_tail(resamples: int, alpha: float) -> int:
    """Largest tail count whose p-value is below ``alpha`` (-1 when none is)."""
    k = max(-1, math.ceil(alpha * (resamples + 1) / 2) - 2)
    while _bootstrap_p(k + 1, resamples) < alpha:
        k += 1
    while k >= 0 and not _bootstrap_p(k, resamples) < alpha:
        k -= 1
    return k


def _resampled_sums(
    table: NDArray[np.float64], resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Column sums of ``table`` over ``resamples`` bootstrap draws of its rows, chunk by chunk."""
    n = int(table.shape[0])
    chunk = max(1, 2**21 // n)  # depends on n only, so a seed always gives the same draws
    parts = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(rows, n), dtype=np.int32)
        idx += n * np.arange(rows, dtype=np.int32)[:, None]  # row r's draws count in bins r*n..
        counts = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
        parts.append(counts @ table)
    return np.concatenate(parts)


def paired_r_bootstrap(
    model_clean: ArrayLike,
    model_perturbed: ArrayLike,
    baseline_clean: ArrayLike,
    baseline_perturbed: ArrayLike,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> RDifference:
    """Paired bootstrap of dR = R_model - R_baseline, the image being the resampled unit.

    R = mean(perturbed score) / mean(clean correctness); an image's perturbed score is its mean
    correctness over the severities. Each resample draws n image indices with replacement and
    applies them to both models and to clean and perturbed alike. With m the number of
    resampled dR* at or below 0, or at or above 0, whichever is smaller, the p-value is
    ``min(1, 2 (1 + m) / (B + 1))``: never below ``2 / (B + 1)`` (B resamples can show no
    more). The interval is the percentile interval taken at the order statistic where that
    p-value crosses ``alpha``, so ``significant`` (``p < alpha``) holds exactly when the interval
    excludes 0. Resamples where a clean accuracy is 0 leave R undefined and are dropped (no
    warning); ``resamples`` reports how many remain. With clean accuracy 0 on all images, dR,
    the interval and p are NaN. For a handful of images the bootstrap is too confident: an
    exact sign-flip test (:func:`paired_r_signflip_p`) cannot go below ``2 * 0.5**n``.

    Args:
        model_clean: The model's clean correctness per image.
        model_perturbed: Its perturbed correctness per image, or per severity and image.
        baseline_clean: The baseline's clean correctness on the same images.
        baseline_perturbed: Its perturbed correctness, shaped as ``model_perturbed``.
        resamples: Bootstrap resamples B.
        seed: Seed of the ``numpy`` Generator; the same seed gives the same result.
        alpha: Level of the test; the interval covers ``1 - alpha``.

    Returns:
        The point estimate, interval, p-value and verdict.

    Shape:
        clean: (n,); perturbed: (n,) or (severities, n).

    Example:
        >>> res = paired_r_bootstrap([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0])
        >>> res.delta_r, res.significant, res.n_images
        (0.5, False, 4)
    """
    if resamples < 1 or not 0 < alpha < 1:
        raise ValueError(f"need resamples >= 1 and 0 < alpha < 1, got {resamples} and {alpha}")
    table = _paired_table(model_clean, model_perturbed, baseline_clean, baseline_perturbed)
    n = int(table.shape[0])
    point = _delta_r(table.sum(axis=0, keepdims=True))
    if n == 0 or point.size == 0:
        nan = float("nan")
        return RDifference(nan, nan, nan, nan, False, n, 0)
    boot = np.sort(_delta_r(_resampled_sums(table, resamples, np.random.default_rng(seed))))
    return _summarise(float(point[0]), boot, n, alpha)


def _summarise(point: float, boot: NDArray[np.float64], n: int, alpha: float) -> RDifference:
    """Point estimate, order-statistic interval and p-value from the sorted bootstrap dR*."""
    b = boot.size
    if b == 0:
        nan = float("nan")
        return RDifference(point, nan, nan, nan, False, n, 0)
    tail = int(min(np.count_nonzero(boot <= 0), np.count_nonzero(boot >= 0)))
    p = _bootstrap_p(tail, b)
    k = _largest_significant_tail(b, alpha)
    lo, hi = (float(boot[k]), float(boot[b - 1 - k])) if k >= 0 else (-math.inf, math.inf)
    return RDifference(point, lo, hi, p, bool(p < alpha), n, b)


def paired_r_signflip_p(
    model_clean: ArrayLike,
    model_perturbed: ArrayLike,
    baseline_clean: ArrayLike,
    baseline_perturbed: ArrayLike,
    *,
    exact_max: int = 16,
    resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided sign-flip permutation p-value of dR, swapping model and baseline per image.

    Under H0 the two models are exchangeable on every image. With n <= ``exact_max`` all 2**n
    swaps are enumerated and p = #{|dR'| >= |dR|} / 2**n, never below ``2 * 0.5**n`` (swapping
    every image gives -dR). Larger n draws ``resamples`` random swaps:
    p = (1 + #{|dR'| >= |dR|}) / (resamples + 1), floored at ``2 * 0.5**n`` too. A swap that
    leaves a clean accuracy at 0 leaves R undefined and counts as extreme (conservative).
    Inputs are shaped as for :func:`paired_r_bootstrap`.

    Example:
        >>> paired_r_signflip_p([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0])
        0.125
    """
    table = _paired_table(model_clean, model_perturbed, baseline_clean, baseline_perturbed)
    n = int(table.shape[0])
    total = table.sum(axis=0)
    if n == 0 or total[0] <= 0 or total[2] <= 0:
        return float("nan")
    observed = abs(total[1] / total[0] - total[3] / total[2])
    exact = n <= exact_max
    if exact:
        flips = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    else:
        flips = np.random.default_rng(seed).integers(0, 2, size=(resamples, n))
    shift = flips @ (table[:, 2:] - table[:, :2])  # what each swap moves from baseline to model
    sums = np.concatenate([total[:2] + shift, total[2:] - shift], axis=1)
    defined = (sums[:, 0] > 0) & (sums[:, 2] > 0)
    extreme = int(np.count_nonzero(np.abs(_delta_r(sums)) >= observed - 1e-12))
    extreme += int(np.count_nonzero(~defined))
    p = extreme / float(2**n) if exact else (1 + extreme) / (resamples + 1)
    return min(1.0, max(p, 2.0 * 0.5**n))


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
