"""The static leaderboard: skipped files, escaping, tables, CSV round trips, pages and CLI."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from leaderboard_data import XSS, XSS_TITLE, bad_files, shared_results

from robench.cli import main
from robench.evaluation.record import Record
from robench.report import TABLE1_COLUMNS
from robench.report.leaderboard.build import (
    build_leaderboard,
    leaderboard_tables,
    load_results,
    read_long_csv,
    read_wide_csv,
)
from robench.report.leaderboard.plots import r_matrix


class Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser sees them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "tr" and "data-dataset" in a:
            self._row = {"attrs": a, "cells": []}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row["cells"].append({"attrs": a, "parts": self._cell})

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _cell_text(cell: dict[str, Any]) -> str:
    return "".join(cell["parts"]).strip()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_trained: Any) -> dict[str, Any]:
    return shared_results(tmp_path_factory, tiny_trained)


@pytest.fixture(scope="module")
def site(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The site of the three good results plus five bad files, without plots or images (fast)."""
    bad = tmp_path_factory.mktemp("bad")
    expected = bad_files(bad, data["noisy"])
    lb = build_leaderboard(
        [data["dir"], bad], tmp_path_factory.mktemp("site") / "site", plots=False, examples=False
    )
    return lb, expected


def test_bad_files_are_reported_by_name_and_skipped(site: Any) -> None:
    lb, expected = site
    reasons = {p.path.name: p.reason for p in lb.problems}
    assert set(reasons) == set(expected)
    for name, phrase in expected.items():
        assert phrase in reasons[name], (name, reasons[name])
    page = Page(lb.index.read_text())
    assert len(page.rows) == 3  # base, noisy, the hostile copy: one row per valid result
    listed = "".join(page.text)
    assert all(name in listed for name in expected)


def test_untrusted_text_is_shown_as_text_never_markup(site: Any, data: dict[str, Any]) -> None:
    lb, _ = site
    pages = [lb.index, *sorted((lb.out / "models").glob("*.html")), lb.out / "gallery.html"]
    assert len(pages) == 5
    for path in pages:
        html = path.read_text()
        for raw in ("<img src=x", "<script>alert", "<b>bold", "<b>rises"):
            assert raw not in html, (path.name, raw)
        parsed = Page(html)
        assert not [a for t, a in parsed.tags if any(k.startswith("on") for k in a)], (
            path.name
        )  # no event handlers
        assert not [a for t, a in parsed.tags if t == "img" and "x" == a.get("src")]
        scripts = [t for t, _ in parsed.tags if t == "script"]
        assert len(scripts) == (
            1 if path == lb.index else 0
        )  # only the site's own sorting/filter script
        hrefs = [a.get("href") or "" for t, a in parsed.tags if t == "a"]
        assert not [h for h in hrefs if ":" in h and not h.startswith("data:")], (
            path.name
        )  # no javascript:, no external links
    hostile = next(p for p in (lb.out / "models").glob("*.html") if "onerror" in p.name)
    text = "".join(Page(hostile.read_text()).text)
    for shown in (
        XSS,
        XSS_TITLE,
        "<script>alert(2)</script>",
        "<script>alert(3)</script>",
        "shapes-<b>bold</b>",
    ):
        assert shown in text  # visible to the reader, as text
    index_text = "".join(Page(lb.index.read_text()).text)
    assert XSS in index_text and "<b>rises</b>" in index_text
    for f in lb.out.rglob("*"):
        assert re.fullmatch(r"[A-Za-z0-9._-]+", f.name), f


def test_index_cells_show_r_markers_significance_and_clean(site: Any, data: dict[str, Any]) -> None:
    lb, _ = site
    page = Page(lb.index.read_text())
    head = [c for c in page.tags if c[0] == "th"]
    assert (
        len(head) == 3 + len(TABLE1_COLUMNS) + 1 + 3 + 1
    )  # model, dataset, clean, 24 (+ the hostile extra), 3 means, flags
    rows = {r["attrs"]["data-name"]: r for r in page.rows}
    rec: Record = data["noisy"]
    assert rec.clean is not None and rec.summary is not None
    cells = rows["noisy"]["cells"]
    assert _cell_text(cells[2]).startswith(f"{rec.clean.accuracy:.3f}")  # marked to 0.1 point
    assert float(cells[2]["attrs"]["data-sort"]) == pytest.approx(rec.clean.accuracy, abs=1e-6)
    for name in ("gaussian_noise", "contrast"):
        s = rec.perturbations[name].scores
        assert s is not None and s.R is not None
        cell = cells[3 + TABLE1_COLUMNS.index(name)]
        expect = f"{s.R:.2f}{s.marker}" + ("*" if s.significant and s.marker else "")
        assert _cell_text(cell) == expect
        assert float(cell["attrs"]["data-sort"]) == pytest.approx(s.R, abs=1e-6)
        assert f"accuracy {s.accuracy:.3f}" in cell["attrs"]["title"]
    assert _cell_text(cells[3 + TABLE1_COLUMNS.index("shot_noise")]) == ""  # not evaluated
    fam = cells[-4:-1]  # the three family means, before the masking column
    assert [_cell_text(c) for c in fam] == [
        f"{rec.summary.mean_R['corruption']:.2f}",
        "-",
        "-",
    ]
    assert _cell_text(cells[-1]) == "not run" and "passed" in _cell_text(rows["base"]["cells"][-1])
    hostile = rows[XSS.lower()]["cells"]
    assert "accuracy_falls_with_eps" in _cell_text(hostile[-1]) and XSS_TITLE in _cell_text(
        hostile[-1]
    )
    assert (
        rows["base"]["attrs"]["data-defense"] == "standard"
        and rows["noisy"]["attrs"]["data-defense"] == "mixup"
    )


