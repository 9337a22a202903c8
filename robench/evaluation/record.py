"""The result record: one JSON file per run, versioned, written atomically after every step.

The schema is documented in ``robench/schemas/result.schema.json``; ``SCHEMA_VERSION`` changes
whenever a field changes meaning.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robench._io import atomic_write_text
from robench._version import __version__
from robench.scores import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    FAMILY_GROUPS,
    marker,
    mce,
    mcnemar_p,
    pack_bits,
    relative_robustness,
    unpack_bits,
    wilson_interval,
)

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "ResultError",
    "new_record",
    "accuracy_entry",
    "read_record",
    "write_record",
    "finalize",
    "environment",
    "correct_bits",
    "check_record",
    "check_accuracy_entry",
    "entry_complete",
]

SCHEMA = "robench-result"
SCHEMA_VERSION = 1
SIGNIFICANCE = 0.05


class ResultError(ValueError):
    """A result file that cannot be used (malformed, other schema, other settings)."""


def environment(device: str) -> dict[str, Any]:
    """Versions and machine facts recorded with every result."""
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
    }
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("torchvision", "foolbox"):
        try:
            env[mod] = version(
                mod
            )  # from the metadata: importing torchvision costs seconds (it loads torch._dynamo)
        except PackageNotFoundError:  # pragma: no cover
            env[mod] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
    return env


def accuracy_entry(correct: np.ndarray) -> dict[str, Any]:
    """Counts, accuracy, 95 % interval and packed per-image correctness of one evaluation."""
    n, k = int(correct.shape[0]), int(correct.sum())
    lo, hi = wilson_interval(k, n)
    return {
        "n": n,
        "n_correct": k,
        "accuracy": k / n if n else float("nan"),
        "ci95": [lo, hi],
        "correct": pack_bits(correct),
    }


def correct_bits(entry: Mapping[str, Any]) -> np.ndarray:
    """Per-image correctness of an :func:`accuracy_entry`."""
    return unpack_bits(entry["correct"], int(entry["n"]))


def new_record(
    *,
    run_key: Mapping[str, Any],
    model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    config: Mapping[str, Any],
    device: str,
) -> dict[str, Any]:
    """An empty record for a run (nothing computed yet)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "robench_version": __version__,
        "run_key": dict(run_key),
        "created": now,
        "updated": now,
        "model": dict(model),
        "dataset": dict(dataset),
        "config": dict(config),
        "environment": environment(device),
        "clean": None,
        "perturbations": {},
        "summary": {},
        "baseline": None,
        "gradient_masking": None,
    }


