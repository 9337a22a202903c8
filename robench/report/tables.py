"""Result records -> pandas tables: the wide table of the paper's Table 1 and the long table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from robench import perturbations as P
from robench.evaluation.record import Accuracy, CleanResult, Record, SeverityResult

__all__ = [
    "SHORT_NAMES",
    "TABLE1_COLUMNS",
    "format_r_table",
    "long_table",
    "masking_flags",
    "safe_text",
    "settings_notes",
    "settings_of",
    "wide_table",
]

TABLE1_COLUMNS: tuple[str, ...] = tuple(P.suites()["mtlat24"])
SHORT_NAMES = {
    "autoattack_linf": "AAinf",
    "autoattack_l2": "AAL2",
    "pgd_8_255": "PGD8",
    "gaussian_noise": "Gauss",
    "shot_noise": "Shot",
    "impulse_noise": "Impul",
    "defocus_blur": "Defoc",
    "glass_blur": "Glass",
    "motion_blur": "Motn",
    "zoom_blur": "Zoom",
    "snow": "Snow",
    "frost": "Frost",
    "fog": "Fog",
    "brightness": "Brig",
    "contrast": "Contr",
    "elastic_transform": "Elast",
    "pixelate": "Pixel",
    "jpeg_compression": "JPEG",
    "occlusion": "Occl",
    "color_distortion": "Color",
    "translation": "Trans",
    "rotation": "Rot",
    "pgd": "PGD",
    "pgd_ll": "PGDll",
    "cw_l2": "CW",
    "mi_fgsm_0.04": "MI.04",
    "mi_fgsm_0.08": "MI.08",
}


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value: Any) -> Any:
    r"""Untrusted text made inert for CSV files and terminals; other values pass unchanged.

    Control characters (terminal escape sequences, bidi overrides) become ``\xNN``/``\uNNNN``
    and a cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) gets a
    leading ``'``. HTML escaping is the site templates' job (they autoescape).
    """
    if not isinstance(value, str):
        return value
    import unicodedata

    text = "".join(
        repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in value
    )
    return "'" + text if text.startswith(_FORMULA_START) else text


SETTINGS = (
    "dataset",
    "protocol",
    "n_images",
    "seed",
    "suite",
    "robench_version",
    "schema_version",
)


def protocol(record: Record) -> str:
    """How the images were perturbed and attacked (from the run key), beyond the dataset.

    A float run and an ``--as-released`` run, or one attacked through the object network, never
    share a number: the leaderboard shows this beside the dataset and table notes flag a mix.

    Example:
        >>> from types import SimpleNamespace
        >>> from robench.evaluation.record import RunKey
        >>> key = RunKey(
        ...     model_sha256=None, dataset="tiny", n_images=8, seed=0, preset="tiny",
        ...     as_released=True,
        ... )
        >>> protocol(SimpleNamespace(run_key=key))
        'preset tiny, as released'
    """
    key = record.run_key
    parts = [f"preset {key.preset}"]
    if key.image_size is not None:
        parts.append(f"{key.image_size} px")
    if key.as_released:
        parts.append("as released")
    if key.attack_on != "model":
        parts.append(f"attacks on the {key.attack_on} network")
    return ", ".join(parts)


def settings_of(record: Record) -> dict[str, Any]:
    """What must be equal for two records' numbers to share a table."""
    return {
        "dataset": record.dataset.name,
        "protocol": protocol(record),
        "n_images": record.dataset.n_images,
        "seed": record.config.seed,
        "suite": record.config.suite,
        "robench_version": record.robench_version,
        "schema_version": record.schema_version,
    }


def settings_notes(records: Sequence[Record]) -> list[str]:
    """Per record, how its settings differ from the table's (the most common); ``""`` when equal."""
    if len(records) < 2:
        return [""] * len(records)
    keys = [tuple(settings_of(r).items()) for r in records]
    counts = Counter(keys)
    top: tuple[tuple[str, Any], ...] = max(keys, key=counts.__getitem__)
    common = dict(top)  # ties: the first record's settings
    return [
        "; ".join(
            f"{k} {safe_text(str(v))} (table: {safe_text(str(common[k]))})"
            for k, v in key
            if common[k] != v
        )
        for key in keys
    ]


def _columns(records: Sequence[Record]) -> list[str]:
    seen = list(TABLE1_COLUMNS)
    for r in records:
        seen += [n for n in r.perturbations if n not in seen]
    return seen


def _clean(record: Record) -> CleanResult:
    """The clean result of a record that must have one (every table row has a Clean cell)."""
    if record.clean is None:
        raise ValueError(f"the record of {record.model.id!r} has no clean accuracy yet")
    return record.clean


def _r_text(record: Record, name: str) -> str:
    """R of perturbation ``name`` with its marker (e.g. ``0.83+``); ``""`` when there is none."""
    e = record.perturbations.get(name)
    s = None if e is None or not e.done else e.scores
    return "" if s is None or s.R is None else safe_text(f"{s.R:.2f}{s.marker}")


