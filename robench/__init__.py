"""robench: how robust is your image classifier, to corruptions and attacks, in one table."""

from __future__ import annotations

__version__ = "0.1.0"

from . import perturbations  # noqa: E402  (registers every perturbation)
from .data import list_datasets, load_dataset  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .loading import load_model  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .report.leaderboard import build_leaderboard  # noqa: E402
from .trainer import train  # noqa: E402

__all__ = [
    "__version__", "perturbations", "evaluate", "train", "load_model", "load_dataset", "list_datasets",
    "create_model", "list_models", "build_leaderboard",
]  # fmt: skip
