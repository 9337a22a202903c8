from __future__ import annotations

from click.testing import CliRunner

from robench.cli import main


def test_list_suite_mtlat24_in_table1_order() -> None:
    res = CliRunner().invoke(main, ["list", "perturbations", "--suite", "mtlat24"])
    assert res.exit_code == 0, res.output
    names = [line.split()[0] for line in res.output.splitlines()[1:]]
    assert names[-5:] == ["pgd", "pgd_ll", "cw_l2", "mi_fgsm_0.04", "mi_fgsm_0.08"]
    assert names[:3] == ["gaussian_noise", "shot_noise", "impulse_noise"]


def test_list_models_datasets_suites() -> None:
    r = CliRunner()
    assert "resnext50_32x4d" in r.invoke(main, ["list", "models"]).output
    assert "shapes-224" in r.invoke(main, ["list", "datasets"]).output
    assert "deepcorrect" in r.invoke(main, ["list", "suites"]).output


def test_bad_names_give_one_line_errors() -> None:
    r = CliRunner()
    res = r.invoke(main, ["list", "perturbations", "--suite", "mtlat2"])
    assert (
        res.exit_code != 0
        and "did you mean mtlat24" in res.output
        and "Traceback" not in res.output
    )
    res = r.invoke(main, ["data", "preview", "--dataset", "shapez"])
    assert res.exit_code != 0 and "did you mean shapes" in res.output


def test_data_preview_writes_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "p.png"
    res = CliRunner().invoke(
        main, ["data", "preview", "--dataset", "shapes", "-n", "12", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in res.output
