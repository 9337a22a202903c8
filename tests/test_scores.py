"""The scoring maths against hand-computed values: R, markers, intervals, mCE, paired tests.

Expected numbers are literals worked out by hand (the arithmetic is in the comments), never
produced by calling the function under test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import binomtest

from robench.scores import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    RDifference,
    corruption_error,
    marker,
    mce,
    mcnemar_p,
    paired_r_bootstrap,
    paired_r_signflip_p,
    relative_robustness,
    wilson_interval,
)


def _pairs(b: int, c: int, both: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two models: ``b`` images only A gets right, ``c`` only B, ``both`` both."""
    a = np.array([True] * b + [False] * c + [True] * both)
    bb = np.array([False] * b + [True] * c + [True] * both)
    return a, bb


# --- McNemar -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (5, 9), (20, 20), (60, 41)])
def test_small_counts_equal_the_exact_binomial_tail(b: int, c: int) -> None:
    n, k = b + c, min(b, c)
    expect = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert mcnemar_p(*_pairs(b, c)) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize(
    ("b", "c", "expect"),
    [
        (3, 0, 0.25),  # n = 3, k = 0: 2 * C(3,0) / 2**3 = 2 / 8
        (0, 6, 0.03125),  # n = 6, k = 0: 2 * 1 / 64
        (5, 1, 0.21875),  # n = 6, k = 1: 2 * (1 + 6) / 64 = 14 / 64
        (2, 8, 0.109375),  # n = 10, k = 2: 2 * (1 + 10 + 45) / 1024 = 112 / 1024
        (1, 1, 1.0),  # n = 2, k = 1: 2 * (1 + 2) / 4 = 1.5, capped at 1
        (4, 3, 1.0),  # n = 7, k = 3: 2 * (1 + 7 + 21 + 35) / 128 = 1, exactly
    ],
)
def test_mcnemar_hand_computed(b: int, c: int, expect: float) -> None:
    a, bb = _pairs(b, c)
    assert mcnemar_p(a, bb) == expect
    assert mcnemar_p(bb, a) == expect  # symmetric in the two models


@pytest.mark.parametrize(("b", "c"), [(700, 640), (1500, 400), (2400, 10), (5000, 5000)])
def test_many_discordant_images_do_not_overflow(b: int, c: int) -> None:
    """Models far from the baseline on 2500 pooled images give over 1023 discordant pairs."""
    p = mcnemar_p(*_pairs(b, c))
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_unpaired_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same images"):
        mcnemar_p(np.ones(3, bool), np.ones(4, bool))


# --- R = A_pert / A_clean ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acc_pert", "acc_clean", "expect"),
    [
        (0.6, 0.8, 0.75),  # 0.6 / 0.8
        (0.8, 0.6, 4 / 3),  # swapped arguments give the inverse, so a swap is caught
        (0.0, 0.8, 0.0),
        (0.733, 0.733, 1.0),
        (0.12461, 0.733, 0.17),  # paper Table 1a, standard ResNet, Gauss: 0.17 * 0.733 = 0.12461
    ],
)
def test_relative_robustness_hand_computed(
    acc_pert: float, acc_clean: float, expect: float
) -> None:
    assert relative_robustness(acc_pert, acc_clean) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("acc_pert", [0.0, 0.5])
def test_relative_robustness_is_nan_without_clean_accuracy(acc_pert: float) -> None:
    assert math.isnan(relative_robustness(acc_pert, 0.0))


# --- markers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "baseline", "expect"),
    [
        (0.63, 0.80, "-"),  # paper Table 1a, IAT Jpeg vs standard
        (0.95, 0.80, "+"),  # M-TLAT Jpeg
        (0.2549, 0.2451, ""),  # both print 0.25 (Table 2a, Mixup Defocus: no marker)
        (0.2551, 0.2549, "+"),  # 0.0002 apart but printed 0.26 vs 0.25
        (0.2449, 0.2451, "-"),  # printed 0.24 vs 0.25
        (0.845, 0.85, "-"),  # 0.845 is stored as 0.84499..., prints 0.84
        (0.845, 0.84, ""),
        (0.855, 0.85, ""),  # stored 0.85499..., prints 0.85
        (0.125, 0.12, ""),  # an exact binary tie rounds to even: 0.12
        (0.375, 0.38, ""),  # exact tie to even: 0.38
        (0.625, 0.62, ""),
        (0.875, 0.88, ""),
        (0.004, 0.0, ""),  # Table 1c: 0.00 vs 0.00
        (0.006, 0.0, "+"),  # 0.01 vs 0.00
        (1.0, 0.995, "+"),  # 0.995 is stored below 0.995: 0.99
    ],
)
def test_marker_two_decimal_rule(value: float, baseline: float, expect: str) -> None:
    assert marker(value, baseline) == expect
    flipped = {"+": "-", "-": "+", "": ""}[expect]
    assert marker(baseline, value) == flipped


