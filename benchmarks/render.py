"""``robench render`` time: a CIFAR-10-C-shaped output, robench's engine vs imagecorruptions.

Both engines write the same files through :func:`robench.evaluation.render.render`: the
CIFAR-10-C layout (``<corruption>.npy`` uint8 5N x S x S x 3 + ``labels.npy``) of the 15 ImageNet-C
corruptions x 5 severities, for the same images (the seeded subset ``evaluate --n-images N``
picks) and the same per-image seeds. The reference goes through ``engine="imagecorruptions"`` (the
authors' ``corrupt()`` image by image, one process, CPU). Both use the ImageNet parameters, the only
table imagecorruptions implements, at both sides. The time is the whole call: reading the clean
images, corrupting, quantising, writing the memory-mapped files, renaming them.

Images: ``shapes`` (32 px) and ``shapes-224`` (224 px), loaded before the clock starts; each
engine first renders one image untimed (imports, textures); the two engines run back to back in
one process, so the ratio compares them under the same load.

Usage:
    python benchmarks/render.py                          # 200 images at 32 px, 20 at 224 px
    python benchmarks/render.py --n32 1000 --n224 50 --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from robench.data import load_dataset
from robench.evaluation.render import RenderResult, render
from robench.perturbations import IMAGENET_C

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions  # noqa: E402  (one description of the machine for every benchmark)

HERE = Path(__file__).resolve().parent
DATASETS = {32: "shapes", 224: "shapes-224"}


def run(side: int, n: int, engine: str, device: str, folder: Path) -> dict[str, Any]:
    """Render the 15 corruptions x 5 severities of ``n`` images; seconds and what was written."""
    ds = load_dataset(DATASETS[side])  # generated (and cached) before the clock starts

    def once(out: Path, n_images: int) -> RenderResult:
        return render(
            ds,
            "cifar10-c",
            out,
            perturbations=IMAGENET_C,
            n_images=n_images,
            seed=0,
            batch_size=100 if side == 32 else 10,
            device=device if engine == "torch" else "cpu",
            engine=engine,
            preset="imagenet",
        )

    once(folder / f"warm-{side}-{engine}", 1)  # untimed: imports, frost textures, allocators
    out = folder / f"{side}-{engine}"
    t0 = time.perf_counter()
    res = once(out, n)
    seconds = time.perf_counter() - t0
    shapes = {
        name: list(np.load(out / "CIFAR-10-C" / f"{name}.npy", mmap_mode="r").shape)
        for name in IMAGENET_C
    }
    return {
        "side": side,
        "engine": engine,
        "n_images": n,
        "images_written": n * len(IMAGENET_C) * 5,
        "files": res.written,
        "seconds": seconds,
        "images_per_s": n * len(IMAGENET_C) * 5 / seconds,
        "npy_shape": next(iter(shapes.values())),
        "same_shape_for_all": len({tuple(s) for s in shapes.values()}) == 1,
    }


def markdown(result: dict[str, Any]) -> str:
    """The results page."""
    m, rows = result["machine"], result["rows"]
    load0, load1 = result["load_average_start"], result["load_average_end"]
    v = ", ".join(f"{k} {val}" for k, val in result["versions"].items())
    lines = [
        "# `robench render`: CIFAR-10-C-shaped output, robench vs imagecorruptions "
        f"({result['date']})",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} vCPU, {m['memory_mib']} MiB, torch threads "
        f"{m['torch_threads']}, GPU {m['gpu'] or 'none'}. **A shared VM**: other people's jobs ran "
        f"during the measurement (load average 1/5/15 min at start "
        f"{' / '.join(f'{x:.2f}' for x in load0)}, at end {' / '.join(f'{x:.2f}' for x in load1)});"
        " both engines ran back to back in one process, so their ratio is fairer than either time.",
        f"- Versions: {v}",
        f"- Command: `{result['command']}`",
        "- Output per engine and side: `CIFAR-10-C/<corruption>.npy` (uint8 5N x S x S x 3) for "
        "the 15 ImageNet-C corruptions + `labels.npy` (+ the CIFAR test batch at 32 px), written "
        "by `robench.evaluation.render.render`; ImageNet parameters for both engines (the only "
        "ones imagecorruptions has); the same images and per-image seeds. One timed run each (the "
        "reference at 224 px takes minutes) after an untimed one-image render per engine.",
        "",
        "| side | images | corrupted images written | robench (torch) | imagecorruptions "
        "| robench img/s | imagecorruptions img/s | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side in sorted({r["side"] for r in rows}):
        t = next(r for r in rows if r["side"] == side and r["engine"] == "torch")
        ref = next(r for r in rows if r["side"] == side and r["engine"] == "imagecorruptions")
        lines.append(
            f"| {side} | {t['n_images']} | {t['images_written']:,} | {t['seconds']:.1f} s "
            f"| {ref['seconds']:.1f} s | {t['images_per_s']:,.0f} | {ref['images_per_s']:,.1f} "
            f"| {ref['seconds'] / t['seconds']:.1f}x |"
        )
    full = next(r for r in rows if r["side"] == 32 and r["engine"] == "torch")
    if max(load0[0], load1[0]) > m["cores"]:
        lines += [
            "",
            f"The machine was oversubscribed (load above its {m['cores']} vCPUs): the absolute "
            "times are several times an idle machine's. robench's kernels use every torch thread "
            "and imagecorruptions one, so contention costs robench more and the speed-up is "
            "probably understated; `corruptions-2026-12-06.md` (measured at load ~1) has the "
            "per-corruption rates.",
        ]
    lines += [
        "",
        f"At this rate a full CIFAR-10-C-sized render (10,000 images x 15 x 5 = 750,000 images at "
        f"32 px) takes about {750_000 / full['images_per_s'] / 60:.0f} min with robench on this "
        "machine. imagecorruptions' time is dominated by glass_blur (its per-pixel Python loop) "
        "and zoom_blur; see `corruptions-*.md` for the per-corruption rates.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure and write ``results/render-<date>.md`` and ``.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n32", type=int, default=200, help="images at 32 px")
    ap.add_argument("--n224", type=int, default=20, help="images at 224 px")
    ap.add_argument("--device", default="cpu", help="where robench's engine runs")
    ap.add_argument("--date", default=dt.date.today().isoformat())
    args = ap.parse_args(argv)
    import os

    load0 = list(os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory(prefix="robench-render-bench-") as tmp:
        for side, n in ((32, args.n32), (224, args.n224)):
            for engine in ("torch", "imagecorruptions"):
                row = run(side, n, engine, args.device, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "date": args.date,
        "command": "python benchmarks/render.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "load_average_start": load0,
        "load_average_end": list(os.getloadavg()),
        "rows": rows,
    }
    out = HERE / "results" / f"render-{args.date}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out}.md and .json")


if __name__ == "__main__":
    main()
