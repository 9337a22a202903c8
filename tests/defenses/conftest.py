"""Shared fixtures of the defense tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import robench.training.job as trainer_mod


@pytest.fixture
def capture_saved(monkeypatch: pytest.MonkeyPatch) -> Callable[[Tensor], dict[str, Tensor]]:
    """``capture_saved(x)``: the next checkpoint ``robench.train`` saves is run on ``x`` first.

    The returned dict gets ``"out"``, the outputs of the model as it was saved (eval mode), so a
    test can check that loading the checkpoint rebuilds exactly that model.
    """

    def start(x: Tensor) -> dict[str, Tensor]:
        got: dict[str, Tensor] = {}
        original = trainer_mod.save_checkpoint

        def spy(model: nn.Module, path: object, meta: object) -> str:
            with torch.no_grad():
                got["out"] = model.eval()(x)
            return original(model, path, meta)

        monkeypatch.setattr(trainer_mod, "save_checkpoint", spy)
        return got

    return start
