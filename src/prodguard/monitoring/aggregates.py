"""Window aggregates that merge: what a monitor needs of a span of predictions, as summaries
that add up.

A ``Summary`` holds, for the predictions of one model version and role in one time bucket:
the request count; per judged feature the counts on the version's reference bins (training:
``psi.<feature>``, staging: ``shift.<feature>``, and the staging score bins: ``score``) and the
null count; degraded and unseen rows (and degraded rows per feature); the score's moments (and
per class for multiclass models: predicted-class counts, probability moments); a DDSketch per
latency stage (mergeable quantiles with a relative accuracy) and the requests above the latency
budget; the labelled predictions' KPI cost moments (from feedback); request errors per kind;
and the paired score differences against each other version that scored the same requests.

Every field merges by addition, so the summary of a window is the sum of its buckets' and does
not depend on the order they are merged in. Sums are kept **exact** (``Moments``: integers in
units of 2**-1074, the smallest float64 step): a mean from merged buckets is the correctly
rounded mean of the values, equal to the one computed from rows. ``fingerprint`` names the
references the counts were taken on: summaries on other bins are not merged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from ddsketch import DDSketch

from prodguard.errors import StorageError

_SCALE = 1074  # every finite float64 is an integer multiple of 2**-1074
LATENCY_ACCURACY = 0.01  # relative accuracy of the latency sketches
ERRORS_ROLE = "errors"  # the key's role of request error counts (version -1: unknown)


def exact(value: float) -> int:
    """``value`` (finite) as an integer number of 2**-1074."""
    numerator, denominator = float(value).as_integer_ratio()
    return numerator << (_SCALE - denominator.bit_length() + 1)


@dataclass
class Moments:
    """Additive, exact moments of a sample: finite values ``n`` with their ``total`` and sum of
    (rounded) squares in units of 2**-1074, and the non-finite values ``missing``."""

    n: int = 0
    total: int = 0
    squares: int = 0
    missing: int = 0

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> Moments:
        array = np.asarray(values, dtype="float64").ravel()
        finite = array[np.isfinite(array)]
        squares = np.square(finite)
        squares = squares[np.isfinite(squares)]
        return cls(
            int(finite.size),
            sum(map(exact, finite.tolist())),
            sum(map(exact, squares.tolist())),
            int(array.size - finite.size),
        )

    def merge(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.total + other.total,
            self.squares + other.squares,
            self.missing + other.missing,
        )

    @property
    def count(self) -> int:
        return self.n + self.missing

    def mean(self, skip_missing: bool = False) -> float:
        """The correctly rounded mean; NaN when a value was missing (as ``numpy.mean``) unless
        ``skip_missing`` (as ``numpy.nanmean``), or when there is none."""
        if (self.missing and not skip_missing) or not self.n:
            return math.nan
        return self.total / (self.n << _SCALE)

    def sums(self) -> tuple[int, float, float]:
        """``n``, the sum and the sum of squares as floats (``MeanState``'s fields)."""
        unit = 1 << _SCALE
        return self.n, self.total / unit, self.squares / unit

    def to_json(self) -> list[Any]:
        return [self.n, hex(self.total), hex(self.squares), self.missing]

    @classmethod
    def from_json(cls, document: Sequence[Any]) -> Moments:
        n, total, squares, missing = document
        return cls(int(n), int(total, 16), int(squares, 16), int(missing))


def new_sketch() -> DDSketch:
    return DDSketch(LATENCY_ACCURACY)


def sketch_to_json(sketch: DDSketch) -> dict[str, Any]:
    """The sketch's non-empty bins (the library has no serialisation here without protobuf)."""

    def bins(store: Any) -> dict[str, float]:
        return {str(store.offset + i): count for i, count in enumerate(store.bins) if count}

    return {
        "positive": bins(sketch._store),
        "negative": bins(sketch._negative_store),
        "zero": sketch._zero_count,
        "count": sketch._count,
        "sum": sketch._sum,
        "min": sketch._min,
        "max": sketch._max,
    }


def sketch_from_json(document: Mapping[str, Any]) -> DDSketch:
    sketch = new_sketch()
    for store, stored in ((sketch._store, "positive"), (sketch._negative_store, "negative")):
        for key, count in document[stored].items():
            store.add(int(key), float(count))
    sketch._zero_count = float(document["zero"])
    sketch._count = float(document["count"])
    sketch._sum = float(document["sum"])
    sketch._min = float(document["min"])
    sketch._max = float(document["max"])
    return sketch


def _add_counts(left: Mapping[str, int], right: Mapping[str, int]) -> dict[str, int]:
    out = dict(left)
    for key, value in right.items():
        out[key] = out.get(key, 0) + value
    return out


@dataclass
class Summary:
    """The mergeable summary of one model version's predictions (of one role) over a span.
    ``counts`` are keyed ``psi.<feature>``, ``shift.<feature>`` and ``score``; ``nulls`` by
    feature; ``probabilities`` per class index (multiclass); ``paired`` by the other version."""

    fingerprint: str = ""
    rows: int = 0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    unseen: int = 0
    degraded_features: dict[str, int] = field(default_factory=dict)
    score: Moments = field(default_factory=Moments)
    decisions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="int64"))
    probabilities: list[Moments] = field(default_factory=list)
    latency: dict[str, DDSketch] = field(default_factory=dict)
    slow: int = 0  # single-row requests whose total latency exceeded the budget
    timed: int = 0  # single-row requests with a total latency
    kpi: Moments = field(default_factory=Moments)
    errors: dict[str, int] = field(default_factory=dict)
    paired: dict[int, Moments] = field(default_factory=dict)

    def merge(self, other: Summary) -> Summary:
        """The summary of both spans (raises StorageError for summaries on other bins)."""
        if self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint:
            raise StorageError(
                "window aggregates taken on different reference bins cannot be merged; "
                "rebuild them with `prodguard aggregates rebuild`"
            )
        counts = dict(self.counts)
        for key, value in other.counts.items():
            mine = counts.get(key)
            counts[key] = value.copy() if mine is None else mine + value
        latency = {k: _copy_sketch(v) for k, v in self.latency.items()}
        for stage, sketch in other.latency.items():
            if stage in latency:
                latency[stage].merge(sketch)
            else:
                latency[stage] = _copy_sketch(sketch)
        paired = dict(self.paired)
        for version, moments in other.paired.items():
            paired[version] = paired.get(version, Moments()).merge(moments)
        size = max(len(self.decisions), len(other.decisions))
        decisions = np.zeros(size, dtype="int64")
        decisions[: len(self.decisions)] += self.decisions
        decisions[: len(other.decisions)] += other.decisions
        classes = max(len(self.probabilities), len(other.probabilities))
        probabilities = [
            _at(self.probabilities, j).merge(_at(other.probabilities, j)) for j in range(classes)
        ]
        return Summary(
            fingerprint=self.fingerprint or other.fingerprint,
            rows=self.rows + other.rows,
            counts=counts,
            nulls=_add_counts(self.nulls, other.nulls),
            degraded=self.degraded + other.degraded,
            unseen=self.unseen + other.unseen,
            degraded_features=_add_counts(self.degraded_features, other.degraded_features),
            score=self.score.merge(other.score),
            decisions=decisions,
            probabilities=probabilities,
            latency=latency,
            slow=self.slow + other.slow,
            timed=self.timed + other.timed,
            kpi=self.kpi.merge(other.kpi),
            errors=_add_counts(self.errors, other.errors),
            paired=paired,
        )

    def __add__(self, other: Summary) -> Summary:
        return self.merge(other)

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "counts": {k: v.tolist() for k, v in self.counts.items()},
            "nulls": self.nulls,
            "degraded": self.degraded,
            "unseen": self.unseen,
            "degraded_features": self.degraded_features,
            "score": self.score.to_json(),
            "decisions": self.decisions.tolist(),
            "probabilities": [m.to_json() for m in self.probabilities],
            "latency": {k: sketch_to_json(v) for k, v in self.latency.items()},
            "slow": self.slow,
            "timed": self.timed,
            "kpi": self.kpi.to_json(),
            "errors": self.errors,
            "paired": {str(k): v.to_json() for k, v in self.paired.items()},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Summary:
        return cls(
            fingerprint=document["fingerprint"],
            rows=int(document["rows"]),
            counts={k: np.asarray(v, dtype="int64") for k, v in document["counts"].items()},
            nulls=dict(document["nulls"]),
            degraded=int(document["degraded"]),
            unseen=int(document["unseen"]),
            degraded_features=dict(document["degraded_features"]),
            score=Moments.from_json(document["score"]),
            decisions=np.asarray(document["decisions"], dtype="int64"),
            probabilities=[Moments.from_json(m) for m in document["probabilities"]],
            latency={k: sketch_from_json(v) for k, v in document["latency"].items()},
            slow=int(document["slow"]),
            timed=int(document["timed"]),
            kpi=Moments.from_json(document["kpi"]),
            errors=dict(document["errors"]),
            paired={int(k): Moments.from_json(v) for k, v in document["paired"].items()},
        )


