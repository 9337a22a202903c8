"""Example images for the leaderboard: the evaluated images under each perturbation, as PNG files.

Corrupted images depend only on the dataset, the image and the seed, so they are written once and
shared by every model evaluated on them; whether a model got each one right comes from the
per-image correctness its result file records. Adversarial images depend on the model: they are
crafted only for robench checkpoints found with exactly the hash the result states, by
:class:`robench.evaluation.examples.CheckpointAdversary` (a result file is untrusted and must not
make the builder run code); this module only writes and describes images.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from robench import perturbations as P
from robench._io import atomic_write_bytes, first_line, safe_slug
from robench.data import load_dataset
from robench.evaluation.examples import CheckpointAdversary, ExampleUnavailable
from robench.evaluation.record import PerturbationResult, Record
from robench.perturbations._base import PERTURBATIONS
from robench.report.figures import figure_png, gallery_figure
from robench.report.tables import SHORT_NAMES, TABLE1_COLUMNS

__all__ = ["ExampleWriter", "SamplesUnavailable", "image_png"]

log = logging.getLogger(__name__)
_LOAD_ERRORS = (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError)


def image_png(x: Tensor, *, min_side: int = 96) -> bytes:
    """PNG bytes of one C x H x W image in [0, 1], enlarged (nearest) to ``min_side`` px or more."""
    arr = (
        (x.detach().cpu().float().clamp(0, 1) * 255)
        .round()
        .to(torch.uint8)
        .permute(1, 2, 0)
        .numpy()
    )
    img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    factor = max(1, -(-min_side // max(img.size)))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _mark(bits: Any, pos: int) -> bool | None:
    return None if bits is None or pos >= len(bits) else bool(bits[pos])


class SamplesUnavailable(Exception):
    """The evaluated images of a result cannot be shown here; the message says why."""


Samples = tuple[list[int], list[int], Tensor, Tensor, Tensor | None]


class ExampleWriter:
    """Writes example images under ``out/examples`` and describes them for the templates.

    Args:
        out: the site folder.
        attacks: craft adversarial examples where the checkpoint can be found and verified.
        n_images: evaluated images shown per model (the first ones of the run's subset).

    Attributes:
        written: every image file written so far.
    """

    def __init__(self, out: Path, *, attacks: bool = True, n_images: int = 2) -> None:
        self.out, self.attacks, self.n_images = Path(out), attacks, n_images
        self._data: dict[str, Any] = {}  # dataset name -> dataset, or why it cannot be loaded
        self._adversary = CheckpointAdversary() if attacks else None
        self.written: set[Path] = set()

    def _dataset(self, name: str) -> Any:
        """The test split of dataset ``name`` (loaded once).

        Raises:
            SamplesUnavailable: it cannot be loaded here (remembered: tried once).
        """
        if name not in self._data:
            try:
                self._data[name] = load_dataset(name, "test")
            except _LOAD_ERRORS as exc:
                self._data[name] = SamplesUnavailable(
                    f"dataset {name!r} is not available here ({first_line(exc, 120)})"
                )
        got = self._data[name]
        if isinstance(got, SamplesUnavailable):
            raise got
        return got

    def _write(self, rel: str, x: Tensor) -> str:
        path = self.out / rel
        if path not in self.written:
            atomic_write_bytes(path, image_png(x))
            self.written.add(path)
        return rel

    def samples(self, rec: Record) -> Samples:
        """Positions in the run, dataset indices, images, labels and boxes of the shown images.

        Raises:
            SamplesUnavailable: the evaluated images are not available here.
        """
        info = rec.dataset
        ds = self._dataset(info.name)
        if len(ds) != info.size or ds.info.image_size != info.image_size:
            raise SamplesUnavailable(
                f"the local copy of {info.name!r} differs from the evaluated one "
                "(size or resolution)"
            )
        positions = list(range(min(self.n_images, int(info.n_images))))
        indices = [int(info.indices[p]) if info.indices else p for p in positions]
        if any(i >= len(ds) for i in indices):
            raise SamplesUnavailable("the recorded image indices are outside the dataset")
        idx = torch.tensor(indices)
        x, y = ds.get_batch(idx)
        boxes = None if ds.boxes is None else ds.boxes[idx]
        return positions, indices, x, y, boxes

    def tiles(self, rec: Record, page: str) -> dict[str, Any]:
        """The example block of one model page: images, one tile per perturbation, notes."""
        try:
            positions, indices, x, y, boxes = self.samples(rec)
        except SamplesUnavailable as exc:
            return {"images": [], "tiles": [], "notes": [str(exc)]}
        ds = self._dataset(rec.dataset.name)
        classes = getattr(ds.info, "classes", None) or ()
        images = [
            {"index": i, "label": classes[int(c)] if int(c) < len(classes) else str(int(c))}
            for i, c in zip(indices, y, strict=True)
        ]
        seed, preset = int(rec.config.seed), rec.dataset.preset
        folder = f"examples/{safe_slug(rec.dataset.name)}-s{seed}"
        clean_bits = None if rec.clean is None else rec.clean.bits()
        tiles = [
            {
                "name": "clean",
                "short": "Clean",
                "caption": "no perturbation",
                "cells": [
                    {
                        "src": self._write(f"{folder}/clean-{i}.png", x[k]),
                        "correct": _mark(clean_bits, p),
                        "trail": "",
                    }
                    for k, (p, i) in enumerate(zip(positions, indices, strict=True))
                ],
            }
        ]
        notes: list[str] = []
        for name in _names(rec):
            entry = rec.perturbations[name]
            if not entry.done:
                continue
            spec = PERTURBATIONS.get(name) if name in PERTURBATIONS else None
            if spec is None:
                tiles.append(
                    _tile(
                        name,
                        entry,
                        positions,
                        [None] * len(positions),
                        "not a registered perturbation",
                    )
                )
            elif spec.kind == "corruption":
                tiles.append(
                    self._corruption_tile(
                        spec, entry, folder, positions, indices, x, boxes, seed, preset
                    )
                )
            else:
                tiles.append(
                    self._attack_tile(spec, entry, rec, page, positions, indices, x, y, seed, notes)
                )
        if not self.attacks and any(t.get("note") == "needs the checkpoint" for t in tiles):
            notes.append(
                "Adversarial images are not shown: adversarial examples were not requested."
            )
        return {"images": images, "tiles": tiles, "notes": notes}

    def _corruption_tile(
        self,
        spec: Any,
        entry: PerturbationResult,
        folder: str,
        positions: list[int],
        indices: list[int],
        x: Tensor,
        boxes: Tensor | None,
        seed: int,
        preset: str,
    ) -> dict[str, Any]:
        sevs = {s.severity: s for s in entry.severities}
        s = 3 if 3 in sevs else sorted(sevs)[len(sevs) // 2]
        if spec.needs_boxes and boxes is None:
            return _tile(
                spec.name,
                entry,
                positions,
                [None] * len(positions),
                "needs bounding boxes",
                severity=s,
            )
        xc = spec(x, s, seed=seed, indices=indices, preset=preset, boxes=boxes)
        srcs = [
            self._write(f"{folder}/{spec.name}-s{s}-{i}.png", xc[k]) for k, i in enumerate(indices)
        ]
        return _tile(spec.name, entry, positions, srcs, "", severity=s)

    def _attack_tile(
        self,
        spec: Any,
        entry: PerturbationResult,
        rec: Record,
        page: str,
        positions: list[int],
        indices: list[int],
        x: Tensor,
        y: Tensor,
        seed: int,
        notes: list[str],
    ) -> dict[str, Any]:
        if self._adversary is None:
            return _tile(
                spec.name, entry, positions, [None] * len(positions), "needs the checkpoint"
            )
        sevs = sorted(s.severity for s in entry.severities)
        level = sevs[len(sevs) // 2] if len(sevs) > 1 else None  # a sweep: its middle strength
        try:
            adv = self._adversary.craft(
                rec, spec.name, x, y, indices=indices, seed=seed, severity=level
            )
        except ExampleUnavailable as exc:
            if exc.of_model:
                note = f"Adversarial images are not shown: {exc.reason}."
                if note not in notes:
                    notes.append(note)
                return _tile(
                    spec.name, entry, positions, [None] * len(positions), "needs the checkpoint"
                )
            return _tile(spec.name, entry, positions, [None] * len(positions), exc.reason)
        tag = "" if level is None else f"-s{level}"
        srcs = [
            self._write(f"examples/{page}/{spec.name}{tag}-{i}.png", adv[k])
            for k, i in enumerate(indices)
        ]
        return _tile(spec.name, entry, positions, srcs, "", severity=level)

    def gallery(self, records: Sequence[Record]) -> dict[str, Path]:
        """One PNG per dataset: each corruption the results used, each severity, on its images."""
        written: dict[str, Path] = {}
        for rec in records:
            name = rec.dataset.name
            if f"gallery:{name}" in written:
                continue
            names = [n for n in _names(rec) if n in PERTURBATIONS and P.get(n).kind == "corruption"]
            if not names:
                continue
            try:
                _, _, x, _, boxes = self.samples(rec)
            except SamplesUnavailable:
                continue  # the model pages say why
            fig = gallery_figure(
                x,
                names=names,
                preset=rec.dataset.preset,
                seed=int(rec.config.seed),
                boxes=boxes,
                title=f"corruptions on {len(x)} evaluated images, seed {rec.config.seed}",
            )
            path = self.out / "plots" / f"gallery-{safe_slug(name)}.png"
            written[f"gallery:{name}"] = atomic_write_bytes(path, figure_png(fig, dpi=90))
        return written


def _names(rec: Record) -> list[str]:
    names = [n for n in TABLE1_COLUMNS if n in rec.perturbations]
    return names + [n for n in rec.perturbations if n not in names]


def _tile(
    name: str,
    entry: PerturbationResult,
    positions: list[int],
    srcs: Sequence[str | None],
    note: str,
    *,
    severity: int | None = None,
) -> dict[str, Any]:
    """One perturbation's tile: images, whether the model got each right, per severity too."""
    sevs = entry.severities
    chosen = next((s for s in sevs if s.severity == severity), sevs[0]) if severity else sevs[0]
    bits = [s.bits() for s in sevs]
    chosen_bits = chosen.bits()
    cells = []
    for p, src in zip(positions, srcs, strict=True):
        trail = (
            "".join("\u2713" if _mark(b, p) else "\u2717" for b in bits) if len(bits) > 1 else ""
        )
        cells.append({"src": src, "correct": _mark(chosen_bits, p), "trail": trail})
    parameter = chosen.parameter or ""
    caption = f"severity {severity}: {parameter}" if severity else parameter
    return {
        "name": name,
        "short": SHORT_NAMES.get(name, name),
        "caption": caption,
        "cells": cells,
        "note": note,
    }
