"""The public surface: each public package's ``__all__`` and the CLI's commands, against a JSON.

A change to the surface must be deliberate. When one is intended, regenerate the checked-in file
and commit it with the change::

    python tests/test_api_surface.py --update

The file lists, per public package (``robench`` and every subpackage without a ``_`` in its
dotted name), the sorted names of its ``__all__``, and, per CLI group, its sorted command names.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

import click
import pytest

import robench
from robench.cli import main as cli_main

SURFACE_JSON = Path(__file__).with_name("api_surface.json")
UPDATE = "python tests/test_api_surface.py --update"


def public_packages() -> list[str]:
    """``robench`` and its packages whose dotted names have no ``_``-prefixed part."""
    found = ["robench"]
    for info in pkgutil.walk_packages(robench.__path__, "robench."):
        if info.ispkg and not any(p.startswith("_") for p in info.name.split(".")):
            found.append(info.name)
    return sorted(found)


def module_surface(name: str) -> list[str]:
    """The sorted ``__all__`` of module ``name``."""
    module = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise AssertionError(f"{name} has no __all__: every public package declares one")
    return sorted(names)


def cli_surface(group: click.Group, prefix: str = "robench") -> dict[str, list[str]]:
    """Command names of ``group`` and its subgroups, keyed by the command line that reaches them."""
    ctx = click.Context(group, info_name=prefix)
    out = {prefix: sorted(group.list_commands(ctx))}
    for name in out[prefix]:
        sub = group.get_command(ctx, name)
        if isinstance(sub, click.Group):
            out.update(cli_surface(sub, f"{prefix} {name}"))
    return out


def current_surface() -> dict[str, Any]:
    """The surface as the installed code has it now, in the JSON's layout."""
    return {
        "modules": {name: module_surface(name) for name in public_packages()},
        "cli": cli_surface(cli_main),
    }


def _recorded() -> dict[str, Any]:
    if not SURFACE_JSON.exists():
        pytest.fail(f"{SURFACE_JSON.name} is missing: create it with `{UPDATE}`")
    return json.loads(SURFACE_JSON.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _difference(what: str, recorded: list[str], now: list[str]) -> str:
    added = sorted(set(now) - set(recorded))
    removed = sorted(set(recorded) - set(now))
    return (
        f"the public surface of {what} changed: added {added}, removed {removed}. "
        f"If this is intended, run `{UPDATE}` and commit tests/{SURFACE_JSON.name} with the change."
    )


PACKAGES = public_packages()


def test_the_public_packages_are_the_recorded_ones() -> None:
    recorded = sorted(_recorded()["modules"])
    assert PACKAGES == recorded, _difference("robench (its public packages)", recorded, PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_is_the_recorded_one(name: str) -> None:
    recorded = _recorded()["modules"].get(name, [])
    now = module_surface(name)
    assert now == recorded, _difference(f"{name}.__all__", recorded, now)


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_names_exist_once(name: str) -> None:
    module = importlib.import_module(name)
    names = list(getattr(module, "__all__", []))
    assert len(names) == len(set(names)), f"{name}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names the module does not define: {missing}"


def test_cli_commands_are_the_recorded_ones() -> None:
    recorded, now = _recorded()["cli"], cli_surface(cli_main)
    for group in sorted(recorded.keys() | now.keys()):
        old, new = recorded.get(group, []), now.get(group, [])
        assert new == old, _difference(f"the CLI `{group}`", old, new)


def test_the_top_level_surface_stays_small() -> None:
    assert len(module_surface("robench")) < 15, "robench re-exports fewer than 15 names (G6.8)"


def _update() -> None:
    text = json.dumps(current_surface(), indent=2, sort_keys=True) + "\n"
    SURFACE_JSON.write_text(text, encoding="utf-8")
    print(f"wrote {SURFACE_JSON}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: {UPDATE}")
    _update()
