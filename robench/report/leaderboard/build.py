"""``robench leaderboard``: result JSON files -> a static site, CSVs and plots that open from disk.

Every result file is validated (schema, version, internal consistency) before it is used; a bad
file is reported by name and skipped, and the rest of the site still builds. Everything a result
file says is untrusted text: the templates autoescape it and no file name is taken from it
unsanitised.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robench._io import atomic_write_bytes, atomic_write_text, sha256_file
from robench.evaluation.record import Record, ResultError, read_record
from robench.evaluation.scoring import score_record
from robench.report.figures import figure_png
from robench.report.leaderboard import site as _site
from robench.report.tables import long_table, wide_table

__all__ = [
    "LoadProblem",
    "LoadedResult",
    "Leaderboard",
    "find_result_files",
    "load_results",
    "build_leaderboard",
    "leaderboard_tables",
    "read_wide_csv",
    "read_long_csv",
    "DEFAULT_RESULTS",
    "DEFAULT_SITE",
]

log = logging.getLogger(__name__)

DEFAULT_RESULTS = Path("leaderboard")
DEFAULT_SITE = Path("leaderboard/site")
MANIFEST = (
    "MANIFEST.txt"  # the files a build wrote; the next build deletes those it no longer writes
)
FAMILY_COLUMNS = {
    "corruption": "mean_R_corruption",
    "white-box": "mean_R_white-box",
    "transfer": "mean_R_transfer",
}
_WIDE_EXTRA = [
    "dataset",
    "protocol",
    "seed",
    "n_images",
    *FAMILY_COLUMNS.values(),
    "gradient_masking",
]
_LONG_TEXT = [
    "model",
    "model_sha256",
    "dataset",
    "preset",
    "robench_version",
    "gradient_masking",
    "perturbation",
    "kind",
    "family",
    "parameter",
]


@dataclass(frozen=True)
class LoadProblem:
    """A result file that was skipped, and why (one sentence, without the path)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class LoadedResult:
    """A result file that will be shown: where it lies, its record, and notes for its page."""

    path: Path
    record: Record
    notes: tuple[str, ...] = ()


@dataclass
class Leaderboard:
    """What :func:`build_leaderboard` wrote.

    Args:
        out: the site folder.
        index: its ``index.html``.
        records: the result records shown, in table order.
        sources: the file each record came from.
        problems: the files that were skipped.
        files: every other file written, by role (``wide_csv``, ``heatmap_png``, ...).
    """

    out: Path
    index: Path
    records: list[Record]
    sources: list[Path]
    problems: list[LoadProblem]
    files: dict[str, Path] = field(default_factory=dict)


