"""robench: how robust is your image classifier, to corruptions and attacks, in one table.

The public API: :func:`evaluate` a model (and get a :class:`Report`), :func:`train` one with a
defense, :func:`build_leaderboard` from result files, and the registries behind them
(:mod:`robench.perturbations`, :func:`create_model`, :func:`load_dataset`). :func:`corrupt` and
:func:`get_corruption_names` are a drop-in for imagecorruptions' functions of the same names.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from torch import nn

from robench import evaluation as _evaluation
from robench import perturbations
from robench._version import __version__
from robench.data import list_datasets, load_dataset
from robench.models import create_model, list_models
from robench.models.loading import load_model
from robench.perturbations.compat import corrupt, get_corruption_names
from robench.report import Report, write_outputs
from robench.report.leaderboard import build_leaderboard
from robench.training import train

__all__ = [
    "Report",
    "__version__",
    "build_leaderboard",
    "corrupt",
    "create_model",
    "evaluate",
    "get_corruption_names",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
    "perturbations",
    "train",
]


def evaluate(model: nn.Module | str | Path, *, plots: bool = True, **options: Any) -> Report:
    """Score ``model`` on the benchmark; write ``<run>.json``, ``<run>.csv``, a long CSV and plots.

    Args:
        model: an ``nn.Module`` taking [0, 1] images, a checkpoint path or ``zoo:NAME``.
        plots: write the PNG plots (severity curves, R bars).
        **options: the keyword options of :func:`robench.evaluation.evaluate` (``dataset``,
            ``n_images``, ``perturbations``, ``baseline``, ``out``, ...).

    Returns:
        The :class:`Report` of the run: the record plus the files written.
    """
    run = _evaluation.evaluate(
        model, write_outputs=functools.partial(write_outputs, plots=plots), **options
    )
    return Report(run.record, run.paths)
