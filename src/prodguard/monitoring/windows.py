"""Monitoring windows over the prediction log: by time, by count, or both.

Time windows of ``minutes`` start at ``start`` and every ``step_minutes`` after (tumbling when
the step equals the length, hopping when shorter: a 7-day window every day sees whole weeks
yet gives a daily series). Count windows hold
``rows`` consecutive champion predictions; a trailing window that is not full yet is still open
and is not evaluated. With both bounds a window closes at whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from prodguard.config import WindowSettings


@dataclass(frozen=True)
class WindowSpec:
    minutes: float | None = 1440
    rows: int | None = None
    step_minutes: float | None = None  # None: tumbling
    min_rows: int = 200
    max_rows: int = 200_000

    @classmethod
    def from_settings(cls, window: WindowSettings) -> WindowSpec:
        return cls(
            minutes=window.minutes,
            rows=window.rows,
            step_minutes=window.step_minutes,
            min_rows=window.min_rows,
            max_rows=window.max_rows,
        )

    def describe(self) -> str:
        parts = []
        if self.minutes is not None:
            parts.append(f"{_duration(self.minutes)}")
            if self.step_minutes and self.step_minutes != self.minutes:
                parts[-1] += f" every {_duration(self.step_minutes)}"
        if self.rows is not None:
            parts.append(f"{self.rows} rows")
        return " or ".join(parts)

    def to_json(self) -> dict[str, float | int | None]:
        return {"minutes": self.minutes, "rows": self.rows, "min_rows": self.min_rows}

    def same_size(self, other: dict[str, float | int | None]) -> bool:
        return other.get("minutes") == self.minutes and other.get("rows") == self.rows


def _duration(minutes: float) -> str:
    for unit, size in (("d", 1440), ("h", 60)):
        if minutes >= size and minutes % size == 0:
            return f"{minutes / size:g} {unit}"
    return f"{minutes:g} min"


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    frame: pd.DataFrame  # the window's prediction-log rows, sorted by time

    @property
    def label(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def times(frame: pd.DataFrame) -> pd.Series:
    if frame.empty:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    return pd.to_datetime(frame["time"], utc=True, format="ISO8601")


def tile(spec: WindowSpec, frame: pd.DataFrame, start: datetime, end: datetime) -> list[Window]:
    """Cut ``frame`` (log rows in ``[start, end)``, sorted by time) into closed windows."""
    stamps = times(frame)
    windows: list[Window] = []
    for low, high in _time_bounds(spec, start, end):
        inside = ((stamps >= pd.Timestamp(low)) & (stamps < pd.Timestamp(high))).to_numpy(bool)
        part = frame[inside]
        if spec.rows is None:
            windows.append(Window(low, high, part))
        else:
            windows.extend(_count_windows(spec.rows, part, low, high, spec.minutes is not None))
    return windows


def _time_bounds(
    spec: WindowSpec, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    if spec.minutes is None:
        return [(start, end)]
    length = timedelta(minutes=spec.minutes)
    step = timedelta(minutes=spec.step_minutes or spec.minutes)
    bounds = []
    low = start
    while low + length <= end:
        bounds.append((low, low + length))
        low += step
    return bounds


def _count_windows(
    rows: int, part: pd.DataFrame, low: datetime, high: datetime, time_bound: bool
) -> list[Window]:
    """Chunks of ``rows`` predictions; a partial last chunk closes only with a time bound."""
    stamps = times(part)
    windows: list[Window] = []
    begin, begin_time = 0, low
    for cut in range(rows, len(part) + 1, rows):
        cut_time = stamps.iloc[cut].to_pydatetime() if cut < len(part) else high
        if cut == len(part) and time_bound:
            break  # the last full chunk closes with the time window below
        windows.append(Window(begin_time, cut_time, part.iloc[begin:cut]))
        begin, begin_time = cut, cut_time
    if time_bound and (begin < len(part) or not windows):
        windows.append(Window(begin_time, high, part.iloc[begin:]))
    return windows


def latest_window(spec: WindowSpec, frame: pd.DataFrame, now: datetime) -> Window:
    """The window ending at ``now`` from the rows read for it (the last ``minutes``, or the
    last ``rows`` predictions): with a count bound, only the last ``rows`` are kept."""
    if spec.rows is not None:
        frame = frame.tail(spec.rows)
    if spec.minutes is not None:
        start = now - timedelta(minutes=spec.minutes)
    else:
        start = times(frame).iloc[0].to_pydatetime() if len(frame) else now
    return Window(start, now, frame)
