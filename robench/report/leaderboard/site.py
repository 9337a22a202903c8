"""View models and HTML rendering of the leaderboard site (jinja2, autoescape on every template).

Numbers are formatted here; the templates only loop. No value from a result file ever reaches the
page unescaped, a URL, or a file name (pages are named by :func:`page_names`, a sanitised slug).
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib import colormaps
from matplotlib.colors import to_hex

from robench import perturbations as P
from robench._io import safe_slug
from robench._version import __version__
from robench.evaluation.record import PerturbationResult, Record
from robench.perturbations._base import PERTURBATIONS
from robench.report.leaderboard.plots import GROUP_TITLES
from robench.report.tables import SHORT_NAMES, TABLE1_COLUMNS, masking_flags, protocol
from robench.scores import FAMILY_GROUPS

GROUPS = tuple(GROUP_TITLES)
_N_BUCKETS = 11  # R in [0, 0.1), ..., [0.9, 1.0), >= 1.0


def environment() -> Environment:
    """The template environment: autoescaped for every template name (``.j2`` included)."""
    return Environment(
        loader=PackageLoader("robench", "report/templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page_names(records: Sequence[Record]) -> list[str]:
    """A distinct, file-name-safe page name per record (slug of the model and dataset + a hash)."""
    names = []
    for r in records:
        ident = json.dumps([r.model.id, r.run_key.to_dict()], sort_keys=True)
        names.append(safe_slug(f"{r.model.id} {r.dataset.name}") + "-" + safe_slug(ident)[-8:])
    return names


def labels(records: Sequence[Record]) -> list[str]:
    """Display labels, distinct: the model name, plus dataset / protocol / seed where needed."""
    many_ds = len({r.dataset.name for r in records}) > 1
    out = [f"{r.model.id} [{r.dataset.name}]" if many_ds else r.model.id for r in records]
    protocols = [protocol(r) for r in records]
    under: dict[str, set[str]] = {}  # label -> the protocols it was run under
    for lab, proto in zip(out, protocols, strict=True):
        under.setdefault(lab, set()).add(proto)
    out = [  # the same model under another protocol: say which
        f"{lab} ({proto})" if len(under[lab]) > 1 else lab
        for lab, proto in zip(out, protocols, strict=True)
    ]
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            r = records[i]
            out[i] = f"{lab} (seed {r.config.seed}, n={r.dataset.n_images}, #{seen[lab]})"
    return out


def find_baseline(rec: Record, records: Sequence[Record]) -> Record | None:
    """The baseline's own result on the same images and protocol, when it is on the board.

    The baseline is attacked through its own gradients (``attack_on`` is not compared), but its
    images are made as the model's: the same preset, image size and storage step.
    """
    base = rec.baseline
    if base is None or not base.sha256:
        return None

    def images(r: Record) -> tuple[Any, ...]:
        k = r.run_key
        return k.dataset, k.seed, k.n_images, k.preset, k.image_size, k.as_released

    for other in records:
        if (
            other is not rec
            and other.model.sha256 == base.sha256
            and images(other) == images(rec)
            and other.run_key.attack_on == "model"
        ):
            return other
    return None


def bucket_colours() -> list[str]:
    """Background colour per R bucket: light red (0) through light yellow to light green (>= 1)."""
    cmap = colormaps["RdYlGn"]
    out = []
    for i in range(_N_BUCKETS):
        r, g, b, _ = cmap(0.05 + 0.9 * i / (_N_BUCKETS - 1))
        out.append(to_hex((0.45 * r + 0.55, 0.45 * g + 0.55, 0.45 * b + 0.55)))
    return out


def _group(name: str, records: Sequence[Record]) -> str:
    if name in PERTURBATIONS:
        fam = P.get(name).family
    else:
        fam = next((r.perturbations[name].family for r in records if name in r.perturbations), "")
    return FAMILY_GROUPS.get(fam, "other")


def columns(records: Sequence[Record]) -> list[dict[str, str]]:
    """The 24 Table 1 columns in order, then any other perturbation a result has."""
    names = list(TABLE1_COLUMNS)
    names += list(dict.fromkeys(n for r in records for n in r.perturbations if n not in names))
    return [
        {
            "key": n,
            "short": SHORT_NAMES.get(n, n if len(n) <= 8 else n[:7] + "\u2026"),
            "group": _group(n, records),
        }
        for n in names
    ]


def _f(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else format(float(v), fmt)


def r_cell(entry: PerturbationResult | None) -> dict[str, Any]:
    """One R cell of the index: text, marker, significance, colour bucket, sort key, tooltip."""
    if entry is None:
        return {"text": "", "cls": "na", "sort": "", "title": "not evaluated"}
    if not entry.done:
        return {
            "text": "skip",
            "cls": "na",
            "sort": "",
            "title": f"skipped: {entry.reason or ''}",
        }
    s = entry.scores
    r = None if s is None else s.R
    if s is None or r is None:
        return {"text": "n/a", "cls": "na", "sort": "", "title": "R undefined: clean accuracy is 0"}
    parts = [f"R = {r:.3f}", f"accuracy {_f(s.accuracy)}"]
    if s.baseline_R is not None:
        parts.append(f"baseline R {s.baseline_R:.3f}")
    if s.delta_R is not None and s.delta_R_ci95 is not None:
        lo, hi = s.delta_R_ci95
        parts.append(f"dR = {s.delta_R:+.3f} (95% interval {lo:+.3f} to {hi:+.3f})")
    if s.p_value is not None:
        test = "paired bootstrap" if s.delta_R is not None else "McNemar on accuracy"
        parts.append(f"{test} p = {s.p_value:.3g}" + (" (significant)" if s.significant else ""))
    return {
        "text": f"{r:.2f}",
        "marker": s.marker,
        "sig": s.significant is True,
        "cls": f"b{min(_N_BUCKETS - 1, max(0, int(r * 10)))}",
        "sort": f"{r:.6f}",
        "title": "; ".join(parts),
    }


def clean_cell(rec: Record) -> dict[str, Any]:
    """The clean-accuracy cell: value, marker vs the baseline, interval in the tooltip."""
    c = rec.clean
    if c is None:
        raise ValueError(f"the record of {rec.model.id!r} has no clean accuracy yet")
    lo, hi = c.ci95
    title = (
        f"clean accuracy {c.accuracy:.3f} ({c.n_correct} of {c.n}; 95% interval {lo:.3f}-{hi:.3f})"
    )
    p = None if c.comparison is None else c.comparison.p_value
    if c.comparison is not None:
        title += f"; baseline {c.comparison.baseline_accuracy:.3f}"
    if p is not None:
        title += f"; McNemar p = {p:.3g}"
    near_chance = c.accuracy < 2.0 / max(int(rec.dataset.num_classes), 1)
    if near_chance:
        title += (
            "; below twice chance level: a model that guesses keeps R near 1, so R says little here"
        )
    return {
        "text": f"{c.accuracy:.3f}",  # the clean marker is set to 0.1 percentage point
        "marker": c.marker,
        "sig": p is not None and p < 0.05,
        "sort": f"{c.accuracy:.6f}",
        "title": title,
        "ci": f"{lo:.2f}-{hi:.2f}",
        "near_chance": near_chance,
    }


def model_facts(rec: Record) -> dict[str, str]:
    """Architecture and defense for the filters (from the checkpoint meta or model card)."""
    meta, card = rec.model.meta or {}, rec.model.card or {}
    arch = meta.get("arch") or card.get("arch") or "unknown"
    defense = card.get("defense") or meta.get("defense") or "unknown"
    return {"arch": str(arch), "defense": str(defense)}


def masking_view(rec: Record) -> dict[str, Any]:
    """Gradient-masking status: ``flagged`` (with reasons), ``passed``, or ``not run``."""
    checks = rec.gradient_masking or ()
    failed = [c for c in checks if c.passed is False]
    ran = [c for c in checks if c.passed is not None]
    status = "flagged" if failed else "passed" if ran else "not run"
    rows = [
        {
            "name": c.name,
            "result": {True: "passed", False: "FLAGGED", None: "not run"}[c.passed],
            "detail": c.detail,
        }
        for c in checks
    ]
    return {
        "status": status,
        "failed": failed,
        "n_ran": len(ran),
        "n": len(checks),
        "rows": rows,
        "text": masking_flags(rec),
    }


def _mean_r(rec: Record) -> Mapping[str, float]:
    return {} if rec.summary is None else rec.summary.mean_R


def index_rows(records: Sequence[Record], pages: Sequence[str]) -> list[dict[str, Any]]:
    """One row per result for the index table."""
    cols = columns(records)
    out = []
    for rec, page, lab in zip(records, pages, labels(records), strict=True):
        fam = _mean_r(rec)
        out.append(
            {
                "page": page,
                "label": lab,
                "model": rec.model.id,
                "dataset": rec.dataset.name,
                "protocol": protocol(rec),
                "n_images": rec.dataset.n_images,
                "seed": rec.config.seed,
                "baseline": None if rec.baseline is None else rec.baseline.id,
                "clean": clean_cell(rec),
                "cells": [r_cell(rec.perturbations.get(c["key"])) for c in cols],
                "fam": [
                    {
                        "text": _f(fam.get(g), ".2f") if g in fam else "",
                        "sort": _f(fam.get(g), ".6f") if g in fam else "",
                    }
                    for g in GROUPS
                ],
                "masking": masking_view(rec),
                **model_facts(rec),
            }
        )
    return out


def _options(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({str(r[key]) for r in rows})


def _rel(path: Path | None, start: Path) -> str | None:
    return None if path is None else Path(os.path.relpath(path, start)).as_posix()


def render_index(
    env: Environment,
    records: Sequence[Record],
    *,
    pages: Sequence[str],
    problems: Sequence[Any],
    plots: Mapping[str, Path],
    out: Path,
) -> str:
    """The index page: the sortable, filterable table, the legend, the plots, skipped files."""
    rows = index_rows(records, pages)
    groups = [{"key": g, "title": t} for g, t in GROUP_TITLES.items()]
    figs = [
        (k, t)
        for k, t in (
            ("heatmap_png", "R per model and perturbation"),
            ("clean_vs_r_png", "Clean accuracy vs mean R"),
            ("severity_png", "Accuracy vs severity per corruption, vs eps per attack sweep"),
        )
        if k in plots
    ]
    return env.get_template("index.html.j2").render(
        rows=rows,
        columns=columns(records),
        groups=groups,
        version=__version__,
        filters=[
            ("dataset", "Dataset", _options(rows, "dataset")),
            ("protocol", "Protocol", _options(rows, "protocol")),
            ("arch", "Architecture", _options(rows, "arch")),
            ("defense", "Defense", _options(rows, "defense")),
        ],
        problems=[{"name": p.path.name, "path": str(p.path), "reason": p.reason} for p in problems],
        figures=[{"src": _rel(plots[k], out), "title": t} for k, t in figs],
        csv={"wide": "results.csv", "long": "results-long.csv"},
        bucket_colours=bucket_colours(),
    )


def _pert_rows(rec: Record, records: Sequence[Record]) -> list[dict[str, Any]]:
    rows = []
    for c in columns(records):
        e = rec.perturbations.get(c["key"])
        if e is None:
            continue
        sevs, s = e.severities, e.scores
        rows.append(
            {
                "name": c["key"],
                "group": c["group"],
                "family": e.family,
                "status": e.status,
                "reason": e.reason or "",
                "cell": r_cell(e),
                "sev": [
                    {
                        "text": f"{v.accuracy:.3f}",
                        "title": f"{v.parameter or ''}; {v.n_correct} of {v.n}; "
                        f"95% interval {v.ci95[0]:.3f}-{v.ci95[1]:.3f}",
                    }
                    for v in sevs
                ],
                "params": (sevs[0].parameter or "") if len(sevs) == 1 else "",
                "accuracy": _f(None if s is None else s.accuracy),
                "baseline_R": _f(None if s is None else s.baseline_R),
                "p": "" if s is None or s.p_value is None else f"{s.p_value:.3g}",
                "seconds": e.seconds,
            }
        )
    return rows


def _flat(d: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Key/value pairs for a definition list; nested values as compact JSON text."""
    if not d:
        return []
    return [
        (str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False))
        for k, v in d.items()
    ]


