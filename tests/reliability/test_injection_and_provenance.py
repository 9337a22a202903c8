"""Injected text and paths in result files and model cards; hash checks; honest numbers."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from _relutil import CaseLedger
from click.testing import CliRunner

from robench import evaluate
from robench.cli import main
from robench.evaluation.record import Record, ResultError, read_record
from robench.models.checkpoint import CheckpointError
from robench.models.loading import load_model
from robench.report import Report
from robench.report.figures import figure_png
from robench.report.tables import format_r_table, long_table, wide_table

PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    '=HYPERLINK("http://evil.example","x")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "-2+3",
    "\x1b]0;pwned\x07\x1b[2J",
    "$\\evil{$",
    "{{ 7*7 }}{% raw %}",
    "../../../../tmp/evil",
    "/etc/passwd",
    "x\u202egnp.exe",
    '\r\n,"quoted"\n',
]
STRUCTURAL = {
    "schema",
    "kind",
    "status",
    "correct",
    "preset",
    "split",
    "marker",
    "device",
}  # enums and encodings


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from robench.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = create_model("small_cnn", 10, width=4).eval()
    rep = evaluate(
        m,
        model_id="plain",
        perturbations=["contrast", "gaussian_noise"],
        n_images=12,
        batch_size=12,
        out=tmp_path_factory.mktemp("r"),
        baseline="none",
        plots=False,
    )
    rec = json.loads(Path(rep.paths["json"]).read_text())
    rec["gradient_masking"] = [
        {"name": "large_eps_reaches_zero", "passed": False, "detail": "PGD accuracy 0.6"}
    ]
    return rec


def _text_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _text_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _text_paths(v, (*prefix, i))
    elif isinstance(obj, str) and not STRUCTURAL & {str(p) for p in prefix}:
        out.append(prefix)
    return out


def _inject(rec: dict[str, Any], path: tuple[Any, ...], payload: str) -> dict[str, Any]:
    rec = json.loads(json.dumps(rec))
    node = rec
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = payload
    return rec


def _inert_csv(text: str) -> bool:
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            try:
                float(cell)
                continue
            except ValueError:
                pass
            if cell[:1] in ("=", "+", "-", "@") or any(ord(c) < 32 or c == "\u202e" for c in cell):
                return False
    return True


def test_script_injection_in_every_text_field_stays_inert(
    record: dict[str, Any], tmp_path: Path, cases: CaseLedger
) -> None:
    fields = _text_paths(record)
    assert len(fields) > 20
    rng = random.Random(7)
    for path in fields:
        for payload in rng.sample(PAYLOADS, 4):
            evil = _inject(record, path, payload)
            f = tmp_path / "evil.json"
            f.write_text(json.dumps(evil))
            label = f"injected text in {'.'.join(map(str, path))}"
            try:
                rec = read_record(f)
            except ResultError:
                cases.check("security", label, True, kind="injected text refused or inert")
                continue
            both = [rec, Record.from_dict(record)]
            term = format_r_table(both)
            ok = (
                _inert_csv(wide_table(both).to_csv(index=False))
                and _inert_csv(long_table(both).to_csv(index=False))
                and "\x1b" not in term
                and "\u202e" not in term
            )
            cases.check("security", label, ok, repr(payload), kind="injected text refused or inert")
    for payload in PAYLOADS:  # plots draw untrusted names as text, never as $math$
        evil = _inject(
            _inject(record, ("model", "id"), payload),
            ("perturbations",),
            {payload if k == "contrast" else k: v for k, v in record["perturbations"].items()},
        )
        ok = all(len(figure_png(Report(evil).plot(kind))) > 100 for kind in ("R", "severity"))
        cases.check(
            "security",
            f"injected text in plot labels: {payload!r}",
            ok,
            kind="injected text in plots",
        )


class _Tags(HTMLParser):
    """Markup from a payload that a browser acts on: event attributes, scripts calling alert."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        if (tag == "img" and dict(attrs).get("src") == "x") or any(
            k.startswith("on") for k, _ in attrs
        ):
            self.bad.append(f"<{tag} {attrs}>")

    def handle_data(self, data: str) -> None:
        if self._in_script and "alert(" in data:
            self.bad.append(f"script: {data[:80]}")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def _everything_injected(record: dict[str, Any], payload: str, keep: set[str]) -> dict[str, Any]:
    rec = record
    for path in _text_paths(record):
        if not keep & {str(p) for p in path}:
            rec = _inject(rec, path, payload)
    return rec


