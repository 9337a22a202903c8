"""View models and HTML rendering of the leaderboard site (jinja2 with autoescape on every template).

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
from robench.report.leaderboard.plots import GROUP_TITLES
from robench.report.tables import SHORT_NAMES, TABLE1_COLUMNS, masking_flags
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


def page_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """A distinct, file-name-safe page name per record (slug of the model and dataset + a hash)."""
    names = []
    for r in records:
        ident = json.dumps([r["model"]["id"], r["run_key"]], sort_keys=True)
        names.append(
            safe_slug(f"{r['model']['id']} {r['dataset']['name']}") + "-" + safe_slug(ident)[-8:]
        )
    return names


def labels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Display labels, distinct: the model name, plus the dataset / seed when they are needed."""
    many_ds = len({r["dataset"]["name"] for r in records}) > 1
    out = [
        f"{r['model']['id']} [{r['dataset']['name']}]" if many_ds else str(r["model"]["id"])
        for r in records
    ]
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            out[i] = (
                f"{lab} (seed {records[i]['config']['seed']}, n={records[i]['dataset']['n_images']}, #{seen[lab]})"
            )
    return out


def find_baseline(
    rec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The baseline's own result on the same images, when it is on the board."""
    base = rec.get("baseline") or {}
    for other in records:
        if (
            other is not rec
            and base.get("sha256")
            and other["model"]["sha256"] == base["sha256"]
            and other["run_key"]["dataset"] == rec["run_key"]["dataset"]
            and other["run_key"]["seed"] == rec["run_key"]["seed"]
            and other["run_key"]["n_images"] == rec["run_key"]["n_images"]
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


def _group(name: str, records: Sequence[Mapping[str, Any]]) -> str:
    if name in P.PERTURBATIONS:
        fam = P.get(name).family
    else:
        fam = next(
            (r["perturbations"][name]["family"] for r in records if name in r["perturbations"]), ""
        )
    return FAMILY_GROUPS.get(fam, "other")


def columns(records: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The 24 Table 1 columns in order, then any other perturbation a result has."""
    names = list(TABLE1_COLUMNS)
    names += list(dict.fromkeys(n for r in records for n in r["perturbations"] if n not in names))
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


def r_cell(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """One R cell of the index table: text, marker, significance, colour bucket, sort key, tooltip."""
    if entry is None:
        return {"text": "", "cls": "na", "sort": "", "title": "not evaluated"}
    if entry["status"] != "done":
        return {
            "text": "skip",
            "cls": "na",
            "sort": "",
            "title": f"skipped: {entry.get('reason', '')}",
        }
    r = entry.get("R")
    if r is None:
        return {"text": "n/a", "cls": "na", "sort": "", "title": "R undefined: clean accuracy is 0"}
    parts = [f"R = {r:.3f}", f"accuracy {_f(entry.get('accuracy'))}"]
    if entry.get("baseline_R") is not None:
        parts.append(f"baseline R {entry['baseline_R']:.3f}")
    if entry.get("p_value") is not None:
        parts.append(
            f"McNemar p = {entry['p_value']:.3g}"
            + (" (significant)" if entry.get("significant") else "")
        )
    return {
        "text": f"{r:.2f}",
        "marker": entry.get("marker") or "",
        "sig": entry.get("significant") is True,
        "cls": f"b{min(_N_BUCKETS - 1, max(0, int(r * 10)))}",
        "sort": f"{r:.6f}",
        "title": "; ".join(parts),
    }


def clean_cell(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The clean-accuracy cell: value, marker vs the baseline, interval in the tooltip."""
    c = rec["clean"]
    lo, hi = c["ci95"]
    title = f"clean accuracy {c['accuracy']:.3f} ({c['n_correct']} of {c['n']}; 95% interval {lo:.3f}-{hi:.3f})"
    if c.get("baseline_accuracy") is not None:
        title += f"; baseline {c['baseline_accuracy']:.3f}"
    if c.get("p_value") is not None:
        title += f"; McNemar p = {c['p_value']:.3g}"
    sig = c.get("p_value") is not None and c["p_value"] < 0.05
    near_chance = c["accuracy"] < 2.0 / max(int(rec["dataset"]["num_classes"]), 1)
    if near_chance:
        title += (
            "; below twice chance level: a model that guesses keeps R near 1, so R says little here"
        )
    return {
        "text": f"{c['accuracy']:.2f}",
        "marker": c.get("marker") or "",
        "sig": sig,
        "sort": f"{c['accuracy']:.6f}",
        "title": title,
        "ci": f"{lo:.2f}-{hi:.2f}",
        "near_chance": near_chance,
    }


def model_facts(rec: Mapping[str, Any]) -> dict[str, str]:
    """Architecture and defense for the filters (from the checkpoint meta or model card)."""
    meta, card = rec["model"].get("meta") or {}, rec["model"].get("card") or {}
    arch = meta.get("arch") or card.get("arch") or "unknown"
    defense = card.get("defense") or meta.get("defense") or "unknown"
    return {"arch": str(arch), "defense": str(defense)}


def masking_view(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Gradient-masking status: ``flagged`` (with reasons), ``passed``, or ``not run``."""
    checks = rec.get("gradient_masking") or []
    failed = [c for c in checks if c.get("passed") is False]
    ran = [c for c in checks if c.get("passed") is not None]
    status = "flagged" if failed else "passed" if ran else "not run"
    rows = [
        {
            "name": str(c.get("name", "")),
            "result": {True: "passed", False: "FLAGGED", None: "not run"}[c.get("passed")],
            "detail": str(c.get("detail", "")),
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


def index_rows(records: Sequence[Mapping[str, Any]], pages: Sequence[str]) -> list[dict[str, Any]]:
    """One row per result for the index table."""
    cols = columns(records)
    out = []
    for rec, page, lab in zip(records, pages, labels(records)):
        fam = rec["summary"].get("mean_R", {})
        out.append(
            {
                "page": page,
                "label": lab,
                "model": rec["model"]["id"],
                "dataset": rec["dataset"]["name"],
                "n_images": rec["dataset"]["n_images"],
                "seed": rec["config"]["seed"],
                "baseline": (rec.get("baseline") or {}).get("id"),
                "clean": clean_cell(rec),
                "cells": [r_cell(rec["perturbations"].get(c["key"])) for c in cols],
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
    records: Sequence[Mapping[str, Any]],
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
            ("severity_png", "Accuracy vs severity per corruption"),
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
            ("arch", "Architecture", _options(rows, "arch")),
            ("defense", "Defense", _options(rows, "defense")),
        ],
        problems=[{"name": p.path.name, "path": str(p.path), "reason": p.reason} for p in problems],
        figures=[{"src": _rel(plots[k], out), "title": t} for k, t in figs],
        csv={"wide": "results.csv", "long": "results-long.csv"},
        bucket_colours=bucket_colours(),
    )


def _pert_rows(
    rec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for c in columns(records):
        e = rec["perturbations"].get(c["key"])
        if e is None:
            continue
        sevs = e.get("severities") or []
        rows.append(
            {
                "name": c["key"],
                "group": c["group"],
                "family": e["family"],
                "status": e["status"],
                "reason": e.get("reason", ""),
                "cell": r_cell(e),
                "sev": [
                    {
                        "text": f"{s['accuracy']:.3f}",
                        "title": f"{s.get('parameter', '')}; {s['n_correct']} of {s['n']}; "
                        f"95% interval {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}",
                    }
                    for s in sevs
                ],
                "params": "; ".join(str(s.get("parameter", "")) for s in sevs[:1])
                if len(sevs) == 1
                else "",
                "accuracy": _f(e.get("accuracy")),
                "baseline_R": _f(e.get("baseline_R")),
                "p": "" if e.get("p_value") is None else f"{e['p_value']:.3g}",
                "seconds": e.get("seconds"),
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


def eval_command(rec: Mapping[str, Any]) -> str:
    """The ``robench evaluate`` command equivalent to the recorded configuration."""
    cfg = rec["config"]
    parts = [
        "robench",
        "evaluate",
        str(rec["model"]["source"]),
        "--dataset",
        str(rec["dataset"]["name"]),
        "--suite",
        str(cfg.get("suite", "")),
        "--seed",
        str(cfg.get("seed", "")),
    ]
    if rec["dataset"].get("indices") is None:
        parts.append("--all-images")
    else:
        parts += ["--n-images", str(rec["dataset"]["n_images"])]
    suite = set(P.suites().get(str(cfg.get("suite")), ()))
    done = [n for n in rec["perturbations"]]
    if set(done) != suite:
        for n in done:
            parts += ["-p", n]
    base = rec.get("baseline")
    parts += ["--baseline", str(base["source"]) if base else "none"]
    if cfg.get("surrogate") not in (None, "auto"):
        parts += ["--surrogate", str(cfg["surrogate"])]
    return shlex.join(parts)


def provenance(rec: Mapping[str, Any], source: Path, source_sha256: str) -> list[tuple[str, str]]:
    """Everything needed to trace and rerun the result."""
    m, cfg, card = rec["model"], rec["config"], rec["model"].get("card") or {}
    meta = m.get("meta") or {}
    rows = [
        ("checkpoint sha256", str(m.get("sha256"))),
        ("model source", str(m["source"])),
        ("model format", str(m["kind"])),
        ("robench version (evaluation)", str(rec["robench_version"])),
        (
            "robench version (training)",
            str(meta.get("robench_version") or card.get("robench_version") or "unknown"),
        ),
        ("evaluation seed", str(cfg.get("seed"))),
        ("image subset seed", str(rec["dataset"].get("indices_seed"))),
        (
            "images",
            f"{rec['dataset']['n_images']} of {rec['dataset']['size']} ({rec['dataset']['name']} test split)",
        ),
        ("training command", str(card.get("command") or "not recorded")),
        (
            "evaluation command (equivalent)",
            eval_command(rec)
            if m["kind"] != "python"
            else "none: the model was passed to robench.evaluate as a Python object",
        ),
        ("result file", f"{source.name} (sha256 {source_sha256})"),
        ("created / updated", f"{rec['created']} / {rec['updated']}"),
    ]
    return rows + [(f"environment: {k}", v) for k, v in _flat(rec["environment"])]


def render_model(
    env: Environment,
    rec: Mapping[str, Any],
    *,
    page: str,
    source: Path,
    source_sha256: str,
    records: Sequence[Mapping[str, Any]],
    pages: Sequence[str],
    plots: Mapping[str, Path],
    examples: Mapping[str, Any] | None,
) -> str:
    """One model's page: key numbers, plots, full results, examples, model card, provenance."""
    base = find_baseline(rec, records)
    s = rec["summary"]
    fam = [
        {
            "title": t,
            "value": _f(s.get("mean_R", {}).get(g), ".3f")
            if g in s.get("mean_R", {})
            else "not evaluated",
        }
        for g, t in GROUP_TITLES.items()
    ]
    figs = [
        (
            f"{page}:R",
            "R per perturbation"
            + (" against the baseline (black ticks)" if rec.get("baseline") else ""),
        ),
        (
            f"{page}:severity",
            "Accuracy vs severity per corruption"
            + (" (with the baseline's curves)" if base else ""),
        ),
    ]
    return env.get_template("model.html.j2").render(
        rec=rec,
        clean=clean_cell(rec),
        families=fam,
        mce={
            "vs baseline": _f(s.get("mce_vs_baseline")),
            "relative, vs baseline": _f(s.get("relative_mce_vs_baseline")),
            "vs AlexNet (ImageNet only)": _f(s.get("mce_vs_alexnet")),
        },
        masking=masking_view(rec),
        perts=_pert_rows(rec, records),
        figures=[
            {"src": f"{k.split(':')[0]}-{k.split(':')[1]}.png", "title": t}
            for k, t in figs
            if k in plots
        ],
        examples=examples,
        card=_flat(rec["model"].get("card")),
        meta=_flat(rec["model"].get("meta")),
        provenance=provenance(rec, source, source_sha256),
        baseline_page=pages[list(records).index(base)] if base is not None else None,
        notes=rec.get("_notes", []),
        version=__version__,
        bucket_colours=bucket_colours(),
        **model_facts(rec),
    )


def render_gallery(
    env: Environment, records: Sequence[Mapping[str, Any]], *, plots: Mapping[str, Path]
) -> str:
    """The perturbation gallery: every perturbation's description and parameters, and the image grids."""
    presets = sorted({r["dataset"]["preset"] for r in records}) or ["cifar"]
    rows = []
    for name in columns(records):
        spec = P.get(name["key"]) if name["key"] in P.PERTURBATIONS else None
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
