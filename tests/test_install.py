"""An installed robench, not the source checkout: the wheel carries the model zoo.

``pip install .`` (or a wheel from an index) must score ``zoo:`` models from any folder, with the
automatic baseline and the transfer surrogate, offline. The slow test builds the wheel from a copy
of the sources (no network: ``--no-build-isolation``, ``--no-index``), installs it into a fresh
virtual environment that sees the system's torch and friends, and runs the CLI from another
folder. Run it alone with ``python -m pytest -q tests/test_install.py -m slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from robench.models.zoo import PACKAGED_ZOO, zoo_root

ROOT = Path(__file__).resolve().parents[1]


def test_the_zoo_lives_inside_the_package() -> None:
    import robench

    package = Path(robench.__file__).resolve().parent
    assert PACKAGED_ZOO.is_relative_to(package)
    assert (PACKAGED_ZOO / "shapes" / "standard.pt").is_file()
    assert (PACKAGED_ZOO / "shapes" / "vgg_surrogate.pt").is_file()  # the transfer surrogate


def test_pyproject_ships_every_zoo_file_as_package_data() -> None:
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = conf["tool"]["setuptools"]["package-data"]["robench"]
    package = ROOT / "robench"
    shipped = {p for g in globs for p in package.glob(g)}
    zoo = {p for p in PACKAGED_ZOO.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert zoo and zoo <= shipped, sorted(str(p) for p in zoo - shipped)


def test_robench_zoo_points_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBENCH_ZOO", str(tmp_path))
    assert zoo_root() == tmp_path
    monkeypatch.delenv("ROBENCH_ZOO")
    assert zoo_root() == PACKAGED_ZOO


def _copy_sources(dst: Path) -> Path:
    """What a wheel is built from: pyproject, README and the package (no caches, no build/)."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(
        ROOT / "robench", dst / "robench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dst


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return res.stdout


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROBENCH_ZOO", "PYTHONPATH")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg"}
    return env


@pytest.mark.slow  # builds a wheel, makes a venv, evaluates twice (about a minute on 2 cores)
def test_wheel_in_a_fresh_venv_scores_the_zoo_from_another_folder(tmp_path: Path) -> None:
    env = _env()
    src = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels)],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("robench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "robench/models/zoo_files/shapes/standard.pt" in names
    assert "robench/models/zoo_files/shapes/vgg_surrogate.json" in names

    # the system's torch etc. stay visible; robench itself comes from the wheel
    target = tmp_path / "venv"
    venv.create(target, system_site_packages=True, with_pip=False)
    bindir = target / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    _run(
        [str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", str(wheel)],
        tmp_path,
        env,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [
            str(python),
            "-c",
            "import robench, robench.models.zoo as z; print(robench.__file__); print(z.zoo_root())",
        ],
        elsewhere,
        env,
    ).split()
    assert all(Path(p).resolve().is_relative_to(target.resolve()) for p in where), where
    assert "zoo:shapes/standard" in _run([str(bindir / "robench"), "list", "zoo"], elsewhere, env)

    out = elsewhere / "out"
    for model in ("zoo:standard", "zoo:fgsm"):  # the second is scored against zoo:standard
        _run(
            [str(bindir / "robench"), "evaluate", model, "-p", "fog", "-p", "mi_fgsm_0.04"]
            + ["--n-images", "20", "--no-plots", "--out", "out"],
            elsewhere,
            env,
        )
    rec = json.loads((out / "fgsm__shapes__s0__n20.json").read_text(encoding="utf-8"))
    assert rec["baseline"]["id"] == "standard", rec["baseline"]
    assert rec["baseline"]["source"] in ("zoo:standard", "zoo:shapes/standard")
    transfer = rec["perturbations"]["mi_fgsm_0.04"]
    assert transfer["status"] == "done", transfer
    assert transfer["surrogate"]["source"].endswith("vgg_surrogate"), transfer["surrogate"]
    assert rec["perturbations"]["fog"]["status"] == "done"
    assert rec["environment"].get("peak_rss_mib", 0) > 0  # the run's peak memory is recorded
