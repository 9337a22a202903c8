"""Is `shapes` a useful benchmark? Train the small CNN for a few CPU minutes, then corrupt it.

Records the training command, wall time and clean test accuracy, and the accuracy under
brightness, Gaussian noise and blur at every severity, into benchmarks/results/.

    python benchmarks/shapes_baseline.py                # trains into a temp folder
    python benchmarks/shapes_baseline.py --checkpoint robench/models/zoo_files/shapes/standard.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import robench
from robench import evaluate
from robench.models.zoo import read_card

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine as _machine  # noqa: E402  (one description of the machine for every benchmark)

PERTURBATIONS = ["brightness", "gaussian_noise", "defocus_blur", "gaussian_blur"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = robench.train(
            "standard",
            epochs=args.epochs,
            out=tmp / "standard.pt",
            progress=True,
            command=f"robench train --defense standard --epochs {args.epochs}",
        )
    card = read_card(ckpt.with_suffix(".json"))
    t0 = time.perf_counter()
    rep = evaluate(
        str(ckpt),
        perturbations=PERTURBATIONS,
        suite="imagenet-c-extra",
        n_images=None,
        out=tmp / "eval",
        baseline="none",
        plots=False,
    )
    eval_s = time.perf_counter() - t0
    date = time.strftime("%Y-%m-%d")
    machine = _machine()
    lines = [
        f"# shapes baseline ({date})",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['torch_threads']} torch threads, "
        f"torch {torch.__version__}, robench {robench.__version__}.",
        "",
        f"Training command: `{card.command}` "
        f"(small_cnn, seed {card.seed}, {card.epochs} epochs, Adam 0.002, batch 256)",
        "",
        f"- training wall time: {card.wall_time_s:.0f} s",
        f"- clean test accuracy (2000 images): {card.clean_accuracy:.4f}",
        f"- corruption evaluation of all 2000 test images: {eval_s:.0f} s",
        "",
        "| corruption (preset cifar) | " + " | ".join(f"s{s}" for s in range(1, 6)) + " | R |",
        "| --- | " + " | ".join("---" for _ in range(5)) + " | --- |",
    ]
    for name in PERTURBATIONS:
        e = rep.record.perturbations[name]
        accs = " | ".join(f"{s.accuracy:.3f}" for s in e.severities)
        r = e.scores.R if e.scores is not None and e.scores.R is not None else float("nan")
        lines.append(f"| {name} | {accs} | {r:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"shapes-baseline-{date}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"shapes-baseline-{date}.json").write_text(
        json.dumps(
            {
                "card": card.__dict__,
                "eval_seconds": eval_s,
                "accuracy": {
                    n: [s.accuracy for s in rep.record.perturbations[n].severities]
                    for n in PERTURBATIONS
                },
            },
            indent=1,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
