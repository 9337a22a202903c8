"""Reports of evaluation results: tables, plots, files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from robench._io import atomic_write_bytes, atomic_write_text
from robench.evaluation.record import PerturbationResult, Record, Scores
from robench.report.figures import figure_png
from robench.report.plots import r_bars, severity_curves
from robench.report.tables import TABLE1_COLUMNS, format_r_table, long_table, wide_table
from robench.scores import FAMILY_GROUPS

__all__ = [
    "TABLE1_COLUMNS",
    "Report",
    "format_r_table",
    "long_table",
    "wide_table",
    "write_outputs",
]


class Report:
    """The result of :func:`robench.evaluate`: the record plus the files written.

    Args:
        record: the scored result record (a parsed result file is validated into one).
        paths: what was written (``json``, ``csv``, ``long_csv``, plots).

    Raises:
        ResultError: ``record`` is a parsed file that is not a valid result.
        ValueError: the record has no clean accuracy yet.
    """

    def __init__(
        self, record: Record | Mapping[str, Any], paths: Mapping[str, Path] | None = None
    ) -> None:
        self.record = record if isinstance(record, Record) else Record.from_dict(record)
        if self.record.clean is None:
            raise ValueError("a report needs a record whose clean images are scored")
        self.paths = dict(paths or {})

    @property
    def clean_accuracy(self) -> float:
        """A_clean."""
        assert self.record.clean is not None  # checked on construction
        return float(self.record.clean.accuracy)

    def robustness(self) -> dict[str, float]:
        """R per finished perturbation."""
        return {k: r for k, _, s in _scored(self.record) if (r := s.R) is not None}

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per perturbation x severity (severity 0 = clean)."""
        return long_table([self.record])

    def to_csv(self, path: str | Path | None = None) -> str:
        """The wide CSV row (model, Clean, the Table 1 columns); written to ``path`` if given."""
        text = wide_table([self.record]).to_csv(index=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def r_frame(self) -> pd.DataFrame:
        """Per perturbation: R, baseline R, family group, marker, p-value."""
        rows = [
            {
                "perturbation": name,
                "group": FAMILY_GROUPS.get(e.family, e.family),
                "R": s.R,
                "baseline_R": s.baseline_R,
                "marker": s.marker,
                "p_value": s.p_value,
            }
            for name, e, s in _scored(self.record)
            if s.R is not None
        ]
        return pd.DataFrame(
            rows, columns=["perturbation", "group", "R", "baseline_R", "marker", "p_value"]
        )

    def plot(self, kind: str = "severity") -> Figure:
        """``severity``: accuracy vs severity per corruption; ``R``: bars of R (and baseline R)."""
        if kind == "severity":
            return severity_curves(self.to_frame())
        if kind == "R":
            a = self.clean_accuracy
            return r_bars(
                self.r_frame().astype({"baseline_R": float}),
                title=f"{self.record.model.id}: R (clean accuracy {a:.3f})",
            )
        raise ValueError(f"kind must be 'severity' or 'R', got {kind!r}")

    def __str__(self) -> str:
        return format_r_table([self.record])

    def __repr__(self) -> str:
        return (
            f"Report(model={self.record.model.id!r}, clean={self.clean_accuracy:.4f}, "
            f"perturbations={len(self.robustness())})"
        )


def _scored(record: Record) -> list[tuple[str, PerturbationResult, Scores]]:
    """The finished, scored perturbations: name, result and scores."""
    return [(k, e, e.scores) for k, e in record.done().items() if e.scores is not None]


def write_outputs(record: Record, path: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write the files derived from a finished record beside its JSON ``path``.

    Args:
        record: the finished result record.
        path: where its JSON lies; the other files share its stem.
        plots: also write the severity and R plots (PNG).

    Returns:
        The written files by kind: ``csv``, ``long_csv`` and, with plots, ``severity_png`` and
        ``r_png`` (the latter only when some R was computed).
    """
    rep = Report(record)
    stem = Path(path).with_suffix("")
    paths = {"csv": Path(f"{stem}.csv"), "long_csv": Path(f"{stem}-long.csv")}
    rep.to_csv(paths["csv"])
    atomic_write_text(paths["long_csv"], long_table([record]).to_csv(index=False))
    if plots:
        paths["severity_png"] = atomic_write_bytes(
            f"{stem}-severity.png", figure_png(rep.plot("severity"))
        )
        if len(rep.r_frame()):
            paths["r_png"] = atomic_write_bytes(f"{stem}-R.png", figure_png(rep.plot("R")))
    return paths
