"""The per-perturbation parts of a result record: accuracy counts, severities and scores.

Frozen dataclasses that mirror the JSON objects of ``robench/schemas/result.schema.json`` (see
:mod:`robench.evaluation.record` for the whole record), with the helpers that write them as JSON:
a field's metadata says whether its key is left out when empty (``OMIT``) or whether a nested
dataclass's keys are written into the parent object (``FLATTEN``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

import numpy as np

from robench.scores import pack_bits, unpack_bits, wilson_interval

__all__ = [
    "FLATTEN",
    "OMIT",
    "Accuracy",
    "CleanComparison",
    "CleanResult",
    "Components",
    "JsonSection",
    "Kind",
    "Marker",
    "PerturbationResult",
    "Scores",
    "SeverityResult",
    "Status",
    "SurrogateRef",
    "component_accuracies",
    "dump",
    "plain",
]

Kind = Literal["corruption", "attack"]
Status = Literal["done", "skipped"]
Marker = Literal["+", "-", ""]

# How a field reaches the JSON (dataclass field metadata): ``omit`` leaves the key out when the
# value is None, empty, False or the field's default, ``flatten`` writes a nested dataclass's keys
# into the parent object.
OMIT: Mapping[str, bool] = {"omit": True}
FLATTEN: Mapping[str, bool] = {"flatten": True}


def _json(value: Any) -> Any:
    """Plain JSON values: dataclasses as objects, tuples as lists, NaN/Inf (undefined) as null."""
    if is_dataclass(value) and not isinstance(value, type):
        return dump(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def dump(obj: Any) -> dict[str, Any]:
    """The JSON object of a record dataclass, keys in field order, ``OMIT``/``FLATTEN`` applied."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("flatten"):
            out.update({} if value is None else dump(value))
        elif not (f.metadata.get("omit") and _empty(value, f.default)):
            out[f.name] = _json(value)
    return out


def _empty(value: Any, default: Any) -> bool:
    """Whether an ``OMIT`` field stays out of the JSON: None, empty, False or its default value."""
    if value is None or value == () or value is False:
        return True
    return default is not MISSING and isinstance(value, str) and value == default


def plain(cls: Any, data: Mapping[str, Any]) -> Any:
    """A dataclass of plain JSON fields (lists become tuples, absent keys default)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def _pair(values: Sequence[float | None]) -> tuple[float, float]:
    """An interval read back from JSON (null, for an undefined end, becomes NaN)."""
    lo, hi = values
    return (math.nan if lo is None else float(lo), math.nan if hi is None else float(hi))


class JsonSection:
    """``to_dict`` for the record's dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the file's order."""
        return dump(self)


@dataclass(frozen=True, kw_only=True)
class Accuracy(JsonSection):
    """Counts, accuracy, 95 % interval and packed per-image correctness of one evaluation."""

    n: int
    n_correct: int
    accuracy: float
    ci95: tuple[float, float]
    correct: str

    @staticmethod
    def counts(correct: np.ndarray) -> dict[str, Any]:
        """The fields of an :class:`Accuracy` for per-image correctness ``correct``."""
        n, k = int(correct.shape[0]), int(correct.sum())
        return {
            "n": n,
            "n_correct": k,
            "accuracy": k / n if n else float("nan"),
            "ci95": wilson_interval(k, n),
            "correct": pack_bits(correct),
        }

    def bits(self) -> np.ndarray:
        """Per-image correctness, in the order of the run's images."""
        return unpack_bits(self.correct, self.n)


Components = Mapping[str, Accuracy]
"""A composite model's sub-networks scored on the same images (``object``, ``context``)."""


def component_accuracies(correct: Mapping[str, np.ndarray] | None) -> Components | None:
    """Per sub-network, the :class:`Accuracy` of its per-image correctness (None: no components).

    Example:
        >>> import numpy as np
        >>> acc = component_accuracies({"object": np.array([True, False, True, True])})
        >>> acc["object"].n_correct, acc["object"].accuracy
        (3, 0.75)
    """
    if not correct:
        return None
    return {name: Accuracy(**Accuracy.counts(bits)) for name, bits in correct.items()}


def _components_from(data: Mapping[str, Any]) -> Components | None:
    """The ``components`` of a severity's or the clean result's JSON object (None when absent)."""
    found = data.get("components")
    if not found:
        return None
    return {name: plain(Accuracy, acc) for name, acc in found.items()}


