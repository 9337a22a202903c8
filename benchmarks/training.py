"""Training throughput: images/s of ``fit`` per defense, against ``standard``.

Every defense runs with its default options on ``small_cnn`` (width 32, the zoo's architecture) at
the papers' batch of 256 shapes images through ``robench.training.fit`` itself (one epoch of
``steps`` batches, after a one-batch warm-up fit); composite defenses first run their ``setup`` (its
time is reported apart: loading the zoo model they start from, ranking filters...). Setup gets the
first 2048 training images.

    python benchmarks/training.py [--quick] [--defenses standard fgsm ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s  # noqa: E402


def _model(
    name: str, defense: Any, work: Path, device: str, batch: int
) -> tuple[torch.nn.Module, float, str]:
    from robench.data import SubsetDataset, load_dataset
    from robench.defenses import SetupContext
    from robench.models import create_model
    from robench.training import fit

    setup = getattr(defense, "setup", None)
    torch.manual_seed(0)
    if setup is None:
        return create_model("small_cnn", 10), 0.0, ""
    train = SubsetDataset(load_dataset("shapes", "train"), 2048)
    test = load_dataset("shapes", "test")
    ctx = SetupContext(
        arch="small_cnn",
        arch_kwargs={},
        info=train.info,
        train_ds=train,
        test_ds=test,
        seed=0,
        device=device,
        workdir=work / f"{name}.setup",
        batch_size=batch,
        fit=fit,
    )
    t0 = time.perf_counter()
    built = setup(ctx)
    return built.model, time.perf_counter() - t0, built.notes


def measure(names: list[str], steps: int, batch: int, device: str) -> dict[str, Any]:
    """images/s of each defense (one epoch of ``steps`` batches through ``fit``)."""
    from robench.data import SubsetDataset, load_dataset
    from robench.defenses import build_defense
    from robench.training.loop import TrainConfig, fit

    ds_all = load_dataset("shapes", "train")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            defense = build_defense(name, {})
            model, setup_s, notes = _model(name, defense, work, device, batch)
            cfg = TrainConfig(epochs=1, batch_size=batch, seed=0, device=device)
            fit(
                model,
                defense,
                SubsetDataset(ds_all, batch),
                cfg,
                out=work / f"{name}-warm.pt",
                progress=False,
                resume=False,
            )
            t0 = time.perf_counter()
            fit(
                model,
                defense,
                SubsetDataset(ds_all, batch * steps),
                cfg,
                out=work / f"{name}.pt",
                progress=False,
                resume=False,
            )
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "defense": name,
                    "images_s": batch * steps / wall,
                    "step_s": wall / steps,
                    "setup_s": setup_s,
                    "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                    "notes": notes,
                }
            )
            print(
                f"  {name:16s} {rows[-1]['images_s']:8.1f} img/s  setup {fmt_s(setup_s)}",
                flush=True,
            )
    return {"steps": steps, "batch": batch, "device": device, "rows": rows}


def markdown(data: dict[str, Any]) -> str:
    """The throughput table, relative to ``standard``."""
    std = next((r["images_s"] for r in data["rows"] if r["defense"] == "standard"), None)
    lines = [
        f"`fit` on small_cnn (width 32), batch {data['batch']}, "
        f"{data['steps']} timed steps after a warm-up, "
        f"{data['device']}.",
        "",
        "| defense | images/s | time / step | vs standard | setup | trainable params |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        rel = "" if std is None else f"{r['images_s'] / std:.2f}x"
        lines.append(
            f"| {r['defense']} | {r['images_s']:.0f} | {fmt_s(r['step_s'])} | {rel} | "
            f"{fmt_s(r['setup_s']) if r['setup_s'] else '-'} | {r['trainable']:,} |"
        )
    return "\n".join(lines)


def run(quick: bool, device: str = "cpu", names: list[str] | None = None) -> dict[str, Any]:
    """The suite's entry point (every registered defense, ``standard`` first)."""
    from robench.defenses import DEFENSES

    chosen = names or ["standard", *sorted(s.name for s in DEFENSES if s.name != "standard")]
    return measure(chosen, 1 if quick else 4, 64 if quick else 256, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--defenses", nargs="+", default=None)
    args = ap.parse_args()
    print(markdown(run(args.quick, args.device, args.defenses)))


if __name__ == "__main__":
    main()
