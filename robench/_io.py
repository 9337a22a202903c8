"""Atomic file writes and file hashes: nothing robench writes is ever seen half-written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "OutputError",
    "cache_dir",
    "safe_slug",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_lock",
    "first_line",
    "sha256_file",
    "writable_dir",
]

log = logging.getLogger(__name__)


class OutputError(OSError):
    """A file robench must write cannot be written (full disk, read-only folder): one sentence."""

    def __init__(self, path: str | os.PathLike[str], exc: OSError, action: str = "write") -> None:
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            reason = f"a file is in the way of a folder ({reason})"
        tail = "; files written before are intact" if action == "write" else ""
        super().__init__(f"cannot {action} {path}: {reason}{tail}")
        self.errno = exc.errno  # keep errno so callers can still tell ENOSPC from EACCES


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises:
        OutputError: the folder cannot be created or written (an old ``path`` is left untouched).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(path, exc) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with _suppress_oserror():
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(path, exc) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` that never leaves a truncated file behind."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


def sha256_bytes_of_state(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state_dict tensors (names, shapes, bytes).

    The provenance of in-memory models.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.float().numpy().tobytes()
        )
    return h.hexdigest()


def writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that files can be created in it (fail before any work).

    Raises:
        OutputError: it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".robench-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(folder, exc, "write into") from None
    return folder


_HELD: dict[str, list[Any]] = {}  # lock file -> [fd, depth]: re-entrant within one process
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], *, what: str = "", poll_s: float = 0.2, wait: bool = True
) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    Another process asking for the same lock waits (saying so once in the log) until this one
    leaves the block or dies, or with ``wait=False`` gets a ``BlockingIOError`` at once: the
    kernel drops the lock of a killed process, so a ``kill -9`` never leaves a stale lock.
    Re-entrant within a process. The lock file is never deleted (deleting it would let two
    processes lock two different files).

    Raises:
        OutputError: the lock file cannot be created (read-only folder, full disk...).
        BlockingIOError: ``wait=False`` and another process holds the lock.
    """
    path = Path(path)
    key = os.path.abspath(path)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield path
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputError(path, exc, "create the lock file") from None
    try:
        _acquire(fd, path, what, poll_s, wait)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        try:
            yield path
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            _release(fd)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, what: str, poll_s: float, wait: bool = True) -> None:
    busy = f"another robench process is already working on {what or path}"
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                if not wait:
                    raise BlockingIOError(busy) from None
                time.sleep(poll_s)
    import fcntl

    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not wait:
                raise BlockingIOError(busy) from None
            if not told:
                log.warning(
                    "another robench process is working on %s; waiting for it to finish",
                    what or path,
                )
                told = True
            time.sleep(poll_s)


def _release(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        with _suppress_oserror():
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:limit]


def cache_dir() -> Path:
    """Where generated data is cached: ``$ROBENCH_CACHE`` or ``~/.cache/robench``."""
    env = os.environ.get("ROBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "robench"


def safe_slug(text: str, *, limit: int = 40) -> str:
    """A file-name-safe slug of untrusted text plus a short hash (distinct texts stay distinct)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "x"
    return f"{base}-{hashlib.blake2b(text.encode('utf-8'), digest_size=4).hexdigest()}"
