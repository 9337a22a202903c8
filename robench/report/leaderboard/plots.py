"""Plots over many results: R heatmap and clean accuracy vs mean R.

Plain matplotlib (Agg): seaborn would add nothing here and costs seconds to import.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from robench.evaluation.record import Record  # noqa: E402
from robench.report.plots import _LITERAL_TEXT  # noqa: E402  (names are untrusted text: never parsed as $math$)
from robench.report.tables import SHORT_NAMES, TABLE1_COLUMNS  # noqa: E402

__all__ = ["r_matrix", "r_heatmap", "clean_vs_mean_r", "GROUP_TITLES"]

GROUP_TITLES = {
    "corruption": "corruptions",
    "white-box": "white-box attacks",
    "transfer": "transfer attacks",
}
GROUP_COLOURS = {"corruption": "#4c72b0", "white-box": "#c44e52", "transfer": "#dd8452"}


def _r(rec: Record, name: str) -> float:
    e = rec.perturbations.get(name)
    s = None if e is None or not e.done else e.scores
    return np.nan if s is None or s.R is None else s.R


def _clean_accuracy(rec: Record) -> float:
    return np.nan if rec.clean is None else rec.clean.accuracy


def r_matrix(records: Sequence[Record], labels: Sequence[str]) -> pd.DataFrame:
    """Models x perturbations (Table 1 order, then extras) of R; NaN where not evaluated."""
    cols = [c for c in TABLE1_COLUMNS if any(c in r.perturbations for r in records)]
    cols += list(dict.fromkeys(n for r in records for n in r.perturbations if n not in cols))
    rows = [[_r(r, c) for c in cols] for r in records]
    return pd.DataFrame(rows, index=list(labels), columns=cols, dtype=float)


@_LITERAL_TEXT
def r_heatmap(records: Sequence[Record], labels: Sequence[str]) -> Figure:
    """Heatmap of R (models x perturbations), clean accuracy first, values written in the cells."""
    mat = r_matrix(records, labels)
    mat = mat.loc[:, mat.notna().any()]  # a column nobody has a score for says nothing
    mat.insert(0, "Clean acc.", [_clean_accuracy(r) for r in records])
    vals = np.ma.masked_invalid(mat.to_numpy(dtype=float))
    w = max(6.0, 0.5 * mat.shape[1] + 0.085 * max((len(s) for s in mat.index), default=8) + 2.2)
    fig, ax = plt.subplots(figsize=(w, max(2.4, 0.4 * len(mat) + 1.7)))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#dddddd")
    im = ax.imshow(vals, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for (i, j), v in np.ndenumerate(mat.to_numpy(dtype=float)):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < 0.25 or v > 0.85 else "black",
            )
    ax.set_xticks(
        range(mat.shape[1]),
        [SHORT_NAMES.get(c, c) for c in mat.columns],
        rotation=60,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(range(len(mat)), list(mat.index), fontsize=8)
    ax.set_xticks(np.arange(-0.5, mat.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, len(mat)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    ax.axvline(0.5, color="black", lw=1.5)
    fig.colorbar(im, ax=ax, shrink=0.9, label="R")
    ax.set_title(
        "R per perturbation (first column: clean accuracy; grey: not evaluated)", fontsize=10
    )
    fig.tight_layout()
    return fig


@_LITERAL_TEXT
def clean_vs_mean_r(records: Sequence[Record], labels: Sequence[str]) -> Figure:
    """Clean accuracy (x) against mean R (y), one panel per family group: R alone hides A_clean."""
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4), sharex=True, sharey=True)
    top = 1.1
    chance = sorted({1.0 / max(int(r.dataset.num_classes), 1) for r in records})
    for ax, (group, title) in zip(axes, GROUP_TITLES.items(), strict=True):
        pts = [
            (_clean_accuracy(r), r.summary.mean_R[group], lab)
            for r, lab in zip(records, labels, strict=True)
            if r.summary is not None and group in r.summary.mean_R
        ]
        ax.set_title(f"{title} ({len(pts)} model{'' if len(pts) == 1 else 's'})", fontsize=10)
        ax.grid(alpha=0.3)
        for c in chance:
            ax.axvline(c, ls=":", lw=1, color="grey")
        if not pts:
            ax.text(
                0.5,
                0.5,
                "no results",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
            continue
        ax.scatter(
            [p[0] for p in pts], [p[1] for p in pts], s=36, color=GROUP_COLOURS[group], zorder=3
        )
        for i, (x, y, lab) in enumerate(pts):
            k = sum(
                1 for px, py, _ in pts[:i] if abs(px - x) < 0.06 and abs(py - y) < 0.04
            )  # stack close labels
            ax.annotate(
                lab if len(lab) <= 28 else lab[:27] + "\u2026",
                (x, y),
                xytext=(5, 2 - 10 * k),
                textcoords="offset points",
                fontsize=7,
                va="center",
            )
        top = max(top, max(p[1] for p in pts) + 0.08)
    axes[0].set_ylabel("mean R in the family")
    for ax in axes:
        ax.set_xlabel("clean accuracy (dotted: chance level)")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, top)
    fig.suptitle(
        "Clean accuracy vs mean robustness, per family (never averaged across families)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
