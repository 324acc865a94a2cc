"""Retention of the prediction log: what is older than ``storage.log_retention_days`` is
exported to parquet (optionally) and then dropped — whole daily partitions on PostgreSQL, the
rows of each day on SQLite — with the feedback left without a prediction and the old request
errors.

Nothing a monitor still reads goes: the cutoff is the earlier of ``now - retention`` and
``now - (monitoring window + KPI maturity)`` (a window's KPI is computed only after its
predictions matured), floored to the start of its day (UTC). Export first, drop after: a
day's parquet file is fsynced and renamed into place before its rows are dropped, and the drop
refuses if rows arrived after the export; a crash in between leaves the rows in the log, and the
next prune writes the same file again (its name is the day and the log's first row key of it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from prodguard.durable import replace_atomically
from prodguard.serving.prediction_log import COLUMNS, Expired, decoded

EXPORTED = (*COLUMNS, "outcome", "feedback_time")  # the columns of an exported file


@runtime_checkable
class RetainedLog(Protocol):
    """What retention needs of a log (both SQL backends of ``serving.prediction_log``)."""

    def maintain(self) -> None: ...

    def expired(self, before: str) -> list[Expired]: ...

    def pages(self, part: Expired, size: int = ...) -> Iterator[tuple[list[str], list[tuple]]]: ...

    def drop(self, part: Expired, expected: int | None = None) -> int: ...

    def drop_errors(self, before: str) -> int: ...


@dataclass(frozen=True)
class PruneResult:
    before: str  # predictions older than this day (YYYY-MM-DD, UTC) went
    dropped: int  # predictions dropped
    errors_dropped: int  # request errors dropped
    exported: list[Path] = field(default_factory=list)
    aggregates_dropped: int = 0  # window aggregates (monitoring.aggregates) of those days


def cutoff(now: datetime, retention_days: float, keep: timedelta) -> str:
    """The day (YYYY-MM-DD, UTC) before which predictions may go: older than the retention and
    than ``keep`` (what monitors still read), whole days only."""
    oldest_kept = min(now - timedelta(days=retention_days), now - keep)
    return oldest_kept.astimezone(UTC).date().isoformat()


def prune(log: RetainedLog, before: str, export: Path | None = None) -> PruneResult:
    """Drops the predictions older than the day ``before`` (each day exported to a parquet
    file in ``export`` first, when given), their orphaned feedback and the old request errors."""
    log.maintain()
    dropped, files = 0, []
    for part in log.expired(before):
        expected = None
        if export is not None:
            path, expected = export_part(log, part, export)
            if path is not None:
                files.append(path)
        dropped += log.drop(part, expected)
    return PruneResult(before, dropped, log.drop_errors(before), files)


def export_part(log: RetainedLog, part: Expired, folder: Path) -> tuple[Path | None, int]:
    """The rows of ``part`` with their feedback into one parquet file of ``folder``, written
    page by page (bounded memory), fsynced and renamed into place: (its path, rows), or
    (None, 0) when ``part`` holds no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pages = log.pages(part)
    first = next(pages, None)
    if first is None:
        return None, 0
    rows = first[1]
    name = f"predictions-{rows[0][2][:10]}-{rows[0][-1]:012d}.parquet"
    numbers = {"version": pa.int64(), "decision": pa.int64(), "probability": pa.float64()}
    schema = pa.schema([(c, numbers.get(c, pa.string())) for c in EXPORTED])
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with pq.ParquetWriter(tmp, schema) as writer:
            for page_columns, page in itertools.chain([first], pages):  # one page in memory
                by_name = dict(zip(page_columns, zip(*page, strict=True), strict=True))
                table = pa.table({c: list(by_name[c]) for c in EXPORTED}, schema=schema)
                writer.write_table(table)
                written += len(page)

    replace_atomically(folder / name, write)
    return folder / name, written


def read_export(
    folder: Path, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """The exported predictions of ``folder`` in ``[start, end)``, oldest first, as the frame
    ``PredictionLog.window`` returns (features, flags, outcome... decoded)."""
    files = sorted(folder.glob("predictions-*.parquet"))
    if not files:
        return decoded(pd.DataFrame({c: pd.Series(dtype=object) for c in EXPORTED}))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if start is not None:
        frame = frame[frame["time"] >= start.isoformat()]
    if end is not None:
        frame = frame[frame["time"] < end.isoformat()]
    frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    return decoded(frame)