def test_wide_and_long_csv_round_trip_through_pandas(site: Any, data: dict[str, Any]) -> None:
    lb, _ = site
    wide, long = leaderboard_tables(lb.records)
    back = read_wide_csv(lb.files["wide_csv"])
    pd.testing.assert_frame_equal(back, wide.reset_index(drop=True))
    assert list(back.columns[:26]) == ["model", "Clean", *TABLE1_COLUMNS]
    row = back[back["model"] == "noisy"].iloc[0]
    noisy: Record = data["noisy"]
    s = noisy.perturbations["contrast"].scores
    assert s is not None and s.R is not None and noisy.summary is not None
    assert row["contrast"] == f"{s.R:.2f}{s.marker}"
    assert row["mean_R_corruption"] == pytest.approx(noisy.summary.mean_R["corruption"])
    assert np.isnan(row["mean_R_transfer"]) and np.isnan(row["mean_R_white-box"])
    assert "accuracy_falls_with_eps" in back[back["model"] == XSS].iloc[0]["gradient_masking"]
    long_back = read_long_csv(lb.files["long_csv"])
    pd.testing.assert_frame_equal(long_back, long)
    assert (
        len(long_back) == 3 * (1 + 5 + 5) + 1
    )  # clean + 2 corruptions x 5 severities per result, + pgd of base
    plain = pd.read_csv(lb.files["long_csv"])  # a pandas user's first try reads the same numbers
    np.testing.assert_allclose(plain["accuracy"], long["accuracy"])


def test_r_matrix_is_models_by_perturbations(data: dict[str, Any]) -> None:
    recs = [data["base"], data["noisy"]]
    m = r_matrix(recs, ["a", "b"])
    assert list(m.columns) == ["gaussian_noise", "contrast", "pgd"]
    s = data["noisy"].perturbations["contrast"].scores
    assert m.loc["b", "contrast"] == pytest.approx(s.R)


