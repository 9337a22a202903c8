"""Distributed scaling on the CPU: 1 process vs 2 (torchrun, gloo), for evaluation and training.

Three ways to use the machine's cores, each a fresh command (wall time from outside, interpreter
start included): one process with 1 thread, one process with 2 threads (torch's default here), and
``torchrun --nproc-per-node 2`` with 1 thread per process. The results of the 2-process runs equal
the 1-process ones (tests/test_distributed.py); this measures only time.

    python benchmarks/scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, fmt_s  # noqa: E402

EVAL = [
    "evaluate",
    "zoo:standard",
    "-p",
    "gaussian_noise",
    "-p",
    "pgd",
    "--baseline",
    "none",
    "--no-plots",
    "--no-resume",
]
TRAIN = ["train", "--defense", "standard", "--epochs", "1", "--no-resume"]
LAYOUTS = (
    ("1 process x 1 thread", 1, "1"),
    ("1 process x 2 threads", 1, "2"),
    ("2 processes x 1 thread (torchrun)", 2, "1"),
)


def _command(args: list[str], procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "robench", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(procs),
        "-m",
        "robench",
        *args,
    ]


def _time(args: list[str], procs: int, threads: str, cache: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=threads, ROBENCH_CACHE=cache)
    t0 = time.perf_counter()
    res = subprocess.run(_command(args, procs), cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def measure(quick: bool) -> dict[str, Any]:
    """Wall seconds of the evaluation and the training command in each layout."""
    n_eval, n_train = ("100", "512") if quick else ("500", "2048")
    jobs = {
        f"evaluate zoo:standard, gaussian_noise + pgd, {n_eval} images": [
            *EVAL,
            "--n-images",
            n_eval,
        ],
        f"train standard, 1 epoch of {n_train} images, batch 256": [
            *TRAIN,
            "--train-images",
            n_train,
        ],
    }
    rows = []
    cache = os.environ.get(
        "ROBENCH_CACHE", str(Path.home() / ".cache" / "robench")
    )  # data generated once, reused
    with tempfile.TemporaryDirectory() as tmp:
        for job, args in jobs.items():
            for label, procs, threads in LAYOUTS:
                out = Path(tmp) / f"{len(rows)}"
                extra = ["--out", str(out if args[0] == "evaluate" else out / "m.pt")]
                rows.append(
                    {
                        "job": job,
                        "layout": label,
                        "seconds": _time([*args, *extra], procs, threads, cache),
                    }
                )
                print(f"  {job[:40]:40s} {label:34s} {fmt_s(rows[-1]['seconds'])}", flush=True)
    return {"rows": rows, "quick": quick}


def markdown(data: dict[str, Any]) -> str:
    """Wall times and speed-ups over one single-threaded process."""
    lines = ["| job | layout | wall time | speed-up vs 1 x 1 |", "|---|---|---:|---:|"]
    base: dict[str, float] = {}
    for r in data["rows"]:
        base.setdefault(r["job"], r["seconds"])
        lines.append(
            f"| {r['job']} | {r['layout']} | {fmt_s(r['seconds'])} "
            f"| {base[r['job']] / r['seconds']:.2f}x |"
        )
    return "\n".join(lines)


def run(quick: bool) -> dict[str, Any]:
    """The suite's entry point."""
    return measure(quick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    print(markdown(run(ap.parse_args().quick)))


if __name__ == "__main__":
    main()