def eval_command(rec: Record) -> str:
    """The ``robench evaluate`` command equivalent to the recorded configuration."""
    cfg = rec.config
    parts = [
        "robench",
        "evaluate",
        rec.model.source,
        "--dataset",
        rec.dataset.name,
        "--suite",
        str(cfg.suite),
        "--seed",
        str(cfg.seed),
    ]
    if rec.dataset.indices is None:
        parts.append("--all-images")
    else:
        parts += ["--n-images", str(rec.dataset.n_images)]
    suite = set(P.suites().get(str(cfg.suite), ()))
    done = list(rec.perturbations)
    if set(done) != suite:
        for n in done:
            parts += ["-p", n]
    parts += ["--baseline", rec.baseline.source if rec.baseline else "none"]
    if cfg.surrogate not in (None, "auto"):
        parts += ["--surrogate", str(cfg.surrogate)]
    return shlex.join(parts)


def _surrogates(rec: Record) -> dict[str, Any]:
    """The surrogates the transfer columns were crafted on, each with the columns it crafted."""
    by: dict[Any, list[str]] = {}
    for k, e in rec.perturbations.items():
        if e.surrogate is not None:
            by.setdefault(e.surrogate, []).append(k)
    return {", ".join(ks): sur for sur, ks in by.items()}


