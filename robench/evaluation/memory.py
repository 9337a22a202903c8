"""Batch sizes that fit the machine, and the peak memory of a run.

``batch_size="auto"`` (the default of ``robench evaluate``) measures what one image costs the model
at the dataset's resolution, in the heaviest pass a run makes (forward + backward to the input, as
the attacks take it), and divides a share of the memory that is free into it:

- on CUDA, the allocator's peak of that pass at 2 and 4 images (the difference is per image);
- on the CPU, the tensors autograd keeps for the backward pass of a forward at 2 images (the
  model's own weights left out), times :data:`CPU_BACKWARD_FACTOR` for what the backward pass
  allocates on top (measured on a ResNet-50 and a VGG-11 at 224 px: 1.2x and 1.5x).

Free memory is ``MemAvailable`` of ``/proc/meminfo``, lowered to the cgroup's limit when the
process runs under one (containers, CI), divided among the processes of a ``torchrun`` on one
machine; on CUDA, the device's free memory. A run takes at most :data:`MEMORY_SHARE` of it, in
batches of at most :data:`MAX_AUTO_BATCH` images. The batch size never changes a result: every
image's randomness comes from (seed, perturbation, severity, image index), not from its batch.

A batch that still runs out of memory (the measure is an estimate; other programs take memory
too; a fixed ``--batch-size`` may be too large) does not end the run: :class:`StepDown` halves the
batch size and computes the part again (the clean pass, or the perturbation that failed), down to
1 image; the parts already finished stay in the record, and the record's ``config.batch_size``
becomes the size actually used. Under ``torchrun`` the ranks deal batches by size, so a rank
cannot step down alone: the error then asks for a smaller ``--batch-size``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench._io import first_line

if TYPE_CHECKING:
    from robench.evaluation.record import Record

__all__ = [
    "AUTO",
    "BatchChoice",
    "CPU_BACKWARD_FACTOR",
    "MAX_AUTO_BATCH",
    "MEMORY_SHARE",
    "StepDown",
    "available_memory",
    "choose_batch_size",
    "image_memory",
    "is_out_of_memory",
    "parse_batch_size",
    "peak_memory",
    "probe_images",
]

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_AUTO_BATCH = 250  # the fixed default before "auto": small models keep their batches
MEMORY_SHARE = 0.5  # of the free memory; the rest is for data, corruptions, Python, other programs
CPU_BACKWARD_FACTOR = 1.5
MIN_IMAGE_FACTOR = 16  # a corruption holds a few float copies of each image: a floor per image
PROBE_IMAGES = 2
OOM_TEXTS = ("can't allocate memory", "not enough memory", "out of memory")  # CPU, Windows, others
T = TypeVar("T")


def parse_batch_size(value: int | str) -> int | None:
    """A ``--batch-size`` value: a positive integer, or ``None`` for ``auto``.

    >>> parse_batch_size("auto"), parse_batch_size(16), parse_batch_size("32")
    (None, 16, 32)

    Raises:
        ValueError: anything else (one sentence).
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"batch_size must be 'auto' or a positive integer, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"batch_size must be 'auto' or a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"batch_size must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class BatchChoice:
    """An automatic batch size and what it was derived from.

    Attributes:
        size: images per batch.
        per_image: bytes one image costs the heaviest model pass (0: not measured).
        available: free bytes the run may share (0: unknown).
        device: where it was measured.
        note: why the measure could not be used, if it could not.
    """

    size: int
    per_image: int
    available: int
    device: str
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return f"auto: {self.note}"
        return (
            f"auto: {_mib(self.per_image):,.0f} MiB per image measured on {self.device}, "
            f"{MEMORY_SHARE:.0%} of {_mib(self.available):,.0f} MiB free"
        )


