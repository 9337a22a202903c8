"""End to end: the README's first command, ``robench evaluate zoo:standard``, timed and taken apart.

The command runs in a fresh Python process with an empty data cache (a first run on a new machine:
the test split is generated, transfer adversarials are crafted), through the CLI exactly as typed
(plus ``--out`` into a temporary folder). Inside that process the models' forward and backward
passes and the corruption generation are timed with hooks; after the run, the same process counts
the passes the run had to make and prices them with a short calibration (``robench.dry_run``).

Reported: wall time seen from outside (interpreter start and imports included), peak resident
memory, time inside the models, corruption generation, the rest, and the ratio of the in-process
wall time to the passes' floor.

    python benchmarks/end_to_end.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Target, fmt_s  # noqa: E402

README_COMMAND = ["robench", "evaluate", "zoo:standard"]
QUICK_ARGS = [
    "-p",
    "gaussian_noise",
    "-p",
    "glass_blur",
    "-p",
    "pgd",
    "-p",
    "mi_fgsm_0.04",
    "--n-images",
    "100",
]
TARGETS = {"readme_s": 180.0, "wall_over_floor": 1.3, "corruption_over_model": 0.25}


class _Clock:
    """Seconds spent inside the models (forward and backward) and inside corruption calls."""

    def __init__(self) -> None:
        self.model = self.corruption = self.data = 0.0
        self._fwd: list[float] = []
        self._bwd: list[float] = []
        self._depth = 0

    def attach(self, module: Any) -> Any:
        module.register_forward_pre_hook(lambda m, a: self._fwd.append(time.perf_counter()))
        module.register_forward_hook(lambda m, a, o: self._add_fwd())
        module.register_full_backward_pre_hook(lambda m, g: self._bwd.append(time.perf_counter()))
        module.register_full_backward_hook(lambda m, gi, go: self._add_bwd())
        return module

    def _add_fwd(self) -> None:
        self.model += time.perf_counter() - self._fwd.pop()

    def _add_bwd(self) -> None:
        self.model += time.perf_counter() - self._bwd.pop()

    def wrap_corruption(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.corruption += time.perf_counter() - t0

        return timed


def _instrument(clock: _Clock) -> None:
    """Hook every model the run loads and every corruption class it calls."""
    import robench.evaluation.attack_step as ae
    import robench.evaluation.job as ev
    import robench.evaluation.loop as rn
    from robench import perturbations as P

    def loading(orig: Any) -> Any:
        def load(*args: Any, **kwargs: Any) -> Any:
            loaded = orig(*args, **kwargs)
            if not getattr(loaded.model, "_bench_clock", False):
                clock.attach(loaded.model)
                loaded.model._bench_clock = True
            return loaded

        return load

    ev.load_model, ae.load_model = loading(ev.load_model), loading(ae.load_model)
    for cls in {type(P.get(n)) for n in P.names(kind="corruption")}:
        cls.__call__ = clock.wrap_corruption(cls.__call__)
    orig_data = rn.load_dataset

    def data(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_data(*args, **kwargs)
        finally:
            clock.data += time.perf_counter() - t0

    rn.load_dataset = data


def child(out_json: Path, argv: list[str]) -> None:
    """Inside the fresh process: run the CLI instrumented, then price the run's passes."""
    from robench.cli import main

    clock = _Clock()
    _instrument(clock)
    t1, epoch1 = time.perf_counter(), time.time()
    main.main(args=argv, standalone_mode=False)
    t2, epoch2 = time.perf_counter(), time.time()
    model_s, corruption_s, data_s = (
        clock.model,
        clock.corruption,
        clock.data,
    )  # before the calibration's passes
    from robench._io import cache_dir
    from robench.evaluation.plan import plan_evaluation

    names = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    n = int(argv[argv.index("--n-images") + 1]) if "--n-images" in argv else 500
    transfer = cache_dir() / "transfer"
    if transfer.exists():
        transfer.rename(
            transfer.with_name("transfer.done")
        )  # price the crafting the run did, not a cache hit
    plan = plan_evaluation(
        argv[1], perturbations=names, n_images=n, out=argv[argv.index("--out") + 1], resume=False
    )
    floor = sum(c.seconds for c in plan.counts) - sum(
        c.corrupted * plan.corruption.get(c.what, 0.0) for c in plan.counts
    )
    result = {
        "started_epoch": epoch1,
        "finished_epoch": epoch2,
        "run_s": t2 - t1,
        "model_s": model_s,
        "corruption_s": corruption_s,
        "data_s": data_s,
        "floor_s": floor,
        "plan_total_s": plan.seconds,
        "passes": {
            k: plan.total(k)
            for k in ("forward", "gradient", "surrogate_forward", "surrogate_gradient", "corrupted")
        },
        "calibration_ms_per_image": {k: v * 1e3 for k, v in plan.calibration.items()},
        "maxrss_mib_child": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out_json.write_text(json.dumps(result, indent=1))


def measure(quick: bool) -> dict[str, Any]:
    """Run the command in a fresh process with an empty cache; wall time and peak memory outside."""
    with tempfile.TemporaryDirectory() as tmp:
        out, res_json = Path(tmp) / "results", Path(tmp) / "child.json"
        argv = ["evaluate", "zoo:standard", *(QUICK_ARGS if quick else []), "--out", str(out)]
        env = dict(os.environ, ROBENCH_CACHE=str(Path(tmp) / "cache"))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(res_json), "--", *argv]
        log = Path(tmp) / "log.txt"
        with log.open("w") as f:
            t0 = time.time()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"the command failed:\n{log.read_text()[-3000:]}")
        data = json.loads(res_json.read_text())
    # the command's wall time ends when the evaluation does (the pricing afterwards is the
    # benchmark's)
    data.update(
        command=" ".join(README_COMMAND[:2] + argv[1:-2]),
        wall_s=data["finished_epoch"] - t0,
        imports_s=data["started_epoch"] - t0,
        quick=quick,
        peak_rss_mib=usage.ru_maxrss / 1024,
    )
    return data


