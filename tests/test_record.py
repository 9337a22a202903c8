"""The typed result record: dataclasses = JSON Schema, committed files round-trip, one validator."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from robench.evaluation import record as R
from robench.evaluation.record import Record, ResultError, read_record
from robench.evaluation.scoring import score_record
from robench.evaluation.validation import validate_record

COMMITTED = sorted((Path(__file__).parents[1] / "leaderboard").rglob("*__*.json"))
SCHEMA = json.loads(
    resources.files("robench").joinpath("schemas/result.schema.json").read_text(encoding="utf-8")
)


def _dataclass_in(cls: type, name: str) -> type:
    """The dataclass inside the annotation of field ``name`` (``X | None`` -> ``X``)."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    (inner,) = [a for a in args if dataclasses.is_dataclass(a)]
    return inner  # type: ignore[return-value]  # is_dataclass narrowed it to a class


def json_keys(cls: type) -> dict[str, bool]:
    """The JSON keys a dataclass writes, each with whether it is always there (no default)."""
    out: dict[str, bool] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.metadata.get("flatten"):
            out |= dict.fromkeys(json_keys(_dataclass_in(cls, f.name)), False)
        else:
            out[f.name] = required
    return out


def _node(path: str) -> dict[str, Any]:
    node: Any = SCHEMA
    for part in path.split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


PERT = "properties/perturbations/additionalProperties"
PAIRS = [
    ("", Record),
    ("properties/run_key", R.RunKey),
    ("properties/model", R.ModelEntry),
    ("properties/dataset", R.DatasetEntry),
    ("properties/config", R.RunConfig),
    ("properties/environment", R.Environment),
    ("$defs/clean", R.CleanResult),
    (PERT, R.PerturbationResult),
    (f"{PERT}/properties/surrogate", R.SurrogateRef),
    ("$defs/severity", R.SeverityResult),
    ("$defs/accuracy", R.Accuracy),  # a composite model's sub-networks (components)
    ("properties/summary", R.Summary),
    ("properties/baseline", R.BaselineRef),
    ("properties/gradient_masking/items", R.MaskingCheck),
]


@pytest.mark.parametrize(("path", "cls"), PAIRS, ids=[c.__name__ for _, c in PAIRS])
def test_dataclass_fields_are_the_schema_properties(path: str, cls: type) -> None:
    node = _node(path) if path else SCHEMA
    keys = json_keys(cls)
    assert set(keys) == set(node["properties"]), cls.__name__
    assert {k for k, req in keys.items() if req} == set(node.get("required", [])), cls.__name__


def test_every_schema_object_with_properties_has_a_dataclass() -> None:
    covered = {p for p, _ in PAIRS}
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and isinstance(node["properties"], dict):
                found.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}".lstrip("/"))

    walk(SCHEMA, "")
    assert set(found) == covered


def test_there_are_committed_results() -> None:
    assert len(COMMITTED) >= 16


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_result_validates_and_round_trips_byte_for_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    rec = Record.from_json(text, str(path))
    assert rec.to_json() == text
    assert Record.from_dict(rec.to_dict()) == rec


def test_scoring_a_committed_result_again_gives_the_committed_numbers() -> None:
    by_id = {read_record(p).model.id: read_record(p) for p in COMMITTED}
    base = by_id["standard"]
    for name in ("mixup", "fgsm"):
        rec = by_id[name]
        again = score_record(rec, base, list(rec.perturbations))
        assert again.to_dict() == rec.to_dict(), name