def write_record(record: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a record."""
    record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return atomic_write_text(path, json.dumps(_no_nan(record), indent=1, allow_nan=False) + "\n")


def _no_nan(obj: Any) -> Any:
    """Strict JSON: NaN/Inf (undefined ratios) become null."""
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check a result file; one-sentence :class:`ResultError` otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(
            f"{p} is not a readable result file (truncated or corrupt?): {exc}"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultError(f"{p} is not a robench result file")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ResultError(
            f"{p} has schema version {data.get('schema_version')!r}; this robench reads version {SCHEMA_VERSION}"
        )
    for key in ("run_key", "model", "dataset", "config", "perturbations"):
        if not isinstance(data.get(key), dict):
            raise ResultError(f"{p} lacks its {key!r} section")
    check_record(data, str(p))
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ResultError(f"{where}: {what}")


def check_accuracy_entry(entry: Any, where: str, n: int | None = None) -> None:
    """Counts, accuracy, interval and per-image bits of an :func:`accuracy_entry` agree (else ResultError)."""
    _need(isinstance(entry, dict), where, "is not an accuracy entry")
    k, m = entry.get("n_correct"), entry.get("n")
    _need(
        _is_int(m) and m >= 1 and _is_int(k) and 0 <= k <= m,
        where,
        f"has impossible counts ({k!r} of {m!r})",
    )
    _need(n is None or m == n, where, f"counts {m} images but the run has {n}")
    _need(
        _is_num(entry.get("accuracy")) and abs(entry["accuracy"] - k / m) < 1e-9,
        where,
        f"accuracy {entry.get('accuracy')!r} is not {k}/{m}",
    )
    ci = entry.get("ci95")
    _need(
        isinstance(ci, list) and len(ci) == 2 and all(_is_num(v) for v in ci),
        where,
        "has a malformed ci95",
    )
    _need(isinstance(entry.get("correct"), str), where, "lacks its per-image correctness")
    try:
        bits = unpack_bits(entry["correct"], m)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ResultError(f"{where}: unreadable per-image correctness ({exc})") from None
    _need(
        int(bits.sum()) == k,
        where,
        f"per-image correctness ({int(bits.sum())} correct) disagrees with n_correct {k}",
    )
    for key in ("severity",):
        _need(key not in entry or _is_int(entry[key]), where, f"{key} must be an integer")
    for key in ("parameter", "marker"):
        _need(entry.get(key) is None or isinstance(entry[key], str), where, f"{key} must be text")
    for key in ("baseline_accuracy", "p_value"):
        _need(entry.get(key) is None or _is_num(entry[key]), where, f"{key} must be a number")


def entry_complete(entry: Any, n: int, severities: Sequence[int] | None = None) -> bool:
    """Whether a perturbation entry is finished and whole (a resumed run recomputes it otherwise)."""
    if not isinstance(entry, dict) or entry.get("status") != "done":
        return False
    sevs = entry.get("severities")
    if not isinstance(sevs, list) or not sevs:
        return False
    if severities is not None and [
        s.get("severity") if isinstance(s, dict) else None for s in sevs
    ] != list(severities):
        return False
    try:
        for i, s in enumerate(sevs):
            check_accuracy_entry(s, f"severity {i + 1}", n)
    except ResultError:
        return False
    return True


def check_record(data: Mapping[str, Any], where: str = "result") -> None:
    """Structural and arithmetic checks of a record: everything tables and ``finalize`` rely on.

    A file that passes can be read by every robench consumer without a KeyError or a TypeError;
    one that fails raises :class:`ResultError` naming the first problem.
    """
    _need(isinstance(data.get("robench_version"), str), where, "lacks its robench_version")
    model, ds, cfg = data["model"], data["dataset"], data["config"]
    _need(
        isinstance(model.get("id"), str) and model["id"] != "",
        where,
        "model.id must be non-empty text",
    )
    for key in ("source", "sha256", "kind"):
        _need(
            model.get(key) is None or isinstance(model[key], str),
            where,
            f"model.{key} must be text",
        )
    n = ds.get("n_images")
    _need(_is_int(n) and n >= 1, where, "dataset.n_images must be a positive integer")
    for key in ("name", "preset"):
        _need(isinstance(ds.get(key), str), where, f"dataset.{key} must be text")
    idx = ds.get("indices")
    _need(
        idx is None
        or (isinstance(idx, list) and len(idx) == n and all(_is_int(i) and i >= 0 for i in idx)),
        where,
        "dataset.indices must be null or one non-negative integer per image",
    )
    _need(_is_int(cfg.get("seed")), where, "config.seed must be an integer")
    _need(
        cfg.get("suite") is None or isinstance(cfg["suite"], str),
        where,
        "config.suite must be text",
    )
    if data.get("clean") is not None:
        check_accuracy_entry(data["clean"], f"{where}: clean", n)
    for name, e in data["perturbations"].items():
        at = f"{where}: perturbation {name!r}"
        _need(isinstance(e, dict), at, "is not an object")
        _need(
            e.get("kind") in ("corruption", "attack") and isinstance(e.get("family"), str),
            at,
            "lacks kind/family",
        )
        _need(e.get("status") in ("done", "skipped"), at, f"has unknown status {e.get('status')!r}")
        for key in ("R", "baseline_R", "accuracy", "p_value", "seconds"):
            _need(e.get(key) is None or _is_num(e[key]), at, f"{key} must be a number")
        _need(e.get("marker") is None or isinstance(e["marker"], str), at, "marker must be text")
        if e["status"] == "done":
            sevs = e.get("severities")
            _need(
                isinstance(sevs, list) and len(sevs) > 0, at, "is marked done but has no severities"
            )
            for i, s in enumerate(sevs):
                check_accuracy_entry(s, f"{at} severity {i + 1}", n)
                _need(_is_int(s.get("severity")), at, f"severity {i + 1} lacks its severity level")
    masking = data.get("gradient_masking")
    _need(
        masking is None
        or (
            isinstance(masking, list)
            and all(
                isinstance(c, dict)
                and isinstance(c.get("name"), str)
                and isinstance(c.get("detail"), str)
                and (c.get("passed") is None or isinstance(c["passed"], bool))
                for c in masking
            )
        ),
        where,
        "gradient_masking must be a list of {name, passed, detail}",
    )
    for key in ("summary", "baseline"):
        _need(
            data.get(key) is None or isinstance(data[key], dict), where, f"{key} must be an object"
        )


def _pert_correct(entry: Mapping[str, Any]) -> np.ndarray:
    return np.concatenate([correct_bits(s) for s in entry["severities"]])


def _compare(entry: dict[str, Any], base: Mapping[str, Any] | None) -> None:
    """Marker and paired significance of one perturbation against the baseline's."""
    if base is None:
        entry.update(baseline_R=None, marker="", p_value=None, significant=None)
        return
    entry["baseline_R"] = base["R"]
    entry["marker"] = (
        "" if entry["R"] is None or base["R"] is None else marker(entry["R"], base["R"])
    )
    a, b = _pert_correct(entry), _pert_correct(base)
    if a.shape == b.shape:
        p = mcnemar_p(a, b)
        entry.update(p_value=p, significant=bool(p < SIGNIFICANCE))
    else:
        entry.update(p_value=None, significant=None)


def finalize(
    record: dict[str, Any], baseline: Mapping[str, Any] | None, order: Sequence[str]
) -> dict[str, Any]:
    """Fill R, markers, significance, family means and mCE from the raw counts (idempotent)."""
    clean = record["clean"]
    a_clean = clean["accuracy"]
    base_perts = baseline["perturbations"] if baseline else {}
    if baseline is not None:
        clean["baseline_accuracy"] = baseline["clean"]["accuracy"]
        clean["marker"] = marker(a_clean, baseline["clean"]["accuracy"])
        a, b = correct_bits(clean), correct_bits(baseline["clean"])
        clean["p_value"] = mcnemar_p(a, b) if a.shape == b.shape else None
    families: dict[str, list[float]] = {}
    for name in order:
        entry = record["perturbations"].get(name)
        if entry is None or entry.get("status") != "done":
            continue
        accs = [s["accuracy"] for s in entry["severities"]]
        entry["accuracy"] = float(np.mean(accs))
        r = relative_robustness(entry["accuracy"], a_clean)
        entry["R"] = None if np.isnan(r) else r  # JSON has no NaN: R is undefined when A_clean = 0
        _compare(
            entry,
            base_perts.get(name) if base_perts.get(name, {}).get("status") == "done" else None,
        )
        if entry["R"] is not None:
            families.setdefault(FAMILY_GROUPS.get(entry["family"], entry["family"]), []).append(
                entry["R"]
            )
    # fsum is exactly rounded: the mean does not depend on the order the perturbations were run in
    summary: dict[str, Any] = {"mean_R": {k: math.fsum(v) / len(v) for k, v in families.items()}}
    summary.update(_mce_summary(record, baseline))
    record["summary"] = summary
    return record


def _errors(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, list[float]]:
    out = {}
    for n in names:
        e = record["perturbations"].get(n)
        if e and e.get("status") == "done" and len(e["severities"]) == 5:
            out[n] = [1.0 - s["accuracy"] for s in e["severities"]]
    return out


def _mce_summary(record: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    names = list(ALEXNET_ERRORS)
    errs = _errors(record, names)
    clean_err = 1.0 - record["clean"]["accuracy"]
    out: dict[str, Any] = {"mce_corruptions": sorted(errs)}
    if baseline is not None:
        base = _errors(baseline, names)
        base_clean = 1.0 - baseline["clean"]["accuracy"]
        out["mce_vs_baseline"] = mce(errs, base)
        out["relative_mce_vs_baseline"] = mce(
            errs, base, clean_error=clean_err, reference_clean_error=base_clean
        )
    if record["dataset"].get("preset") == "imagenet":
        out["mce_vs_alexnet"] = mce(errs, ALEXNET_ERRORS)
        out["relative_mce_vs_alexnet"] = mce(
            errs, ALEXNET_ERRORS, clean_error=clean_err, reference_clean_error=ALEXNET_CLEAN_ERROR
        )
    else:
        out["mce_vs_alexnet"] = (
            None  # AlexNet's errors are ImageNet-C's; meaningless at other resolutions
        )
    return out
