"""Training: ``loop`` holds :func:`fit`, the one loop; ``job`` holds the job, :func:`train`.

:func:`train` builds the data, the model and the defense, calls :func:`fit`, and writes the
checkpoint and its zoo card; :func:`fit` only trains.
"""

from __future__ import annotations

from .job import default_epochs, train
from .loop import TrainConfig, TrainResult, evaluate_accuracy, fit

__all__ = ["TrainConfig", "TrainResult", "default_epochs", "evaluate_accuracy", "fit", "train"]
