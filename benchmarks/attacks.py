"""Each attack's time against its compute floor, and against Foolbox / torchattacks called directly.

The floor of an attack is the passes its algorithm must make (``AttackSpec.cost``: PGD = 10
forward + backward passes to the input + a clean and a final forward pass; C&W = 40 + 3, its third
forward pass scoring the last iterate; MI-FGSM = 10 + 1 on the surrogate + 2 on the model) times
the cost of one pass of the same model on the same batch, measured in the same run right before
the attack. robench runs the attack as ``robench evaluate`` does (``run_attack``: Foolbox
underneath for PGD and MI-FGSM, parameters frozen, seeded). The direct calls use the same
parameters and the same frozen model: Foolbox's ``attack(fmodel, x, criterion, epsilons=eps)``
(its extra criterion pass included) and torchattacks' ``atk(x, y)``; both are followed by one
forward pass that judges the adversarials, as robench does. robench's ``cw_l2`` is C&W's capped
margin loss optimised inside the L2 ball; neither library has that attack, so its direct calls
are their 40-step L2 PGD with the same step and no random start (the same passes).

``--autoattack`` times ``autoattack_linf`` against the authors' code called directly and against
its floor: the image-passes one run made (counted) times the cost of one pass per image.

``--cw-strength`` compares ``cw_l2`` with Foolbox's ``L2PGD`` (100 steps, 2 random restarts) at the
same radius on the first shapes test images, and times it against a 40-step L2 PGD.

    python benchmarks/attacks.py [--quick] [--images 128] [--device cpu] [--cw-strength [--model M]]
        [--autoattack] [--only cw_l2 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Target, eval_batch, fmt_s, machine, median, timed, versions  # noqa: E402

ATTACKS = ("pgd", "pgd_ll", "cw_l2", "mi_fgsm_0.04", "mi_fgsm_0.08")
TARGET = 1.15


def _models(device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    from robench.models.loading import load_model

    model = load_model("zoo:standard", device=device).model.eval()
    sur = load_model("zoo:shapes/vgg_surrogate", device=device).model.eval()
    for m in (model, sur):
        for p in m.parameters():
            p.requires_grad_(False)  # as robench runs attacks; the direct calls get the same model
    return model, sur


def _pass_costs(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int
) -> dict[str, float]:
    from robench.evaluation.plan import time_forward, time_gradient

    return {
        "forward": time_forward(model, x, repeats=repeats),
        "gradient": time_gradient(model, x, y, repeats=repeats),
    }


def _floor(spec: Any, m: dict[str, float], s: dict[str, float]) -> float:
    c = spec.cost()
    return (
        c.gradient_passes * m["gradient"]
        + c.forward_passes * m["forward"]
        + c.surrogate_gradient_passes * s["gradient"]
        + c.surrogate_forward_passes * s["forward"]
    )


def _robench(spec: Any, model: Any, sur: Any, x: Any, y: Any, idx: list[int]) -> Callable[[], Any]:
    from robench.attacks import run_attack

    surrogate = sur if spec.mode == "transfer" else None
    return lambda: run_attack(spec, model, x, y, seed=0, indices=idx, surrogate=surrogate)


def _foolbox(spec: Any, model: Any, sur: Any, x: Any, y: Any) -> Callable[[], Any]:
    import foolbox as fb

    eps, steps = spec.budget(x.shape[-1]), spec.steps
    if spec.algorithm == "cw_l2":  # no bounded C&W in Foolbox: its L2 PGD, same passes
        atk: Any = fb.attacks.L2PGD(
            abs_stepsize=spec.step_size(eps, steps), steps=steps, random_start=False
        )
    elif spec.algorithm == "mi_fgsm":
        atk = fb.attacks.LinfMomentumIterativeFastGradientMethod(
            momentum=1.0, abs_stepsize=eps / steps, steps=steps, random_start=False
        )
    else:
        atk = fb.attacks.LinfPGD(
            abs_stepsize=spec.step_size(eps, steps),
            steps=steps,
            random_start=spec.algorithm == "pgd",
        )
    crafter = fb.PyTorchModel(sur if spec.mode == "transfer" else model, bounds=(0, 1))

    def run() -> Any:
        crit: Any = fb.criteria.Misclassification(y)
        if spec.algorithm == "pgd_ll":
            with torch.no_grad():
                crit = fb.criteria.TargetedMisclassification(model(x).argmin(1))
        _, adv, _ = atk(crafter, x, crit, epsilons=eps)
        with torch.no_grad():
            return model(adv).argmax(1) == y

    return run


def _torchattacks(spec: Any, model: Any, sur: Any, x: Any, y: Any) -> Callable[[], Any] | None:
    try:
        import torchattacks as ta
    except ImportError:
        return None
    eps, steps = spec.budget(x.shape[-1]), spec.steps
    if spec.algorithm == "cw_l2":
        alpha = spec.step_size(eps, steps)
        atk: Any = ta.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    elif spec.algorithm == "mi_fgsm":
        atk = ta.MIFGSM(sur, eps=eps, alpha=eps / steps, steps=steps, decay=1.0)
    else:
        atk = ta.PGD(
            model,
            eps=eps,
            alpha=spec.step_size(eps, steps),
            steps=steps,
            random_start=spec.algorithm == "pgd",
        )
        if spec.algorithm == "pgd_ll":
            atk.set_mode_targeted_least_likely()

    def run() -> Any:
        adv = atk(x, y)
        with torch.no_grad():
            return model(adv).argmax(1) == y

    return run


def measure(
    n_images: int, device: str, repeats: int, only: list[str] | None = None
) -> dict[str, Any]:
    """Every attack: passes, floor, robench, Foolbox and torchattacks times (medians, seconds)."""
    from robench import perturbations as P

    model, sur = _models(device)
    x, y, idx = eval_batch(n_images, device)
    rows = []
    for name in only or ATTACKS:
        spec = P.get(name)
        m, s = _pass_costs(model, x, y, repeats + 2), _pass_costs(sur, x, y, repeats + 2)
        row: dict[str, Any] = {
            "attack": name,
            "cost": vars(spec.cost()),
            "pass_model": m,
            "pass_surrogate": s,
            "floor_s": _floor(spec, m, s),
        }
        for lib, make in (
            ("robench", _robench(spec, model, sur, x, y, idx)),
            ("foolbox", _foolbox(spec, model, sur, x, y)),
            ("torchattacks", _torchattacks(spec, model, sur, x, y)),
        ):
            row[f"{lib}_s"] = (
                None if make is None else median(timed(make, device=device, repeats=repeats))
            )
        rows.append(row)
        print(
            f"  {name:13s} floor {fmt_s(row['floor_s']):>8s}  "
            f"robench {fmt_s(row['robench_s']):>8s} "
            f"({row['robench_s'] / row['floor_s']:.2f}x)  foolbox {fmt_s(row['foolbox_s']):>8s}",
            flush=True,
        )
    return {"images": n_images, "device": device, "repeats": repeats, "rows": rows}


def cw_strength(
    n_images: int = 200, device: str = "cpu", repeats: int = 3, model_id: str = "zoo:standard"
) -> dict[str, Any]:
    """``cw_l2`` accuracy vs Foolbox's L2PGD (100 steps, 2 restarts); time vs 40-step L2 PGD."""
    import foolbox as fb

    from robench import perturbations as P
    from robench.attacks import bounded_cw_l2, run_attack
    from robench.data import load_dataset
    from robench.models.loading import load_model

    model = load_model(model_id, device=device).model.eval().requires_grad_(False)
    x, y = load_dataset("shapes", "test").get_batch(range(n_images))
    x, y = x.to(device), y.to(device)
    spec = P.get("cw_l2")
    eps, steps = spec.budget(x.shape[-1]), spec.steps
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
    broken = torch.zeros(len(y), dtype=torch.bool, device=device)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(2):
            _, _, ok = fb.attacks.L2PGD(steps=100)(fmodel, x, y, epsilons=eps)
            broken |= ok
    pgd40 = fb.attacks.L2PGD(
        abs_stepsize=spec.step_size(eps, steps), steps=steps, random_start=False
    )

    def cw() -> Any:
        return run_attack(spec, model, x, y, seed=0)

    def cw_untargeted() -> float:  # the single-run margin variant, same passes and step rule
        _, hit = bounded_cw_l2(
            model, x, y, epsilon=eps, steps=steps, step=spec.step_size(eps, steps), confidence=50.0
        )
        return 1.0 - float(hit.float().mean())

    def l2pgd() -> Any:
        _, adv, _ = pgd40(fmodel, x, fb.criteria.Misclassification(y), epsilons=eps)
        with torch.no_grad():
            return model(adv).argmax(1) == y

    cw_s, pgd_s = [], []
    for _ in range(repeats):  # interleaved, so that a busy machine slows both alike
        cw_s += timed(cw, device=device, repeats=1, warmup=0)
        pgd_s += timed(l2pgd, device=device, repeats=1, warmup=0)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    return {
        "model": model_id,
        "images": n_images,
        "radius": eps,
        "clean": clean,
        "cw_l2": cw().accuracy,
        "cw_l2_untargeted": cw_untargeted(),
        "foolbox_l2pgd_100x2": 1.0 - float(broken.float().mean()),
        "foolbox_l2pgd_40": float(l2pgd().float().mean()),
        "cw_l2_s": median(cw_s),
        "l2pgd_40_s": median(pgd_s),
    }


