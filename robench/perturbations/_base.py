"""The corruption contract: specs, per-image randomness, input checks, registration, suites."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from robench._registry import Registry
from robench._seeding import derive_seed, make_generator
from robench.perturbations._checks import check_batch

__all__ = [
    "PRESETS",
    "Preset",
    "RandomSource",
    "CorruptionSpec",
    "PERTURBATIONS",
    "SUITES",
    "register_corruption",
    "register_suite",
    "check_batch",
    "preset_for_size",
    "resolve_preset",
    "image_side",
]

Preset = Literal["cifar", "tiny", "imagenet"]
PRESETS: tuple[Preset, ...] = ("cifar", "tiny", "imagenet")
PRESET_SIZE: Mapping[str, int] = {"cifar": 32, "tiny": 64, "imagenet": 224}
Kind = Literal["corruption", "attack"]
Family = Literal[
    "noise",
    "blur",
    "weather",
    "digital",
    "geometric",
    "occlusion",
    "color",
    "white-box",
    "black-box",
]

PERTURBATIONS: Registry[Any] = Registry("perturbation")
SUITES: dict[str, tuple[str, ...]] = {}


def preset_for_size(side: int) -> Preset:
    """The preset of an image side for a dataset that declares none.

    ``cifar`` up to 48 px, ``tiny`` up to 128 px, else ``imagenet``.
    """
    if side <= 48:
        return "cifar"
    if side <= 128:
        return "tiny"
    return "imagenet"


def image_side(x: Tensor | int | tuple[int, int]) -> int:
    """The side that stands for an image's size: the shorter of H and W.

    It picks the preset (:func:`resolve_preset`) and scales the parameters given in pixels at a
    preset's size (frost's texture, elastic's fields, the M-TLAT occlusion and shifts, the
    foreground blur), so a 200 x 300 photo is treated like a 200 px one. For square images it is
    the side. ``x`` is a batch or image tensor (its last two dimensions), a side or ``(H, W)``.
    """
    if isinstance(x, Tensor):
        if x.dim() < 2:
            raise ValueError(f"expected an image of shape (..., H, W), got shape {tuple(x.shape)}")
        return int(min(x.shape[-2], x.shape[-1]))
    if isinstance(x, tuple):
        return int(min(x))
    return int(x)


def resolve_preset(x: Tensor | int | tuple[int, int], preset: str | None = None) -> Preset:
    """The parameter table a corruption call uses: ``preset`` if given, else the image size's.

    With no preset, the shorter image side decides (:func:`preset_for_size`: ``cifar`` up to 48
    px, ``tiny`` up to 128 px, else ``imagenet``), so ``get(name)(x, severity)`` corrupts a
    224 px photo with the ImageNet-C parameters and a 32 px one with CIFAR-10-C's. This is the
    choice every :class:`CorruptionSpec` call makes; call it to read that choice back.

    Args:
        x: a batch or image tensor (its last two dimensions count), a side, or ``(H, W)``.
        preset: an explicit preset (``cifar``, ``tiny`` or ``imagenet``), returned validated.

    Returns:
        The preset name.

    Example:
        >>> import torch
        >>> resolve_preset(torch.rand(2, 3, 224, 224))
        'imagenet'
        >>> resolve_preset((200, 300)), resolve_preset(32), resolve_preset(64, "imagenet")
        ('imagenet', 'cifar', 'imagenet')
    """
    if preset is not None:
        return check_preset(preset)
    return preset_for_size(image_side(x))


def check_preset(preset: str) -> Preset:
    """Validate a preset name."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return preset


_PARALLEL_NUMEL = 1 << 15


def _each(fn: Callable[[int], object], items: range, *, large: bool) -> None:
    """Run ``fn`` over image indices; large per-image work goes to a small thread pool.

    Each image owns its generator and its output slot, so the result is identical to the
    sequential loop; torch's RNG kernels and numpy's arithmetic release the GIL, which makes
    the pool pay off. Every worker takes one strided share of the images (one task per worker:
    a task per image costs more in hand-offs than a 224 px draw takes).
    """
    workers = min(torch.get_num_threads(), len(items))
    if not large or workers < 2:
        for i in items:
            fn(i)
        return
    from concurrent.futures import ThreadPoolExecutor

    def run(share: range) -> None:
        for i in share:
            fn(i)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, [items[k::workers] for k in range(workers)]))


