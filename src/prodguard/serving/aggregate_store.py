"""The aggregate store: window summaries per (bucket, model version, role), merged by addition.

Writers append partial summaries (a replica's bucket once it closed, a rebuild's range) in one
transaction per flush; readers merge the partials of a key on read (``compact`` folds them into
one row). Appending beats an additive upsert here: a summary is a JSON document (counts, exact
sums, sketches) that SQL cannot add, and an upsert would read, merge and rewrite it under a lock
on every flush of every replica.

Coverage: a live replica records the interval it aggregates (from its first whole bucket) and
advances its ``until`` to the end of the last bucket it flushed whole; closing cleanly marks it
closed. A rebuild records its range, closed. Readers use aggregates for the buckets that every
interval covers (``span``): what a replica has not flushed yet, or lost in a crash, is read from
the raw log until ``prodguard aggregates rebuild`` covers it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from prodguard.clock import Clock
from prodguard.config import AggregateSettings, KpiSettings
from prodguard.errors import ProdguardError, StorageError, first_line, redact
from prodguard.monitoring.aggregates import (
    ERRORS_ROLE,
    Key,
    Summary,
    bucket_of,
    buckets_within,
    merge_all,
)
from prodguard.monitoring.measures import (
    healthy_rows,
    kpi_moments,
    summarise,
    summarise_all_pairs,
)
from prodguard.monitoring.monitor import REFERENCE_TTL_S, VersionReference, version_bins
from prodguard.serving.prediction_log import (
    ANSWERS,
    ErrorKind,
    PredictionLog,
    PredictionRecord,
    Role,
    Roles,
)
from prodguard.tasks import CostFunction

_log = logging.getLogger("prodguard.serving")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS window_aggregates (
    bucket TEXT NOT NULL,
    seconds INTEGER NOT NULL,
    version INTEGER NOT NULL,
    role TEXT NOT NULL,
    summary TEXT NOT NULL,
    span INTEGER NOT NULL,
    parts INTEGER
);
CREATE INDEX IF NOT EXISTS window_aggregates_bucket ON window_aggregates (bucket);
CREATE TABLE IF NOT EXISTS aggregate_coverage (
    id TEXT PRIMARY KEY,
    seconds INTEGER NOT NULL,
    start TEXT NOT NULL,
    until TEXT NOT NULL,
    closed INTEGER NOT NULL
)
"""


ROLLUP_SECONDS = 3600  # closed hours are read as one summary per version and role


def _merged(rows: Sequence[tuple]) -> dict[Key, Summary]:
    """Rows ``(bucket, version, role, summary)`` merged per key."""
    found: dict[Key, list[Summary]] = defaultdict(list)
    for bucket, version, role, text in rows:
        found[Key(datetime.fromisoformat(bucket), int(version), str(role))].append(
            Summary.from_json(json.loads(text))
        )
    return {key: merge_all(summaries) for key, summaries in found.items()}


