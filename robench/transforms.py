"""Corruptions as training augmentation: a ``torch.nn.Module`` that composes with torchvision v2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robench import perturbations as P

__all__ = ["Corrupt"]


class Corrupt(nn.Module):
    """Apply a registered corruption to an image or a batch, at a random severity per image.

    Args:
        name: a corruption name from ``robench.perturbations.names(kind="corruption")``.
        severity: one severity, or the severities to draw from uniformly per image.
        p: probability that an image is corrupted at all.
        preset: parameter table (``cifar``, ``tiny``, ``imagenet``); default: each batch's image
            size's (:func:`robench.perturbations.resolve_preset`).
        generator: the source of every random choice (severity, whether to apply, the corruption's
            own randomness); a fresh OS-seeded one when omitted. The global RNG is never used.

    Shape:
        (C, H, W) or (N, C, H, W), float in [0, 1] or uint8 -> same shape and dtype.

    Example:
        >>> import torch
        >>> from torchvision.transforms import v2
        >>> to_float = v2.ToDtype(torch.float32, scale=True)
        >>> t = v2.Compose([to_float, Corrupt("gaussian_noise", severity=(1, 2, 3))])
        >>> t(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        name: str,
        severity: int | Sequence[int] = (1, 2, 3, 4, 5),
        *,
        p: float = 1.0,
        preset: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = P.get(name)
        if self.spec.kind != "corruption":
            raise ValueError(
                f"{name!r} is an attack, not a corruption; Corrupt takes corruptions only"
            )
        choices = (severity,) if isinstance(severity, int) else tuple(severity)
        for s in choices:
            self.spec.params(s, preset or "cifar")  # validates severity and preset
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.name, self.choices, self.p, self.preset = name, choices, p, preset
        if generator is None:
            import secrets

            generator = torch.Generator().manual_seed(secrets.randbits(62))
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        """Corrupt ``x`` (see the class docstring)."""
        single = x.dim() == 3
        batch = x[None] if single else x
        is_uint8 = batch.dtype == torch.uint8
        xf = batch.float() / 255.0 if is_uint8 else batch
        n = xf.shape[0]
        g = self.generator
        apply = torch.rand(n, generator=g) < self.p
        pick = torch.randint(len(self.choices), (n,), generator=g)
        out = xf.clone()
        for k, sev in enumerate(self.choices):
            idx = (apply & (pick == k)).nonzero().flatten()
            if len(idx):
                out[idx.to(out.device)] = self.spec(
                    xf[idx.to(xf.device)], sev, generator=g, preset=self.preset
                )
        if is_uint8:
            out = (out * 255.0).round().to(torch.uint8)
        out = out[0] if single else out
        return _rewrap(x, out)

    def extra_repr(self) -> str:
        """The options shown in the module's repr."""
        return f"{self.name!r}, severity={self.choices}, p={self.p}, preset={self.preset!r}"


def _rewrap(like: Tensor, out: Tensor) -> Tensor:
    """Keep torchvision's ``tv_tensors.Image`` type when given one."""
    try:
        from torchvision import tv_tensors
    except ImportError:  # pragma: no cover
        return out
    return tv_tensors.wrap(out, like=like) if isinstance(like, tv_tensors.TVTensor) else out
