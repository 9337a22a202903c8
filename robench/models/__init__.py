"""Models: the architecture registry, composite models, checkpoints, loading model files, the zoo.

Every model takes images in [0, 1]: the normalisation lives inside the model (``Normalize``), so
attack epsilons are in pixel units and checkpoints carry their own mean/std. Pretrained timm,
torchvision and Hugging Face models (:mod:`robench.models.specs`) carry their resize, crop and
normalisation inside too (:class:`PreprocessedModel`).
"""

from __future__ import annotations

from robench.models import architectures, deepcorrect, fusion, mat, transfer  # noqa: F401  (registers the architectures)
from robench.models._base import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ImageClassifier,
    ModelSpec,
    Normalize,
    create_model,
    list_models,
    register_model,
)
from robench.models.preprocess import Preprocess, PreprocessedModel

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "ImageClassifier",
    "ModelSpec",
    "Normalize",
    "Preprocess",
    "PreprocessedModel",
    "create_model",
    "list_models",
    "register_model",
]