def test_marker_agrees_with_the_printed_numbers() -> None:
    """No marker exactly when both print the same with 2 decimals, at and around every tie."""
    grid = [k / 1000 + d for k in range(1001) for d in (-1e-12, 0.0, 1e-12)]
    for v, b in zip(grid[:-1], grid[1:], strict=True):
        shown_v, shown_b = float(f"{v:.2f}"), float(f"{b:.2f}")  # "-0.00" shows 0 too
        assert (marker(v, b) == "") == (shown_v == shown_b), (v, b)
        if shown_v != shown_b:
            assert marker(v, b) == ("+" if shown_v > shown_b else "-")


def test_marker_without_a_comparison() -> None:
    assert marker(0.5, None) == ""
    assert marker(float("nan"), 0.5) == ""
    assert marker(0.5, float("nan")) == ""


def test_clean_accuracy_marker_needs_three_decimals_to_match_the_paper() -> None:
    """Table 1a prints clean accuracy in % with 1 decimal: IAT 73.2 gets ``-`` against 73.3."""
    assert marker(0.732, 0.733, decimals=3) == "-"
    assert marker(0.739, 0.733, decimals=3) == "+"  # M-TLAT 73.9
    assert marker(0.732, 0.733) == ""  # with 2 decimals both are 0.73: the paper's marker is lost


# --- Wilson intervals --------------------------------------------------------------------------
# z = 1.959964, z**2 = 3.841458881296.


def test_wilson_8_of_10() -> None:
    # den = 1 + z**2/10 = 1.3841458881296
    # centre = (0.8 + z**2/20) / den = 0.9920729440648 / 1.3841458881296 = 0.71674015909
    # half = z * sqrt(0.8*0.2/10 + z**2/400) / den = 1.959964 * sqrt(0.0256036472032) / den
    #      = 1.959964 * 0.160011397104 / 1.3841458881296 = 0.22657768997
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.71674015909 - 0.22657768997, abs=1e-10)  # 0.49016246912
    assert hi == pytest.approx(0.71674015909 + 0.22657768997, abs=1e-10)  # 0.94331784906


def test_wilson_0_and_10_of_10() -> None:
    # k = 0: centre = half = (z**2/20) / den, so lo = 0 and hi = (z**2/10) / den
    #      = 0.3841458881296 / 1.3841458881296 = 0.27753280303; k = n mirrors it.
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(0.27753280303, abs=1e-10)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(1 - 0.27753280303, abs=1e-10)
    assert hi == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= lo and hi <= 1.0


def test_wilson_1_of_3_and_50_of_100() -> None:
    # 1/3: den = 1 + z**2/3 = 2.28048629377; centre = (1/3 + z**2/6) / den = 0.42691617261;
    # half = z * sqrt((1/3)(2/3)/3 + z**2/36) / den = 1.959964 * 0.42517 / den = 0.36542422859
    lo, hi = wilson_interval(1, 3)
    assert (lo, hi) == pytest.approx((0.06149194402, 0.79234040119), abs=1e-10)
    # 50/100: centre 0.5, half = z * sqrt(0.0025 + z**2/40000) / 1.03841458881 = 0.09616847036
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.40383152964, 0.59616847036), abs=1e-10)


def test_wilson_without_images_is_the_whole_range() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- corruption error and mCE ------------------------------------------------------------------

# Published AlexNet CE (mean of the 5 severities), reference/corruptions.md section 10.
PUBLISHED_ALEXNET_MEAN = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}