class _SqlAggregateStore:
    """SQL shared by both backends; times are ISO 8601 text in UTC."""

    bucket_seconds: int
    _errors: tuple[type[BaseException], ...] = ()

    def __init__(self, bucket_seconds: int) -> None:
        self.bucket_seconds = bucket_seconds
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[Any]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
                conn.commit()
            except self._errors as exc:
                with contextlib.suppress(*self._errors):
                    conn.rollback()
                raise StorageError(
                    f"aggregate store {action} failed: {redact(first_line(exc))}"
                ) from None
            except BaseException:
                with contextlib.suppress(*self._errors):
                    conn.rollback()
                raise

    def add(self, partials: Mapping[Key, Summary]) -> None:
        """Append partial summaries (all or none)."""
        if not partials:
            return
        with self._transaction("write") as conn:
            self._insert(conn, partials)

    def _insert(
        self,
        conn: Any,
        partials: Mapping[Key, Summary],
        span: int | None = None,
        parts: int | None = None,
    ) -> None:
        rows = [
            (
                k.bucket.isoformat(),
                self.bucket_seconds,
                k.version,
                k.role,
                json.dumps(s.to_json()),
                span or self.bucket_seconds,
                parts,
            )
            for k, s in partials.items()
        ]
        conn.cursor().executemany(
            self._sql(
                "INSERT INTO window_aggregates (bucket, seconds, version, role, summary, span, "
                "parts) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            rows,
        )

    def _base(self, start: datetime, end: datetime, skip: Sequence[str] = ()) -> list[tuple]:
        """The partials of the buckets starting in ``[start, end)``, but those of the hours
        ``skip`` (``YYYY-MM-DDTHH``)."""
        if start >= end:
            return []
        outside = f" AND substr(bucket, 1, 13) NOT IN ({', '.join('?' * len(skip))})"
        with self._transaction("read") as conn:
            return list(
                conn.cursor()
                .execute(
                    self._sql(
                        "SELECT bucket, version, role, summary FROM window_aggregates "
                        "WHERE bucket >= ? AND bucket < ? AND seconds = ? AND span = seconds"
                        + (outside if skip else "")
                    ),
                    (start.isoformat(), end.isoformat(), self.bucket_seconds, *skip),
                )
                .fetchall()
            )

    def read(self, start: datetime, end: datetime) -> dict[Key, Summary]:
        """The summaries of ``[start, end)`` (whole buckets), partials merged: of each whole
        hour inside, its roll-up (one row per version and role) when it still holds every
        partial of the hour, else its partials — rolled up for the next read."""
        if self.bucket_seconds >= ROLLUP_SECONDS:
            return _merged(self._base(start, end))
        first, last = buckets_within(start, end, ROLLUP_SECONDS)
        if first >= last:
            return _merged(self._base(start, end))
        with self._transaction("read") as conn:
            cursor = conn.cursor()
            window = (first.isoformat(), last.isoformat(), self.bucket_seconds)
            counts = dict(
                cursor.execute(
                    self._sql(
                        "SELECT substr(bucket, 1, 13), COUNT(*) FROM window_aggregates "
                        "WHERE bucket >= ? AND bucket < ? AND seconds = ? AND span = seconds "
                        "GROUP BY substr(bucket, 1, 13)"
                    ),
                    window,
                ).fetchall()
            )
            rolled = cursor.execute(
                self._sql(
                    "SELECT bucket, version, role, summary, parts FROM window_aggregates "
                    "WHERE bucket >= ? AND bucket < ? AND seconds = ? AND span = ?"
                ),
                (*window, ROLLUP_SECONDS),
            ).fetchall()
        stale = {bucket[:13] for bucket, *_, parts in rolled if counts.get(bucket[:13]) != parts}
        fresh = {bucket[:13] for bucket, *_ in rolled} - stale
        merged = _merged(
            [row[:4] for row in rolled if row[0][:13] in fresh]
            + self._base(start, first)
            + self._base(last, end)
        )
        partials = self._base(first, last, skip=sorted(fresh))
        rollups: dict[str, list[tuple]] = defaultdict(list)
        for row in partials:
            rollups[row[0][:13]].append(row)
        for rows in rollups.values():
            merged.update(_merged(rows))
        self._roll_up(rollups, stale)
        return merged

    def _roll_up(self, partials: Mapping[str, list[tuple]], stale: set[str]) -> None:
        """Replace the roll-ups of the hours read from their partials (a failure only costs
        the next read its speed)."""
        try:
            with self._transaction("roll-up") as conn:
                for hour in sorted(stale | set(partials)):
                    conn.cursor().execute(
                        self._sql(
                            "DELETE FROM window_aggregates WHERE seconds = ? AND span = ? "
                            "AND substr(bucket, 1, 13) = ?"
                        ),
                        (self.bucket_seconds, ROLLUP_SECONDS, hour),
                    )
                for hour, rows in partials.items():
                    start = datetime.fromisoformat(f"{hour}:00:00+00:00")
                    by_key: dict[Key, list[Summary]] = defaultdict(list)
                    for _, version, role, text in rows:
                        by_key[Key(start, int(version), str(role))].append(
                            Summary.from_json(json.loads(text))
                        )
                    summed = {key: merge_all(found) for key, found in by_key.items()}
                    self._insert(conn, summed, span=ROLLUP_SECONDS, parts=len(rows))
        except StorageError as exc:
            _log.warning("window aggregates not rolled up: %s", exc)

    def replace(self, start: datetime, end: datetime, summaries: Mapping[Key, Summary]) -> None:
        """A rebuild: the buckets of ``[start, end)`` (whole buckets) become ``summaries``, the
        range is covered, and live intervals that stopped inside it (a crashed replica) are
        closed."""
        with self._transaction("rebuild") as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "DELETE FROM window_aggregates WHERE bucket >= ? AND bucket < ? AND seconds = ?"
                ),
                (start.isoformat(), end.isoformat(), self.bucket_seconds),  # roll-ups too
            )
            self._insert(conn, summaries)
            interval = f"rebuild:{start.isoformat()}:{end.isoformat()}"
            cursor.execute(self._sql("DELETE FROM aggregate_coverage WHERE id = ?"), (interval,))
            cursor.execute(
                self._sql(
                    "INSERT INTO aggregate_coverage (id, seconds, start, until, closed) "
                    "VALUES (?, ?, ?, ?, 1)"
                ),
                (
                    interval,
                    self.bucket_seconds,
                    start.isoformat(),
                    end.isoformat(),
                ),
            )
            cursor.execute(
                self._sql(
                    "UPDATE aggregate_coverage SET closed = 1 WHERE closed = 0 AND seconds = ? "
                    "AND until >= ? AND until <= ?"
                ),
                (self.bucket_seconds, start.isoformat(), end.isoformat()),
            )

    def drop_before(self, before: datetime) -> int:
        """Retention: the summaries of buckets before ``before`` (roll-ups too) and the
        coverage intervals that ended by then (those still open past it start there now); the
        summaries dropped."""
        with self._transaction("retention") as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql("DELETE FROM window_aggregates WHERE bucket < ?"), (before.isoformat(),)
            )
            dropped = int(cursor.rowcount)
            cursor.execute(
                self._sql("DELETE FROM aggregate_coverage WHERE closed = 1 AND until <= ?"),
                (before.isoformat(),),
            )
            cursor.execute(
                self._sql("UPDATE aggregate_coverage SET start = ? WHERE start < ? AND until > ?"),
                (before.isoformat(), before.isoformat(), before.isoformat()),
            )
        return dropped

    def cover(self, interval: str, start: datetime, until: datetime, closed: bool) -> None:
        """Record (or advance) the live interval ``interval``: aggregated from ``start``,
        flushed whole until ``until``; ``closed`` when its replica stopped cleanly."""
        with self._transaction("coverage write") as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql("DELETE FROM aggregate_coverage WHERE id = ?"), (interval,))
            cursor.execute(
                self._sql(
                    "INSERT INTO aggregate_coverage (id, seconds, start, until, closed) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                (interval, self.bucket_seconds, start.isoformat(), until.isoformat(), int(closed)),
            )

    def span(self, start: datetime, end: datetime) -> tuple[datetime, datetime]:
        """The whole buckets of ``[start, end)`` the aggregates hold completely: from the first
        bucket boundary to the last, up to where a live (or crashed) replica has flushed; when
        some bucket in between is not covered, an empty span (read the raw log)."""
        low, high = buckets_within(start, end, self.bucket_seconds)
        with self._transaction("read") as conn:
            intervals = (
                conn.cursor()
                .execute(
                    self._sql(
                        "SELECT start, until, closed FROM aggregate_coverage WHERE seconds = ? "
                        "AND start < ? ORDER BY start"
                    ),
                    (self.bucket_seconds, high.isoformat()),
                )
                .fetchall()
            )
        parsed = [
            (datetime.fromisoformat(a), datetime.fromisoformat(b), bool(c)) for a, b, c in intervals
        ]
        for _, until, closed in parsed:
            if not closed and until < high:
                high = max(low, bucket_of(until, self.bucket_seconds))
        if high <= low:
            return start, start
        reached = low
        for begin, until, _ in parsed:
            if begin <= reached < until:
                reached = until
        return (low, high) if reached >= high else (start, start)

    def compact(self, start: datetime, end: datetime) -> int:
        """Fold the partials of each key of ``[start, end)`` into one row; the rows removed."""
        with self._transaction("compaction") as conn:
            cursor = conn.cursor()
            params = (start.isoformat(), end.isoformat(), self.bucket_seconds)
            rows = cursor.execute(
                self._sql(
                    "SELECT bucket, version, role, summary FROM window_aggregates "
                    "WHERE bucket >= ? AND bucket < ? AND seconds = ? AND span = seconds"
                ),
                params,
            ).fetchall()
            merged: dict[Key, Summary] = {}
            for bucket, version, role, text in rows:
                key = Key(datetime.fromisoformat(bucket), int(version), str(role))
                summary = Summary.from_json(json.loads(text))
                found = merged.get(key)
                merged[key] = summary if found is None else found.merge(summary)
            cursor.execute(
                self._sql(
                    "DELETE FROM window_aggregates WHERE bucket >= ? AND bucket < ? "
                    "AND seconds = ? AND span = seconds"
                ),
                params,
            )
            self._insert(conn, merged)
        return len(rows) - len(merged)

    def close(self) -> None:
        raise NotImplementedError


class SqliteAggregateStore(_SqlAggregateStore):
    """The embedded store: a SQLite file next to the prediction log (WAL)."""

    _errors = (sqlite3.Error,)

    def __init__(self, path: Path, bucket_seconds: int) -> None:
        super().__init__(bucket_seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open the aggregate store {path}: {first_line(exc)}; check the data "
                "folder is writable"
            ) from None

    def _connection(self) -> sqlite3.Connection:
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresAggregateStore(_SqlAggregateStore):
    """The production store: tables in the ``storage.url`` database, shared by replicas."""

    def __init__(self, url: str, bucket_seconds: int, connect_timeout_s: int = 5) -> None:
        import psycopg

        super().__init__(bucket_seconds)
        self._errors = (psycopg.Error,)
        self._url = url.replace("postgresql+psycopg://", "postgresql://")
        self._timeout = connect_timeout_s
        self._conn: Any = None
        with self._transaction("schema") as conn:
            conn.cursor().execute("SELECT pg_advisory_xact_lock(hashtext('prodguard_aggregates'))")
            for statement in _SCHEMA.split(";"):
                conn.cursor().execute(statement)

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._url, connect_timeout=self._timeout)
            except psycopg.Error as exc:
                raise StorageError(
                    f"cannot reach the aggregate store: {redact(first_line(exc))}"
                ) from None
        return self._conn

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


