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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import numpy as np
from ddsketch import DDSketch

from prodguard.errors import StorageError

_SCALE = 1074  # every finite float64 is an integer multiple of 2**-1074
LATENCY_ACCURACY = 0.01  # relative accuracy of the latency sketches
ERRORS_ROLE = "errors"  # the key's role of request error counts (version -1: unknown)
_MAPPING = DDSketch(LATENCY_ACCURACY)._mapping  # the sketches' value-to-key mapping


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
            int(finite.size), _exact_sum(finite), _exact_sum(squares), int(array.size - finite.size)
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
        return [self.n, _compact(self.total), _compact(self.squares), self.missing]

    @classmethod
    def from_json(cls, document: Sequence[Any]) -> Moments:
        n, total, squares, missing = document
        return cls(int(n), _expand(total), _expand(squares), int(missing))


def _exact_sum(values: np.ndarray) -> int:
    """``sum(map(exact, values))`` (finite values) without a Python call per value: each value
    is its 53-bit significand (an integer) times a power of two, and the significands of each
    power are summed as integers. A subnormal's shift is negative: its significand is a
    multiple of the power it is divided by."""
    significands, exponents = np.frexp(values)
    integers = (significands * 2.0**53).astype("int64")  # exact: a float has 53 bits
    shifts = exponents.astype("int64") + (_SCALE - 53)
    total = 0
    for shift in np.unique(shifts).tolist():
        part = sum(integers[shifts == shift].tolist())
        total += part << shift if shift >= 0 else part >> -shift
    return total


def _compact(value: int) -> str:
    """An exact sum as text: hex digits without the trailing zero bits, and their count."""
    if value == 0:
        return "0"
    zeros = (value & -value).bit_length() - 1
    return f"{value >> zeros:x}p{zeros}"


def _expand(text: str) -> int:
    digits, _, zeros = text.partition("p")
    return int(digits, 16) << int(zeros or 0)


@dataclass
class Sketch:
    """A DDSketch of latencies (``ddsketch``'s logarithmic mapping at ``LATENCY_ACCURACY``) as
    its bins: counts per key from ``offset`` (dense), values too small to map in ``zero``.
    Merging adds the bins — as ``DDSketch.merge`` does, without rebuilding sketches per bucket;
    a quantile is read from a ``DDSketch`` holding the merged bins (within the relative
    accuracy of the value at its rank). Latencies are not negative (a negative one counts as
    zero)."""

    offset: int = 0
    bins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    zero: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    @classmethod
    def of(cls, values: np.ndarray) -> Sketch:
        """The sketch of ``values`` (finite): ``DDSketch.add`` of each, its bins counted at
        once."""
        present = np.maximum(np.asarray(values, dtype="float64"), 0.0)
        if not present.size:
            return cls()
        keys = _keys(present[present > _MAPPING.min_possible])
        offset = int(keys.min()) if keys.size else 0
        return cls(
            offset,
            np.bincount(keys - offset).astype("float64") if keys.size else np.zeros(0),
            float(present.size - keys.size),
            float(present.min()),
            float(present.max()),
        )

    @property
    def count(self) -> float:
        return float(self.bins.sum()) + self.zero

    def merge(self, other: Sketch) -> Sketch:
        if not other.bins.size:
            return Sketch(self.offset, self.bins, self.zero + other.zero, *self._range(other))
        if not self.bins.size:
            return Sketch(other.offset, other.bins, self.zero + other.zero, *self._range(other))
        offset = min(self.offset, other.offset)
        end = max(self.offset + self.bins.size, other.offset + other.bins.size)
        bins = np.zeros(end - offset)
        bins[self.offset - offset : self.offset - offset + self.bins.size] += self.bins
        bins[other.offset - offset : other.offset - offset + other.bins.size] += other.bins
        return Sketch(offset, bins, self.zero + other.zero, *self._range(other))

    def _range(self, other: Sketch) -> tuple[float, float]:
        return min(self.low, other.low), max(self.high, other.high)

    def quantile(self, q: float) -> float | None:
        sketch = DDSketch(LATENCY_ACCURACY)
        for index in np.flatnonzero(self.bins).tolist():
            sketch._store.add(self.offset + index, float(self.bins[index]))
        sketch._zero_count = self.zero
        sketch._count = self.count
        sketch._min, sketch._max = self.low, self.high
        return sketch.get_quantile_value(q)

    def to_json(self) -> list[Any]:
        """The non-empty bins as keys and counts (a bucket's few values spread over a range)."""
        nonzero = np.flatnonzero(self.bins)
        keys = (nonzero + self.offset).tolist()
        return [keys, self.bins[nonzero].tolist(), self.zero, self.low, self.high]

    @classmethod
    def from_json(cls, document: Sequence[Any]) -> Sketch:
        keys, counts, zero, low, high = document
        if not keys:
            return cls(0, np.zeros(0), float(zero), low, high)
        bins = np.zeros(keys[-1] - keys[0] + 1)
        bins[np.asarray(keys) - keys[0]] = counts
        return cls(int(keys[0]), bins, float(zero), low, high)