def test_alexnet_reference_matches_the_published_table() -> None:
    assert set(ALEXNET_ERRORS) == set(PUBLISHED_ALEXNET_MEAN)
    for name, errs in ALEXNET_ERRORS.items():
        assert len(errs) == 5, name
        assert sum(errs) / 5 == pytest.approx(PUBLISHED_ALEXNET_MEAN[name], abs=1e-6), name
    # "AlexNet's unnormalised mean over the 15 is 0.78899"
    assert np.mean([sum(e) / 5 for e in ALEXNET_ERRORS.values()]) == pytest.approx(
        0.78899, abs=5e-6
    )
    assert ALEXNET_CLEAN_ERROR == pytest.approx(1 - 0.56522, abs=1e-9)  # torchvision 56.522 %


def test_alexnet_reference_severities_in_order() -> None:
    """Spot values, so that a shuffled or shifted row is caught (sums alone would not)."""
    assert ALEXNET_ERRORS["gaussian_noise"][0] == 0.69528
    assert ALEXNET_ERRORS["elastic_transform"][1:3] == (0.70116, 0.55686)  # not monotone
    assert ALEXNET_ERRORS["snow"][1:3] == (0.88392, 0.86468)
    assert ALEXNET_ERRORS["jpeg_compression"][4] == 0.74778


def test_corruption_error_hand_computed() -> None:
    # sum of errors over severities / the reference's sum: (0.1+0.2+0.3) / (0.2+0.4+0.6)
    assert corruption_error([0.1, 0.2, 0.3], [0.2, 0.4, 0.6]) == pytest.approx(0.5, rel=1e-12)
    assert corruption_error([0.2, 0.4, 0.6], [0.1, 0.2, 0.3]) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(corruption_error([0.1], [0.0]))


ERRS = {"gaussian_noise": (0.5,) * 5, "brightness": (0.2, 0.3, 0.4, 0.5, 0.6), "extra": (0.9,)}


def test_mce_against_alexnet_hand_computed() -> None:
    # gaussian: AlexNet sum 0.69528+0.82542+0.93554+0.98138+0.99452 = 4.43214; CE = 2.5/4.43214
    #   = 0.5640616046. brightness: AlexNet sum 0.45140+0.48502+0.54048+0.62166+0.72440 = 2.82296;
    #   CE = 2.0/2.82296 = 0.7084762094. "extra" has no AlexNet row and is skipped.
    # mCE = (0.5640616046 + 0.7084762094) / 2 = 0.6362689070
    assert mce(ERRS, ALEXNET_ERRORS) == pytest.approx(0.6362689070, abs=1e-9)
    # a mean of per-severity ratios would give 0.6868 for brightness instead of 0.7085
    assert mce({"brightness": ERRS["brightness"]}, ALEXNET_ERRORS) == pytest.approx(
        0.7084762094, abs=1e-9
    )


def test_relative_mce_against_alexnet_hand_computed() -> None:
    # model clean error 0.1; AlexNet's 0.43478, 5 * 0.43478 = 2.1739
    # gaussian: (2.5 - 0.5) / (4.43214 - 2.1739) = 2.0 / 2.25824 = 0.8856454584
    # brightness: (2.0 - 0.5) / (2.82296 - 2.1739) = 1.5 / 0.64906 = 2.3110344190
    # relative mCE = (0.8856454584 + 2.3110344190) / 2 = 1.5983399387
    got = mce(ERRS, ALEXNET_ERRORS, clean_error=0.1, reference_clean_error=ALEXNET_CLEAN_ERROR)
    assert got == pytest.approx(1.5983399387, abs=1e-9)


def test_mce_against_a_baseline_hand_computed() -> None:
    model = {"fog": (0.2, 0.3)}
    base = {"fog": (0.4, 0.6)}
    assert mce(model, base) == pytest.approx(0.5, rel=1e-12)  # 0.5 / 1.0
    assert mce(base, model) == pytest.approx(2.0, rel=1e-12)  # swapped
    # relative: (0.2-0.15 + 0.3-0.15) / (0.4-0.2 + 0.6-0.2) = 0.2 / 0.6
    rel = mce(model, base, clean_error=0.15, reference_clean_error=0.2)
    assert rel == pytest.approx(1 / 3, rel=1e-12)
    # clean errors swapped: (0.2-0.2 + 0.3-0.2) / (0.4-0.15 + 0.6-0.15) = 0.1 / 0.7
    swapped = mce(model, base, clean_error=0.2, reference_clean_error=0.15)
    assert swapped == pytest.approx(1 / 7, rel=1e-12)


