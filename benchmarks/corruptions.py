"""Images/s of robench's torch engine vs imagecorruptions, per corruption, on natural images.

Both engines corrupt the same photo crops (scikit-image's bundled sample photographs, resized to
the benchmark side) at every severity, with the ImageNet parameters (the only ones imagecorruptions
implements). The reference goes through ``engine="imagecorruptions"``: the authors' ``corrupt()``
per image, including the float -> uint8 -> float conversions, as in reference doc section 8.

Protocol: a warm-up call per (engine, corruption, side), then ``--runs`` timed runs; each run
cycles severities 1..5 with a fixed number of images per severity (torch: one batch; reference:
a few images, fewer for the slow ones). A run's rate is images / wall seconds over the 5
severities; the table reports the median over runs and the ratio torch / reference.

Usage:
    python benchmarks/corruptions.py                      # 32 and 224 px, CPU (+ CUDA if present)
    python benchmarks/corruptions.py --sizes 32 224 --quick
    python benchmarks/corruptions.py --names glass_blur zoom_blur --runs 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robench import perturbations
from robench.perturbations.reference import REFERENCE_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions  # noqa: E402  (one description of the machine for every benchmark)

HERE = Path(__file__).resolve().parent
SEVERITIES = (1, 2, 3, 4, 5)
TORCH_BATCH = {32: 256, 224: 32}  # images per severity, one batch
REF_IMAGES = {32: 40, 224: 8}  # images per severity for the reference
# the reference's slow ones (about 1 s per image for glass at 224; zoom about 0.15 s)
REF_IMAGES_SLOW = {"glass_blur": {32: 8, 224: 1}, "zoom_blur": {32: 20, 224: 4}}
QUICK_DIVISOR = 4


@dataclass
class Row:
    """One (corruption, side, device) measurement."""

    name: str
    side: int
    device: str
    torch_img_s: list[float] = field(default_factory=list)
    ref_img_s: list[float] = field(default_factory=list)
    torch_images_per_severity: int = 0
    ref_images_per_severity: int = 0

    @property
    def torch_median(self) -> float:
        return statistics.median(self.torch_img_s)

    @property
    def ref_median(self) -> float:
        return statistics.median(self.ref_img_s)

    @property
    def ratio(self) -> float:
        return self.torch_median / self.ref_median


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data as d

    return (
        d.astronaut(),
        d.coffee(),
        d.chelsea(),
        d.rocket(),
        d.hubble_deep_field(),
        d.immunohistochemistry(),
        d.stereo_motorcycle()[0],
        d.retina(),
    )


def photo_batch(n: int, side: int) -> torch.Tensor:
    """``n`` 224 x 224 crops of scikit-image's colour photos, area-resized to ``side`` (k/255)."""
    photos = _photos()
    crops = [(0.5, 0.5), (0, 0), (1, 1), (0, 1), (1, 0), (0.5, 0), (0.5, 1), (0, 0.5), (1, 0.5)]
    out = []
    for k in range(n):
        p = photos[k % len(photos)]
        fy, fx = crops[(k // len(photos)) % len(crops)]
        y0, x0 = int(fy * (p.shape[0] - 224)), int(fx * (p.shape[1] - 224))
        out.append(p[y0 : y0 + 224, x0 : x0 + 224])
    stack = torch.from_numpy(np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)))
    x = stack.to(torch.float32) / 255.0
    if side != 224:
        x = torch.round(F.interpolate(x, size=(side, side), mode="area") * 255.0) / 255.0
    return x


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(run: Callable[[int], Any], n_per_severity: int, device: str) -> float:
    """Images/s of ``run(severity)`` over the five severities."""
    _sync(device)
    t0 = time.perf_counter()
    for s in SEVERITIES:
        run(s)
    _sync(device)
    return len(SEVERITIES) * n_per_severity / (time.perf_counter() - t0)


