from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from robench._registry import Registry, UnknownNameError
from robench._seeding import derive_seed, global_seed_scope, make_generator


def test_registry_add_get_names_and_duplicates() -> None:
    r: Registry[int] = Registry("thing")
    r.add("gaussian_noise", 1)
    r.add("shot_noise", 2)
    assert r.get("shot_noise") == 2
    assert r.names() == ["gaussian_noise", "shot_noise"]
    assert r.names("gauss*") == ["gaussian_noise"]
    assert len(r) == 2 and list(r) == [1, 2] and "shot_noise" in r
    with pytest.raises(ValueError, match="already registered"):
        r.add("shot_noise", 3)


def test_registry_miss_suggests_close_names() -> None:
    r: Registry[int] = Registry("perturbation")
    r.add("gaussian_noise", 1)
    with pytest.raises(UnknownNameError) as info:
        r.get("gausian_noise")
    msg = str(info.value)
    assert "did you mean gaussian_noise" in msg and "robench list perturbations" in msg


def test_derive_seed_is_stable_across_processes() -> None:
    here = derive_seed(7, "glass_blur", 3, 12)
    code = "from robench._seeding import derive_seed; print(derive_seed(7, 'glass_blur', 3, 12))"
    other = int(
        subprocess.check_output([sys.executable, "-c", code], env={"PYTHONHASHSEED": "123"}).strip()
    )
    assert here == other
    assert 0 <= here < 2**63
    assert derive_seed(7, "glass_blur", 3, 13) != here
    assert derive_seed(7, "glass_blur", 31) != derive_seed(
        7, "glass_blur", 3, 1
    )  # keys are separated


def test_make_generator_and_global_scope_restore_state() -> None:
    a = torch.rand(3, generator=make_generator(5))
    b = torch.rand(3, generator=make_generator(5))
    assert torch.equal(a, b)
    before = torch.random.get_rng_state().clone()
    with global_seed_scope(1):
        x1 = torch.rand(2)
    with global_seed_scope(1):
        x2 = torch.rand(2)
    assert torch.equal(x1, x2)
    assert torch.equal(before, torch.random.get_rng_state())


def test_import_has_no_global_side_effects() -> None:
    code = """
import random, numpy as np, torch
t = torch.random.get_rng_state().clone(); n = np.random.get_state()[1].copy(); p = random.getstate()
had_float_ = hasattr(np, 'float_')
import robench, sys
assert torch.equal(t, torch.random.get_rng_state())
assert (n == np.random.get_state()[1]).all()
assert p == random.getstate()
assert hasattr(np, 'float_') == had_float_
assert 'imagecorruptions' not in sys.modules and 'foolbox' not in sys.modules
print(robench.__version__)
"""
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.strip() == __import__("robench").__version__
