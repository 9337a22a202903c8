"""The one validator of result files: the published JSON Schema, then what a schema cannot say.

``robench/schemas/result.schema.json`` is the contract; :func:`validate_record` checks a parsed
file against it and then checks that its numbers tell one story (counts, accuracies and per-image
bits agree, every count covers the run's images, no NaN). A file that passes can be turned into a
:class:`robench.evaluation.record.Record` and read by every consumer without a ``KeyError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from robench.scores import unpack_bits

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ResultError", "validate_record"]

SCHEMA = "robench-result"
SCHEMA_VERSION = 1


class ResultError(ValueError):
    """A result file that cannot be used (malformed, other schema, other settings)."""


def validate_record(data: Any, where: str = "result") -> None:
    """Check a parsed result file: kind, version, the JSON Schema, then its own arithmetic.

    Args:
        data: the parsed JSON.
        where: how messages name the file (its path, usually).

    Raises:
        ResultError: one sentence naming the first problem found.
    """
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultError(f"{where} is not a robench result file")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ResultError(
            f"{where} has schema version {data.get('schema_version')!r}; "
            f"this robench reads version {SCHEMA_VERSION}"
        )
    _check_schema(data, where)
    for path, value in _numbers(data, ()):
        if not math.isfinite(value):
            raise ResultError(f"{where}: {'.'.join(path)} is not a finite number ({value})")
    _check_semantics(data, where)


@lru_cache(maxsize=1)
def _validator() -> Any:
    """The schema validator; ``integer`` means a JSON integer (``2.0`` is not a count)."""
    import jsonschema

    schema = json.loads(
        resources.files("robench")
        .joinpath("schemas/result.schema.json")
        .read_text(encoding="utf-8")
    )
    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
    )
    extend: Any = jsonschema.validators.extend  # jsonschema leaves it unannotated
    return extend(base, type_checker=strict)(schema)


def _check_schema(data: Mapping[str, Any], where: str) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        at = ".".join(str(p) for p in error.absolute_path) or "the top level"
        msg = error.message if len(error.message) < 160 else error.message[:157] + "..."
        raise ResultError(f"{where} does not match the result schema at {at}: {msg}")


def _numbers(obj: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(obj, float):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, (*path, str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, (*path, str(i)))


def _check_semantics(data: Mapping[str, Any], where: str) -> None:
    """What the schema cannot say: names, image subsets and every count against its bits."""
    if data["model"]["id"] == "":
        raise ResultError(f"{where}: model.id must be non-empty text")
    ds = data["dataset"]
    n = ds["n_images"]
    if ds["indices"] is not None and len(ds["indices"]) != n:
        raise ResultError(
            f"{where}: dataset.indices must be null or one non-negative integer per image"
        )
    attack_on = data["run_key"].get("attack_on", "model")
    if data["config"].get("attack_on", "model") != attack_on:
        raise ResultError(f"{where}: config.attack_on and run_key.attack_on disagree")
    _check_counts(data["clean"], f"{where}: clean", n)
    for name, entry in data["perturbations"].items():
        at = f"{where}: perturbation {name!r}"
        if entry["status"] != "done":
            continue
        if not entry.get("severities"):
            raise ResultError(f"{at} is marked done but has no severities")
        for s in entry["severities"]:
            _check_counts(s, f"{at} severity {s['severity']}", n)


def _check_counts(entry: Mapping[str, Any], where: str, n: int) -> None:
    """An accuracy and its sub-networks' (``components``, composite models) against their bits."""
    _check_one(entry, where, n)
    for name, part in entry.get("components", {}).items():
        _check_one(part, f"{where} ({name} network)", n)


def _check_one(entry: Mapping[str, Any], where: str, n: int) -> None:
    """Counts, accuracy and per-image bits must tell the same story (hand-edited numbers do not)."""
    m, k, acc = entry["n"], entry["n_correct"], entry["accuracy"]
    if m != n:
        raise ResultError(f"{where} counts {m} images but the run has {n}")
    try:
        bits = unpack_bits(entry["correct"], m)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ResultError(f"{where} has unreadable per-image correctness ({exc})") from None
    if int(bits.sum()) != k or k > m or abs(acc - k / m) > 1e-9:
        raise ResultError(
            f"{where}: accuracy {acc}, {k} of {m} correct and the per-image bits disagree"
        )
