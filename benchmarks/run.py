"""Run the benchmark suite and write one dated results file (machine, versions, device, commands).

Sections: (1) corruption throughput vs imagecorruptions, (2) attacks vs their compute floor and vs
Foolbox / torchattacks, (3) ``robench evaluate zoo:standard`` end to end, (4) training images/s per
defense, (5) 1 vs 2 processes. Targets are checked and every miss is stated with its factor and its
cause. Results: ``benchmarks/results/suite-<date>[-quick].md`` and ``.json``.

    python benchmarks/run.py                 # everything (about 15 minutes on an idle 2-core VM)
    python benchmarks/run.py --quick         # a smoke test of every section (a few minutes)
    python benchmarks/run.py --only attacks end_to_end
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SECTIONS = ("corruptions", "attacks", "end_to_end", "training", "scaling")
TITLES = {
    "corruptions": "1. Corruption throughput: robench torch engine vs imagecorruptions",
    "attacks": "2. Attacks: time vs compute floor, and vs Foolbox / torchattacks called directly",
    "end_to_end": "3. End to end: `robench evaluate zoo:standard` (the README's first command)",
    "training": "4. Training throughput per defense",
    "scaling": "5. Distributed scaling on the CPU: 1 vs 2 processes",
}


def _corruptions(quick: bool) -> dict[str, Any]:
    import corruptions as c

    args = c.parse_args(["--quick"] if quick else [])
    from robench import perturbations

    registered = set(perturbations.names(kind="corruption"))
    names = [n for n in c.REFERENCE_NAMES if n in registered]
    meta = c._meta(args, ["--quick"] if quick else [])
    rows = c.run_all(args, names, ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    table = c.markdown(rows, meta).split("\n", 2)[2]  # without its title: the suite has one
    return {"table": table, "rows": [{**vars(r), "ratio": r.ratio} for r in rows]}


def _section(
    name: str, quick: bool, device: str
) -> tuple[dict[str, Any], str, list[_common.Target]]:
    if name == "corruptions":
        data = _corruptions(quick)
        return data, data["table"], []
    if name == "attacks":
        import attacks as m

        data = m.run(quick, device)
        return data, m.markdown(data), m.targets(data)
    if name == "end_to_end":
        import end_to_end as m

        data = m.run(quick)
        return data, m.markdown(data), m.targets(data)
    if name == "training":
        import training as m

        data = m.run(quick, device)
        return data, m.markdown(data), []
    import scaling as m

    data = m.run(quick)
    return data, m.markdown(data), []


def _header(meta: dict[str, Any]) -> list[str]:
    mach = meta["machine"]
    load = " / ".join(f"{v:.2f}" for v in mach["load_average"] or [])
    return [
        f"# robench benchmark suite ({meta['date']}{', quick' if meta['quick'] else ''})",
        "",
        f"- Command: `{meta['command']}` (total {meta['total_s'] / 60:.1f} min)",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_mib']} MiB, "
        f"torch threads {mach['torch_threads']}, "
        f"GPU: {mach['gpu'] or 'none'}; load average (1/5/15 min) at start {load}",
        f"- Device: {meta['device']}; {mach['platform']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "- Timings depend on the machine's load: compare runs taken under the same conditions.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, one repetition: a smoke test"
    )
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--out", type=Path, default=_common.HERE / "results")
    args = ap.parse_args(argv)
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    meta: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "quick": args.quick,
        "device": device,
        "command": " ".join(
            ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": _common.machine(),
        "versions": _common.versions(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "ROBENCH_CACHE") if k in os.environ},
    }
    t0, body, results, all_targets = time.perf_counter(), [], {}, []
    for name in args.only:
        print(f"== {TITLES[name]}", flush=True)
        t = time.perf_counter()
        data, table, targets = _section(name, args.quick, device)
        results[name] = {
            "data": data,
            "seconds": time.perf_counter() - t,
            "targets": [vars(x) | {"met": x.met} for x in targets],
        }
        all_targets += targets
        body += [f"## {TITLES[name]}", "", table, "", *(x.line() for x in targets), ""]
    meta["total_s"] = time.perf_counter() - t0
    summary = ["## Targets", "", *(x.line() for x in all_targets), ""] if all_targets else []
    text = "\n".join(_header(meta) + summary + body)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"suite-{meta['date']}{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps({**meta, "sections": results}, indent=1, default=str) + "\n"
    )
    print(text)
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
