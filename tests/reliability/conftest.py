"""Reliability suite plumbing: a ledger of every fault, input and security case tried, summarised.

Tests record each case through the ``cases`` fixture (``cases.check(category, label, ok)``), which
asserts as it records, so a case is only counted when it was actually checked. At the end of the
run the summary is printed after pytest's own (``pytest_terminal_summary``) and written to
``$ROBENCH_RELIABILITY_SUMMARY`` (default: ``reliability-summary.json`` under pytest's cache
folder), so CI logs and artifacts both keep it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _relutil import CaseLedger

LEDGER = CaseLedger()


@pytest.fixture
def cases() -> Iterator[CaseLedger]:
    """The session's case ledger."""
    yield LEDGER


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print (and save) what the reliability suite tried, when any of it ran."""
    if not any(LEDGER.tried.values()):
        return
    terminalreporter.section("robench reliability summary")
    for line in LEDGER.summary_lines():
        terminalreporter.write_line(line)
    target = os.environ.get("ROBENCH_RELIABILITY_SUMMARY")
    path = (
        Path(target)
        if target
        else Path(str(config.rootpath)) / ".pytest_cache" / "reliability-summary.json"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(LEDGER.to_dict(), indent=1) + "\n")
        terminalreporter.write_line(f"(saved to {path})")
    except OSError as exc:  # a read-only checkout still prints the summary
        terminalreporter.write_line(f"(could not save the summary: {exc})")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_trained: Any) -> Path:
    """A robench checkpoint (format 2, content digest) of the session's tiny trained small_cnn."""
    from robench.models.checkpoint import CheckpointMeta, save_checkpoint

    m = tiny_trained
    meta = CheckpointMeta(
        arch="small_cnn",
        num_classes=10,
        input_size=32,
        arch_kwargs={"width": 8},
        mean=tuple(m.normalize.mean.flatten().tolist()),
        std=tuple(m.normalize.std.flatten().tolist()),
        dataset="shapes",
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(m, path, meta)
    return path


@pytest.fixture(scope="session")
def eval_reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path
) -> tuple[Path, list[float]]:
    """An uninterrupted ``robench evaluate`` of the tiny checkpoint: (output folder, timeline).

    The timeline holds the seconds at which the 1st, 2nd... perturbation was saved, then the total.
    """
    from _relutil import RUN_JSON, done_count, eval_cmd, timeline

    out = tmp_path_factory.mktemp("eval-reference")
    rc, err, times = timeline(eval_cmd(tiny_ckpt, out), lambda: done_count(out / RUN_JSON))
    assert rc == 0, err[-2000:]
    return out, times
