"""Figures for people to look at: every corruption on sample images, dataset previews, PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import Tensor  # noqa: E402

from robench import perturbations as P  # noqa: E402
from robench.data import ImageDataset  # noqa: E402

__all__ = ["DEFAULT_DATASET", "figure_png", "gallery_figure", "preview_figure"]

DEFAULT_DATASET = {"cifar": "shapes", "tiny": "shapes-64", "imagenet": "shapes-224"}


def _corrupt(
    name: str, x: Tensor, severity: int, *, preset: str, seed: int, boxes: Tensor | None
) -> Tensor:
    spec = P.get(name)
    kw = {"boxes": boxes} if spec.needs_boxes else {}
    out: Tensor = spec(x, severity, seed=seed, preset=preset, **kw)
    return out


def gallery_figure(
    images: Tensor,
    *,
    names: Sequence[str] | None = None,
    preset: str = "cifar",
    seed: int = 0,
    boxes: Tensor | None = None,
    title: str = "",
) -> Figure:
    """A grid: one row per corruption; for each image, the clean image then every severity.

    Args:
        images: N x C x H x W in [0, 1] (a few images; 1-3 read best).
        names: corruptions to show (default: every registered corruption, ``mtlat24`` order first).
        preset: parameter table to use.
        seed: run seed (the same images as an evaluation with this seed).
        boxes: N x 4 boxes, needed by ``foreground_blur`` (rows needing boxes are skipped without).
        title: figure title.

    Returns:
        The figure (the caller saves it).
    """
    if names is None:
        first = [n for n in P.names(kind="corruption", suite="corruptions19")]
        names = first + [n for n in P.names(kind="corruption") if n not in first]
    names = [n for n in names if boxes is not None or not P.get(n).needs_boxes]
    n_img = images.shape[0]
    max_sev = max(len(P.get(n).severities) for n in names)
    cols = n_img * (max_sev + 1)
    fig, axes = plt.subplots(
        len(names), cols, figsize=(0.95 * cols + 1.6, 0.95 * len(names) + 0.6), squeeze=False
    )
    for r, name in enumerate(names):
        spec = P.get(name)
        row = [images] + [
            _corrupt(name, images, s, preset=preset, seed=seed, boxes=boxes)
            for s in spec.severities
        ]
        texts = ["clean"] + [f"s{s}" for s in spec.severities]
        for i in range(n_img):
            for j in range(max_sev + 1):
                ax = axes[r, i * (max_sev + 1) + j]
                ax.set_xticks([]), ax.set_yticks([])
                if j >= len(row):
                    ax.axis("off")
                    continue
                img = row[j][i].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
                ax.imshow(
                    img.squeeze(-1) if img.shape[-1] == 1 else img,
                    cmap="gray",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
                if r == 0 or j == 0:
                    ax.set_title(texts[j], fontsize=7)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title or f"robench corruptions, preset {preset}, seed {seed}", fontsize=10)
    fig.tight_layout()
    return fig


def sample_images(
    dataset: str, n: int, *, root: str | None = None
) -> tuple[Tensor, Tensor | None, str]:
    """The first ``n`` test images of ``dataset`` (one per class where possible), boxes, preset."""
    from robench.data import load_dataset

    ds = load_dataset(dataset, "test", root=root)
    seen: dict[int, int] = {}
    for i in range(min(len(ds), 500)):
        seen.setdefault(int(ds.targets[i]), i)
        if len(seen) >= n:
            break
    idx = torch.tensor(sorted(seen.values())[:n])
    x, _ = ds.get_batch(idx)
    boxes = None if ds.boxes is None else ds.boxes[idx]
    return x, boxes, ds.info.preset


def preview_figure(
    ds: ImageDataset, *, n: int = 40, cols: int = 10, show_boxes: bool = False
) -> Figure:
    """The first ``n`` images of ``ds`` (at most) in a grid, each titled with its class name.

    Args:
        ds: any robench dataset.
        n: how many images.
        cols: images per row.
        show_boxes: draw the bounding box when the dataset has boxes.

    Returns:
        A matplotlib figure (the caller saves it).
    """
    n = max(1, min(n, len(ds)))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    x, y = ds.get_batch(torch.arange(n))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = x[k].permute(1, 2, 0).numpy()
        ax.imshow(
            img.squeeze(-1) if img.shape[-1] == 1 else img,
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        label = int(y[k])
        classes = ds.info.classes
        ax.set_title(classes[label] if label < len(classes) else str(label), fontsize=7)
        if show_boxes and ds.boxes is not None:
            x0, y0, x1, y1 = ds.boxes[k].tolist()
            ax.add_patch(
                Rectangle(
                    (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="yellow", lw=0.8
                )
            )
    fig.suptitle(
        f"{ds.info.name} ({ds.info.split}, {ds.info.image_size} px, {len(ds)} images)", fontsize=9
    )
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of ``fig`` (then closed), ready for an atomic write."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