def _keys(values: np.ndarray) -> np.ndarray:
    """The keys ``_MAPPING.key`` gives ``values`` (positive): ``ceil(log(v, 2) * multiplier)``
    computed by numpy, whose logarithm may differ from the C library's in the last bit: the
    values that land within a hair of a bin edge are mapped again one by one, as ``key``
    does."""
    scaled = np.log(values) / math.log(2.0) * _MAPPING._multiplier
    keys = np.ceil(scaled)
    edge = np.abs(scaled - np.rint(scaled)) <= 1e-9 * np.maximum(np.abs(scaled), 1.0)
    for i in np.flatnonzero(edge).tolist():
        keys[i] = math.ceil(math.log(float(values[i]), 2) * _MAPPING._multiplier)
    return (keys + _MAPPING._offset).astype("int64")


class Slow(NamedTuple):
    """Of the single-row requests both versions of a pair timed: how many, and how many were
    slower than the latency budget for this version and for the other one."""

    timed: int = 0
    mine: int = 0
    other: int = 0

    def add(self, other: Slow) -> Slow:
        return Slow(self.timed + other.timed, self.mine + other.mine, self.other + other.other)


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
    latency: dict[str, Sketch] = field(default_factory=dict)
    slow: int = 0  # single-row requests whose total latency exceeded the budget
    timed: int = 0  # single-row requests with a total latency
    kpi: Moments = field(default_factory=Moments)
    errors: dict[str, int] = field(default_factory=dict)
    paired: dict[int, Moments] = field(default_factory=dict)
    healthy_kpi: Moments = field(default_factory=Moments)  # costs of requests served healthy
    pair_costs: dict[int, Moments] = field(default_factory=dict)
    pair_classes: dict[int, dict[str, Moments]] = field(default_factory=dict)
    pair_slow: dict[int, Slow] = field(default_factory=dict)

    def merge(self, other: Summary) -> Summary:
        """The summary of both spans (raises StorageError for summaries on other bins)."""
        return merge_all((self, other))

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
            "latency": {k: v.to_json() for k, v in self.latency.items()},
            "slow": self.slow,
            "timed": self.timed,
            "kpi": self.kpi.to_json(),
            "errors": self.errors,
            "paired": {str(k): v.to_json() for k, v in self.paired.items()},
            "healthy_kpi": self.healthy_kpi.to_json(),
            "pair_costs": {str(k): v.to_json() for k, v in self.pair_costs.items()},
            "pair_classes": {
                str(k): {m: v.to_json() for m, v in by_metric.items()}
                for k, by_metric in self.pair_classes.items()
            },
            "pair_slow": {str(k): list(v) for k, v in self.pair_slow.items()},
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
            latency={k: Sketch.from_json(v) for k, v in document["latency"].items()},
            slow=int(document["slow"]),
            timed=int(document["timed"]),
            kpi=Moments.from_json(document["kpi"]),
            errors=dict(document["errors"]),
            paired={int(k): Moments.from_json(v) for k, v in document["paired"].items()},
            healthy_kpi=Moments.from_json(document.get("healthy_kpi", [0, "0", "0", 0])),
            pair_costs={
                int(k): Moments.from_json(v) for k, v in document.get("pair_costs", {}).items()
            },
            pair_classes={
                int(k): {m: Moments.from_json(v) for m, v in by_metric.items()}
                for k, by_metric in document.get("pair_classes", {}).items()
            },
            pair_slow={int(k): Slow(*v) for k, v in document.get("pair_slow", {}).items()},
        )


def _at(moments: Sequence[Moments], index: int) -> Moments:
    return moments[index] if index < len(moments) else Moments()


