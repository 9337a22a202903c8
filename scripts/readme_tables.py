"""Rewrite the README's zoo and claims tables with what the scripts recompute now.

    python scripts/readme_tables.py

Each table is found by its header line and replaced row for row by the output of
`scripts/zoo_table.py` or `scripts/claims.py`; the prose around them is left to the author.
`tests/test_readme_tables.py` checks that the README and the scripts agree.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table(script: str) -> list[str]:
    """The markdown table printed by ``scripts/<script>``, line by line."""
    with tempfile.TemporaryDirectory() as cwd:  # the installed robench, not a shadowing folder
        out = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script)],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        )
    return out.stdout.strip().splitlines()


def replace(readme: list[str], new: list[str]) -> list[str]:
    """``readme`` with the table that starts with ``new``'s header replaced by ``new``."""
    start = readme.index(new[0])
    end = start
    while end < len(readme) and readme[end].startswith("|"):
        end += 1
    return readme[:start] + new + readme[end:]


def main() -> None:
    """Rewrite README.md in place."""
    path = ROOT / "README.md"
    readme = path.read_text().splitlines()
    for script in ("zoo_table.py", "claims.py"):
        readme = replace(readme, table(script))
    path.write_text("\n".join(readme) + "\n")


if __name__ == "__main__":
    main()