_RESCORE = """
import json, sys
from robench.evaluation.record import read_record
from robench.evaluation.scoring import score_record
rec, base = read_record(sys.argv[1]), read_record(sys.argv[2])
print(json.dumps(score_record(rec, base, list(rec.perturbations)).to_dict(), sort_keys=True))
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_scores_do_not_depend_on_the_thread_count(threads: str) -> None:
    # the bootstrap's resampled sums go through a BLAS product, whose summation order follows the
    # thread count: with fractional per-image scores, a dR* that is 0 exactly fell on either side
    # of 0, and the committed p-values only came back on the committing machine's thread count
    folder = Path(__file__).parents[1] / "leaderboard/shapes"
    rec, base = (folder / f"{m}__shapes__s0__n500.json" for m in ("mixup", "standard"))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    done = subprocess.run(
        [sys.executable, "-c", _RESCORE, str(rec), str(base)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == read_record(rec).to_dict()


def _good() -> dict[str, Any]:
    return json.loads(COMMITTED[0].read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _first_done(d: dict[str, Any]) -> str:
    return next(k for k, e in d["perturbations"].items() if e["status"] == "done")


def _set(path: str, value: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[_first_done(d) if p == "*" else (int(p) if p.isdigit() else p)]
        node[int(last) if last.isdigit() else last] = value

    return edit


def _pop(path: str) -> Any:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[_first_done(d) if p == "*" else p]
        del node[last]

    return edit


PROBLEMS = [
    (_set("schema", "other"), "bad.json is not a robench result file"),
    (_set("schema_version", 2), "bad.json has schema version 2; this robench reads version 1"),
    (_pop("model.kind"), "does not match the result schema at model: 'kind' is a required"),
    (_set("model.sha256", "XYZ"), "does not match the result schema at model.sha256"),
    (
        _set("perturbations.*.status", "maybe"),
        "the result schema at perturbations.gaussian_noise.status",
    ),
    (_set("clean.accuracy", "high"), "at clean.accuracy: 'high' is not of type 'number'"),
    (_set("clean.n", 500.0), "at clean.n: 500.0 is not of type 'integer'"),
    (_set("clean", None), "at clean: None is not of type 'object'"),
    (
        _set("perturbations.*.R", float("nan")),
        "perturbations.gaussian_noise.R is not a finite number",
    ),
    (_set("model.id", ""), "bad.json: model.id must be non-empty text"),
    (_set("dataset.indices", [1, 2]), "dataset.indices must be null or one non-negative integer"),
    (_pop("perturbations.*.severities"), "'gaussian_noise' is marked done but has no severities"),
    (
        _set("perturbations.*.severities", []),
        "'gaussian_noise' is marked done but has no severities",
    ),
    (_set("clean.correct", "!!"), "bad.json: clean has unreadable per-image correctness"),
    (_set("clean.n", 499), "bad.json: clean counts 499 images but the run has 500"),
    (
        _set("clean.n_correct", 187),
        "clean: accuracy {clean_accuracy:g}, 187 of 500 correct and the per-image",
    ),
    (
        _set("clean.accuracy", 0.9),
        "clean: accuracy 0.9, {clean_correct} of 500 correct and the per-image bits",
    ),
    (
        _set("perturbations.*.severities.0.accuracy", 0.99),
        "perturbation 'gaussian_noise' severity 1: accuracy 0.99, {first_correct} of 500 correct",
    ),
]


@pytest.mark.parametrize(("edit", "sentence"), PROBLEMS, ids=[s[:40] for _, s in PROBLEMS])
def test_each_problem_is_one_sentence_naming_it(edit: Any, sentence: str) -> None:
    data = _good()
    assert data["model"]["id"] == "constant" and _first_done(data) == "gaussian_noise"
    validate_record(data, "bad.json")
    # the counts come from the committed record, so retraining the model does not break them
    sentence = sentence.format(
        clean_accuracy=data["clean"]["accuracy"],
        clean_correct=data["clean"]["n_correct"],
        first_correct=data["perturbations"]["gaussian_noise"]["severities"][0]["n_correct"],
    )
    bad = copy.deepcopy(data)
    edit(bad)
    with pytest.raises(ResultError, match=re.escape(sentence)) as err:
        validate_record(bad, "bad.json")
    assert "\n" not in str(err.value)
    with pytest.raises(ResultError, match=re.escape(sentence)):
        Record.from_dict(bad, "bad.json")


def test_read_record_names_unreadable_files(tmp_path: Path) -> None:
    f = tmp_path / "torn.json"
    f.write_text(COMMITTED[0].read_text()[:300])
    with pytest.raises(ResultError, match=f"{re.escape(str(f))} is not a readable result file"):
        read_record(f)
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "absent.json")


def test_an_unscored_record_reads_back_unscored() -> None:
    data = _good()
    for e in data["perturbations"].values():
        for k in (
            "accuracy",
            "R",
            "baseline_R",
            "marker",
            "p_value",
            "significant",
            "delta_R",
            "delta_R_ci95",
        ):
            e.pop(k, None)
    data["summary"] = {}
    rec = Record.from_dict(data)
    assert rec.summary is None and all(e.scores is None for e in rec.perturbations.values())
    assert rec.to_dict() == data
    scored = score_record(rec, None, list(rec.perturbations))
    without_baseline = {
        k: v for k, v in _good()["summary"].items() if not k.endswith("vs_baseline")
    }
    assert scored.to_dict()["summary"] == without_baseline