def test_mce_of_alexnet_is_one_and_empty_is_nan() -> None:
    assert mce(ALEXNET_ERRORS, ALEXNET_ERRORS) == pytest.approx(1.0, rel=1e-12)
    same = mce(
        ALEXNET_ERRORS,
        ALEXNET_ERRORS,
        clean_error=ALEXNET_CLEAN_ERROR,
        reference_clean_error=ALEXNET_CLEAN_ERROR,
    )
    assert same == pytest.approx(1.0, rel=1e-12)
    assert math.isnan(mce({"extra": (0.5,)}, ALEXNET_ERRORS))


# --- paired bootstrap of dR --------------------------------------------------------------------

ONES4 = [1, 1, 1, 1]


def test_bootstrap_hand_computed_four_images() -> None:
    """Baseline R is 1 in every resample; model R* = X / 4 with X ~ Binomial(4, 1/2).

    dR = 2/4 - 1 = -0.5. dR* takes -1, -0.75, -0.5, -0.25, 0 with chances 1, 4, 6, 4, 1 (/16).
    With B = 20000 the order statistics at 2.5 % and 97.5 % fall inside the 6.25 % masses at -1
    and 0, so the interval is [-1, 0]. Tail m = #{dR* >= 0} ~ B/16, p = 2 (1 + m) / (B + 1)
    ~ 2/16 = 0.125 (sd of p ~ 0.0034).
    """
    res = paired_r_bootstrap(ONES4, [1, 1, 0, 0], ONES4, ONES4, resamples=20_000, seed=0)
    assert res.delta_r == -0.5
    assert (res.ci_low, res.ci_high) == (-1.0, 0.0)
    assert res.p_value == pytest.approx(0.125, abs=0.015)
    assert not res.significant
    assert (res.n_images, res.resamples) == (4, 20_000)


def test_bootstrap_models_apart_on_every_image() -> None:
    """Model right on all perturbed images, baseline wrong on all: dR* = 1 - 0 in every resample."""
    res = paired_r_bootstrap(ONES4, ONES4, ONES4, [0, 0, 0, 0], resamples=2000, seed=1)
    assert res == RDifference(1.0, 1.0, 1.0, 2 / 2001, True, 4, 2000)  # p at its floor 2/(B+1)
    swapped = paired_r_bootstrap(ONES4, [0, 0, 0, 0], ONES4, ONES4, resamples=2000, seed=1)
    assert (swapped.delta_r, swapped.ci_low, swapped.ci_high) == (-1.0, -1.0, -1.0)


def test_bootstrap_uses_clean_accuracy_as_denominator() -> None:
    # model: clean 4/4, perturbed 2/4 -> R 0.5; baseline: clean 2/4, perturbed 2/4 -> R 1.0
    res = paired_r_bootstrap(ONES4, [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], resamples=100)
    assert res.delta_r == -0.5


