"""``robench.corrupt`` and ``get_corruption_names``: imagecorruptions' calls, robench's kernels.

The agreement of the results with imagecorruptions' on photos (square and not) is checked in
test_fidelity.py; here: the signature, the subsets, the input and output types and the errors.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import robench
from robench import perturbations as P
from robench.perturbations.reference import load_imagecorruptions

SUBSETS = ("common", "validation", "all", "noise", "blur", "weather", "digital")


def _photo(height: int = 200, width: int = 300, seed: int = 0) -> np.ndarray:
    """A smooth uint8 RGB image with texture, H x W x 3."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, height // 10, width // 10, generator=g)
    x = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear")
    x = 0.85 * x + 0.15 * torch.rand(1, 3, height, width, generator=g)
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_the_names_and_subsets_are_imagecorruptions_own() -> None:
    ic = load_imagecorruptions()
    for subset in SUBSETS:
        assert robench.get_corruption_names(subset) == ic.get_corruption_names(subset), subset
    assert robench.get_corruption_names() == ic.get_corruption_names()
    assert set(robench.get_corruption_names("all")) <= set(P.names(kind="corruption"))
    with pytest.raises(ValueError, match="subset must be one of common, validation, all"):
        robench.get_corruption_names("mtlat24")


def test_the_signature_is_imagecorruptions_plus_keyword_options() -> None:
    ic = load_imagecorruptions()
    ours = inspect.signature(robench.corrupt).parameters
    theirs = inspect.signature(ic.corrupt).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, param in theirs.items():
        assert ours[name].default == param.default, name
    assert all(p.kind is p.KEYWORD_ONLY for p in list(ours.values())[len(theirs) :])
    assert robench.corrupt is robench.perturbations.compat.corrupt


def test_numpy_in_numpy_out_by_name_or_number() -> None:
    image = _photo()
    names = robench.get_corruption_names("all")
    for number in (0, 9, 13):
        by_number = robench.corrupt(image, corruption_number=number, severity=2, seed=3)
        by_name = robench.corrupt(image, corruption_name=names[number], severity=2, seed=3)
        assert isinstance(by_number, np.ndarray) and by_number.dtype == np.uint8
        assert by_number.shape == image.shape and np.array_equal(by_number, by_name)
    # the name wins over the number, as in imagecorruptions
    fog = robench.corrupt(image, 2, "fog", 0, seed=1)
    assert np.array_equal(fog, robench.corrupt(image, corruption_name="fog", severity=2, seed=1))


def test_the_result_is_the_float_kernel_truncated_to_uint8() -> None:
    image = _photo(seed=1)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    for name in ("contrast", "gaussian_noise", "frost"):
        want = P.get(name)(x, 3, seed=5)[0].permute(1, 2, 0).double()
        got = robench.corrupt(image, corruption_name=name, severity=3, seed=5)
        assert np.array_equal(got, np.floor(want.numpy() * 255 + 1e-4).astype(np.uint8)), name


def test_pil_in_pil_out_and_greyscale_comes_back_rgb() -> None:
    image = _photo(seed=2)
    pil = robench.corrupt(Image.fromarray(image), corruption_name="pixelate", severity=4)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (300, 200)
    assert np.array_equal(
        np.asarray(pil), robench.corrupt(image, corruption_name="pixelate", severity=4)
    )
    grey = image[..., 0]
    ic = load_imagecorruptions()
    for shaped in (grey, grey[..., None], Image.fromarray(grey)):
        out = robench.corrupt(shaped, corruption_name="contrast", severity=2)
        arr = np.asarray(out)
        assert arr.shape == (200, 300, 3) and np.array_equal(arr[..., 0], arr[..., 2])
        assert np.array_equal(arr, ic.corrupt(grey, corruption_name="contrast", severity=2))
    rgba = Image.fromarray(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))
    assert np.asarray(robench.corrupt(rgba, corruption_name="contrast", severity=2)).shape == (
        200,
        300,
        3,
    )


def test_seeded_calls_repeat_and_the_global_rngs_are_untouched(rng_guard) -> None:  # type: ignore[no-untyped-def]
    image = _photo(seed=3)
    a = robench.corrupt(image, corruption_name="shot_noise", severity=3, seed=7)
    assert np.array_equal(
        a, robench.corrupt(image, corruption_name="shot_noise", severity=3, seed=7)
    )
    assert not np.array_equal(
        a, robench.corrupt(image, corruption_name="shot_noise", severity=3, seed=8)
    )
    g = torch.Generator().manual_seed(4)
    b = robench.corrupt(image, corruption_name="shot_noise", severity=3, generator=g)
    assert b.shape == image.shape and not np.array_equal(b, image)
    assert rng_guard.unchanged()


def test_presets_follow_the_image_unless_given() -> None:
    small = _photo(40, 64, seed=4)
    cifar = robench.corrupt(small, corruption_name="gaussian_blur", severity=5)
    imagenet = robench.corrupt(
        small, corruption_name="gaussian_blur", severity=5, preset="imagenet"
    )
    assert not np.array_equal(cifar, imagenet)
    x = torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255
    want = P.get("gaussian_blur")(x, 5, preset="cifar")[0].permute(1, 2, 0).double().numpy()
    assert np.array_equal(cifar, np.floor(want * 255 + 1e-4).astype(np.uint8))


def test_other_robench_corruptions_and_the_reference_engine() -> None:
    image = _photo(seed=5)
    dead = robench.corrupt(image, corruption_name="dead_pixels", severity=5, seed=0)
    assert int((dead != image).any(-1).sum()) <= 5 and not np.array_equal(dead, image)
    box = torch.tensor([[30.0, 40.0, 200.0, 150.0]])
    blurred = robench.corrupt(image, corruption_name="foreground_blur", severity=3, boxes=box)
    assert np.array_equal(blurred[:, 200:], image[:, 200:])
    ic = load_imagecorruptions()
    ref = robench.corrupt(image, corruption_name="saturate", severity=4, engine="imagecorruptions")
    assert np.array_equal(ref, ic.corrupt(image, corruption_name="saturate", severity=4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": _photo().astype(np.float32)}, "uint8"),
        ({"image": np.zeros((8, 8, 4), np.uint8)}, "H x W x 3"),
        ({"image": np.zeros((2, 8, 8, 3), np.uint8)}, "H x W x 3"),
        ({"image": np.zeros((0, 8, 3), np.uint8)}, "at least 1 x 1"),
        ({"image": [[1, 2], [3, 4]]}, "numpy uint8 array or a PIL image"),
        ({"corruption_name": None}, "Either corruption_name or corruption_number"),
        ({"corruption_name": None, "corruption_number": 19}, "0..18"),
        ({"corruption_name": None, "corruption_number": 2.0}, "0..18"),
        ({"corruption_name": "pgd"}, "attack, not a corruption"),
        ({"severity": 6}, "severity must be an integer in 1..5"),
        ({"preset": "mnist"}, "preset must be one of"),
        ({"corruption_name": "foreground_blur"}, "needs boxes"),
    ],
)
def test_bad_calls_are_one_clear_value_error(kwargs: dict[str, object], match: str) -> None:
    call: dict[str, object] = {"image": _photo(64, 80), "corruption_name": "fog", "severity": 1}
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        robench.corrupt(**call)  # type: ignore[arg-type]