def find_result_files(
    paths: Iterable[str | os.PathLike[str]], *, exclude: Path | None = None
) -> list[Path]:
    """Every ``*.json`` under the given folders (recursively) plus the given files, sorted.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    found: list[Path] = []
    skip = None if exclude is None else exclude.resolve()
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += [
                f
                for f in sorted(p.rglob("*.json"))
                if skip is None or skip not in f.resolve().parents
            ]
        else:
            raise FileNotFoundError(f"result folder or file not found: {p}")
    return list(dict.fromkeys(found))


def _identity(rec: Record) -> str:
    return json.dumps([rec.run_key.to_dict(), rec.model.id], sort_keys=True)


def load_results(files: Sequence[Path]) -> tuple[list[LoadedResult], list[LoadProblem]]:
    """Read, validate and de-duplicate result files; the bad ones become :class:`LoadProblem`.

    Two files of the same run (same run key and model name) keep the one with more finished
    perturbations (then the newer); the other is reported as a duplicate.
    """
    good: dict[str, LoadedResult] = {}
    problems: list[LoadProblem] = []
    for path in files:
        try:
            rec = read_record(path)
        except (ResultError, FileNotFoundError) as exc:
            msg = str(exc)
            problems.append(
                LoadProblem(
                    path, msg[len(str(path)) :].lstrip(" :") if msg.startswith(str(path)) else msg
                )
            )
            log.warning("skipping %s", problems[-1])
            continue
        item = _complete(path, rec)
        key = _identity(rec)
        if key in good:
            old = good[key]
            keep, drop = (item, old) if _rank(rec) > _rank(old.record) else (old, item)
            good[key] = keep
            problems.append(
                LoadProblem(
                    drop.path, f"duplicates {keep.path} (same run); kept the more complete one"
                )
            )
        else:
            good[key] = item
    return list(good.values()), problems


def _rank(rec: Record) -> tuple[int, str]:
    return len(rec.done()), rec.updated


def _complete(path: Path, rec: Record) -> LoadedResult:
    """An interrupted run has counts but no R: derive R from the counts (no baseline markers)."""
    if rec.summary is not None and all(e.scores is not None for e in rec.done().values()):
        return LoadedResult(path, rec)
    return LoadedResult(
        path,
        score_record(rec, None, list(rec.perturbations)),
        ("this run did not finish: R was derived from its counts, without baseline markers",),
    )


def _order(items: list[LoadedResult]) -> list[LoadedResult]:
    """Table order: dataset, then clean accuracy (best first), then name."""

    def key(it: LoadedResult) -> tuple[str, float, str]:
        clean = it.record.clean
        return it.record.dataset.name, -(clean.accuracy if clean else 0.0), it.record.model.id

    return sorted(items, key=key)


def leaderboard_tables(records: Sequence[Record]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The wide table and the long table.

    The wide one is Laugros et al.'s Table 1 (model, Clean, 24 R columns), then the run's facts.
    """
    from robench.report.tables import masking_flags, protocol, safe_text

    wide = wide_table(records)
    wide["dataset"] = [safe_text(r.dataset.name) for r in records]
    wide["protocol"] = [safe_text(protocol(r)) for r in records]
    wide["seed"] = [int(r.config.seed) for r in records]
    wide["n_images"] = [int(r.dataset.n_images) for r in records]
    for group, col in FAMILY_COLUMNS.items():
        wide[col] = [_mean_r(r).get(group, np.nan) for r in records]
    wide["gradient_masking"] = [safe_text(masking_flags(r)) for r in records]
    long = long_table(records)
    if len(long):
        long[[c for c in _LONG_TEXT if c in long]] = (
            long[[c for c in _LONG_TEXT if c in long]].fillna("").astype(str)
        )
    return wide.astype({c: float for c in FAMILY_COLUMNS.values()}), long


def _mean_r(rec: Record) -> dict[str, float]:
    return {} if rec.summary is None else dict(rec.summary.mean_R)


def read_wide_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the wide CSV back with the types it was written with (R cells stay text: ``0.83+``)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in ("seed", "n_images"):
        df[c] = df[c].astype(int)
    for c in FAMILY_COLUMNS.values():
        df[c] = pd.to_numeric(df[c].replace("", np.nan))
    return df


