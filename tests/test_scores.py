"""The paired significance test behind the +/- markers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from robench.scores import mcnemar_p


def _pairs(b: int, c: int, both: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two models: ``b`` images only A gets right, ``c`` only B, ``both`` both."""
    a = np.array([True] * b + [False] * c + [True] * both)
    bb = np.array([False] * b + [True] * c + [True] * both)
    return a, bb


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (5, 9), (20, 20), (60, 41)])
def test_small_counts_equal_the_exact_binomial_tail(b: int, c: int) -> None:
    n, k = b + c, min(b, c)
    expect = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert mcnemar_p(*_pairs(b, c)) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(700, 640), (1500, 400), (2400, 10), (5000, 5000)])
def test_many_discordant_images_do_not_overflow(b: int, c: int) -> None:
    """Models far from the baseline on 2500 pooled images give over 1023 discordant pairs."""
    p = mcnemar_p(*_pairs(b, c))
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_unpaired_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same images"):
        mcnemar_p(np.ones(3, bool), np.ones(4, bool))