AggregateStore = SqliteAggregateStore | PostgresAggregateStore


# ---- the live accumulation ------------------------------------------------------------------

_Pending = (
    tuple[Literal["answers"], Sequence[PredictionRecord]]
    | tuple[Literal["feedback"], PredictionRecord, PredictionRecord | None, dict[str, Any]]
    | tuple[Literal["error"], datetime, ErrorKind, int | None]
    | tuple[Literal["awaited"], PredictionRecord, dict[str, Any]]
)


# a queue this long is summarised before its bucket closes: bounds the memory it holds and the
# longest the summarising holds the GIL (~10 ms per batch, then ~10 µs per row)
SUMMARISE_ROWS = 2_000


class Aggregator:
    """A replica's window summaries, accumulated in memory per (bucket, version, role) off the
    request path: what it logs is queued (``add``, ``feedback``, ``error``: O(1)), a background
    thread looks every ``flush_seconds``: once a bucket closed (or ``SUMMARISE_ROWS`` rows are
    queued) it summarises the queue, pairs shadow rows with the answers of the same request id
    (a bounded map), and appends the buckets that closed to the store (``flush``; everything on
    ``close``). Summaries add up, so summarising the queue once a bucket rather than at every
    look gives the same ones at a fraction of the cost (pandas' cost per call, not per row). A
    crash loses what was not flushed: its interval then ends there and readers use the raw log
    until a rebuild."""

    def __init__(
        self,
        store: AggregateStore,
        references: Callable[[int], VersionReference],
        settings: AggregateSettings,
        kpi: KpiSettings,
        cost: CostFunction | None,
        latency_budget_ms: float,
        clock: Clock,
        interval: str,
        background: bool = True,
    ) -> None:
        self._store = store
        self._references = references
        self._settings = settings
        self._kpi = kpi
        self._cost = cost
        self._budget = latency_budget_ms
        self._clock = clock
        self._interval = interval
        self._seconds = settings.bucket_seconds
        self._queue: list[_Pending] = []
        self._queued = 0  # rows and other items in the queue
        self._queue_lock = threading.Lock()
        self._flushed: datetime | None = None  # the open bucket at the last flush
        self._open: dict[Key, Summary] = {}
        self._recent: OrderedDict[str, tuple[PredictionRecord | None, PredictionRecord | None]]
        self._recent = OrderedDict()
        self._awaited: OrderedDict[str, tuple[PredictionRecord, dict[str, Any]]] = OrderedDict()
        self._process_lock = threading.Lock()
        self._start = bucket_of(clock.now(), self._seconds) + timedelta(seconds=self._seconds)
        self._until = self._start
        self._failed = False
        self._cache: dict[int, tuple[float, VersionReference]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        store.cover(interval, self._start, self._until, closed=False)
        if background:
            self._thread = threading.Thread(target=self._run, name="aggregates", daemon=True)
            self._thread.start()

    # -- called by the serving path (cheap) ------------------------------------------------
    def add(self, records: Sequence[PredictionRecord]) -> None:
        with self._queue_lock:
            self._queue.append(("answers", list(records)))
            self._queued += len(records)

    def feedback(
        self, answer: PredictionRecord, shadow: PredictionRecord | None, outcome: dict[str, Any]
    ) -> None:
        """The outcome of an answer (and of the shadow score of its request, when logged)."""
        self._enqueue(("feedback", answer, shadow, outcome))

    def error(self, time: datetime, kind: ErrorKind, version: int | None) -> None:
        self._enqueue(("error", time, kind, version))

    def await_shadow(self, answer: PredictionRecord, outcome: dict[str, Any]) -> None:
        """The outcome of ``answer``'s request, for the shadow score of it when that is logged
        (the shadow runs off the response path; remembered within ``pairing_capacity``)."""
        self._enqueue(("awaited", answer, outcome))

    def _enqueue(self, item: _Pending) -> None:
        with self._queue_lock:
            self._queue.append(item)
            self._queued += 1

    # -- the background work ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self._settings.flush_seconds):
            try:
                self.flush()
            except ProdguardError as exc:  # the store is down: keep the buckets, retry
                _log.warning("window aggregates not flushed: %s", exc)

    def flush(self, everything: bool = False) -> None:
        """Summarise what is queued and append the buckets that closed (all: ``everything``) —
        unless no bucket closed since the last flush and the queue is short (nothing to
        append: it waits for the next)."""
        with self._process_lock:
            current = bucket_of(self._clock.now(), self._seconds)
            if not everything and current == self._flushed and self._queued < SUMMARISE_ROWS:
                return
            self._summarise_queue()
            closed_before = None if everything else current
            done = {
                k: s
                for k, s in self._open.items()
                if closed_before is None or k.bucket < closed_before
            }
            self._store.add(done)
            for key in done:
                del self._open[key]
            self._flushed = current
            if self._failed:
                return
            until = current + timedelta(seconds=self._seconds) if everything else current
            self._until = max(self._until, until)
            self._store.cover(self._interval, self._start, self._until, closed=everything)

    def _summarise_queue(self) -> None:
        with self._queue_lock:
            queued, self._queue, self._queued = self._queue, [], 0
        answers: list[PredictionRecord] = []
        pairs: list[tuple[PredictionRecord, PredictionRecord]] = []
        for item in queued:
            if item[0] == "answers":
                answers.extend(item[1])
            elif item[0] == "feedback":
                self._feedback(item[1], item[2], item[3])
            elif item[0] == "awaited":
                self._awaited[item[1].request_id] = (item[1], item[2])
                while len(self._awaited) > self._settings.pairing_capacity:
                    self._awaited.popitem(last=False)
            else:
                _, when, kind, version = item
                key = Key(
                    bucket_of(when, self._seconds), -1 if version is None else version, ERRORS_ROLE
                )
                self._merge(key, Summary(errors={kind: 1}))
        if not answers:
            return
        groups: dict[Key, list[PredictionRecord]] = defaultdict(list)
        for record in answers:
            groups[Key(bucket_of(record.time, self._seconds), record.version, record.role)].append(
                record
            )
            pairs += self._pair(record)
            if record.role == "shadow" and record.request_id in self._awaited:
                answer, outcome = self._awaited.pop(record.request_id)
                self._feedback(answer, record, outcome, answered=False)
        try:
            for key, records in groups.items():
                reference = self._reference(key.version)
                summary = summarise(
                    records_frame(records),
                    version_bins(reference),
                    reference.spec,
                    latency_budget_ms=self._budget,
                )
                self._merge(key, summary)
            self._summarise_pairs(pairs, outcome=None)
        except ProdguardError as exc:
            self._fail(f"references unreadable: {exc}")

    def _reference(self, version: int) -> VersionReference:
        """The version's references, re-read after ``REFERENCE_TTL_S`` (a baseline recorded
        meanwhile changes the bins: the summaries then carry the new fingerprint)."""
        found = self._cache.get(version)
        if found is None or time.monotonic() - found[0] > REFERENCE_TTL_S:
            found = (time.monotonic(), self._references(version))
            self._cache[version] = found
        return found[1]

    def _fail(self, reason: str) -> None:
        """Stop vouching for whole buckets: readers use the raw log after ``until``."""
        if not self._failed:
            _log.warning("window aggregates stop at %s: %s", self._until.isoformat(), reason)
        self._failed = True

    def _feedback(
        self,
        answer: PredictionRecord,
        shadow: PredictionRecord | None,
        outcome: dict[str, Any],
        answered: bool = True,
    ) -> None:
        """The costs of the labelled answer and its shadow score (``answered`` False: the
        answer's were counted when its outcome came), and their paired cost differences."""
        records = [answer, shadow] if answered else [shadow]
        try:
            for record in records:
                if record is None:
                    continue
                spec = self._reference(record.version).spec
                frame = records_frame([record]).assign(outcome=[outcome])
                healthy = frame[healthy_rows(frame)]
                key = Key(bucket_of(record.time, self._seconds), record.version, record.role)
                self._merge(
                    key,
                    Summary(
                        kpi=kpi_moments(frame, self._kpi, spec, self._cost),
                        healthy_kpi=kpi_moments(healthy, self._kpi, spec, self._cost),
                    ),
                )
            if shadow is not None:
                self._summarise_pairs([(answer, shadow)], outcome=outcome)
        except ProdguardError as exc:
            self._fail(f"references unreadable: {exc}")

    def _pair(self, record: PredictionRecord) -> list[tuple[PredictionRecord, PredictionRecord]]:
        """The answer and the shadow score of ``record``'s request once both are logged."""
        answer, shadow = self._recent.pop(record.request_id, (None, None))
        if record.role in ANSWERS:
            answer = record
        else:
            shadow = record
        if answer is not None and shadow is not None:
            return [(answer, shadow)]
        self._recent[record.request_id] = (answer, shadow)
        while len(self._recent) > self._settings.pairing_capacity:
            self._recent.popitem(last=False)
        return []

    def _summarise_pairs(
        self,
        pairs: Sequence[tuple[PredictionRecord, PredictionRecord]],
        outcome: dict[str, Any] | None,
    ) -> None:
        """Pairs of an answer and a shadow score, on both sides: their score differences and
        timings (``outcome`` None), or the cost differences of their labelled request."""
        if not pairs:
            return
        answers = records_frame([a for a, _ in pairs])
        shadows = records_frame([s for _, s in pairs])
        if outcome is not None:
            answers = answers.assign(outcome=[outcome] * len(pairs))
            shadows = shadows.assign(outcome=[outcome] * len(pairs))
        frame = pd.concat([answers, shadows], ignore_index=True)
        times = [a.time for a, _ in pairs] + [s.time for _, s in pairs]
        frame = frame.assign(bucket=[bucket_of(t, self._seconds) for t in times])
        found = summarise_all_pairs(
            frame,
            ["bucket", "version", "role"],
            lambda v: self._reference(v).spec,
            scores=outcome is None,
            kpi=self._kpi if outcome is not None else None,
            cost=self._cost,
            latency_budget_ms=self._budget,
        )
        for (bucket, version, role), summary in found.items():
            self._merge(Key(bucket, int(version), str(role)), summary)

    def _merge(self, key: Key, summary: Summary) -> None:
        found = self._open.get(key)
        self._open[key] = summary if found is None else found.merge(summary)

    def close(self) -> None:
        """Flush everything and close this replica's interval (drain, shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush(everything=True)


def records_frame(records: Sequence[PredictionRecord]) -> pd.DataFrame:
    """Records as the prediction log's window frame (without feedback), but their time (the
    summaries read it from the records: the bucket)."""
    return pd.DataFrame(
        {
            "request_id": [r.request_id for r in records],
            "version": [r.version for r in records],
            "role": [r.role for r in records],
            "probability": [r.probability for r in records],
            "decision": [r.decision for r in records],
            "features": [r.features for r in records],
            "flags": [r.flags for r in records],
            "latencies_ms": [r.latencies_ms for r in records],
            "prediction": [r.prediction for r in records],
            "outcome": [None] * len(records),
        }
    )


class AggregatingLog:
    """The prediction log of a serving process with aggregation on: every call goes to the
    log; what was committed (answers, shadow rows, feedback recorded, request errors) is
    also queued for the replica's ``Aggregator``."""

    def __init__(self, log: PredictionLog, aggregator: Aggregator) -> None:
        self.inner = log
        self.aggregator = aggregator

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.inner.write(records)
        self.aggregator.add(records)

    def get(self, request_id: str, role: Role = "champion") -> PredictionRecord | None:
        return self.inner.get(request_id, role)

    def answer(self, request_id: str) -> PredictionRecord | None:
        return self.inner.answer(request_id)

    def answers(self, request_ids: Sequence[str]) -> dict[str, PredictionRecord]:
        return self.inner.answers(request_ids)

    def record_feedback(
        self, request_id: str, outcome: dict[str, Any], time: datetime
    ) -> Literal["recorded", "duplicate"]:
        status = self.inner.record_feedback(request_id, outcome, time)
        if status == "recorded":  # the outcome of the answer and of a shadow score of it
            answer = self.inner.answer(request_id)
            if answer is None:
                return status
            shadow = self.inner.get(request_id, "shadow")
            self.aggregator.feedback(answer, shadow, outcome)
            if shadow is None:  # not scored yet (the shadow runs off the response path), or never
                self.aggregator.await_shadow(answer, outcome)
        return status

    def record_error(self, time: datetime, kind: ErrorKind, version: int | None) -> None:
        self.inner.record_error(time, kind, version)
        self.aggregator.error(time, kind, version)

    def window(
        self, start: datetime, end: datetime, role: Roles = None, every: int = 1
    ) -> pd.DataFrame:
        return self.inner.window(start, end, role, every)

    def tail(self, rows: int, before: datetime, role: Roles = ANSWERS) -> pd.DataFrame:
        return self.inner.tail(rows, before, role)

    def count(self, start: datetime, end: datetime, role: Roles = None) -> int:
        return self.inner.count(start, end, role)

    def errors(
        self, start: datetime, end: datetime, version: int | None = None
    ) -> dict[ErrorKind, int]:
        return self.inner.errors(start, end, version)

    def close(self) -> None:
        try:
            self.aggregator.close()
        finally:
            self.inner.close()