def _random_case(
    rng: np.random.Generator, n: int, shift: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mc = rng.random(n) < 0.8
    bc = rng.random(n) < 0.8
    mp = rng.random((5, n)) < 0.5 + shift
    bp = rng.random((5, n)) < 0.5
    return mc, mp, bc, bp


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    case = _random_case(np.random.default_rng(7), 60, 0.1)
    a = paired_r_bootstrap(*case, resamples=3000, seed=11)
    assert a == paired_r_bootstrap(*case, resamples=3000, seed=11)
    b = paired_r_bootstrap(*case, resamples=3000, seed=12)
    assert a.delta_r == b.delta_r
    assert (a.ci_low, a.ci_high, a.p_value) != (b.ci_low, b.ci_high, b.p_value)


@pytest.mark.parametrize("resamples", [39, 40, 199, 2000, 2001])
def test_bootstrap_p_floor_and_interval_agree(resamples: int) -> None:
    rng = np.random.default_rng(resamples)
    for i in range(40):
        n = int(rng.integers(5, 80))
        res = paired_r_bootstrap(*_random_case(rng, n, rng.uniform(-0.3, 0.3)), resamples=resamples)
        assert 2 / (resamples + 1) <= res.p_value <= 1.0
        assert res.significant == (res.p_value < 0.05), (i, res)
        assert res.significant == (res.ci_low > 0 or res.ci_high < 0), (i, res)
        assert res.ci_low <= res.ci_high


def test_bootstrap_interval_is_the_percentile_interval() -> None:
    case = _random_case(np.random.default_rng(3), 200, 0.05)
    res = paired_r_bootstrap(*case, resamples=10_000, seed=5)
    # B = 10000: the 2.5 % order statistic is the 250th of 10001 slots (index 249)
    assert res.ci_low < res.delta_r < res.ci_high
    width = res.ci_high - res.ci_low
    assert 0.05 < width < 0.3  # ~ 4 sd of a difference of two R near 0.6 on 200 images


def test_bootstrap_significance_follows_alpha() -> None:
    case = _random_case(np.random.default_rng(9), 150, 0.12)
    strict = paired_r_bootstrap(*case, resamples=4000, seed=2, alpha=0.001)
    loose = paired_r_bootstrap(*case, resamples=4000, seed=2, alpha=0.2)
    assert strict.p_value == loose.p_value
    assert strict.ci_low <= loose.ci_low and loose.ci_high <= strict.ci_high
    for res, alpha in ((strict, 0.001), (loose, 0.2)):
        assert res.significant == (res.p_value < alpha) == (res.ci_low > 0 or res.ci_high < 0)


def test_identical_models_are_not_significant() -> None:
    mc, mp, _, _ = _random_case(np.random.default_rng(4), 100, 0.0)
    res = paired_r_bootstrap(mc, mp, mc, mp, resamples=2000)
    assert res == RDifference(0.0, 0.0, 0.0, 1.0, False, 100, 2000)
    assert paired_r_signflip_p(mc, mp, mc, mp) == 1.0


def test_severities_are_averaged_per_image_not_pooled() -> None:
    """40 images, model right on 21 at every severity, baseline on 18: 3 discordant images."""
    n = 40
    clean = np.ones(n, bool)
    mp = np.zeros((5, n), bool)
    mp[:, :21] = True
    bp = np.zeros((5, n), bool)
    bp[:, :18] = True
    res = paired_r_bootstrap(clean, mp, clean, bp, resamples=10_000, seed=0)
    assert res.n_images == n
    assert res.delta_r == pytest.approx(3 / 40, rel=1e-12)  # 21/40 - 18/40
    # identical severities are the same evidence as one: the same result as the (n,) input
    assert res == paired_r_bootstrap(clean, mp[0], clean, bp[0], resamples=10_000, seed=0)
    assert not res.significant and res.p_value > 0.05
    # pooling the 5 x 40 pairs as 200 independent images would claim significance
    pooled = paired_r_bootstrap(
        np.tile(clean, 5), mp.ravel(), np.tile(clean, 5), bp.ravel(), resamples=10_000, seed=0
    )
    assert pooled.n_images == 5 * n and pooled.significant
    assert mcnemar_p(mp.ravel(), bp.ravel()) < 1e-4  # 15 vs 0 discordant: 2 / 2**15


def test_per_image_score_is_the_mean_over_severities() -> None:
    rng = np.random.default_rng(5)
    mc, mp, bc, bp = _random_case(rng, 50, 0.1)
    res = paired_r_bootstrap(mc, mp, bc, bp, resamples=1000, seed=3)
    same = paired_r_bootstrap(mc, mp.mean(axis=0), bc, bp.mean(axis=0), resamples=1000, seed=3)
    # the same statistic; the per-severity input is summed in whole numbers (exact), the averaged
    # one in fractions, so the two agree up to rounding
    assert (res.p_value, res.significant, res.resamples) == (
        same.p_value,
        same.significant,
        same.resamples,
    )
    for a, b in (
        (res.delta_r, same.delta_r),
        (res.ci_low, same.ci_low),
        (res.ci_high, same.ci_high),
    ):
        assert a == pytest.approx(b, rel=1e-12)
    # R = mean over images and severities / clean accuracy, by hand from the counts
    r_m = mp.sum() / 5 / mc.sum()
    r_b = bp.sum() / 5 / bc.sum()
    assert res.delta_r == pytest.approx(r_m - r_b, rel=1e-12)


def test_zero_clean_accuracy_in_resamples_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # clean right on 1 of 6 images: (5/6)**6 = 33 % of resamples miss it and are dropped
        one = [1, 0, 0, 0, 0, 0]
        res = paired_r_bootstrap(one, one, one, [0] * 6, resamples=3000, seed=0)
        assert res.delta_r == 1.0
        assert 0.55 * 3000 < res.resamples < 0.8 * 3000
        assert res.p_value == 2 / (res.resamples + 1)
        none = paired_r_bootstrap([0] * 4, ONES4, ONES4, ONES4, resamples=100)
        assert math.isnan(none.delta_r) and math.isnan(none.p_value) and not none.significant
        assert math.isnan(paired_r_signflip_p([0] * 4, ONES4, ONES4, ONES4))


@pytest.mark.parametrize(
    "shapes",
    [((4,), (4,), (5,), (5,)), ((4,), (3, 4), (4,), (2, 4)), ((4,), (4, 3), (4,), (4, 3))],
)
def test_bootstrap_refuses_unpaired_inputs(shapes: tuple[tuple[int, ...], ...]) -> None:
    arrays = [np.ones(s, bool) for s in shapes]
    with pytest.raises(ValueError, match="need|same images"):
        paired_r_bootstrap(*arrays, resamples=10)


def test_bootstrap_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="resamples"):
        paired_r_bootstrap(ONES4, ONES4, ONES4, ONES4, resamples=0)
    with pytest.raises(ValueError, match="alpha"):
        paired_r_bootstrap(ONES4, ONES4, ONES4, ONES4, alpha=1.0)