def _mib(n: float) -> float:
    return n / 2**20


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Limit minus usage of the cgroup this process runs in (v2, then v1); None without a limit."""
    pairs = (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    )
    for limit_name, usage_name in pairs:
        try:
            limit_text = (root / limit_name).read_text(encoding="ascii").strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int((root / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # v1's "no limit"
            return None
        return max(limit - usage, 0)
    return None


def _host_available() -> int:
    """Free host memory in bytes (0: unknown)."""
    found = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else 0


def available_memory(device: str) -> int:
    """Bytes a run on ``device`` may use now (0: unknown).

    The host's available memory (cgroup limit included), split among the ``torchrun`` processes
    on this machine; on CUDA, the device's free memory.
    """
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return _host_available() // max(local, 1)


def _parameter_storages(model: nn.Module) -> set[int]:
    ptrs = set()
    for t in [*model.parameters(), *model.buffers()]:
        try:
            ptrs.add(t.untyped_storage().data_ptr())
        except RuntimeError:  # pragma: no cover  (tensors without storage)
            continue
    return ptrs


def _saved_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of ``model(x)`` (weights left out)."""
    own = _parameter_storages(model)
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
        except RuntimeError:  # pragma: no cover  (sparse or opaque tensors: not counted)
            return t
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    xr = x.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(xr)
    del out
    return sum(seen.values())


