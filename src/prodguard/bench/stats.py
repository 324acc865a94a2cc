"""Percentiles, latency summaries and guarded/bare ratios (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

DIGITS = 3  # figures are printed, and ratios computed, at this precision


@dataclass(frozen=True)
class Summary:
    """Latency figures of one series, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's
    default method)."""
    if not values:
        raise ValueError("percentile of an empty series")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> Summary:
    """Count, mean, p50, p95, p99 and max of ``values``, rounded to ``DIGITS`` decimals."""
    return Summary(
        count=len(values),
        mean=round(sum(values) / len(values), DIGITS),
        p50=round(percentile(values, 50), DIGITS),
        p95=round(percentile(values, 95), DIGITS),
        p99=round(percentile(values, 99), DIGITS),
        max=round(max(values), DIGITS),
    )


def ratio(guarded: float, bare: float) -> float:
    """guarded / bare, rounded like the figures; infinity when bare is zero."""
    return round(guarded / bare, DIGITS) if bare else math.inf
