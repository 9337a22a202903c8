"""Evaluation: ``job`` holds :func:`evaluate` (the job: baseline, locks, files); ``loop`` computes.

``record`` is the result record (build, read, validate, score); ``attack_step`` runs one attack
column; ``plan`` is the dry run; ``examples`` crafts the leaderboard's adversarial example images.
"""

from __future__ import annotations

from .job import EvalRun, OutputWriter, evaluate, resolve_baseline
from .loop import EvalConfig, evaluate_record
from .plan import Plan, plan_evaluation
from .record import ResultError, read_record, write_record

__all__ = [
    "EvalConfig",
    "EvalRun",
    "OutputWriter",
    "Plan",
    "ResultError",
    "evaluate",
    "evaluate_record",
    "plan_evaluation",
    "read_record",
    "resolve_baseline",
    "write_record",
]