@dataclass(frozen=True, kw_only=True)
class SeverityResult(Accuracy):
    """Accuracy at one severity (an attack has one 'severity') and its parameters in words.

    ``components`` (composite models only) holds the accuracy of the model's object and context
    networks on the same images, against the same class labels; R and markers never use it.
    """

    severity: int
    parameter: str | None = field(default=None, metadata=OMIT)
    components: Components | None = field(default=None, metadata=OMIT)

    @classmethod
    def of(
        cls,
        correct: np.ndarray,
        severity: int,
        parameter: str | None,
        components: Components | None = None,
    ) -> SeverityResult:
        """The result of per-image correctness ``correct`` at ``severity``."""
        return cls(
            **cls.counts(correct), severity=severity, parameter=parameter, components=components
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeverityResult:
        """From its JSON object (validated)."""
        rest = {k: v for k, v in data.items() if k != "components"}
        built: SeverityResult = plain(cls, rest)
        return replace(built, components=_components_from(data))


@dataclass(frozen=True, kw_only=True)
class CleanComparison(JsonSection):
    """Clean accuracy against the baseline's: its value, the marker and McNemar's p-value."""

    baseline_accuracy: float
    marker: Marker
    p_value: float | None


@dataclass(frozen=True, kw_only=True)
class CleanResult(Accuracy):
    """Clean accuracy, with the comparison to the baseline's once scored against one."""

    comparison: CleanComparison | None = field(default=None, metadata=FLATTEN)
    components: Components | None = field(default=None, metadata=OMIT)

    @classmethod
    def of(cls, correct: np.ndarray, components: Components | None = None) -> CleanResult:
        """The clean result of per-image correctness ``correct`` (and of the sub-networks)."""
        return cls(**cls.counts(correct), components=components)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CleanResult:
        """From its JSON object (validated)."""
        base = data.get("baseline_accuracy")
        comparison = (
            None
            if base is None
            else CleanComparison(
                baseline_accuracy=base,
                marker=data.get("marker", ""),
                p_value=data.get("p_value"),
            )
        )
        counts = {f.name: data[f.name] for f in fields(Accuracy)}
        return cls(
            **counts | {"ci95": tuple(data["ci95"])},
            comparison=comparison,
            components=_components_from(data),
        )

    @property
    def marker(self) -> str:
        """``+``/``-`` against the baseline's clean accuracy; ``""`` without a baseline."""
        return "" if self.comparison is None else self.comparison.marker


@dataclass(frozen=True, kw_only=True)
class Scores(JsonSection):
    """A perturbation's mean accuracy, R, and its comparison with the baseline's R.

    ``R`` is None when the clean accuracy is 0; ``marker`` is ``""``, and ``baseline_R``,
    ``p_value`` and ``significant`` None, without a baseline (or without its images' bits).
    ``p_value``, ``significant``, ``delta_R`` and its interval come from a paired bootstrap of
    dR = R - baseline_R with the image as the unit (:func:`robench.scores.paired_r_bootstrap`):
    the star tests what the marker shows. Results written before this test existed hold a
    McNemar p-value on accuracy and no ``delta_R``; scoring them again replaces it.
    """

    accuracy: float
    R: float | None
    baseline_R: float | None
    marker: Marker
    p_value: float | None
    significant: bool | None
    delta_R: float | None = field(default=None, metadata=OMIT)
    delta_R_ci95: tuple[float, float] | None = field(default=None, metadata=OMIT)


@dataclass(frozen=True, kw_only=True)
class SurrogateRef(JsonSection):
    """The model that crafted a transfer attack's adversarials."""

    id: str
    source: str
    sha256: str | None


@dataclass(frozen=True, kw_only=True)
class PerturbationResult(JsonSection):
    """One perturbation of the run: what it is, its severities, and (once scored) its R.

    ``source`` says where the perturbed images came from when robench did not compute them
    (a released dataset's file); ``notes`` holds what an attack reports about its own run.
    """

    kind: Kind
    family: str
    mode: str | None = field(default=None, metadata=OMIT)
    params: Mapping[str, Any] | None = field(default=None, metadata=OMIT)
    surrogate: SurrogateRef | None = field(default=None, metadata=OMIT)
    severities: tuple[SeverityResult, ...] = field(default=(), metadata=OMIT)
    status: Status
    reason: str | None = field(default=None, metadata=OMIT)
    source: str | None = field(default=None, metadata=OMIT)
    notes: Mapping[str, Any] | None = field(default=None, metadata=OMIT)
    seconds: float | None = field(default=None, metadata=OMIT)
    scores: Scores | None = field(default=None, metadata=FLATTEN)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerturbationResult:
        """From its JSON object (validated); unscored when ``accuracy`` or ``R`` is missing."""
        scores = None
        if "accuracy" in data and "R" in data:
            scores = Scores(
                accuracy=data["accuracy"],
                R=data["R"],
                baseline_R=data.get("baseline_R"),
                marker=data.get("marker", ""),
                p_value=data.get("p_value"),
                significant=data.get("significant"),
                delta_R=data.get("delta_R"),
                delta_R_ci95=_pair(data["delta_R_ci95"]) if data.get("delta_R_ci95") else None,
            )
        sur = data.get("surrogate")
        return cls(
            kind=data["kind"],
            family=data["family"],
            mode=data.get("mode"),
            params=data.get("params"),
            surrogate=None if sur is None else plain(SurrogateRef, sur),
            severities=tuple(SeverityResult.from_dict(s) for s in data.get("severities", ())),
            status=data["status"],
            reason=data.get("reason"),
            source=data.get("source"),
            notes=data.get("notes"),
            seconds=data.get("seconds"),
            scores=scores,
        )

    @property
    def done(self) -> bool:
        """Whether it was computed (not skipped)."""
        return self.status == "done"

    def complete(self, severities: Sequence[int]) -> bool:
        """Done, at exactly these severity levels (a resumed run recomputes it otherwise)."""
        return self.done and [s.severity for s in self.severities] == list(severities)

    def bits(self) -> np.ndarray:
        """Per-image correctness of every severity, one after the other."""
        return np.concatenate([s.bits() for s in self.severities])