def measure(name: str, side: int, device: str, *, runs: int, quick: bool, with_ref: bool) -> Row:
    """Warm up, then time ``runs`` runs of each engine for one corruption at one side."""
    spec = perturbations.get(name)
    div = QUICK_DIVISOR if quick else 1
    n_torch = max(1, TORCH_BATCH[side] // div)
    n_ref = max(1, REF_IMAGES_SLOW.get(name, REF_IMAGES)[side] // div)
    x = photo_batch(max(n_torch, n_ref), side)
    xt = x[:n_torch].to(device)
    xr = x[:n_ref]
    row = Row(name, side, device, torch_images_per_severity=n_torch, ref_images_per_severity=n_ref)

    def ours(s: int) -> Any:
        return spec(xt, s, seed=s, preset="imagenet")

    def ref(s: int) -> Any:
        return spec(xr, s, seed=s, preset="imagenet", engine="imagecorruptions")

    ours(1)
    _sync(device)
    if with_ref:
        spec(xr[:1], 1, seed=0, preset="imagenet", engine="imagecorruptions")
    for _ in range(runs):
        row.torch_img_s.append(_rate(ours, n_torch, device))
        if with_ref:
            row.ref_img_s.append(_rate(ref, n_ref, "cpu"))
    return row


def _loads(values: Sequence[float] | None) -> str:
    return "n/a" if values is None else " / ".join(f"{v:.2f}" for v in values)


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def markdown(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The results table (one block per device) with the per-size median ratios."""
    lines = [
        f"# Corruption throughput: robench torch engine vs imagecorruptions ({meta['date']})",
        "",
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores "
        f"(torch threads: {meta['machine']['torch_threads']}), load average (1/5/15 min) at "
        f"start {_loads(meta['machine']['load_average'])}, at end "
        f"{_loads(meta['machine'].get('load_average_at_end'))}"
        + (f"; GPU: {meta['machine']['gpu']}" if meta["machine"].get("gpu") else ""),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Command: `{meta['command']}`",
        (
            "- Images: crops of scikit-image's sample photos, area-resized; ImageNet parameters "
            'at every size. Reference = imagecorruptions 1.1.2 through `engine="imagecorruptions"` '
            "(per image, incl. uint8 conversions, CPU, one process)."
        ),
        f"- Median of {meta['runs']} runs of 5 severities; images/s; ratio = torch / reference.",
        "",
    ]
    for device in sorted({r.device for r in rows}):
        sides = sorted({r.side for r in rows if r.device == device})
        head = ["corruption"] + [
            f"{h} @{s}" for s in sides for h in ("torch", "reference", "ratio")
        ]
        lines += [
            f"## torch engine on {device}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" + "---:|" * (len(head) - 1),
        ]
        names = sorted({r.name for r in rows if r.device == device}, key=_order)
        for name in names:
            cells = [name]
            for s in sides:
                r = next((r for r in rows if (r.name, r.side, r.device) == (name, s, device)), None)
                cells += (
                    ["-"] * 3
                    if r is None
                    else [_fmt_rate(r.torch_median), _fmt_rate(r.ref_median), f"{r.ratio:.1f}x"]
                )
            lines.append("| " + " | ".join(cells) + " |")
        med = ["**median ratio**"]
        for s in sides:
            ratios = [r.ratio for r in rows if r.device == device and r.side == s]
            med += ["", "", f"**{statistics.median(ratios):.1f}x**" if ratios else "-"]
        lines += ["| " + " | ".join(med) + " |", ""]
    lines += [
        "Images per severity: torch "
        + ", ".join(f"{s} px: {n}" for s, n in meta["torch_images_per_severity"].items())
        + "; reference "
        + ", ".join(f"{s} px: {n}" for s, n in meta["ref_images_per_severity"].items())
        + " (fewer for the slow references: "
        + "; ".join(f"{k} {v}" for k, v in meta["ref_images_slow"].items())
        + ").",
        "",
    ]
    return "\n".join(lines)


def _order(name: str) -> int:
    return REFERENCE_NAMES.index(name) if name in REFERENCE_NAMES else len(REFERENCE_NAMES)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], choices=sorted(TORCH_BATCH))
    p.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="corruptions (default: every ImageNet-C name registered in robench)",
    )
    p.add_argument(
        "--devices",
        nargs="+",
        default=None,
        help="torch-engine devices (default: cpu, plus cuda when available)",
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"1/{QUICK_DIVISOR} of the images and a single run (a smoke test)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    return p.parse_args(argv)


def _progress(row: Row) -> str:
    return (
        f"{row.device:5s} {row.side:4d} {row.name:18s} "
        f"torch {_fmt_rate(row.torch_median):>9s} img/s  "
        f"reference {_fmt_rate(row.ref_median):>7s} img/s  {row.ratio:8.1f}x"
    )


def run_all(args: argparse.Namespace, names: Sequence[str], devices: Sequence[str]) -> list[Row]:
    """Measure every (device, side, corruption); the CPU reference once per (side, name)."""
    runs = 1 if args.quick else args.runs
    rows: list[Row] = []
    ref_rates: dict[tuple[str, int], list[float]] = {}
    for device in devices:
        for side in args.sizes:
            for name in names:
                with_ref = (name, side) not in ref_rates
                row = measure(name, side, device, runs=runs, quick=args.quick, with_ref=with_ref)
                row.ref_img_s = ref_rates.setdefault((name, side), row.ref_img_s)
                rows.append(row)
                print(_progress(row), flush=True)
    return rows


def _meta(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    div = QUICK_DIVISOR if args.quick else 1
    return {
        "date": dt.date.today().isoformat(),
        "command": " ".join(
            ["python", "benchmarks/corruptions.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine(),
        "versions": versions(),
        "runs": 1 if args.quick else args.runs,
        "quick": args.quick,
        "torch_images_per_severity": {s: max(1, TORCH_BATCH[s] // div) for s in args.sizes},
        "ref_images_per_severity": {s: max(1, REF_IMAGES[s] // div) for s in args.sizes},
        "ref_images_slow": {
            k: {s: max(1, v[s] // div) for s in args.sizes} for k, v in REF_IMAGES_SLOW.items()
        },
    }


def write_results(out: Path, rows: Sequence[Row], meta: dict[str, Any], table: str) -> Path:
    """Write ``corruptions-<date>[-quick].md`` and ``.json`` under ``out``; return the stem."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"corruptions-{meta['date']}{'-quick' if meta['quick'] else ''}"
    derived = [
        {"torch_median": r.torch_median, "ref_median": r.ref_median, "ratio": r.ratio} for r in rows
    ]
    payload = {**meta, "rows": [{**asdict(r), **d} for r, d in zip(rows, derived, strict=True)]}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    return stem


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and write the results files."""
    args = parse_args(argv)
    registered = set(perturbations.names(kind="corruption"))
    names = args.names or [n for n in REFERENCE_NAMES if n in registered]
    unknown = [n for n in names if n not in registered or n not in REFERENCE_NAMES]
    if unknown:
        print(f"not in both engines: {', '.join(unknown)}", file=sys.stderr)
        return 2
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    meta = _meta(args, argv)  # before the runs: the load average is the one at the start
    rows = run_all(args, names, devices)
    meta["machine"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    table = markdown(rows, meta)
    print(table)
    if not args.no_write:
        stem = write_results(args.out, rows, meta, table)
        print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