def _cuda_peak(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """The allocator's peak above what was allocated before, for one forward + backward pass."""
    dev = x.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    xr = x.detach().clone().requires_grad_(True)
    logits = model(xr)
    torch.autograd.grad(F.cross_entropy(logits, y[: len(x)], reduction="sum"), xr)
    torch.cuda.synchronize(dev)
    return int(torch.cuda.max_memory_allocated(dev) - before)


def image_memory(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Bytes one image costs ``model``'s forward + backward pass to the input.

    Measured on ``x`` (at least one image, on the model's device): see the module's description.
    The model is put in eval mode with frozen weights for the measure, and restored after.
    """
    from robench.attacks import attack_mode  # Foolbox loads on first use, not with robench

    floor = MIN_IMAGE_FACTOR * x[0].numel() * 4
    with attack_mode(model):
        if x.is_cuda:
            k = min(len(x), 2 * PROBE_IMAGES)
            if k >= 2:
                half = _cuda_peak(model, x[: k // 2], y)
                full = _cuda_peak(model, x[:k], y)
                slope = (full - half) / (k - k // 2)
                per = slope if slope > 0 else full / k
            else:
                per = _cuda_peak(model, x[:1], y)
        else:
            k = min(len(x), PROBE_IMAGES)
            per = CPU_BACKWARD_FACTOR * _saved_bytes(model, x[:k]) / k
    return int(max(per, floor))


def choose_batch_size(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    device: str,
    *,
    available: Callable[[str], int] | None = None,
) -> BatchChoice:
    """The largest batch (at most :data:`MAX_AUTO_BATCH`) whose heaviest pass fits the free memory.

    Args:
        models: every model the run passes batches through (the evaluated one, the surrogate).
        x: a few of the run's images (2 to 4 are enough), on ``device``.
        y: their labels.
        device: the run's device.
        available: free bytes on a device (default :func:`available_memory`).

    Returns:
        The choice; a model that cannot be measured (its forward pass fails) leaves the cap and a
        note: the run itself then reports what is wrong with the model.
    """
    try:
        per = max(image_memory(m, x, y) for m in models)
    except Exception as exc:  # noqa: BLE001  (any model error: the run reports it properly)
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        log.warning("could not measure the model's memory (%s); batch %d", first, MAX_AUTO_BATCH)
        return BatchChoice(
            MAX_AUTO_BATCH, 0, 0, device, note=f"not measured ({first}); the cap, {MAX_AUTO_BATCH}"
        )
    free = (available or available_memory)(device)
    if free <= 0:
        return BatchChoice(
            MAX_AUTO_BATCH, per, 0, device, note=f"free memory unknown; the cap, {MAX_AUTO_BATCH}"
        )
    size = int(MEMORY_SHARE * free // max(per, 1))
    if size < 1:
        log.warning(
            "one image needs about %.0f MiB but only %.0f MiB are free: batch 1 may not fit",
            _mib(per),
            _mib(free),
        )
    choice = BatchChoice(max(1, min(MAX_AUTO_BATCH, size)), per, free, device)
    log.info("batch size %d (%s)", choice.size, choice)
    return choice


def peak_memory(device: str) -> dict[str, float]:
    """The process's peak memory so far, in MiB: ``peak_rss_mib`` and, on CUDA, ``peak_cuda_mib``.

    ``peak_rss_mib`` is the resident set's high-water mark (``getrusage``), absent where the
    platform has none; ``peak_cuda_mib`` the CUDA allocator's peak since the last reset (the
    automatic batch size's measure resets it, so it covers the run).
    """
    out: dict[str, float] = {}
    try:
        import resource
    except ImportError:  # pragma: no cover  (Windows)
        pass
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_mib"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
    if device.startswith("cuda") and torch.cuda.is_available():
        out["peak_cuda_mib"] = round(_mib(torch.cuda.max_memory_allocated(torch.device(device))), 1)
    return out


def probe_images(ds: Any, device: str) -> tuple[Tensor, Tensor]:
    """The first few images of a dataset and their labels on ``device``, to measure a model on."""
    k = min(len(ds), 2 * PROBE_IMAGES)
    x, y = ds.get_batch(torch.arange(k))
    return x.to(device), y.to(device)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (not a bug of the model or of the data).

    CUDA's ``torch.OutOfMemoryError``, Python's ``MemoryError``, and the ``RuntimeError`` of an
    allocator that could not allocate (``DefaultCPUAllocator: can't allocate memory``, ``not
    enough memory``, ``... out of memory``).

    >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    True
    >>> is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    False
    """
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in OOM_TEXTS)


class StepDown:
    """A run's batch size, halved whenever a step runs out of memory, and the step run again.

    Args:
        size: the batch size to start with.
        device: the run's device (named in the messages; its cache is emptied on a step down).
        alone: whether this process may change its batch size on its own (False under
            ``torchrun``, where the ranks deal batches by size: an out-of-memory error is then
            one sentence asking for a smaller ``--batch-size``).

    Example:
        >>> steps = StepDown(8, "cpu")
        >>> def step(size: int) -> int:
        ...     if size > 3:
        ...         raise MemoryError
        ...     return size
        >>> steps.run(step), steps.size, steps.stepped
        (2, 2, True)
    """

    def __init__(self, size: int, device: str, *, alone: bool = True) -> None:
        self.first, self.size, self.device, self.alone = size, size, device, alone

    @property
    def stepped(self) -> bool:
        """Whether the batch size went down during the run."""
        return self.size < self.first

    def run(self, step: Callable[[int], T]) -> T:
        """``step(batch size)``, again at half the size after each out-of-memory error.

        Raises:
            ValueError: out of memory at batch size 1, or under ``torchrun`` (one sentence).
        """
        while True:
            try:
                return step(self.size)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                why = first_line(exc, 120)
            self._halve(why)  # out of the except block: the failed batch's tensors are freed

    def _halve(self, why: str) -> None:
        if self.size <= 1:
            raise ValueError(
                f"out of memory on {self.device} even at batch size 1 ({why}); free some memory, "
                "or evaluate on a device with more"
            )
        if not self.alone:
            raise ValueError(
                f"out of memory on {self.device} at batch size {self.size} ({why}); under torchrun "
                "the batch size cannot step down on its own: pass a smaller --batch-size"
            )
        gc.collect()
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        old, self.size = self.size, self.size // 2
        log.warning("out of memory at batch size %d: going on with batch size %d", old, self.size)

    def noted(self, record: Record) -> Record:
        """``record`` with the batch size actually used in its config, once it stepped down."""
        if not self.stepped:
            return record
        return replace(record, config=replace(record.config, batch_size=self.size))