def wide_table(records: Sequence[Record], *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per model: model, Clean, then R per perturbation with its marker (e.g. ``0.83+``).

    Missing or skipped perturbations are empty cells; numbers are rounded to 2 decimals as in the
    paper.
    Records computed with other settings than most of the table's (images, seed, suite, robench or
    schema version) are never mixed in silently: a ``settings`` column then says how each differs.
    """
    cols = list(columns) if columns is not None else list(TABLE1_COLUMNS)
    rows = []
    for r in records:
        c = _clean(r)
        row: dict[str, Any] = {
            "model": safe_text(r.model.id),
            "Clean": safe_text(f"{c.accuracy:.3f}{c.marker}"),  # marked to 0.1 point
        }
        row |= {name: _r_text(r, name) for name in cols}
        rows.append(row)
    notes = settings_notes(records)
    df = pd.DataFrame(rows, columns=["model", "Clean", *cols])
    if any(notes):
        df["settings"] = notes
    return df


def long_table(records: Iterable[Record]) -> pd.DataFrame:
    """One row per model x perturbation x severity (severity 0 = clean), numbers as numbers.

    When a record is of a composite model (contextual fusion), three more columns: ``attack_on``
    (the network the white-box attacks were crafted on) and ``object_accuracy`` /
    ``context_accuracy``, the accuracy of its object and context networks on the row's images
    (empty for other models); ``accuracy`` and ``R`` stay the evaluated (joint) model's.
    """
    records = list(records)
    composite = any(_components_of(r) for r in records)
    rows = []
    for r in records:
        base = {
            "model": r.model.id,
            "model_sha256": r.model.sha256,
            "dataset": r.dataset.name,
            "preset": r.dataset.preset,
            "seed": r.config.seed,
            "n_images": r.dataset.n_images,
            "robench_version": r.robench_version,
            "gradient_masking": masking_flags(r),
        }
        if composite:
            base["attack_on"] = r.run_key.attack_on
        base = {k: safe_text(v) for k, v in base.items()}
        c = _clean(r)
        parts = _component_cells if composite else lambda _: {}
        rows.append(base | _counts_row(c, "clean", "clean", "clean", 0, 1.0, "") | parts(c))
        done = r.done()
        extra = sorted(n for n in done if n not in TABLE1_COLUMNS)
        # a fixed order, not the one a resumed run computed them in
        for name in [n for n in TABLE1_COLUMNS if n in done] + extra:
            e = done[name]
            rows += [
                base
                | _counts_row(
                    s,
                    safe_text(name),
                    e.kind,
                    safe_text(e.family),
                    s.severity,
                    s.accuracy / c.accuracy if c.accuracy else float("nan"),
                    safe_text(s.parameter or ""),
                )
                | parts(s)
                for s in e.severities
            ]
    return pd.DataFrame(rows)


COMPONENT_COLUMNS = {"object": "object_accuracy", "context": "context_accuracy"}


def _components_of(record: Record) -> bool:
    """Whether the record holds a composite model's sub-network accuracies (or was attacked so)."""
    sevs = [s for e in record.perturbations.values() for s in e.severities]
    return record.run_key.attack_on != "model" or any(
        s is not None and s.components for s in [record.clean, *sevs]
    )


def _component_cells(s: CleanResult | SeverityResult) -> dict[str, float]:
    """The object and context networks' accuracy on one row's images (NaN when not recorded)."""
    found = s.components or {}
    return {
        col: found[name].accuracy if name in found else float("nan")
        for name, col in COMPONENT_COLUMNS.items()
    }


def _counts_row(
    s: Accuracy, name: str, kind: str, family: str, severity: int, r: float, parameter: str
) -> dict[str, Any]:
    return {
        "perturbation": name,
        "kind": kind,
        "family": family,
        "severity": severity,
        "n": s.n,
        "n_correct": s.n_correct,
        "accuracy": s.accuracy,
        "ci_low": s.ci95[0],
        "ci_high": s.ci95[1],
        "R": r,
        "parameter": parameter,
    }


def masking_flags(record: Record) -> str:
    """``""`` when every gradient-masking check passed (or none ran), else ``name: reason; ...``."""
    checks = record.gradient_masking or ()
    return "; ".join(f"{c.name}: {c.detail}" for c in checks if c.passed is False)


def format_r_table(records: Sequence[Record], *, width: int = 118) -> str:
    """The R table in the paper's layout (models as rows), split into blocks that fit ``width``."""
    cols = [c for c in _columns(records) if any(c in r.perturbations for r in records)]
    df = wide_table(records, columns=cols)
    notes = settings_notes(records)
    df["model"] = [f"{m} *" if note else m for m, note in zip(df["model"], notes, strict=True)]
    name_w = max(8, *(len(str(m)) for m in df["model"]))
    blocks: list[list[str]] = []
    cur: list[str] = []
    used = name_w + 8
    for c in cols:
        if used + 7 > width and cur:
            blocks.append(cur)
            cur, used = [], name_w + 8
        cur.append(c)
        used += 7
    blocks.append(cur)
    lines = []
    for b in blocks:
        lines.append(
            f"{'model':<{name_w}}  {'Clean':>6}"
            + "".join(f"{SHORT_NAMES.get(c, safe_text(c)[:6]):>7}" for c in b)
        )
        for _, row in df.iterrows():
            lines.append(
                f"{row['model']:<{name_w}}  {row['Clean']:>6}"
                + "".join(f"{row[c] or 'n/a':>7}" for c in b)
            )
        lines.append("")
    lines += [
        f"* {m[:-2]}: other settings than the table's: {note}"
        for m, note in zip(df["model"], notes, strict=True)
        if note
    ]
    return "\n".join(lines).rstrip()
