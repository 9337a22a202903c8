"""The static leaderboard site: tables, plots, example images and HTML pages from result files."""

from __future__ import annotations

from .build import (
    DEFAULT_RESULTS,
    DEFAULT_SITE,
    Leaderboard,
    LoadProblem,
    build_leaderboard,
    find_result_files,
    leaderboard_tables,
    load_results,
    read_long_csv,
    read_wide_csv,
)

__all__ = [
    "DEFAULT_RESULTS",
    "DEFAULT_SITE",
    "Leaderboard",
    "LoadProblem",
    "build_leaderboard",
    "find_result_files",
    "leaderboard_tables",
    "load_results",
    "read_long_csv",
    "read_wide_csv",
]
