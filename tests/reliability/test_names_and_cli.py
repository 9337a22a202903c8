"""Unknown names and invalid command-line values, fuzzed through the real CLI (in process).

A typo of any registered name must be answered with the name it came from among the suggestions;
an invalid value with one ``Error:`` line (exit 1, or 2 for click's usage errors), no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _relutil import CaseLedger
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from robench import perturbations as P
from robench.cli import main
from robench.data import DATASETS
from robench.defenses import DEFENSES
from robench.models import MODELS
from robench.models.zoo import list_zoo


def fuzz(n: int) -> Any:
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


REGISTRIES = {
    "perturbation": P.names(),
    "suite": list(P.suites()),
    "dataset": DATASETS.names(),
    "defense": DEFENSES.names(),
    "model": MODELS.names(),
    "zoo entry": [
        ref.removeprefix("zoo:shapes/") for ref, _ in list_zoo() if ref.startswith("zoo:shapes/")
    ],
}


@st.composite
def typos(draw: Any) -> tuple[str, str, str]:
    """(registry, name, one-edit typo of the name)."""
    kind = draw(st.sampled_from([k for k, v in REGISTRIES.items() if v]))
    name = draw(st.sampled_from(REGISTRIES[kind]))
    i = draw(st.integers(0, len(name) - 1))
    letter = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
    op = draw(st.sampled_from(["delete", "replace", "insert", "swap"]))
    if op == "delete":
        typo = name[:i] + name[i + 1 :]
    elif op == "replace":
        typo = name[:i] + letter + name[i + 1 :]
    elif op == "insert":
        typo = name[:i] + letter + name[i:]
    else:
        j = min(i + 1, len(name) - 1)
        typo = name[:i] + name[j] + name[i] + name[j + 1 :] if j > i else name[:-1] + letter
    return kind, name, typo


def _clean_error(res: Result) -> bool:
    return (
        res.exit_code in (1, 2)
        and (res.exception is None or isinstance(res.exception, SystemExit))
        and "Traceback" not in res.output
        and "Error" in res.output
        and len(res.output) < 2000
    )


@fuzz(60)
@given(t=typos())
def test_a_typo_of_any_registered_name_is_answered_with_that_name(
    t: tuple[str, str, str], tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger
) -> None:
    kind, name, typo = t
    assume(typo and typo.strip() == typo and typo not in REGISTRIES[kind] and len(name) >= 3)
    out = str(tmp_path / "o")
    args = {
        "perturbation": ["evaluate", str(tiny_ckpt), "-p", typo, "--out", out],
        "suite": ["list", "perturbations", "--suite", typo],
        "dataset": ["evaluate", str(tiny_ckpt), "--dataset", typo, "--out", out],
        "defense": ["train", "--defense", typo, "--out", f"{out}/x.pt"],
        "model": ["train", "--arch", typo, "-a", "width=8", "--out", f"{out}/x.pt"],
        "zoo entry": ["evaluate", f"zoo:{typo}", "--out", out],
    }[kind]
    res = CliRunner().invoke(main, args)
    hint = res.output.partition("did you mean")[2]
    ok = (
        _clean_error(res)
        and name in hint.replace(",", " ").replace("?", " ").replace("zoo:", "").split()
    )
    cases.check(
        "input",
        f"unknown {kind} {typo!r} (for {name!r})",
        ok,
        res.output[-300:],
        kind=f"unknown {kind} name",
    )


def _not_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


WORDS = st.text(alphabet="abcxyz.-_/ ", min_size=1, max_size=8).filter(_not_int)


@st.composite
def bad_cli(draw: Any) -> tuple[str, list[str]]:
    """(what is wrong, extra arguments) for a command whose other arguments are valid and tiny."""
    cmd = draw(st.sampled_from(["evaluate", "train", "gallery", "preview"]))
    if cmd == "evaluate":
        opt, value = draw(
            st.sampled_from(
                [
                    ("--n-images", draw(st.integers(-(10**6), 0).map(str) | WORDS)),
                    ("--batch-size", draw(st.integers(-(10**6), 0).map(str) | WORDS)),
                    ("--seed", draw(WORDS)),
                    (
                        "--device",
                        draw(
                            st.sampled_from(["tpu", "gpu", "cuda:x", "CPU", "", "mps0", "cuda:-1"])
                        ),
                    ),
                    ("--suite", draw(st.sampled_from(["", " ", "../mtlat24", "mtlat24 "]))),
                    (
                        "--baseline",
                        draw(
                            st.sampled_from(
                                ["missing.json", "zoo:", "zoo:../standard", "zoo:/etc/x", "nope.pt"]
                            )
                        ),
                    ),
                    ("--out", "FILE"),
                    (
                        "MODEL",
                        draw(
                            st.sampled_from(
                                [
                                    "zoo:",
                                    "zoo:../../etc/passwd",
                                    "zoo:a\\b",
                                    "zoo:shapes/",
                                    "missing.pt",
                                    "DIR",
                                ]
                            )
                        ),
                    ),
                ]
            )
        )
    elif cmd == "train":
        opt, value = draw(
            st.sampled_from(
                [
                    ("--epochs", draw(st.integers(-100, 0).map(str) | WORDS)),
                    (
                        "--lr",
                        draw(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400", "abc"])),
                    ),
                    ("--batch-size", "0"),
                    ("--train-images", draw(st.integers(-5, 0).map(str))),
                    ("-o", draw(st.sampled_from(["novalue", "=1", "", "foo=1"]))),
                    (
                        "-a",
                        draw(
                            st.sampled_from(
                                [
                                    "width=abc",
                                    "width=0",
                                    "width=-2",
                                    "bogus=1",
                                    "=3",
                                    "width",
                                    "width=1.5",
                                ]
                            )
                        ),
                    ),
                    ("--device", draw(st.sampled_from(["tpu", "gpu", "CPU"]))),
                    ("--out", "FILE/x.pt"),
                ]
            )
        )
    elif cmd == "gallery":
        opt, value = draw(
            st.sampled_from(
                [
                    ("-n", "0"),
                    ("-n", "7"),
                    ("--preset", "mnist"),
                    ("-p", "pgd"),
                    ("-p", "nonexistent"),
                    ("--suite", "nope"),
                ]
            )
        )
    else:
        opt, value = draw(
            st.sampled_from([("-n", "0"), ("-n", "401"), ("--split", "val"), ("--dataset", "")])
        )
    return cmd, [opt, value]


@fuzz(70)
@given(bad=bad_cli())
def test_invalid_cli_values_give_one_clear_error(
    bad: tuple[str, list[str]], tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger
) -> None:
    cmd, (opt, value) = bad
    (tmp_path / "FILE").write_text("a file where a folder should be")
    (tmp_path / "DIR").mkdir(exist_ok=True)
    value = str(tmp_path / value) if value in ("FILE", "FILE/x.pt", "DIR") else value
    out = str(tmp_path / "o")
    model = value if opt == "MODEL" else str(tiny_ckpt)
    extra = [] if opt == "MODEL" else [opt, value]
    args = {
        "evaluate": [
            "evaluate",
            model,
            "-p",
            "contrast",
            "--n-images",
            "8",
            "--batch-size",
            "8",
            "--baseline",
            "none",
            "--no-plots",
            "--out",
            out,
            *extra,
        ],
        "train": [
            "train",
            "--train-images",
            "64",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "-a",
            "width=4",
            "--out",
            f"{out}/t.pt",
            *extra,
        ],
        "gallery": ["gallery", "-n", "1", "--out", f"{out}/g.png", *extra],
        "preview": ["data", "preview", "-n", "4", "--out", f"{out}/p.png", *extra],
    }[cmd]
    res = CliRunner().invoke(main, args)
    cases.check(
        "input",
        f"invalid CLI value: {cmd} {opt} {value!r}",
        _clean_error(res),
        res.output[-300:],
        kind=f"invalid {cmd} value",
    )


@pytest.mark.parametrize(
    "ref", ["zoo:../standard", "zoo:shapes/../../model_zoo/shapes/standard", "zoo:/etc/passwd"]
)
def test_zoo_references_cannot_leave_the_zoo(ref: str, tmp_path: Path, cases: CaseLedger) -> None:
    res = CliRunner().invoke(main, ["evaluate", ref, "-p", "contrast", "--out", str(tmp_path)])
    cases.check(
        "security",
        f"zoo reference {ref!r} refused",
        _clean_error(res) and "invalid zoo reference" in res.output,
        res.output[-200:],
        kind="path traversal in a zoo reference",
    )
