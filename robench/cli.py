"""The ``robench`` command line: parse options, call the library, print where things went."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from robench._version import __version__

F = TypeVar("F", bound=Callable[..., Any])

LIST_WHAT = (
    "perturbations",
    "corruptions",
    "attacks",
    "defenses",
    "models",
    "datasets",
    "suites",
    "zoo",
)


def _user_errors(fn: F) -> F:
    """Turn the library's one-sentence errors into ``Error: ...`` lines (no traceback)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from robench._registry import UnknownNameError

        previous = _catch_sigterm()
        try:
            return fn(*args, **kwargs)
        except (
            ValueError,
            UnknownNameError,
            OSError,
        ) as exc:  # OSError: missing files, full disk, read-only folder
            raise click.ClickException(str(exc)) from None
        except (KeyboardInterrupt, _Terminated) as exc:
            what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
            raise click.ClickException(
                f"{what}; finished work is saved: run the same command again to resume"
            ) from None
        finally:
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)

    return run  # type: ignore[return-value]


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so ``finally`` blocks and temp-file cleanup run."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _catch_sigterm() -> Any:
    """Turn SIGTERM into :class:`_Terminated` for the command; returns the handler to restore."""
    import os
    import signal

    if "LOCAL_RANK" in os.environ:  # torchrun manages its workers' signals itself
        return None
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): keep its handlers
        return None


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    import math

    if not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robench")