def test_interrupted_run_gets_r_from_its_counts_and_duplicates_keep_one(
    data: dict[str, Any], tmp_path: Path
) -> None:
    rec = data["base"].to_dict()
    for e in rec["perturbations"].values():
        for k in ("R", "accuracy", "marker", "baseline_R", "p_value", "significant"):
            e.pop(k, None)
    rec["summary"] = {}
    (tmp_path / "a.json").write_text(json.dumps(rec))
    done = data["base"].to_dict()
    del done["perturbations"]["pgd"]
    (tmp_path / "b.json").write_text(json.dumps(done))  # same run, fewer perturbations
    items, problems = load_results([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(items) == 1 and items[0].path.name == "a.json"
    assert [p.path.name for p in problems] == ["b.json"] and "duplicates" in problems[0].reason
    got = items[0].record.perturbations["contrast"]
    accs = [s.accuracy for s in got.severities]
    assert got.scores is not None
    assert got.scores.R == pytest.approx(np.mean(accs) / rec["clean"]["accuracy"])
    assert got.scores.baseline_R is None and got.scores.marker == ""
    assert items[0].notes and "did not finish" in items[0].notes[0]


def test_model_page_has_plots_examples_card_and_provenance(
    data: dict[str, Any], tmp_path: Path
) -> None:
    src = tmp_path / "results"
    shutil.copytree(data["dir"], src)
    (src / "xss.json").unlink()
    lb = build_leaderboard([src], tmp_path / "site", plots=True, examples=True)
    for key in ("heatmap_png", "clean_vs_r_png", "severity_png", "gallery:shapes"):
        assert lb.files[key].stat().st_size > 5000, key
    base_page = next((lb.out / "models").glob("base-*.html"))
    html = base_page.read_text()
    parsed = Page(html)
    imgs = [a["src"] for t, a in parsed.tags if t == "img"]
    for s in imgs:
        assert (base_page.parent / s).resolve().is_file(), s
    assert any(s.endswith("-R.png") for s in imgs) and any(
        s.endswith("-severity.png") for s in imgs
    )
    assert any(
        "/pgd-" in s for s in imgs
    )  # adversarial examples: the checkpoint was found with its hash
    rec: Record = data["base"]
    text = "".join(parsed.text)
    for needle in (
        rec.model.sha256,
        "evaluation seed",
        "robench evaluate",
        rec.environment.torch,
        "small_cnn",
    ):
        assert needle is not None and needle in text
    first = rec.perturbations["contrast"].severities[2].bits()[0]
    tile = html[html.index('<div class="name">contrast</div>') :]
    assert re.search(r'class="(right|wrong)"', tile).group(1) == ("right" if first else "wrong")  # type: ignore[union-attr]
    # a checkpoint that changed after the evaluation is not used for adversarial images
    ck = data["ckpt"]["base"]
    shutil.copy(ck, tmp_path / "keep.pt")
    ck.write_bytes(ck.read_bytes() + b"tampered")
    try:
        lb2 = build_leaderboard([src], tmp_path / "site2", plots=False, examples=True)
    finally:
        shutil.copy(tmp_path / "keep.pt", ck)
    html2 = next((lb2.out / "models").glob("base-*.html")).read_text()
    assert "another hash than the result states" in html2
    assert not list((lb2.out / "examples").glob("base-*/pgd-*.png"))


def test_cli_builds_the_site_and_reports_skips(data: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad_files(bad, data["noisy"])
    res = CliRunner().invoke(
        main,
        [
            "leaderboard",
            str(data["dir"]),
            str(bad),
            "--out",
            str(tmp_path / "s"),
            "--no-plots",
            "--no-examples",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "3 results, 5 files skipped" in res.output
    assert "skipped " in res.output and "v2.json" in res.output
    assert (tmp_path / "s" / "index.html").is_file() and (tmp_path / "s" / "results.csv").is_file()
    res = CliRunner().invoke(
        main, ["leaderboard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")]
    )
    assert (
        res.exit_code == 1
        and "result folder or file not found" in res.output
        and "Traceback" not in res.output
    )
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(
        main, ["leaderboard", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]
    )
    assert res.exit_code == 1 and "no result files" in res.output


def test_rebuild_deletes_only_the_pages_it_no_longer_writes(
    data: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build_leaderboard(
        [data["paths"]["base"], data["paths"]["noisy"]], out, plots=False, examples=False
    )
    assert len(list((out / "models").glob("*.html"))) == 2
    mine = out / "models" / "notes.html"
    mine.write_text("kept: not written by robench")
    lb = build_leaderboard([data["paths"]["base"]], out, plots=False, examples=False)
    assert sorted(p.name for p in (out / "models").glob("*.html")) == sorted(
        ["notes.html", lb.files[next(k for k in lb.files if k.endswith(":html"))].name]
    )
    assert mine.read_text().startswith("kept")
    assert len(Page(lb.index.read_text()).rows) == 1


def test_a_released_run_is_its_own_protocol_never_mixed(data: dict[str, Any]) -> None:
    from dataclasses import replace

    from robench.report.leaderboard.build import leaderboard_tables
    from robench.report.leaderboard.site import find_baseline, labels
    from robench.report.tables import protocol, settings_notes

    base, noisy = data["base"], data["noisy"]
    released = replace(noisy, run_key=replace(noisy.run_key, as_released=True))
    base_released = replace(base, run_key=replace(base.run_key, as_released=True))
    preset = noisy.run_key.preset
    assert protocol(noisy) == f"preset {preset}"
    assert protocol(released) == f"preset {preset}, as released"
    assert labels([noisy, released]) == [
        f"{noisy.model.id} (preset {preset})",
        f"{noisy.model.id} (preset {preset}, as released)",
    ]
    wide, _ = leaderboard_tables([noisy, released])
    assert list(wide["protocol"]) == [f"preset {preset}", f"preset {preset}, as released"]
    notes = settings_notes([base, noisy, released])
    assert notes[:2] == ["", ""] and "protocol preset" in notes[2] and "as released" in notes[2]
    # the baseline's curves come from its run on the same images, made the same way
    board = [base, noisy, released]
    assert find_baseline(noisy, board) is base
    assert find_baseline(released, board) is None
    assert find_baseline(released, [*board, base_released]) is base_released


def test_provenance_names_the_surrogate_of_each_transfer_column(data: dict[str, Any]) -> None:
    from dataclasses import replace

    from robench.evaluation.record import SurrogateRef
    from robench.report.leaderboard.site import provenance

    rec: Record = data["base"]
    a, b = list(rec.perturbations)[:2]
    sur = SurrogateRef(id="vgg", source="zoo:shapes/vgg_surrogate", sha256="ab" * 32)
    other = replace(sur, sha256="cd" * 32)
    perts = dict(rec.perturbations)
    perts[a] = replace(perts[a], surrogate=sur)
    perts[b] = replace(perts[b], surrogate=other)
    rows = dict(provenance(replace(rec, perturbations=perts), Path("r.json"), "0" * 64))
    assert rows[f"transfer surrogate ({a})"] == f"zoo:shapes/vgg_surrogate (sha256 {'ab' * 32})"
    assert rows[f"transfer surrogate ({b})"].endswith(f"(sha256 {'cd' * 32})")
    assert not any(k.startswith("transfer surrogate") for k, _ in provenance(rec, Path("r"), ""))
