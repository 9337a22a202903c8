"""Plots of result tables (matplotlib, Agg): each returns a Figure, the caller saves it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["curve_rows", "severity_curves", "r_bars"]

# Names in plots come from result files (untrusted text): draw them literally, never as $math$ (a
# crafted name would make matplotlib's math parser fail the whole figure).
_LITERAL_TEXT = matplotlib.rc_context({"text.parse_math": False})


def curve_rows(long: pd.DataFrame) -> pd.DataFrame:
    """The rows of a long table drawn as curves: corruptions, and attacks swept over strengths.

    An attack is a sweep when it has more than one severity (``fgsm``: one per eps).

    Example:
        >>> rows = pd.DataFrame({"perturbation": ["pgd", "fgsm", "fgsm", "fog"],
        ...                      "kind": ["attack", "attack", "attack", "corruption"],
        ...                      "severity": [1, 1, 2, 1]})
        >>> list(curve_rows(rows)["perturbation"])
        ['fgsm', 'fgsm', 'fog']
    """
    if not len(long):
        return long
    levels = long.groupby("perturbation")["severity"].transform("nunique")
    return long[(long["kind"] == "corruption") | ((long["kind"] == "attack") & (levels > 1))]


def _strength_ticks(ax: Axes, rows: pd.DataFrame) -> None:
    """A sweep's x axis: its severities, labelled with their strengths (``eps=k/255`` -> ``k``)."""
    by_sev = rows.drop_duplicates("severity").sort_values("severity")
    labels = [str(t).removeprefix("eps=") for t in by_sev["parameter"]]
    unit = ""
    if labels and all(t.endswith("/255") for t in labels):
        labels, unit = [t.removesuffix("/255") for t in labels], " (/255)"
    ax.set_xticks(list(by_sev["severity"]))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlabel(f"eps{unit}", fontsize=8)


@_LITERAL_TEXT
def severity_curves(long: pd.DataFrame, *, model: str | None = None) -> Figure:
    """Accuracy vs severity, one panel per corruption, clean accuracy as a dashed line.

    An attack swept over strengths (``fgsm``, ``fgsm_transfer``) gets a panel too, its x axis
    labelled with the strengths (eps).
    """
    df = long if model is None else long[long["model"] == model]
    corr = curve_rows(df)
    names = list(dict.fromkeys(corr["perturbation"]))
    cols = 5
    rows = max(1, (len(names) + cols - 1) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False, sharey=True
    )
    for ax, name in zip(axes.flat, names, strict=False):
        for m, g in corr[corr["perturbation"] == name].groupby("model", sort=False):
            g = g.sort_values("severity")
            line = ax.plot(g["severity"], g["accuracy"], marker="o", ms=3, label=str(m))[0]
            ax.fill_between(
                g["severity"], g["ci_low"], g["ci_high"], alpha=0.15, color=line.get_color()
            )
            clean = df[(df["model"] == m) & (df["kind"] == "clean")]["accuracy"]
            if len(clean):
                ax.axhline(float(clean.iloc[0]), ls="--", lw=0.8, color=line.get_color())
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.02)
        rows = corr[corr["perturbation"] == name]
        if (rows["kind"] == "attack").any():
            _strength_ticks(ax, rows)
        else:
            ax.set_xticks(sorted(rows["severity"].unique()))
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if names:
        axes[0, 0].set_ylabel("accuracy")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if len(labels) > 1:
            fig.legend(handles, labels, loc="lower right", fontsize=8)
    fig.suptitle(
        "accuracy vs severity or attack strength (dashed: clean accuracy; band: 95 % interval)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


@_LITERAL_TEXT
def r_bars(record_rows: pd.DataFrame, *, title: str = "") -> Figure:
    """Bar chart of R per perturbation (columns: perturbation, group, R, baseline_R, clean)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * len(record_rows) + 2), 3.6))
    x = range(len(record_rows))
    colors = {"corruption": "#4c72b0", "white-box": "#c44e52", "transfer": "#dd8452"}
    ax.bar(
        list(x),
        record_rows["R"],
        color=[colors.get(g, "#777777") for g in record_rows["group"]],
        label="R",
    )
    if record_rows["baseline_R"].notna().any():
        ax.scatter(
            list(x),
            record_rows["baseline_R"],
            marker="_",
            s=180,
            color="black",
            label="baseline R",
            zorder=3,
        )
    ax.set_xticks(list(x))
    ax.set_xticklabels(record_rows["perturbation"], rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("R = A_pert / A_clean")
    ax.set_ylim(0, max(1.05, float(record_rows["R"].max()) + 0.05) if len(record_rows) else 1.05)
    ax.axhline(1.0, lw=0.6, color="grey")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
