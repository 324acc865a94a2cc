"""A profile of a data file's columns: what the drafted suites, feature views and request model
are made from (kind, null rate, range, category set)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

MAX_CATEGORIES = 50  # more distinct values: no value set is drafted
RANGE_MARGIN = 0.1  # drafted ranges are widened by this share of the observed range


@dataclass(frozen=True)
class ColumnProfile:
    name: str
    kind: str  # integer | float | categorical | boolean | timestamp
    null_rate: float
    low: float | None = None
    high: float | None = None
    categories: tuple[str, ...] | None = None  # None: too many to list

    @property
    def numeric(self) -> bool:
        return self.kind in ("integer", "float")

    def margin_range(self) -> tuple[float, float] | None:
        """The observed range widened by ``RANGE_MARGIN`` of its width on each side."""
        if self.low is None or self.high is None:
            return None
        pad = (self.high - self.low) * RANGE_MARGIN or abs(self.high) * RANGE_MARGIN or 1.0
        low, high = self.low - pad, self.high + pad
        if self.low >= 0 > low:  # a non-negative column stays non-negative
            low = 0.0
        if self.kind == "integer":
            return float(int(low) - (low < int(low))), float(int(high) + (high > int(high)))
        return float(f"{low:.6g}"), float(f"{high:.6g}")


def profile(frame: pd.DataFrame) -> list[ColumnProfile]:
    return [profile_column(frame[c]) for c in frame.columns]


def profile_column(column: pd.Series) -> ColumnProfile:
    name = str(column.name)
    null_rate = float(column.isna().mean()) if len(column) else 0.0
    present = column.dropna()
    if pd.api.types.is_bool_dtype(column):
        return ColumnProfile(name, "boolean", null_rate)
    if pd.api.types.is_datetime64_any_dtype(column):
        return ColumnProfile(name, "timestamp", null_rate)
    if pd.api.types.is_numeric_dtype(column):
        kind = "integer" if pd.api.types.is_integer_dtype(column) else "float"
        low = float(present.min()) if len(present) else None
        high = float(present.max()) if len(present) else None
        return ColumnProfile(name, kind, null_rate, low, high)
    values = sorted(present.astype(str).unique())
    categories = tuple(values) if len(values) <= MAX_CATEGORIES else None
    return ColumnProfile(name, "categorical", null_rate, categories=categories)