def test_foreign_result_with_injected_text_and_paths_writes_only_inside_the_output(
    record: dict[str, Any], tmp_path: Path, cases: CaseLedger
) -> None:
    from robench.report.leaderboard.build import build_leaderboard

    keep = {"robench_version", "sha256", "environment", "config", "run_key", "created", "updated"}
    sandbox = tmp_path / "sandbox"
    results, site = sandbox / "results", sandbox / "site"
    results.mkdir(parents=True)
    for i, payload in enumerate(PAYLOADS):
        (results / f"evil{i}.json").write_text(
            json.dumps(_everything_injected(record, payload, keep))
        )
    (results / "plain.json").write_text(json.dumps(record))
    before = {p for p in tmp_path.rglob("*") if site not in p.parents}
    build_leaderboard([results], site, plots=True, examples=False)
    outside = {p for p in tmp_path.rglob("*") if site not in p.parents and p != site} - before
    cases.check(
        "security",
        "leaderboard from injected results: nothing written outside the site",
        not outside,
        str(sorted(outside))[:300],
    )
    for page in site.rglob("*.html"):
        tags = _Tags()
        tags.feed(page.read_text())
        cases.check(
            "security",
            f"leaderboard page {page.relative_to(site)}: injected text is not markup",
            not tags.bad,
            str(tags.bad),
            kind="leaderboard page escapes injected text",
        )
    for table in site.glob("*.csv"):
        cases.check(
            "security",
            f"leaderboard {table.name}: no spreadsheet formula or control character",
            _inert_csv(table.read_text()),
            kind="leaderboard CSV inert",
        )
    out = sandbox / "eval"
    for i, payload in enumerate(
        PAYLOADS
    ):  # the same file as a --baseline: output and terminal stay clean
        base = tmp_path / f"base{i}.json"
        base.write_text(
            json.dumps(
                _everything_injected(
                    record, payload, keep | {"name", "dataset", "severities", "clean"}
                )
            )
        )
        res = CliRunner().invoke(
            main,
            [
                "evaluate",
                "zoo:standard",
                "-p",
                "contrast",
                "-p",
                "gaussian_noise",
                "--n-images",
                "12",
                "--batch-size",
                "12",
                "--no-plots",
                "--baseline",
                str(base),
                "--out",
                str(out),
            ],
        )
        files_ok = all(out in p.parents for p in out.rglob("*"))
        ok = (
            res.exit_code in (0, 1)
            and "Traceback" not in res.output
            and "\x1b" not in res.output
            and files_ok
        )
        cases.check(
            "security",
            f"injected baseline result {payload!r}: clean terminal, files inside --out",
            ok,
            res.output[-300:],
            kind="injected baseline result",
        )


@pytest.mark.parametrize(
    "model_id", ["../../escape", "/etc/passwd", "..", "a/../../b", "C:\\evil", "x\x00y", "\x1b[2J"]
)
def test_model_ids_cannot_place_files_outside_the_output_folder(
    model_id: str, tmp_path: Path, cases: CaseLedger
) -> None:
    from robench.models import create_model

    out = tmp_path / "a" / "out"
    rep = evaluate(
        create_model("small_cnn", 10, width=4).eval(),
        model_id=model_id,
        perturbations=["contrast"],
        n_images=4,
        out=out,
        baseline="none",
        plots=True,
    )
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    inside = all(Path(p).resolve().parent == out.resolve() for p in rep.paths.values())
    cases.check(
        "security",
        f"model id {model_id!r}: every file inside --out",
        inside and not outside,
        str(outside),
        kind="path in a model id",
    )


def _zoo_copy(tmp_path: Path) -> Path:
    from robench.models.zoo import PACKAGED_ZOO

    src = PACKAGED_ZOO / "shapes"
    dst = tmp_path / "zoo" / "shapes"
    dst.mkdir(parents=True)
    for name in ("standard.pt", "standard.json"):
        shutil.copy(src / name, dst / name)
    return dst


def test_tampered_zoo_files_and_cards_are_refused(
    tmp_path: Path, cases: CaseLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo = _zoo_copy(tmp_path)
    monkeypatch.setenv("ROBENCH_ZOO", str(zoo.parent))
    good = (zoo / "standard.pt").read_bytes()
    cases.check(
        "security",
        "untampered zoo file loads",
        load_model("zoo:standard").sha256 is not None,
        kind="zoo hash check",
    )
    rng = random.Random(11)
    edits = {
        "flip a byte": lambda d: d[: (i := rng.randrange(len(d)))] + bytes([d[i] ^ 1]) + d[i + 1 :],
        "append bytes": lambda d: d + b"x",
        "truncate": lambda d: d[: len(d) // 2],
    }
    for name, edit in [*edits.items(), ("flip another byte", edits["flip a byte"])]:
        (zoo / "standard.pt").write_bytes(edit(good))
        res = CliRunner().invoke(
            main, ["evaluate", "zoo:standard", "-p", "contrast", "--out", str(tmp_path / "o")]
        )
        ok = res.exit_code == 1 and "does not match its model card" in res.output
        cases.check(
            "security",
            f"tampered zoo checkpoint ({name}) refused",
            ok,
            res.output[-200:],
            kind="zoo hash check",
        )
    (zoo / "standard.pt").write_bytes(good)
    card = json.loads((zoo / "standard.json").read_text())
    (zoo / "standard.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model("zoo:standard")
    cases.check("security", "zoo card stating another hash: refused", True, kind="zoo hash check")


def test_a_model_card_beside_a_checkpoint_is_checked(tmp_path: Path, cases: CaseLedger) -> None:
    from robench.models import create_model
    from robench.models.checkpoint import CheckpointMeta, save_checkpoint
    from robench.models.zoo import ZooCard, write_card

    m = create_model("small_cnn", 10, width=4)
    meta = CheckpointMeta(
        arch="small_cnn",
        num_classes=10,
        input_size=32,
        arch_kwargs={"width": 4},
        mean=tuple(m.normalize.mean.flatten().tolist()),
        std=tuple(m.normalize.std.flatten().tolist()),
    )
    ckpt = tmp_path / "m.pt"
    digest = save_checkpoint(m, ckpt, meta)
    write_card(
        ZooCard(
            name="../../escape",
            dataset="shapes",
            defense="standard",
            arch="small_cnn",
            command="rm -rf / ; x",
            seed=0,
            epochs=1,
            wall_time_s=0.0,
            clean_accuracy=0.1,
            sha256=digest,
            robench_version="0",
            notes="<script>alert(1)</script>",
        ),
        ckpt.with_suffix(".json"),
    )
    loaded = load_model(ckpt)
    cases.check(
        "security",
        "card beside checkpoint: matching hash accepted",
        loaded.card is not None,
        kind="card hash check",
    )
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x10
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its model card"):
        load_model(ckpt)
    cases.check(
        "security",
        "card beside checkpoint: tampered checkpoint refused",
        True,
        kind="card hash check",
    )
