"""The progress bar of ``evaluate``: one bar over the run, by part, weighted by what each costs.

A run is a list of parts: the clean pass, each perturbation in the run's order (shown as
``NAME k/n``) and the gradient-masking checks. A part weighs the image-passes the dry run counts
for it (:mod:`robench.evaluation.plan`, from :meth:`robench.perturbations.AttackSpec.cost`): one
forward pass per image and severity for a corruption, the attack's forward passes plus
:data:`GRADIENT_COST` times its forward + backward passes (on the model, and on the surrogate for
a transfer attack, its crafting counted), so a PGD-10 batch moves the bar 32 forward passes per
image where a corruption's severity moves it one. Within a part the bar moves by batches.

The bar's total is the whole run's weight; a resumed run starts at the weight of its finished
parts. The time left is not the mean rate of tqdm: the seconds per unit of weight are measured as
the run goes for each kind of part (``clean``, ``corruption``, ``released``, ``white-box``,
``transfer``), and the time left is each remaining part's weight times its kind's measured rate
(the run's mean rate for a kind not met yet). A wrong static ratio (a corruption that costs more
to generate than the model's forward pass, a GPU whose backward pass is cheap) thus corrects
itself once a part of that kind has run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from robench import perturbations as P

__all__ = ["GRADIENT_COST", "MASKING", "Part", "RunProgress", "run_parts"]

GRADIENT_COST = 3
"""Forward passes one forward + backward pass to the input counts for (backward ~ 2 forwards)."""

MASKING = "gradient-masking checks"
"""The part name of the gradient-masking checks."""

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


@dataclass(frozen=True)
class Part:
    """One part of a run as the bar shows it.

    Attributes:
        name: ``clean``, a perturbation or :data:`MASKING`.
        weight: its image-passes, a forward + backward pass counted :data:`GRADIENT_COST` times.
        kind: whose measured rate predicts its time (``clean``, ``corruption``, ``released``,
            ``white-box``, ``transfer``).
        severities: batch passes it makes over the images (its severities; 1 for the others).
        place: ``k/n`` among the run's perturbations (empty for the clean pass and the checks).
    """

    name: str
    weight: float
    kind: str
    severities: int = 1
    place: str = ""

    @property
    def label(self) -> str:
        """What the bar shows while the part runs.

        >>> Part("pgd", 32.0, "white-box", place="2/3").label
        'pgd 2/3'
        """
        return f"{self.name} {self.place}" if self.place else self.name


def _weight(cost: Any) -> float:
    """Forward-pass equivalents of an :class:`~robench.perturbations.AttackCost`."""
    return float(
        cost.forward_passes
        + cost.surrogate_forward_passes
        + GRADIENT_COST * (cost.gradient_passes + cost.surrogate_gradient_passes)
    )


def run_parts(
    names: Sequence[str],
    n_images: int,
    *,
    severities: Callable[[str], Sequence[int]],
    released: Collection[str] = (),
    masking_batch: int = 0,
    surrogate: bool = True,
) -> list[Part]:
    """The parts of a run of ``names`` on ``n_images`` images, clean pass first, checks last.

    Args:
        names: the run's perturbations, in order.
        n_images: images of the run.
        severities: the severities of a perturbation.
        released: perturbations read from released files (weighed as corruptions).
        masking_batch: images of the batch the gradient-masking checks take their images from, at
            most their ``max_images`` (0: no checks).
        surrogate: whether the checks include the transfer one (a surrogate is at hand).

    Example:
        >>> parts = run_parts(["contrast", "pgd"], 10, severities=lambda n: (1, 2, 3, 4, 5))
        >>> [(p.label, p.weight) for p in parts]
        [('clean', 10.0), ('contrast 1/2', 50.0), ('pgd 2/2', 320.0)]
    """
    parts = [Part("clean", float(n_images), "clean")]
    for k, name in enumerate(names, 1):
        sevs, place = len(severities(name)), f"{k}/{len(names)}"
        spec = P.get(name) if name in P.PERTURBATIONS else None
        if spec is None or spec.kind != "attack" or name in released:
            kind = "released" if name in released else "corruption"
            parts.append(Part(name, float(n_images * sevs), kind, sevs, place))
            continue
        kind = "transfer" if spec.mode == "transfer" else "white-box"
        parts.append(Part(name, n_images * _weight(spec.cost()), kind, sevs, place))
    if masking_batch > 0:
        from robench.attacks import gradient_masking_checks, masking_checks_cost

        most = inspect.signature(gradient_masking_checks).parameters["max_images"].default
        cost = masking_checks_cost(surrogate=surrogate)
        parts.append(Part(MASKING, min(most, masking_batch) * _weight(cost), "white-box"))
    return parts


class RunProgress:
    """The run's bar: which part runs, how far the run is, and an ETA from measured rates.

    Use it as a context manager; :meth:`start` a part with the number of batches it makes per
    severity, call the returned ``tick(n)`` after every ``n`` batches, and :meth:`finish` it. A
    part started again (a batch size stepped down after an out-of-memory error) starts over.
    The bar (tqdm, on stderr) is only drawn when ``enabled``; the bookkeeping runs either way.

    Args:
        parts: the run's parts (:func:`run_parts`).
        done: names of the parts a resumed run has already finished.
        enabled: draw the bar.
        clock: seconds, for the measured rates (``time.perf_counter``).

    Example:
        >>> parts = run_parts(["contrast"], 4, severities=lambda n: (1, 2))
        >>> with RunProgress(parts, done=["clean"], enabled=False) as bar:
        ...     tick = bar.start("contrast", batches=2)
        ...     tick(2)
        ...     (bar.position, bar.total, bar.description)
        (8.0, 12.0, 'contrast 1/1')
    """

    def __init__(
        self,
        parts: Sequence[Part],
        *,
        done: Iterable[str] = (),
        enabled: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.parts = {p.name: p for p in parts}
        finished = set(done)
        self.total = sum(p.weight for p in parts)
        self.initial = sum(p.weight for p in parts if p.name in finished)
        self.enabled, self.clock = enabled, clock
        self.left = [p.name for p in parts if p.name not in finished]
        self.finished = self.initial  # weight of the parts finished so far
        self.descriptions: list[str] = []  # every description shown, in order
        self.bar: Any = None  # a tqdm bar once entered (tqdm loads on first use)
        self.seconds: dict[str, float] = {}  # measured in this process, per kind
        self.units: dict[str, float] = {}
        self.current: Part | None = None
        self.expected, self.ticks, self.started = 1, 0, 0.0

    def __enter__(self) -> RunProgress:
        if self.enabled and self.total > 0:
            self.bar = _bar(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def description(self) -> str:
        """The running part's label (``evaluate`` before the first part)."""
        return "evaluate" if self.current is None else self.current.label

    @property
    def position(self) -> float:
        """Weight done: finished parts plus the running part's share of its batches."""
        part = self.current
        share = (
            0.0 if part is None else part.weight * min(self.ticks, self.expected) / self.expected
        )
        return self.finished + share

    def start(self, name: str, batches: int) -> Callable[[int], None]:
        """Start (or start over) part ``name`` of ``batches`` batches per severity; its ``tick``."""
        if self.current is not None and self.current.name != name:
            self.finish()
        part = self.parts.get(name) or Part(name, 0.0, "clean")  # not foreseen: weighs nothing
        self.current, self.ticks, self.started = part, 0, self.clock()
        self.expected = max(1, batches * part.severities)
        self.descriptions.append(part.label)
        if self.bar is not None:
            # drawn now: a short part may end before the next refresh
            self.bar.set_description_str(part.label, refresh=True)
        self._show()
        return self.tick

    def tick(self, n: int = 1) -> None:
        """``n`` more batches of the running part are done."""
        self.ticks += n
        self._show()

    def finish(self) -> None:
        """The running part is done: its whole weight counts, and its time for its kind's rate."""
        part = self.current
        if part is None:
            return
        self.current = None
        self.finished += part.weight
        self.seconds[part.kind] = self.seconds.get(part.kind, 0.0) + self.clock() - self.started
        self.units[part.kind] = self.units.get(part.kind, 0.0) + part.weight
        if part.name in self.left:
            self.left.remove(part.name)
        self._show()

    def eta(self) -> float | None:
        """Seconds left: each remaining part's weight times its kind's measured seconds per unit.

        None until some weight was done in this process (a kind not met yet takes the mean rate).
        """
        seconds, units = dict(self.seconds), dict(self.units)
        part, left, done = self.current, 0.0, 0.0
        if part is not None:
            done = part.weight * min(self.ticks, self.expected) / self.expected
            seconds[part.kind] = seconds.get(part.kind, 0.0) + self.clock() - self.started
            units[part.kind] = units.get(part.kind, 0.0) + done
        if sum(units.values()) <= 0:
            return None
        mean = sum(seconds.values()) / sum(units.values())
        for name in self.left:
            p = self.parts[name]
            todo = p.weight - (done if p is part else 0.0)
            rate = seconds[p.kind] / units[p.kind] if units.get(p.kind, 0.0) > 0 else mean
            left += max(todo, 0.0) * rate
        return left

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.update(self.position - self.bar.n)


def _bar(progress: RunProgress) -> Any:
    """A tqdm bar over ``progress``'s weight whose time left is :meth:`RunProgress.eta`."""
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[type-arg]
        @property
        def format_dict(self) -> dict[str, Any]:
            found = dict(super().format_dict)
            left, todo = progress.eta(), (found["total"] or 0) - found["n"]
            if left is not None and left > 0 and todo > 0:
                found["rate"] = todo / left  # tqdm shows (total - n) / rate as the time left
            return found

    return Bar(
        total=progress.total,
        initial=progress.initial,
        desc=progress.description,
        bar_format=BAR_FORMAT,
        dynamic_ncols=True,
    )
