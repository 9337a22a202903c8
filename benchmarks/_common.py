"""What every benchmark shares: machine facts, versions, timing, the images, targets."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-image",
    "opencv-python",
    "pillow",
    "foolbox",
    "eagerpy",
    "torchattacks",
    "imagecorruptions",
    "robench",
)


def versions() -> dict[str, str]:
    """Versions of Python and of the packages the benchmarks touch (``not installed`` if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, GPU, load average (the numbers depend on all of them)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = (
            int(
                next(
                    x
                    for x in Path("/proc/meminfo").read_text().splitlines()
                    if x.startswith("MemTotal")
                ).split()[1]
            )
            // 1024
        )
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_mib": mem,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (timings on CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(
    fn: Callable[[], Any], *, device: str = "cpu", repeats: int = 3, warmup: int = 1
) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def median(values: Sequence[float]) -> float:
    """Median (``nan`` for nothing)."""
    return statistics.median(values) if values else float("nan")


def eval_batch(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The first ``n`` images of ``robench evaluate``'s default subset (500 seeded shapes)."""
    from robench.data import load_dataset
    from robench.evaluation.loop import select_indices

    ds = load_dataset("shapes", "test")
    idx = select_indices(len(ds), 500, 0, "shapes")[:n]
    x, y = ds.get_batch(torch.from_numpy(idx))
    return x.to(device), y.to(device), idx.tolist()


@dataclass(frozen=True)
class Target:
    """A performance target and whether it was met."""

    name: str
    measured: float
    limit: float
    unit: str
    why: str = ""

    @property
    def met(self) -> bool:
        """Measured within the limit."""
        return self.measured <= self.limit

    def line(self) -> str:
        """One Markdown bullet: met, or missed by how much and why."""
        head = (
            f"**{self.name}**: {self.measured:.3g}{self.unit} (target <= {self.limit:g}{self.unit})"
        )
        if self.met:
            return f"- {head}: met"
        return f"- {head}: **missed by {self.measured / self.limit:.2f}x**. {self.why}".rstrip()


def fmt_s(s: float) -> str:
    """Seconds, short."""
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 100 else f"{s:.0f} s"
