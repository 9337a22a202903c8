"""The ``robench`` command line: parse options, call the library, print where things went."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__

F = TypeVar("F", bound=Callable[..., Any])

LIST_WHAT = ("perturbations", "corruptions", "attacks", "defenses", "models", "datasets", "suites", "zoo")


def _user_errors(fn: F) -> F:
    """Turn the library's one-sentence errors into ``Error: ...`` lines (no traceback)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from ._registry import UnknownNameError

        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, UnknownNameError, PermissionError) as exc:
            raise click.ClickException(str(exc)) from None

    return run  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robench")
@click.option("-v", "--verbose", is_flag=True, help="Log what robench does.")
def main(verbose: bool) -> None:
    """robench: score image classifiers on corruptions and attacks in one table."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _rows_perturbations(kind: str | None, suite: str | None) -> list[tuple[str, ...]]:
    from . import perturbations as P

    rows = []
    for name in P.names(kind=kind, suite=suite):
        spec = P.get(name)
        status = "" if spec.kind != "attack" or getattr(spec, "implemented", True) else " [not implemented yet]"
        rows.append((name, spec.kind, spec.family, spec.description + status))
    return rows


def _rows(what: str, suite: str | None) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    if what in ("perturbations", "corruptions", "attacks"):
        kind = {"perturbations": None, "corruptions": "corruption", "attacks": "attack"}[what]
        return ("name", "kind", "family", "description"), _rows_perturbations(kind, suite)
    if what == "suites":
        from . import perturbations as P

        return ("suite", "size", "members"), [(k, str(len(v)), ", ".join(v)) for k, v in P.suites().items()]
    if what == "models":
        from .models import MODELS

        return ("model", "input", "description"), [(s.name, f"{s.input_size} px", s.description) for s in MODELS]
    if what == "datasets":
        from .data import DATASETS

        return ("dataset", "preset", "description"), [(s.name, s.preset, s.description) for s in DATASETS]
    if what == "defenses":
        try:
            from .defenses import DEFENSES  # type: ignore[attr-defined]
        except ImportError:
            return ("defense", "description"), []
        return ("defense", "description"), [(s.name, s.description) for s in DEFENSES]
    try:
        from .zoo import list_zoo  # type: ignore[attr-defined]
    except ImportError:
        return ("zoo entry", "description"), []
    return ("zoo entry", "description"), list_zoo()


@main.command("list")
@click.argument("what", type=click.Choice(LIST_WHAT), default="perturbations")
@click.option("--suite", default=None, help="Only the members of this suite, in its order (e.g. mtlat24).")
@_user_errors
def list_cmd(what: str, suite: str | None) -> None:
    """List perturbations, attacks, defenses, models, datasets, suites or zoo entries."""
    header, rows = _rows(what, suite)
    if not rows:
        click.echo(f"no {what} registered yet")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    click.echo(fmt.format(*header))
    for r in rows:
        click.echo(fmt.format(*r))


@main.group()
def data() -> None:
    """Look at datasets."""


@data.command("preview")
@click.option("--dataset", default="shapes", show_default=True, help="A name from `robench list datasets`.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help="Folder with the dataset files.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("-n", "--n-images", type=click.IntRange(1, 400), default=40, show_default=True)
@click.option("--boxes/--no-boxes", default=False, help="Draw bounding boxes (datasets that have them).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("preview.png"), show_default=True)
@_user_errors
def data_preview(dataset: str, data_root: Path | None, split: str, n_images: int, boxes: bool, out: Path) -> None:
    """Write a PNG grid of sample images with their labels."""
    from ._io import atomic_write_bytes
    from .data import load_dataset
    from .data.preview import preview_figure
    from .report_utils import figure_png

    ds = load_dataset(dataset, split, root=data_root)
    atomic_write_bytes(out, figure_png(preview_figure(ds, n=n_images, show_boxes=boxes)))
    click.echo(f"wrote {out} ({min(n_images, len(ds))} images of {dataset}/{split}, {len(ds)} in the split)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
