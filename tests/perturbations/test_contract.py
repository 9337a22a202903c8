"""The contract every registered corruption keeps, checked over the whole registry."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import pytest
import torch

from robench import perturbations as P

CORRUPTIONS = P.names(kind="corruption")


def _batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish natural-looking content plus texture, in [0, 1]
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(
        base, size=(size, size), mode="bilinear", align_corners=False
    )
    return (0.8 * x + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _boxes(n: int, size: int) -> torch.Tensor:
    return torch.tensor([[size * 0.2, size * 0.25, size * 0.7, size * 0.8]] * n)


def _call(spec, x, severity, **kw):  # type: ignore[no-untyped-def]
    if spec.needs_boxes:
        kw["boxes"] = _boxes(x.shape[0], x.shape[-1])
    return spec(x, severity, **kw)


def test_registry_counts() -> None:
    assert len(P.names(suite="mtlat24")) == 24
    assert len(P.names(kind="corruption", suite="mtlat24")) == 19
    assert P.names(kind="attack", suite="mtlat24") == [
        "pgd",
        "pgd_ll",
        "cw_l2",
        "mi_fgsm_0.04",
        "mi_fgsm_0.08",
    ]
    assert P.names(suite="mtlat24")[:19] == list(P.IMAGENET_C + P.MTLAT_EXTRA)
    for suite in ("imagenet-c-extra", "sensor", "deepcorrect", "context"):
        assert P.names(suite=suite) == list(P.suites()[suite]), suite


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract(name: str, rng_guard) -> None:  # type: ignore[no-untyped-def]
    spec = P.get(name)
    assert spec.family in {"noise", "blur", "weather", "digital", "geometric", "occlusion", "color"}
    assert spec.description and spec.source
    x = _batch()
    x_before = x.clone()
    for severity in spec.severities:
        y = _call(spec, x, severity, seed=1, preset="cifar")
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, severity
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, severity
        assert torch.isfinite(y).all()
        assert torch.equal(x, x_before), "input was modified"
        again = _call(spec, x, severity, seed=1, preset="cifar")
        assert torch.equal(y, again), f"severity {severity}: same seed, different output"
    top = spec.severities[-1]
    y = _call(spec, x, top, seed=1, preset="cifar")
    assert not torch.equal(y, x), "the strongest severity changed nothing"
    other = _call(spec, x, top, seed=2, preset="cifar")
    if spec.stochastic:
        assert not torch.equal(y, other), "different seeds gave the same output"
    else:
        assert torch.equal(y, other), "declared deterministic, yet the seed changed the output"
    assert rng_guard.unchanged(), "the global RNG was touched"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_batch_size_and_order_independence(name: str) -> None:
    spec = P.get(name)
    x = _batch(n=5, seed=3)
    sev = spec.severities[len(spec.severities) // 2]
    full = _call(spec, x, sev, seed=11, indices=[10, 11, 12, 13, 14])
    part = _call(spec, x[3:5], sev, seed=11, indices=[13, 14])
    rev = _call(spec, x.flip(0), sev, seed=11, indices=[14, 13, 12, 11, 10]).flip(0)
    assert torch.allclose(full[3:5], part, atol=1e-6)
    assert torch.allclose(full, rev, atol=1e-6)


# a one-channel image has no saturation to change (documented in digital.saturate)
_GREY_UNCHANGED = {"saturate"}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_float64_and_single_channel(name: str) -> None:
    spec = P.get(name)
    top = spec.severities[-1]
    x = _batch(n=2).double()
    y = _call(spec, x, top, seed=0)
    assert y.dtype == torch.float64 and y.shape == x.shape
    grey = x[:, :1].clone()
    before = grey.clone()
    out = _call(spec, grey, top, seed=0)
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float64
    assert torch.isfinite(out).all() and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(grey, before), "input was modified"
    assert torch.equal(out, _call(spec, grey, top, seed=0)), "same seed, different output"
    assert torch.equal(out, grey) == (name in _GREY_UNCHANGED), "one channel: changed or not"


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# parameters a corruption's text leaves out although they vary with the severity: known gaps
_UNDESCRIBED = {"spatter": {"k"}}


def _numbers(value: Any) -> list[float]:
    """The numbers a text should show for a parameter value (a list by its two ends)."""
    if isinstance(value, bool) or not isinstance(value, int | float | tuple | list):
        return []
    if isinstance(value, tuple | list):
        return [float(min(value)), float(max(value))]
    return [float(value)]


def _shows(text: str, value: Any) -> bool:
    """Whether ``text`` shows ``value``: a string verbatim, a number as such or as a percentage."""
    if isinstance(value, str):
        return value in text
    shown = [float(t) for t in _NUMBER.findall(text)]
    return all(
        any(
            math.isclose(t, v, rel_tol=5e-3, abs_tol=5e-3) or math.isclose(t, 100 * v, rel_tol=5e-3)
            for t in shown
        )
        for v in _numbers(value)
    )


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_presets_give_parameters(name: str) -> None:
    spec = P.get(name)
    for preset in P.PRESETS:
        rows = [dict(spec.params(s, preset)) for s in spec.severities]
        texts = spec.parameter_text(preset)
        assert len(texts) == len(rows) and all(isinstance(t, str) and t for t in texts)
        # every parameter that varies with the severity is named, at each severity
        varying = {k for k in rows[0] if len({repr(r[k]) for r in rows}) > 1}
        varying -= _UNDESCRIBED.get(name, set())
        for severity, row, text in zip(spec.severities, rows, texts, strict=True):
            hidden = sorted(k for k in varying if not _shows(text, row[k]))
            assert not hidden, f"{preset} severity {severity}: {text!r} does not show {hidden}"
        # different parameters read differently; equal ones alike
        for (r1, t1), (r2, t2) in itertools.combinations(zip(rows, texts, strict=True), 2):
            assert (r1 == r2) == (t1 == t2), (preset, t1, t2)


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(3, 32, 32),
        torch.rand(2, 3, 32, 32) * 2,
        torch.full((1, 3, 8, 8), float("nan")),
        torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8),
        torch.rand(1, 5, 8, 8),
    ],
)
def test_bad_input_is_a_clear_value_error(bad: torch.Tensor) -> None:
    before = bad.clone()
    with pytest.raises(ValueError):
        P.get("gaussian_noise")(bad, 1, seed=0)
    assert torch.equal(before, bad) or torch.isnan(before).all()


def test_bad_severity_and_preset() -> None:
    spec = P.get("gaussian_noise")
    x = _batch(n=1)
    for sev in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity"):
            spec(x, sev, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preset"):
        spec(x, 1, seed=0, preset="mnist")


def test_generator_variants_are_deterministic() -> None:
    spec = P.get("gaussian_noise")
    x = _batch(n=3)
    a = spec(x, 2, generator=torch.Generator().manual_seed(4))
    b = spec(x, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    c = spec(x, 2, generator=gens)
    d = spec(x, 2, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(c, d)
    with pytest.raises(ValueError, match="generators"):
        spec(x, 2, generator=gens[:2])


def test_empty_batch() -> None:
    x = torch.rand(0, 3, 32, 32)
    assert P.get("gaussian_noise")(x, 1, seed=0).shape == x.shape
