from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torchvision.transforms import v2

from robench import perturbations as P
from robench.cli import main
from robench.report.figures import gallery_figure
from robench.transforms import Corrupt


def test_corrupt_composes_with_torchvision_v2_and_is_seeded(rng_guard) -> None:  # type: ignore[no-untyped-def]
    img = torch.randint(
        0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(9)
    )
    t1 = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            Corrupt("gaussian_noise", severity=3, generator=torch.Generator().manual_seed(0)),
        ]
    )
    t2 = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            Corrupt("gaussian_noise", severity=3, generator=torch.Generator().manual_seed(0)),
        ]
    )
    a, b = t1(img), t2(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, img.float() / 255)
    assert rng_guard.unchanged()


def test_corrupt_batch_uint8_probability_and_severity_choices() -> None:
    x = torch.rand(16, 3, 32, 32)
    never = Corrupt("contrast", p=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(never(x), x)
    always = Corrupt("contrast", severity=(5,), p=1.0, generator=torch.Generator().manual_seed(1))
    expected = P.get("contrast")(x, 5, seed=0)
    assert torch.allclose(always(x), expected, atol=1e-6)  # contrast is deterministic
    u8 = (x * 255).to(torch.uint8)
    out = Corrupt("brightness", generator=torch.Generator().manual_seed(2))(u8)
    assert out.dtype == torch.uint8 and out.shape == u8.shape


def test_corrupt_rejects_attacks_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="attack"):
        Corrupt("pgd")
    with pytest.raises(ValueError, match="severity"):
        Corrupt("fog", severity=9)
    with pytest.raises(ValueError, match="p must be"):
        Corrupt("fog", p=1.5)
    with pytest.raises(KeyError, match="did you mean fog"):
        Corrupt("fgo")


def test_gallery_figure_has_a_row_per_corruption() -> None:
    x = torch.rand(1, 3, 32, 32)
    fig = gallery_figure(x, names=["fog", "contrast", "occlusion"], preset="cifar")
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["fog", "contrast", "occlusion"]
    assert len(fig.axes) == 3 * 6


def test_gallery_cli_writes_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "g.png"
    res = CliRunner().invoke(
        main,
        [
            "gallery",
            "--preset",
            "cifar",
            "-p",
            "fog",
            "-p",
            "foreground_blur",
            "-n",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(main, ["gallery", "-p", "pgd", "--out", str(out)])
    assert bad.exit_code != 0 and "attack" in bad.output
