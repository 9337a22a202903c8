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
            and all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(self.numpy, now.numpy, strict=True)
            )
            and self.py == now.py
        )


@pytest.fixture
def rng_guard() -> RngSnapshot:
    """Snapshot of the global RNGs taken at the start of the test."""
    return RngSnapshot()


@pytest.fixture(scope="session")
def tiny_trained() -> torch.nn.Module:
    """A small_cnn (width 8) trained a few seconds on shapes: above chance, far from perfect."""
    from robench.data import load_dataset
    from robench.models import create_model

    ds = load_dataset(
        "shapes", "test"
    )  # the 2000 test images are enough to learn something quickly
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("small_cnn", 10, width=8)
        opt = torch.optim.Adam(model.parameters(), lr=0.005)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(
            250
        ):  # ~5 s; reaches about 50 % on held-out images (60 steps stayed at chance)
            idx = torch.randint(0, 1500, (64,), generator=g)
            x, y = ds.get_batch(idx)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