def provenance(rec: Record, source: Path, source_sha256: str) -> list[tuple[str, str]]:
    """Everything needed to trace and rerun the result."""
    m, cfg, ds = rec.model, rec.config, rec.dataset
    meta, card = m.meta or {}, m.card or {}
    rows = [
        ("checkpoint sha256", str(m.sha256)),
        ("model source", m.source),
        ("model format", m.kind),
        ("robench version (evaluation)", rec.robench_version),
        (
            "robench version (training)",
            str(meta.get("robench_version") or card.get("robench_version") or "unknown"),
        ),
        ("evaluation seed", str(cfg.seed)),
        ("image subset seed", str(ds.indices_seed)),
        ("images", f"{ds.n_images} of {ds.size} ({ds.name} test split)"),
        ("training command", str(card.get("command") or "not recorded")),
        (
            "evaluation command (equivalent)",
            eval_command(rec)
            if m.kind != "python"
            else "none: the model was passed to robench.evaluate as a Python object",
        ),
        *(
            (f"transfer surrogate ({k})", f"{sur.source} (sha256 {sur.sha256})")
            for k, sur in _surrogates(rec).items()
        ),
        ("result file", f"{source.name} (sha256 {source_sha256})"),
        ("created / updated", f"{rec.created} / {rec.updated}"),
    ]
    return rows + [(f"environment: {k}", v) for k, v in _flat(rec.environment.to_dict())]


