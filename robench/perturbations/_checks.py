"""The input check every perturbation and the reference engine share (no other dependency)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_batch"]


def check_batch(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a float N x C x H x W batch with values in [0, 1]."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected a batch of shape N x C x H x W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor with values in [0, 1], got {x.dtype}")
    if x.device.type == "meta":
        raise ValueError("expected a tensor holding data (cpu or cuda), got one on the meta device")
    if x.shape[0] == 0:
        return
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"expected images of at least 1 x 1 pixels, got shape {tuple(x.shape)}")
    lo_t, hi_t = torch.aminmax(
        x.detach()
    )  # one pass; NaN propagates into both and fails the test below
    lo, hi = float(lo_t), float(hi_t)
    if not (0.0 <= lo and hi <= 1.0):
        if not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or Inf values")
        raise ValueError(f"expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
