"""Time windows: parsing user-given bounds and cutting a window into batches."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from prodguard.errors import InputError


def parse_time(text: str, name: str = "time") -> datetime:
    """Parse an ISO date or datetime; naive values are taken as UTC."""
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise InputError(
            f"{name} '{text[:40]}' is not an ISO date or datetime; use e.g. 2013-05-01 "
            "or 2013-05-01T12:00"
        ) from None
    if pd.isna(stamp):
        raise InputError(f"{name} is empty; give an ISO date, e.g. 2013-05-01")
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def ordered(
    start: datetime | None,
    end: datetime | None,
    start_name: str = "--start",
    end_name: str = "--end",
) -> None:
    """Refuse an empty or inverted window (when both bounds are given)."""
    if start is not None and end is not None and end <= start:
        raise InputError(f"{end_name} must be after {start_name}")


def both_or_neither(start: object, end: object) -> None:
    if (start is None) != (end is None):
        raise InputError("give both --start and --end, or neither")


def split_window(start: datetime, end: datetime, unit: str) -> list[tuple[datetime, datetime]]:
    """Cut ``[start, end)`` at calendar boundaries of ``unit`` ('month', 'day' or 'window')."""
    if unit == "window":
        return [(start, end)]
    freq = {"month": "MS", "day": "D"}[unit]
    inner = pd.date_range(start, end, freq=freq, inclusive="neither", tz=UTC)
    bounds = [start, *(b.to_pydatetime() for b in inner), end]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
