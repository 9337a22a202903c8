"""Evaluation: ``job`` holds :func:`evaluate` (the job: baseline, locks, files); ``loop`` computes.

``record`` is the typed result record (build, read, write), ``validation`` its one validator and
``scoring`` fills R, markers and mCE from its counts; ``attack_step`` runs one attack column;
``plan`` is the dry run; ``examples`` crafts the leaderboard's adversarial example images.
"""

from __future__ import annotations

from .job import EvalRun, OutputWriter, evaluate, resolve_baseline
from .loop import EvalConfig, evaluate_record
from .plan import Plan, plan_evaluation
from .record import Record, ResultError, read_record, write_record

__all__ = [
    "EvalConfig",
    "EvalRun",
    "OutputWriter",
    "Plan",
    "Record",
    "ResultError",
    "evaluate",
    "evaluate_record",
    "plan_evaluation",
    "read_record",
    "resolve_baseline",
    "write_record",
]
