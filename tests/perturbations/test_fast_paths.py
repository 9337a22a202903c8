"""The CPU fast paths give what the plain formulas give.

Large images take paths small test images never reach: per-image draws in a thread pool with the
arithmetic fused in (noise), a kernel fed a few images at a time (``cpu_chunk``), banded matrix
products, and torch's nearest-exact upscaling for pixelate. Each is checked here against the
straightforward computation, on 224 px batches that cross a chunk boundary.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robench import perturbations as P
from robench.perturbations import _ops, digital, noise
from robench.perturbations._base import RandomSource

CORRUPTIONS = P.names(kind="corruption")


def _photos(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """8-bit-level images with smooth areas and texture."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(
        base, size=(size, size), mode="bicubic", align_corners=False
    )
    x = (0.85 * x + 0.15 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return torch.round(x * 255) / 255


def _boxes(spec: P.CorruptionSpec, n: int) -> dict[str, torch.Tensor]:
    """The ``boxes`` argument of a corruption that needs one (224 px images), else nothing."""
    return {"boxes": torch.tensor([[40.0, 50.0, 170.0, 190.0]] * n)} if spec.needs_boxes else {}


def _gens(n: int, seed: int = 5) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_224px_batch_equals_its_images_corrupted_alone(name: str) -> None:
    spec = P.get(name)
    x = _photos(5)
    kw = _boxes(spec, 5)
    sev = spec.severities[len(spec.severities) // 2]
    full = spec(x, sev, seed=3, indices=range(10, 15), preset="imagenet", **kw)
    for i in (0, 3, 4):
        one = {k: v[i : i + 1] for k, v in kw.items()}
        alone = spec(x[i : i + 1], sev, seed=3, indices=[10 + i], preset="imagenet", **one)
        assert torch.allclose(full[i : i + 1], alone, atol=1e-6), (name, i)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_feeding_the_kernel_in_chunks_changes_nothing(name: str) -> None:
    spec = P.get(name)
    x = _photos(5)
    kw = _boxes(spec, 5)
    sev = spec.severities[-1]
    whole = dataclasses.replace(spec, cpu_chunk=None)(x, sev, seed=4, preset="imagenet", **kw)
    in_twos = dataclasses.replace(spec, cpu_chunk=2 * x[0].numel())  # chunks of 2, 2 and 1
    got = in_twos(x, sev, seed=4, preset="imagenet", **kw)
    assert got.shape == whole.shape and torch.allclose(got, whole, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        (
            "gaussian_noise",
            lambda x, rng, p: x + p["sigma"] * rng.randn(*x.shape[1:], dtype=x.dtype),
        ),
        (
            "awgn",
            lambda x, rng, p: x + (p["sigma255"] / 255.0) * rng.randn(*x.shape[1:], dtype=x.dtype),
        ),
        (
            "gaussian_noise_std",
            lambda x, rng, p: x + p["std"] * rng.randn(*x.shape[1:], dtype=x.dtype),
        ),
        (
            "speckle_noise",
            lambda x, rng, p: x + x * (p["sigma"] * rng.randn(*x.shape[1:], dtype=x.dtype)),
        ),
        (
            "impulse_noise",
            lambda x, rng, p: x.masked_fill(
                (u := rng.rand(*x.shape[1:])) < p["amount"] / 2, 1.0
            ).masked_fill_((u >= p["amount"] / 2) & (u < p["amount"]), 0.0),
        ),
    ],
)
def test_fused_noise_is_bit_identical_to_the_batched_formula(name: str, formula) -> None:  # type: ignore[no-untyped-def]
    x = _photos(3)
    spec = P.get(name)
    for sev in spec.severities:
        p = spec.params(sev, "imagenet")
        fused = spec.kernel(x, rng=RandomSource(_gens(3, sev)), **p)
        assert torch.equal(fused, formula(x, RandomSource(_gens(3, sev)), p)), (name, sev)
    # float64 input takes the formula itself: float32 draws, converted
    p = spec.params(3, "imagenet")
    got = spec.kernel(x.double(), rng=RandomSource(_gens(3)), **p)
    assert torch.equal(got, formula(x.double(), RandomSource(_gens(3)), p))


def test_fused_noise_is_skipped_where_it_does_not_apply() -> None:
    x = _photos(2)
    assert noise._fused(x.double(), RandomSource(_gens(2)), lambda *a: None) is None
    assert noise._fused(x.half(), RandomSource(_gens(2)), lambda *a: None) is None
    assert noise._fused(x, RandomSource(_gens(2)), lambda *a: None) is not None
    assert noise._fused(_photos(2, 32), RandomSource(_gens(2)), lambda *a: None) is None


def test_random_source_draws_equal_torch_draws_per_image() -> None:
    for shape in [(3, 4, 4), (3, 224, 224)]:
        want_n = torch.stack([torch.randn(shape, generator=g) for g in _gens(4)])
        want_u = torch.stack([torch.rand(shape, generator=g) for g in _gens(4)])
        assert torch.equal(RandomSource(_gens(4)).randn(*shape), want_n)
        assert torch.equal(RandomSource(_gens(4)).rand(*shape), want_u)


def test_an_error_in_a_pooled_draw_reaches_the_caller() -> None:
    rng = RandomSource(_gens(4))

    def fail(i: int, g: torch.Generator) -> None:
        if i == 2:
            raise RuntimeError("image 2 failed")

    with pytest.raises(RuntimeError, match="image 2 failed"):
        rng.map(fail, large=True)


@pytest.mark.parametrize("dim", [-1, -2])
def test_banded_matmul_equals_the_dense_product(dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 3, 70, 70, dtype=torch.float64, generator=g)
    band = torch.rand(50, 70, dtype=torch.float64, generator=g)
    rows, cols = torch.arange(50)[:, None], torch.arange(70)[None, :]
    band[(cols - rows * 7 // 5).abs() > 4] = 0  # a sloped band, like a box downscale
    band[10:45] = 0  # whole blocks without a non-zero entry
    dense = torch.rand(50, 70, dtype=torch.float64, generator=g)
    for m in (band, dense):
        got = _ops.banded_matmul(m, v, dim)
        want = v @ m.T if dim == -1 else m @ v
        assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("border", ["replicate", "reflect", "symmetric"])
@pytest.mark.parametrize("sigma", [0.4, 3.0, 6.0, 80.0])
def test_separable_filter_at_224px_equals_the_dense_matrices(border: str, sigma: float) -> None:
    x = torch.rand(2, 3, 224, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.tensor(_ops.scipy_gaussian_weights(sigma), dtype=torch.float64)
    want = _ops.filter_matrix(224, w, border).T @ x @ _ops.filter_matrix(200, w, border)  # type: ignore[arg-type]
    got = _ops.separable_filter(x, w, border)  # type: ignore[arg-type]
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


# the fast path runs on the CPU for h * w >= 2**14 only (smaller sizes are checked against PIL in
# test_digital.py); 157 px: a size whose upscaling index is not a whole-number ratio
@pytest.mark.parametrize(
    ("preset", "side"), [("cifar", 128), ("tiny", 160), ("imagenet", 157), ("imagenet", 224)]
)
def test_pixelate_upscale_by_interpolation_equals_pils_index(
    preset: str, side: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = P.get("pixelate")
    x = _photos(2, side)
    interpolate = torch.nn.functional.interpolate
    upscales: list[str] = []

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        upscales.append(kwargs.get("mode", ""))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(digital.F, "interpolate", spy)
    fast = [spec(x, s, preset=preset) for s in spec.severities]
    assert len(upscales) >= len(fast) and set(upscales) == {"nearest-exact"}, "no fast path"
    monkeypatch.setattr(digital, "_reads_pil_index", lambda n_in, n_out: False)
    upscales.clear()
    for s, got in zip(spec.severities, fast, strict=True):
        assert torch.equal(got, spec(x, s, preset=preset)), (side, s)
    assert "nearest-exact" not in upscales, "the reference took the fast path too"


def test_the_nearest_exact_check_compares_indices() -> None:
    index = digital._pil_upscale_index(67, 224)
    assert digital._is_nearest_exact(index, 67)
    wrong = index.clone()
    wrong[5] += 1
    assert not digital._is_nearest_exact(wrong, 67)
