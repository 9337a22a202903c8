"""Shared fixtures: a private data cache per test session, tiny inputs, the global-RNG guard."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep generated data out of the user's ~/.cache (unless ROBENCH_TEST_CACHE says where)."""
    old = os.environ.get("ROBENCH_CACHE")
    path = Path(os.environ.get("ROBENCH_TEST_CACHE") or tmp_path_factory.mktemp("robench-cache"))
    os.environ["ROBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ROBENCH_CACHE", None)
    else:
        os.environ["ROBENCH_CACHE"] = old


class RngSnapshot:
    """The global torch, numpy and ``random`` states, comparable before/after a call."""

    def __init__(self) -> None:
        self.torch = torch.random.get_rng_state().clone()
        self.numpy = np.random.get_state()
        self.py = random.getstate()

    def unchanged(self) -> bool:
        now = RngSnapshot()
        return (
            torch.equal(self.torch, now.torch)
            and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(self.numpy, now.numpy))
            and self.py == now.py
        )


@pytest.fixture
def rng_guard() -> RngSnapshot:
    """Snapshot of the global RNGs taken at the start of the test."""
    return RngSnapshot()