# --- exact sign-flip permutation ---------------------------------------------------------------


def test_signflip_hand_computed() -> None:
    # all apart: swapping s of the 4 images gives dR' = (4 - 2 s) / 4; |dR'| >= 1 only for s = 0
    # or 4: p = 2 / 16 = 2 * 0.5**4
    assert paired_r_signflip_p(ONES4, ONES4, ONES4, [0, 0, 0, 0]) == 0.125
    # model perturbed [1, 1, 0, 0], baseline all right: swapping a of images 2, 3 gives
    # dR' = (2 + a)/4 - (4 - a)/4 = (2a - 2)/4, i.e. -0.5, 0, 0.5; |dR'| >= 0.5 for a in {0, 2}:
    # 2 choices of {2, 3} x 4 free swaps of {0, 1} = 8 of 16
    assert paired_r_signflip_p(ONES4, [1, 1, 0, 0], ONES4, ONES4) == 0.5


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_signflip_never_below_what_n_images_give(n: int) -> None:
    rng = np.random.default_rng(n)
    ones = np.ones(n, bool)
    assert paired_r_signflip_p(ones, ones, ones, ~ones) == min(1.0, 2 * 0.5**n)
    for _ in range(20):
        p = paired_r_signflip_p(*_random_case(rng, n, 0.4))
        assert math.isnan(p) or min(1.0, 2 * 0.5**n) <= p <= 1.0


def test_signflip_random_swaps_approach_the_exact_value() -> None:
    case = _random_case(np.random.default_rng(21), 12, 0.3)
    exact = paired_r_signflip_p(*case)  # 2**12 swaps
    drawn = paired_r_signflip_p(*case, exact_max=4, resamples=20_000, seed=0)
    assert drawn == pytest.approx(exact, abs=0.02)
    assert drawn == paired_r_signflip_p(*case, exact_max=4, resamples=20_000, seed=0)
    assert drawn >= 1 / 20_001


def test_signflip_random_swaps_keep_the_floor() -> None:
    # two images apart: a random swap is as extreme (dR' = +-1) with chance 1/2, so
    # (1 + m) / (B + 1) falls below 0.5 for about half the seeds; 2 * 0.5**2 = 0.5 holds it up
    ones = [1, 1]
    ps = [
        paired_r_signflip_p(ones, ones, ones, [0, 0], exact_max=0, resamples=1000, seed=s)
        for s in range(20)
    ]
    assert min(ps) == 0.5
    assert max(ps) > 0.5


def test_signflip_counts_undefined_swaps_as_extreme() -> None:
    # model clean [1, 0] perturbed [1, 0] (R 1); baseline clean [0, 1] perturbed [0, 0] (R 0).
    # swaps: none -> dR 1; image 0 -> model clean 0/2, R undefined; image 1 -> baseline clean
    # 0/2, undefined; both -> dR -1. All 4 count: p = 4/4 (2/4 if undefined ones were skipped)
    assert paired_r_signflip_p([1, 0], [1, 0], [0, 1], [0, 0]) == 1.0