def _at(moments: Sequence[Moments], index: int) -> Moments:
    return moments[index] if index < len(moments) else Moments()


def _copy_sketch(sketch: DDSketch) -> DDSketch:
    copy = new_sketch()
    copy.merge(sketch)
    return copy


def merge_all(summaries: Iterable[Summary]) -> Summary:
    total = Summary()
    for summary in summaries:
        total = total.merge(summary)
    return total


@dataclass(frozen=True)
class Key:
    """Whose summary: the bucket's start (UTC), the model version, the role."""

    bucket: datetime
    version: int
    role: str


def bucket_of(time: datetime, seconds: int) -> datetime:
    """The start of the bucket of ``seconds`` holding ``time`` (buckets align on the epoch)."""
    stamp = time.astimezone(UTC).timestamp()
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def buckets_within(start: datetime, end: datetime, seconds: int) -> tuple[datetime, datetime]:
    """The whole buckets inside ``[start, end)``: from the first bucket boundary at or after
    ``start`` to the last one at or before ``end`` (empty when none fits)."""
    first = bucket_of(start, seconds)
    if first < start:
        first += timedelta(seconds=seconds)
    last = bucket_of(end, seconds)
    return (first, last) if first < last else (start, start)


class AggregateReader(Protocol):
    """What monitors read: merged summaries of whole buckets, and where aggregates exist."""

    bucket_seconds: int

    def read(self, start: datetime, end: datetime) -> dict[Key, Summary]:
        """The summaries of the buckets starting in ``[start, end)``, partials merged."""
        ...

    def span(self, start: datetime, end: datetime) -> tuple[datetime, datetime]:
        """The whole buckets of ``[start, end)`` held completely (an empty span: none)."""
        ...
