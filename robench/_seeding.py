"""Seeds derived from names, explicit generators, and the one fence around the global RNG."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
import torch

__all__ = ["derive_seed", "make_generator", "global_seed_scope"]

_MASK63 = (1 << 63) - 1


def derive_seed(run_seed: int, *keys: object) -> int:
    """A 63-bit seed from a run seed and any keys, stable across processes and machines.

    Python's ``hash()`` is salted per process, so blake2b over the keys' text is used instead.

    Example:
        >>> derive_seed(0, "gaussian_noise", 3, 17) == derive_seed(0, "gaussian_noise", 3, 17)
        True
        >>> derive_seed(0, "a") != derive_seed(1, "a")
        True
    """
    text = "\x1f".join([str(int(run_seed)), *(str(k) for k in keys)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) & _MASK63)
    return g


@contextlib.contextmanager
def global_seed_scope(seed: int) -> Iterator[None]:
    """Seed torch, numpy and ``random`` globally inside the block and restore them after.

    Foolbox and some torch ops draw from the global RNGs; this is the only place robench seeds them.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    # torch.cuda.is_initialized carries no annotations in torch's stubs.
    cuda_initialized = cast(Callable[[], bool], torch.cuda.is_initialized)()
    devices = list(range(torch.cuda.device_count())) if cuda_initialized else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) & _MASK63)
        np.random.seed(int(seed) % (2**32))
        random.seed(int(seed))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
