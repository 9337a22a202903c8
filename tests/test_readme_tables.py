"""The README's zoo and claims tables are what the scripts recompute from the committed records.

Nothing in those tables is typed by hand: `scripts/zoo_table.py` and `scripts/claims.py` read the
records in `leaderboard/shapes/`, `papers/shapes/fusion-object/` and the zoo cards. A retrained
model, a rescored record or a changed verdict rule that is not carried into the README fails here.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _table(script: str, tmp_path: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the installed robench, not a folder that shadows it
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("| ") and lines[1].startswith("| ---")
    return lines


@pytest.mark.parametrize("script", ["zoo_table.py", "claims.py"])
def test_readme_table_equals_the_script_output(script: str, tmp_path: Path) -> None:
    lines = _table(script, tmp_path)
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index(lines[0])  # ValueError: the README lost the table's header
    assert readme[start : start + len(lines)] == lines, (
        f"README table differs from `python scripts/{script}`; rerun it and paste its output"
    )


def test_zoo_table_lists_every_committed_record(tmp_path: Path) -> None:
    rows = _table("zoo_table.py", tmp_path)[2:]
    names = {r.split("|")[1].strip() for r in rows}
    records = {p.name.split("__")[0] for p in (ROOT / "leaderboard/shapes").glob("*__n500.json")}
    assert names == records
    assert rows[0].split("|")[1].strip() == "standard"  # the baseline leads


def test_claims_verdicts_are_from_the_fixed_set(tmp_path: Path) -> None:
    rows = _table("claims.py", tmp_path)[2:]
    assert len(rows) >= 7
    for row in rows:
        verdict = row.split("|")[-2].strip()
        assert verdict.startswith(("holds", "does not hold", "not measurable")), row


def _claims() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims", ROOT / "scripts" / "claims.py")
    assert spec is not None and spec.loader is not None
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    return claims


def test_gap_verdict_judges_clean_accuracy_at_two_standard_errors() -> None:
    claims = _claims()
    gap = claims.gap_verdict
    # two SE of the difference on the 2000 test images, by hand (about 0.0177)
    hand = 2 * math.sqrt((0.917 * 0.083 + 0.9115 * 0.0885) / 2000)
    assert claims.two_se(0.917, 0.9115) == pytest.approx(hand, rel=1e-12)
    assert gap(0.917, 0.9115, "kept") == "holds"
    assert gap(0.917, 0.9115, "above") == "not measurable (within 2 SE)"
    # beyond it either way (each pair's own 2 SE is below 0.021), and within it from below
    assert gap(0.95, 0.9115, "above") == "holds"
    assert gap(0.875, 0.9115, "above") == "does not hold"
    assert gap(0.875, 0.9115, "kept") == "does not hold"
    assert gap(0.9, 0.9115, "kept") == "holds"
    assert gap(0.9, 0.9115, "above") == "not measurable (within 2 SE)"


def test_clean_verdict_compares_only_equally_long_trainings() -> None:
    claims = _claims()
    cards = {
        "a": {"clean_accuracy": 0.95, "epochs": 20},
        "b": {"clean_accuracy": 0.90, "epochs": 6},
        "c": {"clean_accuracy": 0.997, "epochs": 20},
        "d": {"clean_accuracy": 0.9975, "epochs": 20},
    }
    claims.card = cards.__getitem__  # the module is loaded fresh for this test
    assert claims.clean_verdict("a", "b", want="above") == (
        "0.9500 vs 0.9000 (20 ep vs 6 ep)",
        "not measurable: trained unequally long",
    )
    figure, verdict = claims.clean_verdict("c", "d", want="kept")
    assert figure == "0.9970 vs 0.9975 (both 20 ep)"
    assert verdict.startswith("not measurable: both at the ceiling")
    assert claims.clean_verdict("a", "c", want="kept")[1] == "does not hold"


def test_tlat_verdict_needs_every_other_training_beaten_beyond_two_standard_errors() -> None:
    claims = _claims()
    verdict = claims.tlat_verdict
    # near 0.94 two SE of a difference is about 0.015 on the 2000 test images
    apart = {"tlat": 0.95, "targeted_fgsm": 0.93, "label_smoothing": 0.92, "fgsm": 0.91}
    assert verdict(apart) == "holds"
    one_close = {**apart, "targeted_fgsm": 0.945}
    assert verdict(one_close) == (
        "not measurable: above label_smoothing, fgsm beyond 2 SE, within 2 SE of targeted_fgsm"
    )
    assert verdict({**apart, "fgsm": 0.97}) == "does not hold (below fgsm)"
    assert verdict({"tlat": 0.93, "fgsm": 0.93}) == "not measurable (within 2 SE)"
    top = {"tlat": 0.997, "targeted_fgsm": 0.998, "fgsm": 0.997}
    assert verdict(top, ceiling=True).startswith("not measurable: at the ceiling")
    assert verdict(top) == "not measurable (within 2 SE)"


def test_mat_verdict_judges_only_a_sweep_that_separates_the_models() -> None:
    claims = _claims()
    se = dict.fromkeys(("standard", "fgsm", "mat_parallel"), 0.01)
    ep = dict.fromkeys(se, 20)
    close = {"standard": 0.97, "fgsm": 0.98, "mat_parallel": 0.995}  # 0.025 <= 2 * 0.0141
    assert claims.mat_verdict(close, se, ep).startswith("not measurable")
    apart = {"standard": 0.6, "fgsm": 0.7, "mat_parallel": 0.8}
    assert claims.mat_verdict(apart, se, ep) == "holds"
    assert claims.mat_verdict({**apart, "fgsm": 0.9}, se, ep) == "does not hold (below fgsm)"
    # the lead must clear each model's 2 SE, not only the lowest one's (the 20-epoch zoo's case)
    level = {**apart, "fgsm": 0.79}
    assert claims.mat_verdict(level, se, ep) == (
        "not measurable: above standard beyond 2 SE, within 2 SE of fgsm"
    )
    assert claims.mat_verdict({**apart, "standard": 0.75, "fgsm": 0.5}, se, ep) == "holds"
    unequal = claims.mat_verdict(apart, se, {**ep, "mat_parallel": 3})
    assert unequal == (
        "not measurable: trained unequally long (standard 20 ep, fgsm 20 ep, mat_parallel 3 ep)"
    )