@click.option("-v", "--verbose", is_flag=True, help="Log what robench does.")
def main(verbose: bool) -> None:
    """robench: score image classifiers on corruptions and attacks in one table."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _rows_perturbations(kind: str | None, suite: str | None) -> list[tuple[str, ...]]:
    from robench import perturbations as P

    rows: list[tuple[str, ...]] = []
    for name in P.names(kind=kind, suite=suite):
        spec = P.get(name)
        status = (
            ""
            if spec.kind != "attack" or getattr(spec, "implemented", True)
            else " [not implemented yet]"
        )
        rows.append((name, spec.kind, spec.family, spec.description + status))
    return rows


def _rows(what: str, suite: str | None) -> tuple[tuple[str, ...], Sequence[tuple[str, ...]]]:
    if what in ("perturbations", "corruptions", "attacks"):
        kind = {"perturbations": None, "corruptions": "corruption", "attacks": "attack"}[what]
        return ("name", "kind", "family", "description"), _rows_perturbations(kind, suite)
    if what == "suites":
        from robench import perturbations as P

        return ("suite", "size", "members"), [
            (k, str(len(v)), ", ".join(v)) for k, v in P.suites().items()
        ]
    if what == "models":
        from robench.models import MODELS

        return ("model", "input", "description"), [
            (s.name, f"{s.input_size} px", s.description) for s in MODELS
        ]
    if what == "datasets":
        from robench.data import DATASETS

        return ("dataset", "preset", "description (files under --data-root)"), [
            (s.name, s.preset, s.description + (f"; {s.layout}" if s.layout else ""))
            for s in DATASETS
        ]
    if what == "defenses":
        from robench.defenses import DEFENSES

        return ("defense", "description"), [(s.name, s.description) for s in DEFENSES]
    from robench.models.zoo import list_zoo

    return ("zoo entry", "description"), list_zoo()


@main.command("list")
@click.argument("what", type=click.Choice(LIST_WHAT), default="perturbations")
@click.option(
    "--suite", default=None, help="Only the members of this suite, in its order (e.g. mtlat24)."
)
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
    from robench.report.tables import safe_text

    for r in rows:  # zoo cards are files from anywhere: their text must not drive the terminal
        click.echo(fmt.format(*(safe_text(c) for c in r)))


@main.group()
def data() -> None:
    """Look at datasets."""


@data.command("preview")
@click.option(
    "--dataset", default="shapes", show_default=True, help="A name from `robench list datasets`."
)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with the dataset files.",
)
@click.option(
    "--download", is_flag=True, help="Fetch a missing real dataset into --data-root (network)."
)
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("-n", "--n-images", type=click.IntRange(1, 400), default=40, show_default=True)
@click.option(
    "--boxes/--no-boxes", default=False, help="Draw bounding boxes (datasets that have them)."
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("preview.png"), show_default=True
)
@_user_errors
def data_preview(
    dataset: str,
    data_root: Path | None,
    download: bool,
    split: str,
    n_images: int,
    boxes: bool,
    out: Path,
) -> None:
    """Write a PNG grid of sample images with their labels."""
    from robench._io import atomic_write_bytes
    from robench.data import load_dataset
    from robench.report.figures import figure_png, preview_figure

    ds = load_dataset(dataset, split, root=data_root, download=download)
    atomic_write_bytes(out, figure_png(preview_figure(ds, n=n_images, show_boxes=boxes)))
    click.echo(
        f"wrote {out} ({min(n_images, len(ds))} images of {dataset}/{split}, "
        f"{len(ds)} in the split)"
    )


@main.command("gallery")
@click.option(
    "--preset", type=click.Choice(["cifar", "tiny", "imagenet"]), default="cifar", show_default=True
)
@click.option(
    "--dataset", default=None, help="Images to show (default: shapes at the preset's size)."
)
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option(
    "-p", "--perturbation", "names", multiple=True, help="Only these corruptions (repeatable)."
)
@click.option("--suite", default=None, help="Only this suite's corruptions.")
@click.option("-n", "--n-images", type=click.IntRange(1, 6), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("gallery.png"), show_default=True
)
@_user_errors
def gallery_cmd(
    preset: str,
    dataset: str | None,
    data_root: Path | None,
    names: tuple[str, ...],
    suite: str | None,
    n_images: int,
    seed: int,
    out: Path,
) -> None:
    """Write a PNG of every corruption at every severity on a few sample images."""
    from robench import perturbations as P
    from robench._io import atomic_write_bytes
    from robench.report.figures import DEFAULT_DATASET, figure_png, gallery_figure, sample_images

    chosen = list(names) or (P.names(kind="corruption", suite=suite) if suite else None)
    for n in chosen or []:
        if P.get(n).kind != "corruption":
            raise ValueError(f"{n!r} is an attack; the gallery shows corruptions")
    x, boxes, _ = sample_images(
        dataset or DEFAULT_DATASET[preset],
        n_images,
        root=None if data_root is None else str(data_root),
    )
    fig = gallery_figure(x, names=chosen, preset=preset, seed=seed, boxes=boxes)
    atomic_write_bytes(out, figure_png(fig, dpi=90))
    click.echo(f"wrote {out}")


@main.command("evaluate")
@click.argument("model")
@click.option(
    "--dataset", default="shapes", show_default=True, help="A name from `robench list datasets`."
)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with the dataset files.",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch a missing real dataset into --data-root, and a model spec's missing pretrained "
    "weights into the Hugging Face or torch hub cache (network).",
)
@click.option(
    "--suite", default="mtlat24", show_default=True, help="A name from `robench list suites`."
)
@click.option(
    "-p",
    "--perturbation",
    "perturbations",
    multiple=True,
    help="Only these perturbations (repeatable).",
)
@click.option(
    "--n-images",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="Seeded fixed subset of the test set.",
)
@click.option("--all-images", is_flag=True, help="Use the whole test split (overrides --n-images).")
@click.option(
    "--batch-size",
    default="auto",
    show_default=True,
    help="Images per pass, or auto: as many as fit half the free memory, measured on the model "
    "at the dataset's resolution (at most 250). Never changes a result.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option(
    "--baseline",
    default="auto",
    show_default=True,
    help="zoo:NAME, a checkpoint, a model spec (timm:..., torchvision:..., hf-hub:...), a result "
    ".json, or none.",
)
@click.option(
    "--surrogate", default="auto", show_default=True, help="Model crafting the transfer attacks."
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Reuse finished parts of the same run.",
)
@click.option(
    "--arch",
    default=None,
    help="Architecture of a raw state_dict or .safetensors file: a name from `robench list "
    "models`, or timm:NAME / torchvision:NAME.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Weights (.safetensors or a state_dict) for a timm:, torchvision: or hf-hub: MODEL "
    "(default: its pretrained weights in the local cache).",
)
@click.option("--model-id", default=None, help="Name shown in tables (default: the file name).")
@click.option(
    "--trust-pickle", is_flag=True, help="Allow a pickled nn.Module (runs code from the file!)."
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option(
    "--preset",
    type=click.Choice(["cifar", "tiny", "imagenet"]),
    default=None,
    help="Corruption parameters (CIFAR-10-C, Tiny-ImageNet-C or ImageNet-C's) [default: the "
    "dataset's; imagefolder: its image size's].",
)
@click.option(
    "--image-size",
    type=click.IntRange(8),
    default=None,
    help="imagefolder: resize and centre-crop to N px (default 224: resize 256, crop 224); the "
    "preset follows N (64: tiny) unless --preset is given.",
)
@click.option(
    "--as-released",
    is_flag=True,
    help="Store each computed corruption as the released sets did before the model sees it "
    "(uint8; then JPEG quality 85 at the tiny and imagenet presets), so numbers compare with "
    "published CIFAR-10-C / Tiny-ImageNet-C / ImageNet-C ones.",
)
@click.option(
    "--attack-on",
    type=click.Choice(["model", "object"]),
    default="model",
    show_default=True,
    help="Which network the white-box attacks' gradients come from: the model itself, or the "
    "object network of a composite (fusion) model, the adversarials then scored on the whole "
    "model (Akumalla et al.'s FGSM). Fusion models also record their object and context "
    "networks' accuracy on every image set.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the forward/backward passes the run will make and an estimated time; "
    "evaluate nothing.",
)
@_user_errors
def evaluate_cmd(
    model: str,
    dataset: str,
    data_root: Path | None,
    download: bool,
    suite: str,
    perturbations: tuple[str, ...],
    n_images: int,
    all_images: bool,
    batch_size: str,
    device: str,
    seed: int,
    out: Path,
    baseline: str,
    surrogate: str,
    resume: bool,
    arch: str | None,
    weights: Path | None,
    model_id: str | None,
    trust_pickle: bool,
    no_plots: bool,
    preset: str | None,
    image_size: int | None,
    as_released: bool,
    attack_on: str,
    dry_run: bool,
) -> None:
    """Score MODEL on the benchmark; writes JSON, CSV and plots.

    MODEL is a checkpoint file, zoo:NAME, or a model spec: timm:ARCH[.TAG] (timm:resnet50.a1_in1k),
    torchvision:NAME[:WEIGHTS] (torchvision:resnet18:IMAGENET1K_V1) or hf-hub:ORG/REPO[@REV]
    (hf-hub:timm/resnet18.a1_in1k). A spec's weights come from --weights or the local Hugging Face
    / torch hub cache; nothing is downloaded without --download.

    Under torchrun (e.g. torchrun --nproc-per-node 2 -m robench evaluate ...) the processes share
    the images and rank 0 writes the files.
    """
    from robench import _distributed as distributed
    from robench import evaluate

    # the options evaluate and its dry run share
    common: dict[str, Any] = dict(
        dataset=dataset,
        data_root=None if data_root is None else str(data_root),
        suite=suite,
        perturbations=perturbations,
        n_images=None if all_images else n_images,
        batch_size=batch_size,
        device=device,
        seed=seed,
        out=out,
        resume=resume,
        baseline=baseline,
        surrogate=surrogate,
        model_id=model_id,
        arch=arch,
        weights=weights,
        trust_pickle=trust_pickle,
        preset=preset,
        image_size=image_size,
        as_released=as_released,
        attack_on=attack_on,
    )
    if dry_run:
        from robench.evaluation.plan import plan_evaluation

        plan = plan_evaluation(model, **common)
        if (distributed.env_world() or distributed.World()).is_main:
            click.echo(str(plan))
        return
    try:
        report = evaluate(model, download=download, progress=True, plots=not no_plots, **common)
        if not distributed.world().is_main:
            return
    finally:
        distributed.shutdown()
    rec = report.record
    from robench.report.tables import safe_text

    click.echo(
        f"\nR = A_perturbed / A_clean  ({safe_text(rec.model.id)} on {dataset}, "
        f"{rec.dataset.n_images} images, seed {seed}, preset {rec.run_key.preset}"
        f"{', as released' if rec.run_key.as_released else ''}"
        f"{', attacks crafted on the object network' if attack_on == 'object' else ''}; "
        f"clean accuracy {report.clean_accuracy:.4f})"
    )
    click.echo(
        f"markers: +/- vs {safe_text(rec.baseline.id)} (rounded to 2 decimals)"
        if rec.baseline
        else "markers: none (no baseline)"
    )
    click.echo(str(report))
    fam = {} if rec.summary is None else rec.summary.mean_R
    if fam:
        click.echo(
            "mean R per family (never averaged across): "
            + ", ".join(f"{k} {v:.3f}" for k, v in fam.items())
        )
    checks = rec.gradient_masking or ()
    failed = [c for c in checks if c.passed is False]
    if checks:
        click.echo("gradient-masking checks: " + ("all passed" if not failed else "FLAGGED"))
        for c in failed:
            click.echo(f"  {safe_text(c.name)}: {safe_text(c.detail)}")
    for key, path in report.paths.items():
        click.echo(f"{key:>12}: {path}")


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ValueError(f"defense options look like -o key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


@main.command("train")
@click.option(
    "--defense", default="standard", show_default=True, help="A name from `robench list defenses`."
)
@click.option("--dataset", default="shapes", show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option(
    "--download", is_flag=True, help="Fetch a missing real dataset into --data-root (network)."
)
@click.option(
    "--arch", default="small_cnn", show_default=True, help="A name from `robench list models`."
)
@click.option(
    "--epochs", type=click.IntRange(1), default=None, help="Default: 6 on shapes, 30 otherwise."
)
@click.option(
    "--train-images",
    type=click.IntRange(1),
    default=None,
    help="Train on the first N images only (quick runs).",
)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=0.002,
    show_default=True,
    callback=_finite,
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint path (a .json card goes beside it).",
)
@click.option(
    "--resume/--no-resume", default=True, show_default=True, help="Continue an interrupted run."
)
@click.option(
    "-o", "--option", "opts", multiple=True, help="Defense option key=value (repeatable)."
)
@click.option(
    "-a",
    "--arch-option",
    "arch_opts",
    multiple=True,
    help="Architecture option key=value, e.g. width=16.",
)
@_user_errors
def train_cmd(
    defense: str,
    dataset: str,
    data_root: Path | None,
    download: bool,
    arch: str,
    epochs: int | None,
    train_images: int | None,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    out: Path | None,
    resume: bool,
    opts: tuple[str, ...],
    arch_opts: tuple[str, ...],
) -> None:
    """Train a model with a defense; writes a robench checkpoint and its model card."""
    from robench import _distributed as distributed
    from robench.training.job import train

    akw: dict[str, object] = {
        k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in _options(arch_opts).items()
    }
    _check_arch_options(arch, akw)
    from robench._io import writable_dir

    writable_dir(
        out.parent if out is not None else Path("checkpoints")
    )  # fail now, not after hours of training
    try:
        path = train(
            defense,
            dataset=dataset,
            data_root=None if data_root is None else str(data_root),
            download=download,
            arch=arch,
            arch_kwargs=akw,
            epochs=epochs,
            train_images=train_images,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            out=out,
            resume=resume,
            options=_options(opts),
            device=device,
            progress=True,
        )
        main_rank = distributed.world().is_main
    finally:
        distributed.shutdown()
    if main_rank:
        click.echo(f"wrote {path} and {path.with_suffix('.json')}")


def _check_arch_options(arch: str, akw: dict[str, Any]) -> None:
    """Build ``arch`` with ``-a`` options on the meta device (costs nothing): bad ones fail here."""
    if not akw:
        return
    import torch

    from robench.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(arch, 10, **akw)
    except (
        TypeError,
        ValueError,
        RuntimeError,
        IndexError,
    ) as exc:  # an unknown --arch is a KeyError: passes
        from robench._io import first_line

        raise ValueError(
            f"--arch {arch} does not accept the options {akw}: {first_line(exc, 160)}"
        ) from None
    if any(t.numel() == 0 for t in [*model.parameters(), *model.buffers()]):
        raise ValueError(f"--arch {arch} with options {akw} has layers of size 0")


@main.command("leaderboard")
@click.argument("result_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("leaderboard/site"),
    show_default=True,
    help="Site folder (index.html, models/, plots/, CSVs).",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots.")
@click.option(
    "--examples/--no-examples",
    default=True,
    show_default=True,
    help="Write example images and the gallery.",
)
@click.option(
    "--attack-examples/--no-attack-examples",
    default=True,
    show_default=True,
    help="Craft adversarial examples for checkpoints found with the hash their result states.",
)
@_user_errors
def leaderboard_cmd(
    result_dirs: tuple[Path, ...], out: Path, plots: bool, examples: bool, attack_examples: bool
) -> None:
    """Build the static HTML leaderboard from result JSON files (default folder: leaderboard/)."""
    from robench import build_leaderboard

    lb = build_leaderboard(
        result_dirs or (Path("leaderboard"),),
        out,
        plots=plots,
        examples=examples,
        attack_examples=attack_examples,
    )
    for problem in lb.problems:
        click.echo(f"skipped {problem}", err=True)
    click.echo(f"wrote {lb.index} ({len(lb.records)} results, {len(lb.problems)} files skipped)")
    for key in ("wide_csv", "long_csv"):
        click.echo(f"{key:>12}: {lb.files[key]}")


@main.command("render")
@click.option(
    "--dataset", default="shapes", show_default=True, help="A name from `robench list datasets`."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["cifar10-c", "imagenet-c"]),
    required=True,
    help="cifar10-c: uint8 .npy files; imagenet-c: JPEG folders (quality 85, as released).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option(
    "--download", is_flag=True, help="Fetch a missing real dataset into --data-root (network)."
)
@click.option(
    "-p",
    "--perturbation",
    "perturbations",
    multiple=True,
    help="Only these corruptions (repeatable; default: the 15 of ImageNet-C).",
)
@click.option(
    "--n-images",
    type=click.IntRange(1),
    default=None,
    help="The seeded subset evaluate --n-images picks (default: every test image).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@_user_errors
def render_cmd(
    dataset: str,
    fmt: str,
    out: Path,
    data_root: Path | None,
    download: bool,
    perturbations: tuple[str, ...],
    n_images: int | None,
    seed: int,
    batch_size: int,
    device: str,
) -> None:
    """Write DATASET's corrupted test images in a released layout (CIFAR-10-C or ImageNet-C).

    Every image is the one `robench evaluate` computes on the fly for the same images and seed;
    a killed render resumes where it stopped (each file is written whole or not at all).
    """
    from robench.evaluation.render import render

    result = render(
        dataset,
        fmt,
        out,
        perturbations=perturbations,
        n_images=n_images,
        seed=seed,
        data_root=data_root,
        download=download,
        batch_size=batch_size,
        device=device,
        progress=True,
    )
    click.echo(
        f"wrote {result.written} files ({result.kept} already there) into {result.out}: "
        f"{len(result.names)} corruptions x 5 severities of {len(result.indices)} images"
    )
    if result.dataset is not None:
        click.echo(
            f"evaluate it with: robench evaluate MODEL --dataset {result.dataset} "
            f"--data-root {result.out}"
        )
    else:
        click.echo("(no clean images in this format at this size: the .npy files stand alone)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
