"""A labelled grid of sample images, so a person can see what a dataset looks like."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ._base import ImageDataset  # noqa: E402

__all__ = ["preview_figure"]


def preview_figure(ds: ImageDataset, *, n: int = 40, cols: int = 10, show_boxes: bool = False) -> Figure:
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
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        label = int(y[k])
        classes = ds.info.classes
        ax.set_title(classes[label] if label < len(classes) else str(label), fontsize=7)
        if show_boxes and ds.boxes is not None:
            x0, y0, x1, y1 = ds.boxes[k].tolist()
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="yellow", lw=0.8))
    fig.suptitle(f"{ds.info.name} ({ds.info.split}, {ds.info.image_size} px, {len(ds)} images)", fontsize=9)
    fig.tight_layout()
    return fig
