"""Honest numbers: provenance in every result; numbers of other settings never mixed silently."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _relutil import CaseLedger

from robench import evaluate
from robench._version import __version__
from robench.evaluation.record import SCHEMA_VERSION, Record, ResultError
from robench.report.tables import format_r_table, wide_table

QUICK = {"perturbations": ["contrast"], "batch_size": 16, "baseline": "none", "plots": False}


def _run(ckpt: Path, **kw: Any) -> dict[str, Any]:
    rep = evaluate(str(ckpt), **(QUICK | kw))  # type: ignore[arg-type]
    return json.loads(Path(rep.paths["json"]).read_text())


def test_every_result_states_its_provenance(
    tiny_ckpt: Path, tmp_path: Path, cases: CaseLedger
) -> None:
    rec = _run(tiny_ckpt, n_images=12, out=tmp_path)
    facts = {
        "schema and version": (rec["schema"], rec["schema_version"])
        == ("robench-result", SCHEMA_VERSION),
        "robench version": rec["robench_version"] == __version__,
        "checkpoint SHA-256 of the file": rec["model"]["sha256"]
        == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest(),
        "image subset and its seed": len(rec["dataset"]["indices"]) == 12
        and rec["dataset"]["indices_seed"] is not None,
        "run settings": rec["config"]["seed"] == 0 and rec["config"]["suite"] == "mtlat24",
        "library versions": rec["environment"]["torch"] == torch.__version__,
    }
    for what, ok in facts.items():
        cases.check("provenance", f"result states {what}", ok, kind="provenance field")


@pytest.fixture(scope="module")
def runs(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    out = tmp_path_factory.mktemp("runs")

    def run(**kw: Any) -> Record:
        return Record.from_dict(_run(tiny_ckpt, out=out, **kw))

    a = run(n_images=12, model_id="a")

    def renamed(name: str, **changes: Any) -> Record:
        return replace(a, model=replace(a.model, id=name), **changes)

    return {
        "a": a,
        "same": run(n_images=12, model_id="same"),
        "n_images": run(n_images=16, model_id="other-n"),
        "seed": run(n_images=12, seed=1, model_id="other-seed"),
        "suite": renamed("other-suite", config=replace(a.config, suite="imagenet-c")),
        "robench_version": renamed("old", robench_version="0.0.1"),
        # a file of another schema version is refused on reading; the tables still tell it apart
        "schema_version": renamed("old-schema", schema_version=SCHEMA_VERSION - 1),
    }


@pytest.mark.parametrize(
    "differs", ["n_images", "seed", "suite", "robench_version", "schema_version"]
)
def test_a_result_with_other_settings_is_marked_in_every_table(
    differs: str, runs: dict[str, Record], cases: CaseLedger
) -> None:
    plain = wide_table([runs["a"], runs["same"]])
    cases.check(
        "provenance",
        "same settings: no mark",
        "settings" not in plain.columns,
        kind="table of equal settings",
    )
    odd = runs[differs]
    wide = wide_table([runs["a"], runs["same"], odd])
    marked = (
        "settings" in wide.columns
        and wide["settings"].tolist()[:2] == ["", ""]
        and differs in wide["settings"].iloc[2]
    )
    cases.check(
        "provenance",
        f"{differs} differs: wide table and CSV mark the row",
        marked,
        str(wide.to_dict("records")),
        kind="mixed settings marked",
    )
    text = format_r_table([runs["a"], runs["same"], odd])
    footnote = [line for line in text.splitlines() if line.startswith("* ")]
    printed = f"{odd.model.id} *" in text and len(footnote) == 1 and differs in footnote[0]
    cases.check(
        "provenance",
        f"{differs} differs: printed table marks the row",
        printed,
        text,
        kind="mixed settings marked",
    )


def test_resume_never_mixes_robench_versions(
    tiny_ckpt: Path, tmp_path: Path, cases: CaseLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robench.evaluation import loop as runner

    first = _run(tiny_ckpt, n_images=12, model_id="v", out=tmp_path)
    path = tmp_path / "v__shapes__s0__n12.json"
    path.write_text(json.dumps({**first, "robench_version": "0.0.1"}))
    computed: list[str] = []
    real = runner._corruption_entry
    monkeypatch.setattr(
        runner,
        "_corruption_entry",
        lambda spec, *a, **k: computed.append(spec.name) or real(spec, *a, **k),
    )
    rec = _run(
        tiny_ckpt,
        n_images=12,
        model_id="v",
        out=tmp_path,
        perturbations=["contrast", "gaussian_noise"],
    )
    kept = list(tmp_path.glob("v__shapes__s0__n12.json.*.old"))
    ok = (
        rec["robench_version"] == __version__
        and sorted(computed) == ["contrast", "gaussian_noise"]
        and len(kept) == 1
    )
    cases.check(
        "provenance",
        "record of another robench version: recomputed, old file kept aside",
        ok,
        f"{computed} {kept}",
    )


def test_a_baseline_from_other_images_or_versions_is_refused(
    tiny_ckpt: Path, tmp_path: Path, cases: CaseLedger
) -> None:
    from robench.models import create_model

    other = create_model("small_cnn", 10, width=4).eval()
    base = _run(tiny_ckpt, n_images=12, model_id="base", out=tmp_path)
    variants = {
        "other images": _run(tiny_ckpt, n_images=16, model_id="base16", out=tmp_path),
        "another robench version": {**base, "robench_version": "0.0.1"},
        "an unfinished run": {**base, "clean": None},
        "another seed": {**base, "config": {**base["config"], "seed": 3}},
    }
    for what, rec in variants.items():
        f = tmp_path / f"baseline-{what.replace(' ', '-')}.json"
        f.write_text(json.dumps(rec))
        try:
            evaluate(
                other,
                model_id="m",
                n_images=12,
                out=tmp_path / "m",
                **(QUICK | {"baseline": str(f)}),
            )  # type: ignore[arg-type]
            refused = False
        except ResultError:
            refused = True
        cases.check(
            "provenance",
            f"baseline computed on {what}: refused",
            refused,
            kind="baseline of other settings",
        )


def test_the_summary_covers_every_perturbation_in_the_file(
    tiny_ckpt: Path, tmp_path: Path, cases: CaseLedger
) -> None:
    _run(tiny_ckpt, n_images=12, model_id="s", out=tmp_path / "split")
    split = _run(
        tiny_ckpt,
        n_images=12,
        model_id="s",
        out=tmp_path / "split",
        perturbations=["gaussian_noise"],
    )
    whole = _run(
        tiny_ckpt,
        n_images=12,
        model_id="s",
        out=tmp_path / "whole",
        perturbations=["contrast", "gaussian_noise"],
    )
    cases.check(
        "provenance",
        "summary after two partial runs equals one whole run",
        split["summary"] == whole["summary"],
        f"{split['summary']} vs {whole['summary']}",
    )