def render_model(
    env: Environment,
    rec: Record,
    *,
    page: str,
    source: Path,
    source_sha256: str,
    records: Sequence[Record],
    pages: Sequence[str],
    plots: Mapping[str, Path],
    examples: Mapping[str, Any] | None,
    notes: Sequence[str] = (),
) -> str:
    """One model's page: key numbers, plots, full results, examples, model card, provenance."""
    base = find_baseline(rec, records)
    s = rec.summary
    mean_r = _mean_r(rec)
    fam = [
        {"title": t, "value": _f(mean_r[g], ".3f") if g in mean_r else "not evaluated"}
        for g, t in GROUP_TITLES.items()
    ]
    vs_base = None if s is None else s.vs_baseline
    figs = [
        (
            f"{page}:R",
            "R per perturbation" + (" against the baseline (black ticks)" if rec.baseline else ""),
        ),
        (
            f"{page}:severity",
            "Accuracy vs severity per corruption, vs eps per attack sweep"
            + (" (with the baseline's curves)" if base else ""),
        ),
    ]
    return env.get_template("model.html.j2").render(
        rec=rec,
        clean=clean_cell(rec),
        families=fam,
        mce={
            "vs baseline": _f(None if vs_base is None else vs_base.mce_vs_baseline),
            "relative, vs baseline": _f(
                None if vs_base is None else vs_base.relative_mce_vs_baseline
            ),
            "vs AlexNet (ImageNet only)": _f(None if s is None else s.mce_vs_alexnet),
        },
        masking=masking_view(rec),
        perts=_pert_rows(rec, records),
        figures=[
            {"src": f"{k.split(':')[0]}-{k.split(':')[1]}.png", "title": t}
            for k, t in figs
            if k in plots
        ],
        examples=examples,
        card=_flat(rec.model.card),
        meta=_flat(rec.model.meta),
        provenance=provenance(rec, source, source_sha256),
        baseline_page=pages[list(records).index(base)] if base is not None else None,
        notes=list(notes),
        version=__version__,
        bucket_colours=bucket_colours(),
        **model_facts(rec),
    )


def render_gallery(
    env: Environment, records: Sequence[Record], *, plots: Mapping[str, Path]
) -> str:
    """The perturbation gallery: each perturbation's description and parameters, and image grids."""
    presets = sorted({r.dataset.preset for r in records}) or ["cifar"]
    rows = []
    for name in columns(records):
        spec = P.get(name["key"]) if name["key"] in PERTURBATIONS else None
        if spec is None:
            continue
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "family": spec.family,
                "description": spec.description,
                "source": spec.source,
                "params": {p: list(spec.parameter_text(p)) for p in presets},
            }
        )
    grids = [
        {"src": f"plots/{p.name}", "title": k.split(":", 1)[1]}
        for k, p in plots.items()
        if k.startswith("gallery:")
    ]
    return env.get_template("gallery.html.j2").render(
        rows=rows, presets=presets, grids=grids, version=__version__
    )


def render_css(env: Environment) -> str:
    """The site's stylesheet (R colour buckets come from the same palette as the heatmap)."""
    return env.get_template("style.css.j2").render(bucket_colours=bucket_colours())
