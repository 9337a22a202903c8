"""One generic registry class, shared by perturbations, attacks, defenses, models and datasets."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(KeyError):
    """A registry miss; its message names the close matches and how to list every name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the sentence as is.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> spec mapping with loud duplicates and helpful misses.

    Args:
        kind: what the entries are ("perturbation", "model", ...), used in messages.

    Example:
        >>> r: Registry[int] = Registry("number")
        >>> r.add("one", 1)
        1
        >>> r.names()
        ['one']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, spec: T) -> T:
        """Register ``spec`` under ``name``; a name can be registered once only."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = spec
        return spec

    def get(self, name: str) -> T:
        """Return the entry called ``name``, or raise naming the closest names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-sentence error for an unknown ``name``."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (see `robench list {self.kind}s`)"

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the fnmatch ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())