def targets(d: dict[str, Any]) -> list[Target]:
    """README command < 3 min, run within 1.3x of its passes, corruptions < 25 % of model time."""
    rest = d["run_s"] - d["model_s"] - d["corruption_s"]
    why_floor = (
        f"Of {d['run_s']:.0f} s in the run, {d['model_s']:.0f} s are inside the models (hooks), "
        f"{d['corruption_s']:.0f} s generate corruptions and {rest:.0f} s go elsewhere "
        f"(attack bookkeeping, data generation {d['data_s']:.0f} s, files); "
        f"the calibrated passes alone take {d['floor_s']:.0f} s."
    )
    why_readme = (
        f"Imports take {d['imports_s']:.0f} s, the run {d['run_s']:.0f} s; "
        "C&W's 40 steps alone are "
        "40 of the ~55 forward + backward passes per image."
    )
    why_corr = (
        f"Corruption generation {d['corruption_s']:.1f} s vs {d['model_s']:.1f} s in the models "
        "(see the corruption table)."
    )
    return [
        Target(
            "README first command wall time", d["wall_s"], TARGETS["readme_s"], " s", why_readme
        ),
        Target(
            "end-to-end run / sum of its passes",
            d["run_s"] / d["floor_s"],
            TARGETS["wall_over_floor"],
            "x",
            why_floor,
        ),
        Target(
            "corruption generation / model time",
            d["corruption_s"] / d["model_s"],
            TARGETS["corruption_over_model"],
            "x",
            why_corr,
        ),
    ]


def markdown(d: dict[str, Any]) -> str:
    """The end-to-end breakdown."""
    rest = d["run_s"] - d["model_s"] - d["corruption_s"]
    p = d["passes"]
    return "\n".join(
        [
            f"Command: `{d['command']}` (fresh process, empty cache)"
            + (" - quick subset" if d["quick"] else ""),
            "",
            "| quantity | value |",
            "|---|---:|",
            f"| wall time (outside view, incl. interpreter start) | {fmt_s(d['wall_s'])} |",
            f"| interpreter start and imports | {fmt_s(d['imports_s'])} |",
            f"| evaluation (in process) | {fmt_s(d['run_s'])} |",
            f"| inside the models (forward + backward, hooks) | {fmt_s(d['model_s'])} "
            f"({d['model_s'] / d['run_s']:.0%}) |",
            f"| corruption generation | {fmt_s(d['corruption_s'])} "
            f"({d['corruption_s'] / d['run_s']:.0%}) |",
            f"| everything else (attack bookkeeping, data, files, plots) | {fmt_s(rest)} "
            f"({rest / d['run_s']:.0%}) |",
            f"| of which test-split loading/generation | {fmt_s(d['data_s'])} |",
            f"| share outside the models | {1 - d['model_s'] / d['run_s']:.0%} |",
            "| passes it must make: forward / fwd+bwd / surrogate fwd / surrogate fwd+bwd "
            "(image-passes) | "
            f"{p['forward']:,} / {p['gradient']:,} / "
            f"{p['surrogate_forward']:,} / {p['surrogate_gradient']:,} |",
            f"| their cost at the calibrated rates (the floor) | {fmt_s(d['floor_s'])} |",
            f"| peak resident memory | {d['peak_rss_mib']:.0f} MiB |",
        ]
    )


def run(quick: bool) -> dict[str, Any]:
    """The suite's entry point."""
    return measure(quick)


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(Path(sys.argv[i + 1]), sys.argv[sys.argv.index("--") + 1 :])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    data = run(ap.parse_args().quick)
    print(markdown(data))
    print("\n".join(t.line() for t in targets(data)))


if __name__ == "__main__":
    main()