class RandomSource:
    """One ``torch.Generator`` per image: every draw is stacked over the batch.

    Drawing image by image keeps each image's randomness independent of the batch it sits in,
    its position and the device, which is what makes every evaluated model see the same images.
    Draws happen on the generators' device (CPU by default) and are then moved to ``device``.

    Args:
        generators: one generator per image, in batch order.
        device: where the returned tensors live.
    """

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu"):
        self.generators = list(generators)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def slice(self, start: int, stop: int) -> RandomSource:
        """The source of images ``start:stop`` (the same generators, not copies)."""
        return RandomSource(self.generators[start:stop], self.device)

    def _stack(
        self, draw: Callable[[torch.Generator], Tensor], dtype: torch.dtype | None
    ) -> Tensor:
        first = draw(self.generators[0])
        out = torch.empty(
            (len(self.generators), *first.shape), dtype=first.dtype, device=first.device
        )
        out[0] = first

        def fill(i: int) -> None:
            out[i] = draw(self.generators[i])  # one buffer: torch.stack of many large draws is slow

        _each(fill, range(1, len(self.generators)), large=first.numel() >= _PARALLEL_NUMEL)
        return out.to(device=self.device, dtype=dtype or out.dtype)

    def _fill(
        self, shape: tuple[int, ...], draw: Callable[[Tensor, torch.Generator], object]
    ) -> Tensor:
        """``(N, *shape)``, default dtype, on the generators' device; image i drawn in place."""
        g0 = self.generators[0]
        out = torch.empty((len(self.generators), *shape), device=g0.device)
        self.map(lambda i, g: draw(out[i], g), large=out[0].numel() >= _PARALLEL_NUMEL)
        return out

    def map(self, fn: Callable[[int, torch.Generator], object], *, large: bool = True) -> None:
        """Call ``fn(i, generator_i)`` for every image ``i`` (in a thread pool when ``large``).

        Lets a kernel draw and finish one image while it is still in cache; ``fn`` must only
        write image ``i``'s own output.
        """
        _each(lambda i: fn(i, self.generators[i]), range(len(self.generators)), large=large)

    def rand(self, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
        """U[0, 1) of shape ``(N, *shape)`` (the values of ``torch.rand`` per image)."""
        out = self._fill(shape, lambda o, g: o.uniform_(generator=g))
        return out.to(device=self.device, dtype=dtype or out.dtype)

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
        """N(0, 1) of shape ``(N, *shape)`` (the values of ``torch.randn`` per image)."""
        out = self._fill(shape, lambda o, g: o.normal_(generator=g))
        return out.to(device=self.device, dtype=dtype or out.dtype)

    def uniform(
        self, low: float, high: float, *shape: int, dtype: torch.dtype | None = None
    ) -> Tensor:
        """U[low, high) of shape ``(N, *shape)``."""
        return low + (high - low) * self.rand(*shape, dtype=dtype or torch.float64)

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in [low, high) of shape ``(N, *shape)``, int64."""
        return self._stack(
            lambda g: torch.randint(low, high, shape, generator=g, device=g.device), torch.int64
        )

    def poisson(self, rates: Tensor) -> Tensor:
        """Poisson draws with per-image ``rates`` of shape ``(N, ...)`` (on any device).

        Each image's rates are drawn from in float64 (whole numbers, exact in ``rates``' dtype);
        converting image by image keeps the float64 copies small.
        """
        rates_cpu = rates.detach().to("cpu")
        out = torch.empty_like(rates_cpu)

        def fill(i: int) -> None:
            lam = rates_cpu[i].to(torch.float64)
            out[i] = torch.poisson(lam, generator=self.generators[i])

        _each(fill, range(len(self.generators)), large=rates_cpu[0].numel() >= _PARALLEL_NUMEL)
        return out.to(device=rates.device)

    def per_image(self, draw: Callable[[torch.Generator], Tensor]) -> Tensor:
        """Apply any ``draw(generator) -> Tensor`` per image and stack (escape hatch)."""
        return self._stack(draw, None)


def _check_severity(severity: int, severities: tuple[int, ...]) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in severities:
        lo, hi = severities[0], severities[-1]
        raise ValueError(f"severity must be an integer in {lo}..{hi}, got {severity!r}")
    return severity


def make_random_source(
    name: str,
    severity: int,
    n: int,
    *,
    device: torch.device | str,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    seed: int | None,
    indices: Sequence[int] | Tensor | None,
) -> RandomSource:
    """Per-image generators for one call.

    Priority: explicit per-image ``generator`` list; else ``seed`` (+ image ``indices``, default
    ``0..n-1``) -> ``derive_seed(seed, name, severity, index)``; else one ``generator`` split into
    per-image seeds; else fresh OS entropy (the global RNG is never touched).
    """
    if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for a batch of {n} images")
        return RandomSource(generator, device)
    if seed is not None:
        idx = range(n) if indices is None else [int(i) for i in indices]
        if len(idx) != n:
            raise ValueError(f"got {len(idx)} image indices for a batch of {n} images")
        seeds = [derive_seed(seed, name, severity, i) for i in idx]
    elif generator is not None:
        seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()
    else:
        seeds = [secrets.randbits(62) for _ in range(n)]
    return RandomSource([make_generator(s) for s in seeds], device)


@dataclass(frozen=True)
class CorruptionSpec:
    """A registered corruption: a pure kernel plus its per-preset severity table.

    Args:
        name: stable snake_case name (used in CSV columns and URLs).
        kernel: ``kernel(x, rng=RandomSource, **params) -> Tensor`` on a validated batch.
        table: preset -> one kwargs dict per severity.
        family: noise, blur, weather, digital, geometric, occlusion or color.
        description: one line.
        source: where the algorithm and numbers come from.
        describe: kwargs -> the human-readable parameter shown per severity.
        stochastic: whether the kernel draws random numbers.
        needs_boxes: whether the kernel needs per-image bounding boxes (``boxes=``).
        cpu_chunk: on CPU, give the kernel at most this many elements (whole images, at least
            one) per call. Whole-batch temporaries of 224 px images are fresh memory on every
            call (glibc hands blocks this large back to the system), and faulting it in cost
            more than the arithmetic for most kernels (contrast: 9,409 page faults and 15 ms
            per 32 images, 4 ms in chunks). A few images at a time the temporaries are reused
            and stay in cache. Images are independent, so the output is the same. Left unset
            for kernels that already work image by image in a thread pool (the noise kernels).
    """

    name: str
    kernel: Callable[..., Tensor]
    table: Mapping[str, tuple[Mapping[str, Any], ...]]
    family: str
    description: str
    source: str
    describe: Callable[[Mapping[str, Any]], str] = field(
        default=lambda p: ", ".join(f"{k}={v}" for k, v in p.items())
    )
    stochastic: bool = True
    needs_boxes: bool = False
    cpu_chunk: int | None = None
    kind: str = "corruption"

    @property
    def severities(self) -> tuple[int, ...]:
        """The valid severities (1..5 for most corruptions)."""
        return tuple(range(1, len(next(iter(self.table.values()))) + 1))

    def params(self, severity: int, preset: str = "cifar") -> Mapping[str, Any]:
        """Kernel kwargs for ``severity`` under ``preset``."""
        _check_severity(severity, self.severities)
        return self.table[check_preset(preset)][severity - 1]

    def parameter_text(self, preset: str = "cifar") -> list[str]:
        """Human-readable parameter at each severity."""
        return [self.describe(self.params(s, preset)) for s in self.severities]

    def __call__(
        self,
        x: Tensor,
        severity: int,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        seed: int | None = None,
        indices: Sequence[int] | Tensor | None = None,
        preset: str | None = None,
        boxes: Tensor | None = None,
        engine: str = "torch",
    ) -> Tensor:
        """Corrupt a batch.

        Args:
            x: float batch in [0, 1], any device; never modified.
            severity: 1..5 (1..6 for the DeepCorrect levels).
            generator: one generator (split into per-image seeds) or one per image.
            seed: run seed; with ``indices`` each image's randomness is
                ``derive_seed(seed, name, severity, index)``, independent of batching.
            indices: dataset positions of the images, for ``seed`` (default ``0..N-1``).
            preset: parameter table: ``cifar`` (32 px), ``tiny`` (64 px) or ``imagenet`` (224 px).
                Default: the image size's (:func:`resolve_preset`: the shorter side, <= 48 px
                ``cifar``, <= 128 px ``tiny``, else ``imagenet``); with
                ``engine="imagecorruptions"``, ``imagenet`` (its only table).
            boxes: N x 4 (x0, y0, x1, y1) pixel boxes, for corruptions that need them.
            engine: ``torch`` (robench's batched kernels) or ``imagecorruptions`` (the authors'
                functions image by image on CPU, ImageNet parameters; a reference for fidelity).

        Returns:
            A new tensor of the same shape, dtype and device, clipped to [0, 1].

        Shape:
            (N, C, H, W) -> (N, C, H, W), any H and W: parameters given in pixels at a preset's
            size scale with the shorter side (:func:`image_side`).
        """
        check_batch(x)
        if preset is None and engine == "imagecorruptions":
            preset = "imagenet"
        preset = resolve_preset(x, preset)
        params = self.params(severity, preset)
        # corruptions are data, not a differentiable layer (and never touch the caller's graph)
        x = x.detach()
        if x.shape[0] == 0:
            return x.clone()
        rng = make_random_source(
            self.name,
            severity,
            x.shape[0],
            device=x.device,
            generator=generator,
            seed=seed,
            indices=indices,
        )
        if engine == "imagecorruptions":
            from robench.perturbations.reference import corrupt_reference

            seeds = [int(torch.randint(0, 2**62, (), generator=g)) for g in rng.generators]
            return corrupt_reference(self.name, x, severity, seeds=seeds, preset=preset)
        if engine != "torch":
            raise ValueError(f"engine must be 'torch' or 'imagecorruptions', got {engine!r}")
        return self._run(x, rng, params, self._extra(x, boxes))

    def _extra(self, x: Tensor, boxes: Tensor | None) -> dict[str, Any]:
        """The kernel's extra inputs: the boxes, checked, for corruptions that need them."""
        extra: dict[str, Any] = {}
        if self.needs_boxes:
            if boxes is None or tuple(boxes.shape) != (x.shape[0], 4):
                raise ValueError(f"{self.name} needs boxes of shape ({x.shape[0]}, 4)")
            extra["boxes"] = boxes
        return extra

    def _run(
        self, x: Tensor, rng: RandomSource, params: Mapping[str, Any], extra: dict[str, Any]
    ) -> Tensor:
        """The kernel on ``x``, in chunks of ``cpu_chunk`` values on CPU, clipped to [0, 1]."""
        step = x.shape[0]
        if self.cpu_chunk and x.device.type == "cpu":
            step = max(1, self.cpu_chunk // x[0].numel())
        if step >= x.shape[0]:
            out = self.kernel(x, rng=rng, **params, **extra)
            if out.dtype != x.dtype:
                out = out.to(x.dtype)
            elif out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                out = out.clone()  # never hand back (or clamp in place) the caller's tensor
            return out.clamp_(0.0, 1.0)  # in place: a fresh tensor, one pass fewer over memory
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        for i in range(0, x.shape[0], step):
            part = {k: v[i : i + step] for k, v in extra.items()}
            done = self.kernel(x[i : i + step], rng=rng.slice(i, i + step), **params, **part)
            torch.clamp(done.to(x.dtype), 0.0, 1.0, out=out[i : i + step])
        return out


def register_corruption(
    name: str,
    *,
    table: Mapping[str, Sequence[Mapping[str, Any]]],
    family: str,
    description: str,
    source: str,
    describe: Callable[[Mapping[str, Any]], str] | None = None,
    stochastic: bool = True,
    needs_boxes: bool = False,
    cpu_chunk: int | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering a kernel as a corruption; returns the kernel unchanged.

    A table given for one preset only (e.g. ``{"all": [...]}``) applies to every preset.
    """

    def wrap(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
        full: dict[str, tuple[Mapping[str, Any], ...]] = {
            p: tuple(table.get(p, table.get("all", ()))) for p in PRESETS
        }
        if any(len(v) == 0 for v in full.values()):
            raise ValueError(f"{name}: table must cover every preset or give 'all'")
        kwargs: dict[str, Any] = {} if describe is None else {"describe": describe}
        spec = CorruptionSpec(
            name=name,
            kernel=kernel,
            table=full,
            family=family,
            description=description,
            source=source,
            stochastic=stochastic,
            needs_boxes=needs_boxes,
            cpu_chunk=cpu_chunk,
            **kwargs,
        )
        PERTURBATIONS.add(name, spec)
        return kernel

    return wrap


def register_suite(name: str, members: Sequence[str]) -> None:
    """Declare a named, ordered suite of perturbation names."""
    if name in SUITES:
        raise ValueError(f"suite {name!r} is already registered")
    SUITES[name] = tuple(members)
