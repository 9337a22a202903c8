"""The package's shape: imports point one way between rooms, no cycle, few top-level modules.

Every import statement of the package is read with ``ast`` (function-level ones included; only
``if TYPE_CHECKING:`` blocks are skipped), so a lazy import cannot hide an upward edge or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import robench

PACKAGE = Path(robench.__file__).parent

# The rooms, lowest first; a module may import its own room or any room of a lower tier.
TIERS: dict[str, int] = {
    "_io": 0,
    "_registry": 0,
    "_seeding": 0,
    "_version": 0,
    "_distributed": 0,
    "data": 1,
    "models": 1,
    "perturbations": 1,
    "scores": 1,
    "attacks": 2,
    "defenses": 2,
    "training": 3,
    "evaluation": 3,
    "transforms": 3,
    "report": 4,
    "__init__": 5,
    "cli": 6,
    "__main__": 7,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (a ``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "robench")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "robench":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) & modules for f in files}


GRAPH = _graph()


def test_every_room_has_a_tier() -> None:
    assert {room_of(m) for m in GRAPH} <= set(TIERS), "a new room needs a place in TIERS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    mine = room_of(module)
    bad = [
        f"{module} -> {target}"
        for target in sorted(GRAPH[module])
        if room_of(target) != mine and TIERS[room_of(target)] >= TIERS[mine]
    ]
    assert not bad, "imports that run up or sideways between rooms: " + ", ".join(bad)


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if t == m:
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(t) :], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_cycle_detector_finds_a_cycle() -> None:
    global GRAPH
    saved = GRAPH
    GRAPH = {"robench.a": {"robench.b"}, "robench.b": {"robench.c"}, "robench.c": {"robench.a"}}
    try:
        with pytest.raises(
            AssertionError, match="robench.a -> robench.b -> robench.c -> robench.a"
        ):
            test_no_import_cycle()
    finally:
        GRAPH = saved


def test_upward_import_is_caught(tmp_path: Path) -> None:
    modules = {"robench.scores", "robench.report", "robench.report.tables"}
    src = tmp_path / "robench" / "scores.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from robench.report import tables\n", encoding="utf-8")
    global PACKAGE
    saved = PACKAGE
    PACKAGE = tmp_path / "robench"
    try:
        assert imports_of(src, modules) == {"robench.report.tables"}
    finally:
        PACKAGE = saved
    assert TIERS[room_of("robench.report.tables")] > TIERS[room_of("robench.scores")]


def test_few_top_level_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