def summarise_log(
    log: PredictionLog,
    start: datetime,
    end: datetime,
    references: Callable[[int], VersionReference],
    bucket_seconds: int,
    kpi: KpiSettings,
    cost: CostFunction | None,
    latency_budget_ms: float | None,
    chunk_buckets: int = 60,
) -> dict[Key, Summary]:
    """The summaries of the whole buckets of ``[start, end)`` from the raw log — every role,
    with the feedback recorded so far, shadow rows paired with the answers of the same request
    id (within a chunk of ``chunk_buckets`` buckets, read at a time) and the request errors —
    equal to what the replicas accumulate live."""
    step = timedelta(seconds=bucket_seconds)
    low, high = buckets_within(start, end, bucket_seconds)
    summaries: dict[Key, Summary] = {}
    while low < high:
        upper = min(high, low + step * chunk_buckets)
        frame = log.window(low, upper)
        if len(frame):
            frame = frame.assign(
                bucket=[bucket_of(datetime.fromisoformat(t), bucket_seconds) for t in frame["time"]]
            )
            for (bucket, version, role), rows in frame.groupby(["bucket", "version", "role"]):
                reference = references(int(version))
                summaries[Key(bucket, int(version), str(role))] = summarise(
                    rows,
                    version_bins(reference),
                    reference.spec,
                    kpi=kpi,
                    cost=cost,
                    latency_budget_ms=latency_budget_ms,
                )
            pairs = summarise_all_pairs(
                frame,
                ["bucket", "version", "role"],
                lambda v: references(v).spec,
                kpi=kpi,
                cost=cost,
                latency_budget_ms=latency_budget_ms,
            )
            for (bucket, version, role), paired in pairs.items():
                key = Key(bucket, int(version), str(role))
                summaries[key] = summaries[key].merge(paired)
        versions = sorted({int(v) for v in frame["version"]}) if len(frame) else []
        bucket = low
        while bucket < upper:
            _errors(log, bucket, bucket + step, versions, summaries)
            bucket += step
        low = upper
    return summaries


def _errors(
    log: PredictionLog,
    start: datetime,
    end: datetime,
    versions: Sequence[int],
    summaries: dict[Key, Summary],
) -> None:
    """The request errors of one bucket, per version (-1: not known)."""
    every = log.errors(start, end)
    if not any(every.values()):
        return
    left: dict[str, int] = {str(k): n for k, n in every.items()}
    for version in versions:
        counted = {str(k): n for k, n in log.errors(start, end, version).items() if n}
        for kind, n in counted.items():
            left[kind] -= n
        if counted:
            summaries[Key(start, version, ERRORS_ROLE)] = Summary(errors=counted)
    if any(left.values()):
        summaries[Key(start, -1, ERRORS_ROLE)] = Summary(
            errors={k: n for k, n in left.items() if n}
        )