class _Counter(torch.nn.Module):
    """Image-passes through the model: with a graph on the input (gradient) or forward only."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.gradient, self.forward_only = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.gradient += len(x)
        else:
            self.forward_only += len(x)
        return self.inner(x)  # type: ignore[no-any-return]


def autoattack_time(n_images: int = 128, device: str = "cpu", repeats: int = 3) -> dict[str, Any]:
    """``autoattack_linf``: robench vs the authors' code called directly vs its compute floor.

    AutoAttack's passes depend on the images (each stage runs only on those still standing), so
    its floor is the image-passes one run actually made (counted) times the measured cost of one
    pass, per image, of the same model on the same batch.
    """
    from pyautoattack import AutoAttack

    from robench import perturbations as P
    from robench._seeding import derive_seed
    from robench.attacks import run_attack

    model, _ = _models(device)
    x, y, idx = eval_batch(n_images, device)
    spec = P.get("autoattack_linf")
    eps, seed = spec.budget(x.shape[-1]), derive_seed(0, "autoattack_linf")
    counter = _Counter(model)
    result = run_attack(spec, counter, x, y, seed=0, indices=idx)
    m = _pass_costs(model, x, y, repeats + 2)
    floor = (counter.gradient * m["gradient"] + counter.forward_only * m["forward"]) / len(y)

    def robench_call() -> Any:
        return run_attack(spec, model, x, y, seed=0, indices=idx)

    def direct() -> Any:
        aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=device)
        adv, _ = aa.run_standard_evaluation(x.contiguous(), y, batch_size=len(y))
        with torch.no_grad():
            return model(adv).argmax(1) == y

    ours, theirs = [], []
    for _ in range(repeats):  # interleaved, so that a busy machine slows both alike
        ours += timed(robench_call, device=device, repeats=1, warmup=0)
        theirs += timed(direct, device=device, repeats=1, warmup=0)
    return {
        "images": n_images,
        "accuracy": result.accuracy,
        "image_passes": {"gradient": counter.gradient, "forward": counter.forward_only},
        "pass_model": m,
        "floor_s": floor,
        "robench_s": median(ours),
        "direct_s": median(theirs),
    }


def targets(data: dict[str, Any]) -> list[Target]:
    """robench's time within 1.15x of the floor, per attack (the measured overhead as the why)."""
    out = []
    for r in data["rows"]:
        steps = max(1, r["cost"]["gradient_passes"] + r["cost"]["surrogate_gradient_passes"])
        extra = (r["robench_s"] - r["floor_s"]) / steps
        fb = r["foolbox_s"] / r["floor_s"]
        why = (
            f"{extra * 1e3:.1f} ms per gradient step go outside the model passes "
            "(Foolbox/eagerpy bookkeeping: criterion, projection, clipping, tensor wrapping); "
            f"Foolbox called directly takes {fb:.2f}x the floor."
        )
        out.append(
            Target(
                f"{r['attack']} time / compute floor",
                r["robench_s"] / r["floor_s"],
                TARGET,
                "x",
                why,
            )
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    """The attack table."""
    lines = [
        f"Batch of {data['images']} shapes test images on {data['device']}, "
        "zoo:standard (small_cnn width 32); transfer attacks crafted on zoo:shapes/vgg_surrogate. "
        f"Median of {data['repeats']} runs after a warm-up.",
        "",
        "| attack | fwd+bwd / fwd passes (surrogate) | one fwd+bwd / fwd | floor | robench | "
        "robench / floor | Foolbox direct | torchattacks direct |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        c, m = r["cost"], r["pass_model"] if r["cost"]["gradient_passes"] else r["pass_surrogate"]
        passes = f"{c['gradient_passes']} / {c['forward_passes']}" + (
            f" ({c['surrogate_gradient_passes']} / {c['surrogate_forward_passes']})"
            if c["surrogate_gradient_passes"]
            else ""
        )
        ta = (
            "not installed"
            if r["torchattacks_s"] is None
            else f"{fmt_s(r['torchattacks_s'])} ({r['torchattacks_s'] / r['floor_s']:.2f}x)"
        )
        lines.append(
            f"| {r['attack']} | {passes} | {fmt_s(m['gradient'])} / {fmt_s(m['forward'])} | "
            f"{fmt_s(r['floor_s'])} | "
            f"{fmt_s(r['robench_s'])} | {r['robench_s'] / r['floor_s']:.2f}x | "
            f"{fmt_s(r['foolbox_s'])} ({r['foolbox_s'] / r['floor_s']:.2f}x) | {ta} |"
        )
    return "\n".join(lines)


def run(
    quick: bool, device: str = "cpu", images: int | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """The suite's entry point."""
    return measure(images or (32 if quick else 128), device, 1 if quick else 3, only)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cw-strength", action="store_true", help="cw_l2 vs Foolbox L2PGD only")
    ap.add_argument("--model", default="zoo:standard", help="the model of --cw-strength")
    ap.add_argument(
        "--autoattack", action="store_true", help="autoattack_linf vs its floor and the direct call"
    )
    ap.add_argument("--only", nargs="*", default=None, help="these attacks only (default: all 5)")
    args = ap.parse_args()
    if args.cw_strength:
        print(
            json.dumps(cw_strength(args.images or 200, args.device, model_id=args.model), indent=1)
        )
        return
    if args.autoattack:
        print(json.dumps(autoattack_time(args.images or 128, args.device), indent=1))
        print(json.dumps({"machine": machine(), "versions": versions()}, indent=1))
        return
    data = run(args.quick, args.device, args.images, args.only)
    print(markdown(data))
    print("\n".join(t.line() for t in targets(data)))
    print(json.dumps({"machine": machine(), "versions": versions()}, indent=1))


if __name__ == "__main__":
    main()