def merge_all(summaries: Iterable[Summary]) -> Summary:
    """The merge of many summaries (a window's buckets) in one pass per field: the same result
    as merging them pairwise, without a new summary per bucket."""
    found = list(summaries)
    if not found:
        return Summary()
    prints = {s.fingerprint for s in found if s.fingerprint}
    if len(prints) > 1:
        raise StorageError(
            "window aggregates taken on different reference bins cannot be merged; "
            "rebuild them with `prodguard aggregates rebuild`"
        )
    counts: dict[str, list[np.ndarray]] = {}
    sketches: dict[str, list[Sketch]] = {}
    for summary in found:
        for key, value in summary.counts.items():
            counts.setdefault(key, []).append(value)
        for stage, sketch in summary.latency.items():
            sketches.setdefault(stage, []).append(sketch)
    classes = max(len(s.probabilities) for s in found)
    size = max(len(s.decisions) for s in found)
    decisions = np.zeros(size, dtype="int64")
    for summary in found:
        decisions[: len(summary.decisions)] += summary.decisions
    return Summary(
        fingerprint=next(iter(prints), ""),
        rows=sum(s.rows for s in found),
        counts={k: np.add.reduce(v) for k, v in counts.items()},
        nulls=_sum_counts(s.nulls for s in found),
        degraded=sum(s.degraded for s in found),
        unseen=sum(s.unseen for s in found),
        degraded_features=_sum_counts(s.degraded_features for s in found),
        score=_sum_moments(s.score for s in found),
        decisions=decisions,
        probabilities=[
            _sum_moments(_at(s.probabilities, j) for s in found) for j in range(classes)
        ],
        latency={stage: _merge_sketches(v) for stage, v in sketches.items()},
        slow=sum(s.slow for s in found),
        timed=sum(s.timed for s in found),
        kpi=_sum_moments(s.kpi for s in found),
        errors=_sum_counts(s.errors for s in found),
        paired=_by_version(s.paired for s in found),
        healthy_kpi=_sum_moments(s.healthy_kpi for s in found),
        pair_costs=_by_version(s.pair_costs for s in found),
        pair_classes=_pair_classes(s.pair_classes for s in found),
        pair_slow=_pair_slow(s.pair_slow for s in found),
    )


def _by_version(found: Iterable[Mapping[int, Moments]]) -> dict[int, Moments]:
    listed: dict[int, list[Moments]] = {}
    for by_version in found:
        for version, moments in by_version.items():
            listed.setdefault(version, []).append(moments)
    return {version: _sum_moments(v) for version, v in listed.items()}


def _pair_classes(
    found: Iterable[Mapping[int, Mapping[str, Moments]]],
) -> dict[int, dict[str, Moments]]:
    listed: dict[int, dict[str, list[Moments]]] = {}
    for by_version in found:
        for version, by_metric in by_version.items():
            metrics = listed.setdefault(version, {})
            for metric, moments in by_metric.items():
                metrics.setdefault(metric, []).append(moments)
    return {
        version: {metric: _sum_moments(v) for metric, v in metrics.items()}
        for version, metrics in listed.items()
    }


def _pair_slow(found: Iterable[Mapping[int, Slow]]) -> dict[int, Slow]:
    total: dict[int, Slow] = {}
    for by_version in found:
        for version, slow in by_version.items():
            total[version] = total.get(version, Slow()).add(slow)
    return total


def _sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for found in counts:
        total.update(found)
    return dict(total)


def _sum_moments(moments: Iterable[Moments]) -> Moments:
    listed = list(moments)
    return Moments(
        sum(m.n for m in listed),
        sum(m.total for m in listed),
        sum(m.squares for m in listed),
        sum(m.missing for m in listed),
    )


def _merge_sketches(sketches: Sequence[Sketch]) -> Sketch:
    filled = [s for s in sketches if s.bins.size]
    zero = sum(s.zero for s in sketches)
    low = min(s.low for s in sketches)
    high = max(s.high for s in sketches)
    if not filled:
        return Sketch(0, np.zeros(0), zero, low, high)
    offset = min(s.offset for s in filled)
    bins = np.zeros(max(s.offset + s.bins.size for s in filled) - offset)
    for sketch in filled:
        bins[sketch.offset - offset : sketch.offset - offset + sketch.bins.size] += sketch.bins
    return Sketch(offset, bins, zero, low, high)


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
