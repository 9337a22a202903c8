"""Recompute the README's paper-claims table from the committed records and zoo cards.

    python scripts/claims.py [RECORDS_DIR] [ZOO_DIR] [FUSION_OBJECT_DIR]

Every robench figure is read from the counts in the records (accuracy = n_correct / n) or from the
cards (clean accuracy on the full 2000-image test split); nothing is typed in by hand. A clean
accuracy difference "holds" only when it exceeds two standard errors of the difference.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from robench.evaluation.record import Record, read_record

ROOT = Path(__file__).resolve().parents[1]
RECORDS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "leaderboard/shapes"
ZOO = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "robench/models/zoo_files/shapes"
FUSION = Path(sys.argv[3]) if len(sys.argv) > 3 else ROOT / "papers/shapes/fusion-object"
LIMITED = ROOT / "papers/shapes/data-limited"  # cards of runs on the first 2000 training images
N_TEST = 2000


def card(name: str, folder: Path = ZOO) -> dict:  # type: ignore[type-arg]
    """The card of ``name`` (the zoo's unless another folder is given)."""
    data: dict = json.loads((folder / f"{name}.json").read_text())  # type: ignore[type-arg]
    return data


def rec(name: str, folder: Path = RECORDS) -> Record:
    """The committed record of ``name`` (500 images, seed 0)."""
    return read_record(folder / f"{name}__shapes__s0__n500.json")


def acc(r: Record, name: str) -> list[float]:
    """Accuracy at every severity of perturbation ``name``, from the counts."""
    return [s.n_correct / s.n for s in r.perturbations[name].severities]


def two_se(pa: float, pb: float) -> float:
    """Two standard errors of the difference of two accuracies on the 2000 test images."""
    return 2 * math.sqrt(pa * (1 - pa) / N_TEST + pb * (1 - pb) / N_TEST)


def ep(name: str) -> str:
    """How long ``name`` was trained, for the table."""
    return f"{card(name)['epochs']} ep"


CEILING = 0.99  # both models at or above this: the test split cannot show a clean-accuracy gap


def clean_verdict(a: str, b: str, *, want: str) -> tuple[str, str]:
    """The figure and verdict for "a's clean accuracy is ``want`` b's" (``above`` or ``kept``).

    ``kept`` holds unless a is significantly below b; ``above`` needs a significantly above b.
    Where both sit at the ceiling and the gap is within 2 SE, the split cannot tell: not measurable;
    so is a comparison of models trained for different numbers of epochs.
    """
    pa, pb = card(a)["clean_accuracy"], card(b)["clean_accuracy"]
    if card(a)["epochs"] != card(b)["epochs"]:
        figure = f"{pa:.4f} vs {pb:.4f} ({ep(a)} vs {ep(b)})"
        return figure, "not measurable: trained unequally long"
    figure = f"{pa:.4f} vs {pb:.4f} (both {ep(a)})"
    if abs(pa - pb) <= two_se(pa, pb) and min(pa, pb) >= CEILING:
        return figure, f"not measurable: both at the ceiling (>= {CEILING}), gap within 2 SE"
    return figure, gap_verdict(pa, pb, want)


def gap_verdict(pa: float, pb: float, want: str) -> str:
    """Whether clean accuracy ``pa`` is ``want`` (``above`` or ``kept``) ``pb``, judged at 2 SE.

    ``kept`` holds unless pa is below pb by more than 2 SE; ``above`` needs pa above pb by more
    than 2 SE, is "not measurable" within 2 SE and "does not hold" below.
    """
    bound = two_se(pa, pb)
    if want == "kept":
        return "does not hold" if pb - pa > bound else "holds"
    if pa - pb > bound:
        return "holds"
    return "does not hold" if pb - pa > bound else "not measurable (within 2 SE)"


def main() -> None:  # noqa: C901, PLR0915 - one table, row by row
    """Print the claims table (markdown) on stdout."""
    rows = []
    figure, verdict = clean_verdict("mtlat", "standard", want="kept")
    paper = "73.9 vs 73.3 (ResNet-50)"
    rows.append(("M-TLAT keeps clean accuracy (Laugros, Table 1a)", paper, figure, verdict))
    figure, verdict = clean_verdict("mixup", "standard", want="above")
    rows.append(("Mixup raises clean accuracy (Table 2a)", "74.9 vs 73.3", figure, verdict))
    if limited("mtlat", "standard"):
        claim = "M-TLAT keeps clean accuracy, below the ceiling (Table 1a)"
        rows.append(limited_row("mtlat", "standard", "kept", claim, paper))
    if limited("mixup", "standard"):
        claim = "Mixup raises clean accuracy, below the ceiling (Table 2a)"
        rows.append(limited_row("mixup", "standard", "above", claim, "74.9 vs 73.3"))
    # TLAT against the other adversarial trainings, each trained as long as TLAT
    others = ("targeted_fgsm", "label_smoothing", "fgsm")
    same = [n for n in others if card(n)["epochs"] == card("tlat")["epochs"]]
    accs = {n: card(n)["clean_accuracy"] for n in ("tlat", *same)}
    figure = ", ".join(f"{k} {v:.4f}" for k, v in accs.items()) + f" (all {ep('tlat')})"
    if len(same) < len(others):
        figure += "; not yet retrained: " + ", ".join(
            f"{n} ({ep(n)})" for n in others if n not in same
        )
    rows.append((TLAT_CLAIM + " (Table 3)", TLAT_PAPER, figure, tlat_verdict(accs, ceiling=True)))
    if limited("tlat", *others):
        lim = {n: card(n, LIMITED)["clean_accuracy"] for n in ("tlat", *others)}
        figure = ", ".join(f"{k} {v:.4f}" for k, v in lim.items()) + f" ({limited_setting(*lim)})"
        claim = TLAT_CLAIM + ", below the ceiling (Table 3)"
        rows.append((claim, TLAT_PAPER, figure, tlat_verdict(lim)))
    elif limited("tlat", "fgsm"):
        claim = "TLAT keeps more clean accuracy than FGSM-AT, below the ceiling (Table 3)"
        rows.append(limited_row("tlat", "fgsm", "above", claim, "69.4 vs 65.8"))
    m = rec("mtlat")
    corr = [
        k
        for k, e in m.perturbations.items()
        if e.kind == "corruption" and e.scores and e.scores.baseline_R is not None and k in _bench()
    ]
    marks = [sc.marker for k in corr if (sc := m.perturbations[k].scores) is not None]
    plus = marks.count("+")
    rows.append(
        (
            "M-TLAT raises R on every corruption (Table 1b)",
            "19 of 19 (+)",
            f"{plus} of {len(corr)} (+)",
            "holds" if plus == len(corr) else "does not hold",
        )
    )
    assert (dc := rec("deepcorrect").summary) is not None
    assert (ft := rec("finetune").summary) is not None
    r_dc, r_ft = dc.mean_R["corruption"], ft.mean_R["corruption"]
    c_dc, c_ft = card("deepcorrect")["clean_accuracy"], card("finetune")["clean_accuracy"]
    rows.append(
        (
            "DeepCorrect beats fine-tuning the same layers (Table 3, CIFAR-100 blur)",
            "avg 0.5749 vs 0.4955; clean 0.6890 vs 0.6642",
            f"mean corruption R {r_dc:.3f} vs {r_ft:.3f}; clean {c_dc:.4f} vs {c_ft:.4f}",
            "holds" if r_dc > r_ft else "does not hold",
        )
    )
    cavey = {
        n: rec(n)
        for n in ("standard", "constant", "incremental", "transfer")
        if (RECORDS / f"{n}__shapes__s0__n500.json").exists()
    }
    noisy = {
        n: acc(r, "gaussian_noise_std")[-1]
        for n, r in cavey.items()
        if "gaussian_noise_std" in r.perturbations
    }
    rows.append(
        (
            "Cavey: training on noise recovers accuracy at std 0.05 "
            "(Sec. VI; natural CIFAR 86.9 -> ~63)",
            "incremental within 1 % of clean; transfer ~85 % at every level",
            ", ".join(f"{k} {v:.3f}" for k, v in noisy.items())
            + " at std 0.05; clean "
            + ", ".join(f"{card(k)['clean_accuracy']:.4f}" for k in noisy),
            cavey_verdict(noisy),
        )
    )
    sweep, rel, se = {}, {}, {}
    for n in ("standard", "fgsm", "mat_mixed", "mat_parallel"):
        r = rec(n)
        if "fgsm_transfer" in r.perturbations and r.perturbations["fgsm_transfer"].done:
            sweep[n] = sum(acc(r, "fgsm_transfer")) / len(acc(r, "fgsm_transfer"))
            clean = r.clean.n_correct / r.clean.n  # type: ignore[union-attr]
            rel[n] = sweep[n] / clean
            se[n] = math.sqrt(sweep[n] * (1 - sweep[n]) / r.clean.n) / clean  # type: ignore[union-attr]
    rows.append(
        (
            "MAT widens the working range (Table 1, CIFAR-10 mean accuracy over strengths)",
            "original 53.73, single 65.86, mixed 65.81, parallel 75.35",
            ", ".join(f"{k} {v:.3f} (R {rel[k]:.3f})" for k, v in sweep.items())
            + " (fgsm_transfer, 0.5..5/255)",
            mat_verdict(rel, se, {n: card(n)["epochs"] for n in rel}),
        )
    )
    try:
        f = rec("fusion", FUSION)
        blur = f.perturbations["foreground_blur"].severities
        fg = f.perturbations["fgsm"].severities
        joint_b = [s.n_correct / s.n for s in blur]
        obj_b = [s.components["object"].accuracy for s in blur]  # type: ignore[index]
        ctx_b = [s.components["context"].accuracy for s in blur]  # type: ignore[index]
        rows.append(
            (
                "Fusion beats the object network under foreground blur (Fig. 3)",
                "+5..+10 at sigma 10",
                "joint "
                + "/".join(f"{v:.2f}" for v in joint_b)
                + " vs object "
                + "/".join(f"{v:.2f}" for v in obj_b)
                + " (context "
                + "/".join(f"{v:.2f}" for v in ctx_b)
                + ")",
                blur_verdict(joint_b, obj_b, [str(s.parameter) for s in blur]),
            )
        )
        joint = [s.n_correct / s.n for s in fg]
        obj = [s.components["object"].accuracy for s in fg]  # type: ignore[index]
        ctx = [s.components["context"].accuracy for s in fg]  # type: ignore[index]
        pick = [0, 3, 6, 9]
        rows.append(
            (
                "Under FGSM on the object network: context degrades slowest, "
                "fusion between (Fig. 4)",
                "curves only, no numbers",
                "eps 1,4,7,10 (/510): object "
                + "/".join(f"{obj[i]:.2f}" for i in pick)
                + ", context "
                + "/".join(f"{ctx[i]:.2f}" for i in pick)
                + ", joint "
                + "/".join(f"{joint[i]:.2f}" for i in pick),
                "holds"
                if obj[-1] < joint[-1] < ctx[-1]
                and ctx[0] - ctx[-1] < joint[0] - joint[-1] < obj[0] - obj[-1]
                else "does not hold",
            )
        )
    except FileNotFoundError:
        pass
    print("| claim | paper | robench on `shapes` | |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def mat_verdict(rel: dict[str, float], se: dict[str, float], epochs: dict[str, int]) -> str:
    """Parallel MAT keeps more of its accuracy over the sweep than every other model.

    Judged only between models trained equally long (as the clean-accuracy rows are), and only
    where the sweep separates them: when the highest and lowest R differ by less than two
    standard errors, the strengths are too weak on `shapes` to show a working range. Each gap
    counts beyond two standard errors of the difference (:func:`lead_verdict`).
    """
    if len(set(epochs.values())) > 1:
        trained = ", ".join(f"{k} {v} ep" for k, v in epochs.items())
        return f"not measurable: trained unequally long ({trained})"
    lo, hi = min(rel, key=rel.__getitem__), max(rel, key=rel.__getitem__)
    if rel[hi] - rel[lo] <= 2 * math.hypot(se[lo], se[hi]):
        return "not measurable: the sweep moves no model's R beyond 2 SE of another's"
    p = "mat_parallel"
    gaps = {n: (rel[p] - r, 2 * math.hypot(se[p], se[n])) for n, r in rel.items() if n != p}
    return lead_verdict(gaps)


def lead_verdict(gaps: dict[str, tuple[float, float]]) -> str:
    """Whether one model leads every other: ``gaps`` maps each to (difference, its 2-SE bound).

    "holds" when every difference is above its bound, "does not hold (below ...)" when any is
    below minus its bound, otherwise "not measurable", naming which gaps count and which do not.
    """
    below = [n for n, (d, b) in gaps.items() if d < -b]
    beaten = [n for n, (d, b) in gaps.items() if d > b]
    if below:
        return "does not hold (below " + ", ".join(below) + ")"
    if gaps and len(beaten) == len(gaps):
        return "holds"
    if beaten:
        close = ", ".join(n for n in gaps if n not in beaten)
        return f"not measurable: above {', '.join(beaten)} beyond 2 SE, within 2 SE of {close}"
    return "not measurable (within 2 SE)"


def limited_row(a: str, b: str, want: str, claim: str, paper: str) -> tuple[str, str, str, str]:
    """``a`` against ``b`` below the ceiling: both trained on the first 2000 training images.

    ``want`` is judged by :func:`gap_verdict`, as in :func:`clean_verdict` (no ceiling there).
    """
    pa, pb = card(a, LIMITED)["clean_accuracy"], card(b, LIMITED)["clean_accuracy"]
    return (
        claim,
        paper,
        f"{pa:.4f} vs {pb:.4f} ({limited_setting(a, b)})",
        gap_verdict(pa, pb, want),
    )


TLAT_CLAIM = "TLAT keeps the most clean accuracy of the adversarial trainings"
TLAT_PAPER = "TLAT 69.4, targeted 68.3, LS 67.1, FGSM 65.8"


def tlat_verdict(accs: dict[str, float], *, ceiling: bool = False) -> str:
    """Whether ``accs["tlat"]`` is above every other clean accuracy in ``accs`` beyond 2 SE.

    Each pair is judged at two standard errors of its difference (:func:`lead_verdict`). With
    ``ceiling``, gaps all within 2 SE with every model at the ceiling are reported as the ceiling
    hiding them (the full-data zoo).
    """
    t = accs["tlat"]
    gaps = {n: (t - a, two_se(t, a)) for n, a in accs.items() if n != "tlat"}
    if ceiling and all(abs(d) <= b for d, b in gaps.values()) and min(accs.values()) >= CEILING:
        return f"not measurable: at the ceiling (>= {CEILING}), gaps within 2 SE"
    return lead_verdict(gaps)


def limited_setting(*names: str) -> str:
    """How the data-limited cards of ``names`` were trained, for the table."""
    cards = [card(n, LIMITED) for n in names]
    n = re.search(r"--train-images (\d+)", cards[0]["command"]).group(1)  # type: ignore[union-attr]
    epochs = [c["epochs"] for c in cards]
    if len(set(epochs)) > 1:
        return f"{n} training images, " + " vs ".join(map(str, epochs)) + " ep"
    return f"{n} training images, {'both' if len(names) == 2 else 'all'} {epochs[0]} ep"


def limited(*names: str) -> bool:
    """Whether the data-limited cards of all ``names`` are committed."""
    return all((LIMITED / f"{n}.json").exists() for n in names)


def cavey_verdict(noisy: dict[str, float]) -> str:
    """Holds when every noise-trained model beats standard at std 0.05, clean kept within 1 pt."""
    trained = [k for k in noisy if k != "standard"]
    base = card("standard")["clean_accuracy"]
    ok = [
        noisy[k] > noisy["standard"] and card(k)["clean_accuracy"] >= base - 0.01 for k in trained
    ]
    if trained and all(ok):
        return "holds"
    return (
        "holds for " + ", ".join(k for k, o in zip(trained, ok, strict=True) if o)
        if any(ok)
        else "does not hold"
    )


def blur_verdict(joint: list[float], obj: list[float], params: list[str]) -> str:
    """Holds at every level, from some level on, or not at all."""
    above = [j >= o for j, o in zip(joint, obj, strict=True)]
    if all(above):
        return "holds"
    first = next((i for i in range(len(above)) if all(above[i:])), None)
    return "does not hold" if first is None else f"holds from {params[first].split(' px')[0]} px on"


def _bench() -> set[str]:
    from robench.perturbations import suites

    return set(suites()["mtlat24"])


if __name__ == "__main__":
    main()
