"""``shapes``: the embedded procedural dataset, generated on first use in seconds and cached.

Ten shape classes (circle, square, triangle, star, cross, ring, crescent, heart, arrow, frame) with
random colour, size, position and rotation, drawn anti-aliased on one of ten textured background
styles. The background style is the image's *context label*; it agrees with the class at a
configurable rate, which is what the fusion defense learns from. Each image also records the
bounding box of its shape.

Everything random comes from numpy's PCG64 (bit-identical on every platform) and the per-pixel
maths uses only +, -, *, / and comparisons, so the same seed gives the same bytes everywhere.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from robench._io import atomic_write_bytes, cache_dir
from robench._seeding import derive_seed
from robench.data._base import DATASETS, ArrayDataset, DatasetInfo, DatasetSpec, ImageDataset

__all__ = ["CLASSES", "STYLES", "ShapesConfig", "render_shapes", "load_shapes", "cache_dir"]

log = logging.getLogger(__name__)

CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "heart",
    "arrow",
    "frame",
)
STYLES = (
    "flat",
    "h-stripes",
    "v-stripes",
    "diagonal",
    "checker",
    "dots",
    "gradient",
    "radial",
    "grid",
    "blobs",
)
FORMAT_VERSION = 1
_CHUNK = 256


@dataclass(frozen=True)
class ShapesConfig:
    """One rendering of the dataset.

    Args:
        size: image side in pixels (32, 64 or 224 for the registered variants).
        n_train: training images.
        n_test: test images.
        seed: dataset seed (the default 0 is the benchmark's dataset).
        context_rate: probability that the background style equals the class index.
        supersample: samples per pixel side for anti-aliasing.
    """

    size: int = 32
    n_train: int = 20000
    n_test: int = 2000
    seed: int = 0
    context_rate: float = 0.5
    supersample: int = 2

    @property
    def preset(self) -> str:
        """Corruption preset declared for this resolution."""
        return {32: "cifar", 64: "tiny", 224: "imagenet"}.get(
            self.size, "cifar" if self.size <= 48 else "tiny" if self.size <= 128 else "imagenet"
        )

    def key(self, split: str) -> str:
        """File name stem of a cached split."""
        return (
            f"shapes-v{FORMAT_VERSION}-{self.size}px-s{self.seed}-c{self.context_rate:g}"
            f"-n{self.n_train if split == 'train' else self.n_test}-{split}"
        )


VARIANTS = {
    "shapes": ShapesConfig(size=32, n_train=20000, n_test=2000),
    "shapes-64": ShapesConfig(size=64, n_train=10000, n_test=1000),
    "shapes-224": ShapesConfig(size=224, n_train=2000, n_test=500, supersample=1),
}


_Floats = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]

# --- shape membership on local coordinates (u, v), shape radius 1 -------------------------------


def _halfplanes(u: _Floats, v: _Floats, pts: list[tuple[float, float]]) -> _Mask:
    """Inside the convex polygon ``pts`` (counter-clockwise)."""
    inside = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _regular(n: int, radius: float, phase: float = 0.0) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(phase + 2 * math.pi * k / n),
            radius * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


_TRIANGLE = _regular(3, 1.0, math.pi / 2)
_STAR_OUTER = _regular(5, 1.0, math.pi / 2)
_STAR_INNER = _regular(5, 0.42, math.pi / 2 + math.pi / 5)


def _star(u: _Floats, v: _Floats) -> _Mask:
    inside = _halfplanes(u, v, _STAR_INNER)
    for k in range(5):  # each point: triangle (inner k-1, outer k, inner k)
        tri = [_STAR_INNER[k - 1], _STAR_OUTER[k], _STAR_INNER[k]]
        inside |= _halfplanes(u, v, tri[::-1] if _ccw(tri) < 0 else tri)
    return inside


def _ccw(p: list[tuple[float, float]]) -> float:
    (ax, ay), (bx, by), (cx, cy) = p
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def _shape_mask(cls: int, u: _Floats, v: _Floats) -> _Mask:
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    if cls == 0:
        return r2 <= 0.9
    if cls == 1:
        return np.maximum(au, av) <= 0.75
    if cls == 2:
        return _halfplanes(u, v, _TRIANGLE)
    if cls == 3:
        return _star(u, v)
    if cls == 4:
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if cls == 5:
        return (r2 <= 0.95) & (r2 >= 0.36)
    if cls == 6:
        return (r2 <= 0.95) & ((u - 0.45) ** 2 + v * v >= 0.6)
    if cls == 7:
        lobes = ((u + 0.42) ** 2 + (v - 0.35) ** 2 <= 0.25) | (
            (u - 0.42) ** 2 + (v - 0.35) ** 2 <= 0.25
        )
        return lobes | _halfplanes(u, v, [(-0.88, 0.22), (0.0, -0.95), (0.88, 0.22)])
    if cls == 8:
        shaft = (av <= 0.2) & (u >= -0.95) & (u <= 0.15)
        return shaft | _halfplanes(u, v, [(0.1, -0.6), (0.95, 0.0), (0.1, 0.6)])
    return (np.maximum(au, av) <= 0.85) & (np.maximum(au, av) >= 0.5)


# --- backgrounds -------------------------------------------------------------------------------


def _pattern(style: int, x: _Floats, y: _Floats, p: _Floats, size: int) -> _Floats:
    """Pattern in [0, 1] for one chunk; ``p`` holds uniform numbers per image, x/y are in pixels."""
    period = (0.12 + 0.14 * p[:, 0, None, None]) * size
    phase = p[:, 1, None, None] * period
    if style == 0:
        return np.zeros_like(x)
    if style == 1:
        return (np.mod(y + phase, period) < period / 2).astype(np.float64)
    if style == 2:
        return (np.mod(x + phase, period) < period / 2).astype(np.float64)
    if style == 3:
        return (np.mod(x + y + phase, period) < period / 2).astype(np.float64)
    if style == 4:
        cx = np.mod(x + phase, period) < period / 2
        cy = np.mod(y + phase, period) < period / 2
        return (cx ^ cy).astype(np.float64)
    if style == 5:
        dx = np.mod(x + phase, period) - period / 2
        dy = np.mod(y + phase, period) - period / 2
        return (dx * dx + dy * dy <= (0.3 * period) ** 2).astype(np.float64)
    if style == 6:
        a, b = p[:, 2, None, None] * 2 - 1, p[:, 3, None, None] * 2 - 1
        t = (a * x + b * y) / (size * (np.abs(a) + np.abs(b) + 1e-9))
        low: _Floats = t.min(axis=(1, 2), keepdims=True)
        return t - low
    if style == 7:
        px, py = p[:, 2, None, None] * size, p[:, 3, None, None] * size
        return np.minimum(((x - px) ** 2 + (y - py) ** 2) / (0.8 * size) ** 2, 1.0)
    if style == 8:
        w = np.maximum(period / 6, 1.0)
        return ((np.mod(x + phase, period) < w) | (np.mod(y + phase, period) < w)).astype(
            np.float64
        )
    # blobs: a coarse 4x4 random grid, bilinearly interpolated
    grid = p[:, 4:20].reshape(-1, 4, 4)
    gx, gy = np.clip(x / size * 3, 0, 3), np.clip(y / size * 3, 0, 3)
    ix: npt.NDArray[np.int_] = np.minimum(gx.astype(int), 2)
    iy: npt.NDArray[np.int_] = np.minimum(gy.astype(int), 2)
    fx, fy = gx - ix, gy - iy
    n = np.arange(grid.shape[0])[:, None, None]
    g00: _Floats = grid[n, iy, ix]
    g01: _Floats = grid[n, iy, ix + 1]
    g10: _Floats = grid[n, iy + 1, ix]
    g11: _Floats = grid[n, iy + 1, ix + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _render_chunk(
    cfg: ShapesConfig, labels: np.ndarray, styles: np.ndarray, params: np.ndarray, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Render one chunk: returns uint8 N x S x S x 3 images and N x 4 boxes."""
    s, ss = cfg.size, cfg.supersample
    n = len(labels)
    coords = (np.arange(s * ss) + 0.5) / ss  # sample positions in pixel units
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x = np.broadcast_to(x, (n, s * ss, s * ss))
    y = np.broadcast_to(y, (n, s * ss, s * ss))
    # geometry: radius, centre, rotation (cos, sin precomputed per image)
    radius = (0.22 + 0.2 * params[:, 20]) * s
    cx = radius + params[:, 21] * (s - 2 * radius)
    cy = radius + params[:, 22] * (s - 2 * radius)
    cos_t, sin_t = params[:, 23], params[:, 24]
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    u = (cos_t[:, None, None] * dx + sin_t[:, None, None] * dy) / radius[:, None, None]
    v = (-sin_t[:, None, None] * dx + cos_t[:, None, None] * dy) / radius[:, None, None]
    mask = np.zeros((n, s * ss, s * ss), dtype=bool)
    pat = np.zeros((n, s * ss, s * ss))
    for k in range(len(CLASSES)):
        sel = labels == k
        if sel.any():
            mask[sel] = _shape_mask(k, u[sel], v[sel])
        sel = styles == k
        if sel.any():
            pat[sel] = _pattern(k, x[sel], y[sel], params[sel], s)
    cover = mask.reshape(n, s, ss, s, ss).mean(axis=(2, 4))
    pat = pat.reshape(n, s, ss, s, ss).mean(axis=(2, 4))
    bg1, bg2, fg = params[:, 25:28], params[:, 28:31], params[:, 31:34]
    bg = bg1[:, None, None] * (1 - pat[..., None]) + bg2[:, None, None] * pat[..., None]
    bg = bg + noise
    img = bg * (1 - cover[..., None]) + fg[:, None, None] * cover[..., None]
    img = np.clip(np.floor(img * 255 + 0.5), 0, 255).astype(np.uint8)
    rows, cols = cover.any(axis=2), cover.any(axis=1)
    boxes = np.stack(
        [cols.argmax(1), rows.argmax(1), s - cols[:, ::-1].argmax(1), s - rows[:, ::-1].argmax(1)],
        axis=1,
    ).astype(np.float32)
    return img, boxes


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two background colours and a foreground colour that stands out from both (N x 9)."""
    bg1 = rng.uniform(0.05, 0.95, (n, 3))
    bg2 = np.clip(bg1 + rng.uniform(-0.3, 0.3, (n, 3)), 0, 1)
    mean = (bg1 + bg2) / 2
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    light = (mean @ np.array([0.299, 0.587, 0.114]))[:, None]
    sign = np.where(light > 0.5, -1.0, 1.0)
    fg = np.clip(mean + sign * (0.45 + 0.3 * rng.random((n, 1))) * np.abs(direction), 0, 1)
    return np.concatenate([bg1, bg2, fg], axis=1)


def render_shapes(cfg: ShapesConfig, split: str) -> dict[str, np.ndarray]:
    """Render a split without the cache: uint8 N x S x S x 3 images, labels, boxes, context."""
    n = cfg.n_train if split == "train" else cfg.n_test
    rng = np.random.Generator(np.random.PCG64(derive_seed(cfg.seed, "shapes", cfg.size, split)))
    labels = rng.integers(0, len(CLASSES), n)
    agree = rng.random(n) < cfg.context_rate
    styles = np.where(agree, labels, rng.integers(0, len(STYLES), n))
    params = rng.random((n, 34))
    angle = rng.random(n) * 2 * math.pi
    params[:, 23] = [math.cos(a) for a in angle]  # math.cos: the platform libm, one call per image
    params[:, 24] = [math.sin(a) for a in angle]
    params[:, 25:34] = _colours(rng, n)
    images = np.empty((n, cfg.size, cfg.size, 3), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        noise = rng.uniform(-0.06, 0.06, (m, cfg.size, cfg.size, 1))
        images[sl], boxes[sl] = _render_chunk(cfg, labels[sl], styles[sl], params[sl], noise)
    return {
        "images": images,
        "labels": labels.astype(np.int64),
        "boxes": boxes,
        "context": styles.astype(np.int64),
    }


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("images", "labels", "boxes", "context")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        log.warning("cached %s is unreadable; regenerating it", path)
        return None
    return data


def load_shapes(
    cfg: ShapesConfig, split: str, *, name: str = "shapes", use_cache: bool = True
) -> ArrayDataset:
    """The ``split`` of a shapes rendering, from the cache or generated (and cached) now."""
    path = cache_dir() / f"{cfg.key(split)}.npz"
    data = _read_cache(path) if use_cache and path.exists() else None
    if data is None:
        data = render_shapes(cfg, split)
        if use_cache:
            import io

            buf = io.BytesIO()
            np.savez(buf, allow_pickle=False, **data)
            try:
                atomic_write_bytes(path, buf.getvalue())
            except OSError as exc:  # a read-only cache still gives the data
                log.warning("could not cache %s: %s", path, exc)
    info = DatasetInfo(
        name=name,
        num_classes=len(CLASSES),
        image_size=cfg.size,
        channels=3,
        preset=cfg.preset,
        classes=CLASSES,
        split=split,
    )
    return ArrayDataset(
        data["images"], data["labels"], info, boxes=data["boxes"], context=data["context"]
    )


def _loader(cfg: ShapesConfig, name: str) -> Callable[..., ImageDataset]:
    def load(
        *, split: str, root: Path | None, download: bool, channels: int | None
    ) -> ImageDataset:
        if channels == 1:
            raise ValueError(f"{name} has 3 channels; channels=1 is not supported")
        return load_shapes(cfg, split, name=name)

    return load


for _name, _cfg in VARIANTS.items():
    DATASETS.add(
        _name,
        DatasetSpec(
            name=_name,
            loader=_loader(_cfg, _name),
            description=(
                f"embedded procedural shapes, {_cfg.size} px, "
                f"{_cfg.n_train}/{_cfg.n_test} train/test, 10 classes"
            ),
            image_size=_cfg.size,
            preset=_cfg.preset,
            num_classes=len(CLASSES),
            needs_root=False,
        ),
    )
