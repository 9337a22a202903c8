"""Several processes for one evaluation or training run, through ``torch.distributed``.

``torchrun --nproc-per-node N -m robench evaluate ...`` (or ``train``) starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; multi-node runs
use torchrun's usual rendezvous options. :func:`setup` joins that process group (gloo on the CPU,
nccl on CUDA with one GPU per local rank); without torchrun every helper here acts on a world of
one process, so library code calls them unconditionally.

How the work is split:

- **Evaluation** deals out whole batches: batch ``b`` of the run (the same batches a single
  process makes) goes to rank ``b % world_size``. No image is dropped or repeated (no padding), an
  image meets the model in exactly the batch it would meet it in alone, and its corruption and
  attack randomness comes from ``(seed, perturbation, severity, image index)``; so the per-image
  results equal a one-process run's. :func:`gather_rows` puts every rank's rows back in run order.
- **Training** splits each global batch of the epoch's permutation into equal contiguous slices,
  one per rank, and averages the gradients (:class:`GradientAverager`, see :mod:`robench.training`).

Rank 0 reads and writes every file and broadcasts what it read. A library caller that started
the process group through :func:`setup` ends it with :func:`shutdown` (the CLI does).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "resolve_device",
    "GradientAverager",
    "World",
    "all_reduce_sum",
    "assemble",
    "barrier",
    "broadcast",
    "broadcast_tensors",
    "env_world",
    "gather_rows",
    "gather_to_main",
    "local",
    "setup",
    "shutdown",
    "world",
]

T = TypeVar("T")
_SUSPENDED: ContextVar[bool] = ContextVar("robench_distributed_suspended", default=False)
TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 alone runs the gradient-masking checks meanwhile


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes.

    Args:
        rank: global rank (0 writes the files).
        size: number of processes.
        local_rank: rank on this node (the GPU it uses).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether other processes take part (collectives are needed)."""
        return self.size > 1


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_world() -> World | None:
    """The world torchrun describes in the environment, or ``None`` when not launched by it."""
    size = _env_int("WORLD_SIZE")
    if size is None:
        return None
    rank, local = _env_int("RANK") or 0, _env_int("LOCAL_RANK") or 0
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process of the run")
    return World(rank, size, local)


def setup(device: str) -> World:
    """Join torchrun's process group when launched by it (idempotent); returns this process's world.

    Args:
        device: the resolved device (``cpu`` or ``cuda``): gloo on the CPU, nccl on CUDA, where
            each process also makes GPU ``LOCAL_RANK`` its current device.
    """
    env = env_world()
    if env is None or env.size == 1 or dist.is_initialized():
        return world()
    if not dist.is_available():
        raise ValueError(
            "torch.distributed is not available in this torch build; run without torchrun"
        )
    cuda = device.startswith("cuda")
    if cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {env.local_rank} has no GPU: this node has {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return world()


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> World:
    """The current world: one process unless a process group is up and :func:`local` is not on."""
    if _SUSPENDED.get() or not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK") or 0)


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside the block this process acts alone (e.g. a defense's setup runs rank by rank)."""
    token = _SUSPENDED.set(True)
    try:
        yield
    finally:
        _SUSPENDED.reset(token)


def barrier() -> None:
    """Wait for every process of the run."""
    if world().active:
        dist.barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
    if not world().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank 0; ``None`` on the others."""
    w = world()
    if not w.active:
        return [obj]
    out: list[Any] | None = [None] * w.size if w.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (float64)."""
    if not world().active:
        return [float(v) for v in values]
    dev = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.cpu().tolist()


def assemble(parts: Sequence[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Put ``(positions, rows)`` pieces into one array of ``n`` rows, each position exactly once."""
    seen = np.zeros(n, dtype=np.int64)
    dtype = next((rows.dtype for _, rows in parts if len(rows)), np.dtype(bool))
    shape = next((rows.shape[1:] for _, rows in parts if len(rows)), ())
    out = np.zeros((n, *shape), dtype=dtype)
    for pos, rows in parts:
        if len(pos) != len(rows):
            raise RuntimeError(f"a rank sent {len(rows)} results for {len(pos)} images")
        if not len(pos):
            continue  # a rank without a batch (fewer batches than ranks)
        out[pos] = rows
        np.add.at(seen, pos, 1)
    if not (seen == 1).all():
        raise RuntimeError(
            f"{int((seen == 0).sum())} images missing and {int((seen > 1).sum())} counted twice "
            "across ranks"
        )
    return out


def gather_rows(positions: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """The run's ``n`` rows in run order on every rank (each rank's ``rows`` at ``positions``)."""
    piece = (np.asarray(positions, dtype=np.int64), np.asarray(rows))
    parts = _all_gather(piece) if world().active else [piece]
    return assemble(parts, n)


def _by_kind(
    tensors: Sequence[torch.Tensor],
) -> dict[tuple[torch.dtype, torch.device], list[torch.Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (one message per dtype)."""
    if not world().active:
        return
    for group in _by_kind([t.data for t in tensors]).values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.broadcast(flat, src=src)
        for t, part in zip(group, torch.split(flat, [t.numel() for t in group]), strict=True):
            t.copy_(part.view_as(t))


class GradientAverager:
    """Data parallelism for :func:`robench.training.fit`: same weights, averaged gradients.

    What torch's DistributedDataParallel computes (rank 0's weights and buffers at the start, the
    mean of the ranks' gradients after each backward), done explicitly after ``backward`` instead of
    through DDP's forward: defenses call their model several times per step and composite ones call
    sub-modules directly (parallel MAT's branches), and DDP only averages the gradients of passes
    made through its own forward. Buffers (BatchNorm statistics) are rank 0's at every step.

    Args:
        model: the model every rank trains (moved to its device already).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [b for b in model.buffers() if b.numel()]
        broadcast_tensors([*model.parameters(), *self.buffers])

    def sync_buffers(self) -> None:
        """Rank 0's buffers on every rank (called before each step)."""
        broadcast_tensors(self.buffers)

    def average_gradients(self) -> None:
        """Replace each gradient with its mean over the ranks (called after ``backward``).

        A parameter without a gradient on some ranks gets zeros there; one without a gradient on
        every rank keeps ``None`` (the optimiser then skips it, as it would on one process).
        """
        w = world()
        if not w.active or not self.params:
            return
        dev = self.params[0].device
        has = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32, device=dev)
        dist.all_reduce(has)
        grads: list[torch.Tensor] = []
        for p, n in zip(self.params, has.tolist(), strict=True):
            if n and p.grad is None:
                p.grad = torch.zeros_like(p)
            if n and p.grad is not None:
                grads.append(p.grad)
        for group in _by_kind(grads).values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat /= w.size
            for g, part in zip(group, torch.split(flat, [g.numel() for g in group]), strict=True):
                g.copy_(part.view_as(g))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; validates the name."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return device
