"""Helpers shared by the reliability tests: CLI subprocess runs, record comparison, damage."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from robench.evaluation.record import Record

EVAL_PERTURBATIONS = (
    "gaussian_noise",
    "contrast",
    "impulse_noise",
    "pixelate",
    "glass_blur",
    "zoom_blur",
)
EVAL_ARGS = (
    "--n-images",
    "160",
    "--batch-size",
    "40",
    "--baseline",
    "none",
    "--no-plots",
    "--model-id",
    "tiny",
)
TRAIN_ARGS = (
    "train",
    "--defense",
    "standard",
    "--train-images",
    "512",
    "--batch-size",
    "64",
    "-a",
    "width=8",
    "--epochs",
    "3",
    "--seed",
    "1",
)
RUN_JSON = "tiny__shapes__s0__n160.json"
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


CATEGORIES = {
    "fault": ("kills, torn files, full disks, concurrent writers", "nothing lost", "LOST OR WRONG"),
    "input": (
        "bad tensors, models, datasets, files, names, CLI values",
        "all refused with a clear error",
        "NOT REFUSED CLEANLY",
    ),
    "security": (
        "malicious pickles, TorchScript, export files, injected text, paths",
        "nothing executed, nothing written outside the output folder",
        "BREACHED",
    ),
    "provenance": (
        "mixed settings and versions, baselines, provenance fields",
        "every difference marked or refused",
        "MIXED SILENTLY",
    ),
}


class CaseLedger:
    """Counts of cases tried and failed per category, with the labels of the failures."""

    def __init__(self) -> None:
        self.tried: Counter[str] = Counter()
        self.failed: dict[str, list[str]] = defaultdict(list)
        self.kinds: dict[str, Counter[str]] = defaultdict(Counter)

    def check(
        self, category: str, label: str, ok: bool, detail: str = "", kind: str | None = None
    ) -> None:
        """Record one case and assert it held (the message names the case).

        ``kind`` groups cases in the summary (default: the label up to `` (``, ``:`` or `` into ``).
        """
        if category not in CATEGORIES:
            raise ValueError(f"unknown reliability category {category!r}")
        self.tried[category] += 1
        self.kinds[category][kind or re.split(r" \(|:| into ", label)[0]] += 1
        if not ok:
            tail = " ".join(detail.split())[
                -160:
            ]  # one line in the summary; the assertion keeps it whole
            self.failed[category].append(f"{label} ({tail})" if tail else label)
        assert ok, f"[{category}] {label}: {detail}"

    def summary_lines(self) -> list[str]:
        lines = []
        for cat, (what, good, bad) in CATEGORIES.items():
            n, f = self.tried[cat], len(self.failed[cat])
            verdict = good if f == 0 else f"{f} {bad}"
            lines.append(f"{cat:>8}: {n:5d} cases tried ({what}): {verdict}")
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds[cat].items()))
            if kinds:
                lines.append(f"{'':>10}{kinds}")
            lines += [f"{'':>10}FAILED {label}" for label in self.failed[cat][:20]]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            cat: {
                "tried": self.tried[cat],
                "failed": self.failed[cat],
                "kinds": dict(self.kinds[cat]),
            }
            for cat in CATEGORIES
        }


def env() -> dict[str, str]:
    """The child's environment: one thread (same numbers as the parent's runs), the test cache."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def robench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "robench", *args]


def eval_cmd(ckpt: Path, out: Path, perturbations: Sequence[str] = EVAL_PERTURBATIONS) -> list[str]:
    ps = [a for p in perturbations for a in ("-p", p)]
    return robench_cmd("evaluate", str(ckpt), *ps, *EVAL_ARGS, "--out", str(out))


def run(cmd: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), env=env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def strip_times(record: Record | dict[str, Any]) -> dict[str, Any]:
    """A record without what legitimately differs between two runs (timestamps, durations)."""
    rec = json.loads(json.dumps(record.to_dict() if isinstance(record, Record) else record))
    for k in ("created", "updated"):
        rec.pop(k, None)
    for e in rec["perturbations"].values():
        e.pop("seconds", None)
    return rec


def done_count(path: Path) -> int:
    """Finished perturbations in a record on disk (0 when absent or being replaced)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    return sum(1 for e in rec.get("perturbations", {}).values() if e.get("status") == "done")


def partial_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001  (absent or being replaced)
        return 0


def tmp_files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*.tmp")} if folder.exists() else set()


def timeline(
    cmd: Sequence[str], progress: Callable[[], int], limit_s: float = 300
) -> tuple[int, str, list[float]]:
    """Run ``cmd``, noting when ``progress()`` first reached 1, 2, ... (rc, stderr, times)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(cmd), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    times: list[float] = []
    while proc.poll() is None and time.monotonic() - t0 < limit_s:
        while progress() > len(times):
            times.append(time.monotonic() - t0)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=limit_s)
    return proc.returncode, err, [*times, time.monotonic() - t0]


def kill_at(
    cmd: Sequence[str],
    progress: Callable[[], int],
    target: int,
    extra_s: float,
    sig: int,
    limit_s: float = 240,
) -> tuple[int, str, int]:
    """Start ``cmd``, wait until ``progress() >= target`` then ``extra_s`` more, send ``sig``.

    Returns:
        (return code, stderr, progress when the signal was sent); the return code is 0 when the run
        finished before the signal could be sent.
    """
    proc = subprocess.Popen(
        list(cmd), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + limit_s
    while progress() < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(extra_s)
    at = progress()
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=limit_s)
    return proc.returncode, err, at


def damage(data: bytes, how: str, rng: random.Random) -> bytes:
    """Simulated power loss or bit rot: ``truncate``, ``zero_tail``, ``empty`` or ``flip``."""
    if how == "empty":
        return b""
    cut = rng.randrange(1, max(2, len(data) - 1))
    if how == "truncate":
        return data[:cut]
    if how == "zero_tail":  # the size was written, the data blocks were not
        return data[:cut] + bytes(len(data) - cut)
    if how == "flip":
        out = bytearray(data)
        out[cut] ^= 1 << rng.randrange(8)
        return bytes(out)
    raise ValueError(how)
