"""Print the README's zoo table from the committed records and cards.

python scripts/zoo_table.py [RECORDS_DIR] [ZOO_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robench import perturbations as P
from robench.evaluation.record import Record, read_record

ROOT = Path(__file__).resolve().parents[1]
RECORDS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "leaderboard/shapes"
ZOO = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "robench/models/zoo_files/shapes"
BENCH = set(P.names(suite="mtlat24"))


def _first_accuracy(r: Record, name: str) -> float | None:
    """Accuracy at the first severity of ``name``, or None where the record lacks it."""
    e = r.perturbations.get(name)
    return None if e is None or not e.done else e.severities[0].accuracy


def main() -> None:
    """Print the zoo table (markdown) on stdout."""
    rows = []
    for f in sorted(RECORDS.glob("*__n500.json")):
        r = read_record(f)
        p = r.perturbations
        card = json.loads((ZOO / f"{r.model.id}.json").read_text())

        def acc(n: str, r: Record = r) -> float | None:
            return _first_accuracy(r, n)

        s = r.summary.mean_R if r.summary else {}
        scored = [e.scores for n, e in p.items() if e.done and e.scores and n in BENCH]
        marks = [sc.marker for sc in scored]
        sig = sum(1 for sc in scored if sc.significant)
        flags = [c.name for c in (r.gradient_masking or ()) if c.passed is False]
        assert r.clean is not None
        rows.append(
            (
                r.model.id,
                card["epochs"],
                card["clean_accuracy"],
                r.clean.accuracy,
                s.get("corruption"),
                s.get("white-box"),
                s.get("transfer"),
                acc("pgd"),
                acc("pgd_ll"),
                acc("cw_l2"),
                acc("pgd_8_255"),
                acc("autoattack_linf"),
                marks.count("+"),
                marks.count("-"),
                sig,
                flags,
            )
        )
    rows.sort(key=lambda t: (t[0] != "standard", -t[3]))

    def fmt(v: float | None, d: int) -> str:
        return "" if v is None else f"{v:.{d}f}"

    print(
        "| model | epochs | clean (2000) | clean (500) | mean R corruptions | mean R white-box "
        "| mean R transfer | PGD acc | PGD-LL acc | cw_l2 acc | PGD-10 8/255 acc "
        "| AutoAttack Linf 8/255 acc | + / - of 24 | significant | masking flag |"
    )
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | --- |"
    )
    for t in rows:
        base = t[0] == "standard"
        cells = [
            t[0],
            str(t[1]),
            fmt(t[2], 4),
            fmt(t[3], 3),
            fmt(t[4], 2),
            fmt(t[5], 2),
            fmt(t[6], 2),
            *(fmt(v, 3) for v in t[7:12]),
        ]
        cells += ["(baseline)", ""] if base else [f"{t[12]} / {t[13]}", str(t[14])]
        cells.append(", ".join(t[15]) or "none")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