def read_long_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the long CSV back: text columns as text (empty stays ``""``), numbers as numbers."""
    df = pd.read_csv(
        path,
        dtype={c: str for c in _LONG_TEXT},
        keep_default_na=False,
        na_values={"R": [""], "accuracy": [""]},
    )
    return df


def build_leaderboard(
    result_paths: Sequence[str | os.PathLike[str]] = (DEFAULT_RESULTS,),
    out: str | os.PathLike[str] = DEFAULT_SITE,
    *,
    plots: bool = True,
    examples: bool = True,
    attack_examples: bool = True,
) -> Leaderboard:
    """Build the static leaderboard site from result files.

    Args:
        result_paths: folders searched recursively for ``*.json`` results, or result files.
        out: the site folder (index.html, models/, plots/, CSVs); never read as input.
        plots: write the PNG plots (heatmap, severity curves, clean vs mean R, per-model plots).
        examples: write example images (the evaluated images under each corruption, and the
            gallery).
        attack_examples: also craft adversarial examples, for results whose robench checkpoint is
            found with the hash the result states (zoo entries, or files at the recorded path).

    Returns:
        A :class:`Leaderboard` listing what was written and which files were skipped.

    Raises:
        FileNotFoundError: a result path that does not exist.
        ValueError: no ``*.json`` file at all under the given paths.
    """
    out = Path(out)
    files = find_result_files(result_paths, exclude=out)
    if not files:
        raise ValueError(
            f"no result files (*.json) under {', '.join(str(p) for p in result_paths)}"
        )
    loaded, problems = load_results(files)
    items = _order(loaded)
    records = [it.record for it in items]
    pages = _site.page_names(records)
    files_written = _write_tables(records, out)
    if plots:
        files_written |= _write_site_plots(records, pages, out)
    shots: dict[str, dict[str, object]] = {}
    images: set[Path] = set()
    if examples:
        from robench.report.leaderboard.examples import ExampleWriter

        writer = ExampleWriter(out, attacks=attack_examples)
        shots = {page: writer.tiles(rec, page) for rec, page in zip(records, pages, strict=True)}
        files_written |= writer.gallery(records)
        images = writer.written
    env = _site.environment()
    for it, page in zip(items, pages, strict=True):
        html = _site.render_model(
            env,
            it.record,
            page=page,
            source=it.path,
            source_sha256=sha256_file(it.path),
            notes=it.notes,
            records=records,
            pages=pages,
            plots=files_written,
            examples=shots.get(page),
        )
        files_written[f"{page}:html"] = atomic_write_text(out / "models" / f"{page}.html", html)
    gallery = _site.render_gallery(env, records, plots=files_written)
    files_written["gallery_html"] = atomic_write_text(out / "gallery.html", gallery)
    files_written["css"] = atomic_write_text(out / "style.css", _site.render_css(env))
    index = atomic_write_text(
        out / "index.html",
        _site.render_index(
            env, records, pages=pages, problems=problems, plots=files_written, out=out
        ),
    )
    _prune(out, {index, *files_written.values(), *images})
    return Leaderboard(out, index, records, [it.path for it in items], problems, files_written)


def _prune(out: Path, written: set[Path]) -> None:
    """Delete what the previous build wrote and this one did not (per its manifest); only that."""
    manifest = out / MANIFEST
    now = sorted(Path(os.path.relpath(p, out)).as_posix() for p in written)
    if manifest.is_file():
        root = out.resolve()
        for rel in set(manifest.read_text(encoding="utf-8").split()) - set(now):
            old = (out / rel).resolve()
            if (
                root in old.parents
                and old.is_file()
                and old.suffix in {".html", ".png", ".csv", ".css"}
            ):
                old.unlink()
    atomic_write_text(manifest, "\n".join(now) + "\n")


def _write_tables(records: Sequence[Record], out: Path) -> dict[str, Path]:
    wide, long = leaderboard_tables(records)
    return {
        "wide_csv": atomic_write_text(out / "results.csv", wide.to_csv(index=False)),
        "long_csv": atomic_write_text(out / "results-long.csv", long.to_csv(index=False)),
    }


def _write_site_plots(
    records: Sequence[Record], pages: Sequence[str], out: Path
) -> dict[str, Path]:
    from robench.report import Report
    from robench.report.leaderboard.plots import clean_vs_mean_r, r_heatmap
    from robench.report.plots import curve_rows, severity_curves

    labels = _site.labels(records)
    long = (
        pd.concat(
            [long_table([r]).assign(model=lab) for r, lab in zip(records, labels, strict=True)],
            ignore_index=True,
        )
        if records
        else pd.DataFrame()
    )
    written: dict[str, Path] = {}
    if records:
        plots = out / "plots"
        written["heatmap_png"] = atomic_write_bytes(
            plots / "heatmap.png", figure_png(r_heatmap(records, labels))
        )
        written["clean_vs_r_png"] = atomic_write_bytes(
            plots / "clean_vs_R.png", figure_png(clean_vs_mean_r(records, labels))
        )
    if len(curve_rows(long)):
        written["severity_png"] = atomic_write_bytes(
            out / "plots" / "severity.png", figure_png(severity_curves(long))
        )
    for rec, page in zip(records, pages, strict=True):
        rep = Report(rec)
        own = _with_baseline_curves(rec, records)
        if len(curve_rows(own)):
            png = figure_png(severity_curves(own))
            written[f"{page}:severity"] = atomic_write_bytes(
                out / "models" / f"{page}-severity.png", png
            )
        if len(rep.r_frame()):
            written[f"{page}:R"] = atomic_write_bytes(
                out / "models" / f"{page}-R.png", figure_png(rep.plot("R"))
            )
    return written


def _with_baseline_curves(rec: Record, records: Sequence[Record]) -> pd.DataFrame:
    """The model's long table, plus its baseline's curves when that result is on the board too."""
    own = long_table([rec])
    base = _site.find_baseline(rec, records)
    if base is None:
        return own
    other = long_table([base])
    other["model"] = "baseline: " + other["model"].astype(str)
    return pd.concat([own, other], ignore_index=True)
