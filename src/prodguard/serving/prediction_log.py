"""The prediction log: the spine of monitoring. Serving writes, monitors read windows.

Every acknowledged prediction is committed before the response leaves: PostgreSQL in
production, shared by every replica; SQLite in WAL mode by default (``synchronous=FULL`` fsyncs
each commit and survives a power loss, ``NORMAL`` does not fsync commits and survives a crash or
kill -9 of the process but not of the machine).
Concurrent writes share one commit (group commit: one multi-row insert; on PostgreSQL one
statement of binary column arrays into both of its tables), each still all-or-nothing. On
PostgreSQL the predictions are partitioned by day (see ``PostgresPredictionLog``);
``prodguard log prune`` (``serving.log_retention``) drops what is older than
``storage.log_retention_days``.
Feedback (observed outcomes) is keyed by request id; repeating the same feedback is idempotent,
a different outcome for the same request is a conflict.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

from prodguard.errors import (
    DuplicateRequest,
    FeedbackConflict,
    ProdguardError,
    StorageError,
    UnknownRequest,
    first_line,
    redact,
)

_log = logging.getLogger("prodguard.serving")
SERVING_CHECKPOINT_S = 1.0  # the serving process checkpoints the WAL this often, off requests
Role = Literal["champion", "shadow", "canary"]
Roles = Role | tuple[Role, ...] | None  # one role, several, or all
ANSWERS: tuple[Role, ...] = ("champion", "canary")  # what callers got back
ErrorKind = Literal["rejected", "failed"]  # 4xx the caller can fix | 5xx the service owes


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    time: datetime
    model: str
    version: int
    role: Role
    probability: float  # the task's score: P(positive), the value, P(predicted class)
    decision: int  # binary: 0/1 at the threshold; multiclass: the class index; regression: 0
    features: dict[str, Any]
    flags: list[str] = field(default_factory=list)
    latencies_ms: dict[str, float] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    prediction: dict[str, Any] | None = None  # multiclass/regression: ``Outputs.row``
    digest: str | None = None  # of the request's payload: a reused id must repeat it

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["time"] = self.time.isoformat()
        return record


class PredictionLog(Protocol):
    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Commit all records or none; DuplicateRequest if an id+role is already logged."""
        ...

    def get(self, request_id: str, role: Role = "champion") -> PredictionRecord | None: ...

    def answer(self, request_id: str) -> PredictionRecord | None:
        """The answer the caller got (the champion's, or a canary's)."""
        ...

    def answers(self, request_ids: Sequence[str]) -> dict[str, PredictionRecord]:
        """``answer`` of many ids at once: the ids answered, with their answer."""
        ...

    def record_feedback(
        self, request_id: str, outcome: dict[str, Any], time: datetime
    ) -> Literal["recorded", "duplicate"]: ...

    def record_error(self, time: datetime, kind: ErrorKind, version: int | None) -> None: ...

    def window(
        self, start: datetime, end: datetime, role: Roles = None, every: int = 1
    ) -> pd.DataFrame: ...

    def tail(self, rows: int, before: datetime, role: Roles = ANSWERS) -> pd.DataFrame: ...

    def count(self, start: datetime, end: datetime, role: Roles = None) -> int: ...

    def errors(
        self, start: datetime, end: datetime, version: int | None = None
    ) -> dict[ErrorKind, int]: ...

    def close(self) -> None: ...


COLUMNS = (
    "request_id",
    "role",
    "time",
    "model",
    "version",
    "probability",
    "decision",
    "features",
    "flags",
    "latencies_ms",
    "request",
    "prediction",  # nullable: added after the first release (see _MIGRATIONS)
    "request_digest",  # nullable: added after the first release (see _MIGRATIONS)
)
_SELECT = ", ".join(f"p.{c}" for c in COLUMNS)
_JOINED = (
    f"SELECT {_SELECT}, f.outcome AS outcome, f.time AS feedback_time FROM predictions p "
    "LEFT JOIN feedback f ON f.request_id = p.request_id"
)
_INSERT = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# Times are ISO 8601 text in UTC (one format, so text order is time order) on both backends,
# and the JSON columns are text: both return the same rows and frames.
_RECORDS = """
CREATE TABLE IF NOT EXISTS request_errors (
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER
);
CREATE INDEX IF NOT EXISTS request_errors_time ON request_errors (time);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    outcome TEXT NOT NULL
)
"""
# SQLite: one table, its primary key keeps every request id + role once.
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    probability REAL NOT NULL,
    decision INTEGER NOT NULL,
    features TEXT NOT NULL,
    flags TEXT NOT NULL,
    latencies_ms TEXT NOT NULL,
    request TEXT NOT NULL,
    prediction TEXT,
    request_digest TEXT,
    PRIMARY KEY (request_id, role)
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
"""
    + _RECORDS
)

# PostgreSQL: predictions partitioned by day (PostgresPredictionLog), the ids that keep them
# exactly-once, then the same request_errors and feedback.
_PG_SCHEMA = (
    """
CREATE SEQUENCE IF NOT EXISTS predictions_id_seq;
CREATE TABLE IF NOT EXISTS predictions (
    id BIGINT NOT NULL DEFAULT nextval('predictions_id_seq'),
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    probability DOUBLE PRECISION NOT NULL,
    decision INTEGER NOT NULL,
    features TEXT NOT NULL,
    flags TEXT NOT NULL,
    latencies_ms TEXT NOT NULL,
    request TEXT NOT NULL,
    prediction TEXT,
    request_digest TEXT
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS predictions_default PARTITION OF predictions DEFAULT;
CREATE INDEX IF NOT EXISTS predictions_time_id ON predictions (time, id) INCLUDE (role);
CREATE TABLE IF NOT EXISTS prediction_ids (
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    time TEXT NOT NULL,
    id BIGINT NOT NULL,
    PRIMARY KEY (request_id, role)
);
"""
    + _RECORDS
)
_PG_TYPES = {"version": "int4", "probability": "float8", "decision": "int4"}
_PG_INSERT = (  # %b: binary arrays, nothing to quote or parse as text
    "WITH r AS MATERIALIZED (SELECT nextval('predictions_id_seq') AS id, * FROM unnest("
    + ", ".join(f"%b::{_PG_TYPES.get(c, 'text')}[]" for c in COLUMNS)
    + f") AS u ({', '.join(COLUMNS)})), k AS (INSERT INTO prediction_ids "
    "(request_id, role, time, id) SELECT request_id, role, time, id FROM r) "
    f"INSERT INTO predictions (id, {', '.join(COLUMNS)}) SELECT id, {', '.join(COLUMNS)} FROM r"
)
_RETRY_PARTITION_S = 60.0  # after a partition creation gave up on a busy table
_GATHER_S = 0.002  # a leader's longest wait for the writers of the last shared commit

# Columns added since the first release, added on open to a log that lacks them (nullable: old
# rows keep NULL).
_MIGRATIONS = {"prediction": "TEXT", "request_digest": "TEXT"}


@dataclass
class _Write:
    rows: list[tuple[Any, ...]]
    done: bool = False
    error: ProdguardError | None = None
    wake: Any = field(default_factory=threading.Lock)  # held until a leader releases it

    def __post_init__(self) -> None:
        self.wake.acquire()


@dataclass(frozen=True)
class Expired:
    """Rows of the log older than a retention cutoff, removed together: ``table`` holds them
    in ``[start, end)`` (ISO text; '' for no lower bound); ``whole``: the table holds nothing
    else and is dropped (a PostgreSQL partition)."""

    table: str
    start: str
    end: str
    whole: bool


class _SqlPredictionLog:
    """The log on a DB-API connection, shared by the SQLite and PostgreSQL backends: one
    connection per process behind a lock, with group commit. Backends give the connection,
    the transaction statements and their error classes."""

    _errors: tuple[type[Exception], ...] = ()  # the driver's errors
    _integrity: type[Exception] = Exception  # ...and its unique-violation error
    _sample_column = "rowid"  # a unique row key: samples are numbered, then joined back
    _ids = "predictions"  # the table that holds every logged request id + role, unique
    where: str = ""  # shown in messages (never credentials)

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the connection
        self._turn = threading.Lock()  # the queue and who leads the next commit
        self._arrived = threading.Condition(self._turn)  # a write queued while one gathers
        self._leading = self._gathering = False
        self._shared = 1  # writes in the last commit
        self._queue: list[_Write] = []  # writes waiting for the next group commit

    # -- backend hooks ---------------------------------------------------------------------
    def _connection(self) -> Any:
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def _end(self, conn: Any, commit: bool) -> None:
        conn.commit() if commit else conn.rollback()

    # -- writes ----------------------------------------------------------------------------
    def write(self, records: Sequence[PredictionRecord]) -> None:
        shared: dict[int, str] = {}  # a call's rows share their latencies: encoded once

        def latencies(value: dict[str, float]) -> str:
            text = shared.get(id(value))
            if text is None:
                text = shared[id(value)] = _dumps(value)
            return text

        features = encode_rows([r.features for r in records])
        requests = encode_rows([r.request for r in records])
        rows = [
            (
                r.request_id,
                r.role,
                r.time.isoformat(),
                r.model,
                int(r.version),
                float(r.probability),
                int(r.decision),
                feature_text,
                "[]" if not r.flags else _dumps(r.flags),
                latencies(r.latencies_ms),
                request_text,
                None if r.prediction is None else _dumps(r.prediction),
                r.digest,
            )
            for r, feature_text, request_text in zip(records, features, requests, strict=True)
        ]
        pending = _Write(rows)
        # Leader and followers: a writer that finds no commit under way leads one with every
        # write queued so far; the others wait on their own lock until a leader releases it:
        # their commit ended (done), or it is their turn to lead the next with all queued
        # since (the first still queued when a commit ends). Only the writers of a commit
        # wake up when it ends, and none of them contends for the queue again.
        # After a shared commit, a leader gives the writers of the last one a moment to queue
        # again (at most _GATHER_S, like PostgreSQL's commit_delay): a lone writer never waits.
        with self._turn:
            self._queue.append(pending)
            follow, self._leading = self._leading, True
            if self._gathering and len(self._queue) >= self._shared:
                self._arrived.notify()  # the leader wakes once, when its batch is complete
        if follow:
            pending.wake.acquire()
            if pending.done:
                if pending.error is not None:
                    raise pending.error
                return
        with self._turn:
            if self._shared > 1:
                last, self._gathering = self._shared, True
                self._arrived.wait_for(lambda: len(self._queue) >= last, _GATHER_S)
                self._gathering = False
            batch, self._queue = self._queue, []
            self._shared = len(batch)
        try:
            with self._lock:
                self._commit(batch)
        except BaseException as exc:  # not the driver's (those fail the batch in _commit)
            for write in batch:  # ... still: no follower may return as if committed
                write.error = write.error or StorageError(
                    f"prediction log write failed: {first_line(exc)}"
                )
            raise
        finally:
            with self._turn:
                for write in batch:
                    write.done = True
                after = self._queue[0] if self._queue else None
                self._leading = after is not None  # ... and leads the next
            for write in batch:
                if write is not pending:
                    write.wake.release()
            if after is not None:
                after.wake.release()
        if pending.error is not None:
            raise pending.error

    def _commit(self, batch: list[_Write]) -> None:
        """Group commit: the writers queued meanwhile share one transaction (one fsync) and
        one multi-row insert. A duplicate id+role in it undoes that insert, and the batch is
        inserted again write by write, each in a savepoint of its own, so that a duplicate
        refuses only its own records. A failed commit fails every writer of the batch; every
        writer returns after the commit that holds its records."""
        rows = [row for write in batch for row in write.rows]
        conn = None
        try:
            conn = self._connection()
            self._prepare(conn, rows)
            try:
                self._insert_committed(conn, rows)
            except self._integrity:
                self._begin(conn)
                for write in batch:
                    conn.execute("SAVEPOINT write")
                    try:
                        self._insert(conn, write.rows)
                    except self._integrity:
                        conn.execute("ROLLBACK TO SAVEPOINT write")
                        write.error = DuplicateRequest(
                            "a prediction was already logged for one of these request ids; "
                            "use new ids"
                        )
                    conn.execute("RELEASE SAVEPOINT write")
                self._end(conn, commit=True)
        except self._errors as exc:
            if conn is not None:
                with contextlib.suppress(*self._errors):
                    self._end(conn, commit=False)
            for write in batch:
                write.error = StorageError(
                    f"prediction log write failed: {redact(first_line(exc))}"
                )

    def _prepare(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """Before a batch's transaction: what its rows need (PostgreSQL: their partitions)."""

    def _insert_committed(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """``rows`` inserted and committed in one transaction, or none of them (undone)."""
        self._begin(conn)
        try:
            self._insert(conn, rows)
        except self._integrity:
            self._end(conn, commit=False)
            raise
        self._end(conn, commit=True)

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        conn.cursor().executemany(self._sql(_INSERT), rows)

    def record_feedback(
        self, request_id: str, outcome: dict[str, Any], time: datetime
    ) -> Literal["recorded", "duplicate"]:
        text = _dumps(outcome)
        with self._transaction("feedback write") as conn:
            known = conn.execute(
                self._sql(f"SELECT 1 FROM {self._ids} WHERE request_id = ? LIMIT 1"), (request_id,)
            ).fetchone()
            if known is None:
                raise UnknownRequest("no prediction was logged for this request id")
            inserted = conn.execute(
                self._sql(
                    "INSERT INTO feedback (request_id, time, outcome) VALUES (?, ?, ?) "
                    "ON CONFLICT (request_id) DO NOTHING"
                ),
                (request_id, time.isoformat(), text),
            ).rowcount
            if inserted == 1:
                return "recorded"
            stored = conn.execute(
                self._sql("SELECT outcome FROM feedback WHERE request_id = ?"), (request_id,)
            ).fetchone()
            if stored is not None and stored[0] == text:
                return "duplicate"
            raise FeedbackConflict("a different outcome was already recorded for this request id")

    def record_error(self, time: datetime, kind: ErrorKind, version: int | None) -> None:
        """Count a request that got no prediction (monitors derive error rates from these)."""
        with self._transaction("prediction log write") as conn:
            conn.execute(
                self._sql("INSERT INTO request_errors (time, kind, version) VALUES (?, ?, ?)"),
                (time.isoformat(), kind, version),
            )

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[Any]:
        with self._lock:
            conn = None
            try:
                conn = self._connection()
                self._begin(conn)
                try:
                    yield conn
                except ProdguardError:
                    self._end(conn, commit=False)
                    raise
                self._end(conn, commit=True)
            except self._errors as exc:
                if conn is not None:
                    with contextlib.suppress(*self._errors):
                        self._end(conn, commit=False)
                raise StorageError(f"{action} failed: {redact(first_line(exc))}") from None

    # -- retention (serving.log_retention) ---------------------------------------------------
    def maintain(self) -> None:
        """Bring the storage layout up to date before a prune (PostgreSQL: partitions)."""

    def expired(self, before: str) -> list[Expired]:
        """What holds predictions older than the day ``before`` (YYYY-MM-DD): one per day."""
        _, days = self._fetch(
            "SELECT DISTINCT substr(time, 1, 10) FROM predictions WHERE time < ?", (before,)
        )
        return [Expired("predictions", d, _next_day(d), whole=False) for (d,) in sorted(days)]

    def pages(self, part: Expired, size: int = 50_000) -> Iterator[tuple[list[str], list[tuple]]]:
        """The rows of ``part`` with their feedback, ``size`` at a time in (time, key) order
        (keyset pages on the time index); the last column, ``row_key``, is the log's own key."""
        key = self._sample_column
        after: tuple[str, Any] = ("", -1)
        while True:
            columns, rows = self._fetch(
                f"SELECT {_SELECT}, f.outcome AS outcome, f.time AS feedback_time, "
                f"p.{key} AS row_key FROM {part.table} p "
                "LEFT JOIN feedback f ON f.request_id = p.request_id "
                "WHERE p.time >= ? AND p.time < ? "
                f"AND (p.time > ? OR (p.time = ? AND p.{key} > ?)) ORDER BY p.time, p.{key} "
                "LIMIT ?",
                (part.start, part.end, after[0], after[0], after[1], size),
            )
            if not rows:
                return
            yield columns, rows
            after = (rows[-1][2], rows[-1][-1])

    def drop(self, part: Expired, expected: int | None = None) -> int:
        """Removes the rows of ``part``, the ids that keep them unique, and feedback left with
        no prediction; one transaction. ``expected``: the rows exported — if more arrived
        since, nothing is removed (StorageError)."""
        span = "time >= ? AND time < ?"
        bounds = (part.start, part.end)
        with self._transaction("prediction log prune") as conn:
            self._lock_for_removal(conn, part)
            rows = conn.execute(
                self._sql(f"SELECT COUNT(*) FROM {part.table} WHERE {span}"), bounds
            ).fetchone()[0]
            if expected is not None and rows != expected:
                raise StorageError(
                    f"{rows - expected} predictions arrived in {part.table} after its export; "
                    "run the prune again"
                )
            conn.execute(
                self._sql(
                    f"DELETE FROM feedback WHERE request_id IN (SELECT request_id FROM "
                    f"{part.table} WHERE {span}) AND NOT EXISTS (SELECT 1 FROM {self._ids} k "
                    "WHERE k.request_id = feedback.request_id AND (k.time < ? OR k.time >= ?))"
                ),
                (*bounds, *bounds),
            )
            self._remove(conn, part)
        return int(rows)

    def _lock_for_removal(self, conn: Any, part: Expired) -> None:
        """SQLite: the transaction holds the write lock already."""

    def _remove(self, conn: Any, part: Expired) -> None:
        conn.execute(
            self._sql(f"DELETE FROM {part.table} WHERE time >= ? AND time < ?"),
            (part.start, part.end),
        )

    def drop_errors(self, before: str) -> int:
        """Request errors older than the day ``before``: their count."""
        with self._transaction("prediction log prune") as conn:
            return int(
                conn.execute(
                    self._sql("DELETE FROM request_errors WHERE time < ?"), (before,)
                ).rowcount
            )

    # -- reads -----------------------------------------------------------------------------
    def _fetch(self, query: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple]]:
        with self._lock:
            try:
                cursor = self._connection().execute(self._sql(query), params)
                rows = cursor.fetchall()
                return [d[0] for d in cursor.description], rows
            except self._errors as exc:
                raise StorageError(
                    f"prediction log read failed: {redact(first_line(exc))}"
                ) from None

    def _by_request(self, condition: str, params: tuple[Any, ...]) -> list[tuple]:
        """The rows whose ``request_id`` and ``role`` meet ``condition`` (on those names)."""
        _, rows = self._fetch(f"SELECT {_SELECT} FROM predictions p WHERE {condition}", params)
        return rows

    def get(self, request_id: str, role: Role = "champion") -> PredictionRecord | None:
        rows = self._by_request("request_id = ? AND role = ?", (request_id, role))
        return _record(rows[0]) if rows else None

    def answer(self, request_id: str) -> PredictionRecord | None:
        rows = self._by_request(f"request_id = ? AND role IN {_ANSWER_ROLES}", (request_id,))
        return _record(rows[0]) if rows else None

    def answers(self, request_ids: Sequence[str]) -> dict[str, PredictionRecord]:
        found: dict[str, PredictionRecord] = {}
        unique = list(dict.fromkeys(request_ids))
        for start in range(0, len(unique), _IDS_PER_QUERY):
            chunk = unique[start : start + _IDS_PER_QUERY]
            rows = self._by_request(
                f"request_id IN ({', '.join('?' * len(chunk))}) AND role IN {_ANSWER_ROLES}",
                tuple(chunk),
            )
            for row in rows:
                found.setdefault(row[0], _record(row))
        return found

    def window(
        self, start: datetime, end: datetime, role: Roles = None, every: int = 1
    ) -> pd.DataFrame:
        """Predictions logged in ``[start, end)`` (of one role, or all) joined with their
        feedback; ``every=k`` keeps one row in k (a deterministic sample of large windows)."""
        where, params = _where(start, end, role)
        if every <= 1:
            return self._frame(f"{_JOINED} WHERE {where} ORDER BY p.time", params)
        # The k-th, 2k-th, ... row of the window in time order, numbered in SQL (the time index
        # gives the order): floor(n / k) rows whatever the row ids of other roles or windows, and
        # only those rows are read and joined with their feedback. Joined back on (time, key):
        # on PostgreSQL the (time, id) index of the partition that holds the row.
        key = self._sample_column
        numbered = (
            f"SELECT p.time AS sample_time, p.{key} AS sample_key, "
            f"ROW_NUMBER() OVER (ORDER BY p.time, p.{key}) AS n FROM predictions p WHERE {where}"
        )
        sampled = _JOINED.replace(
            "FROM predictions p",
            f"FROM ({numbered}) s JOIN predictions p "
            f"ON p.time = s.sample_time AND p.{key} = s.sample_key",
        )
        # The window's bounds again on the rows joined back: only its partitions are read.
        return self._frame(
            f"{sampled} WHERE {where} AND s.n % ? = 0 ORDER BY p.time", (*params, *params, every)
        )

    def tail(self, rows: int, before: datetime, role: Roles = ANSWERS) -> pd.DataFrame:
        """The last ``rows`` predictions of ``role`` logged before ``before``, oldest first."""
        where, params = _where(datetime.min.replace(tzinfo=before.tzinfo), before, role)
        frame = self._frame(
            f"{_JOINED} WHERE {where} ORDER BY p.time DESC LIMIT ?", (*params, rows)
        )
        return frame.iloc[::-1].reset_index(drop=True)

    def count(self, start: datetime, end: datetime, role: Roles = None) -> int:
        where, params = _where(start, end, role)
        _, rows = self._fetch(f"SELECT COUNT(*) FROM predictions p WHERE {where}", params)
        return int(rows[0][0])

    def errors(
        self, start: datetime, end: datetime, version: int | None = None
    ) -> dict[ErrorKind, int]:
        """Failed and rejected requests in ``[start, end)``; of ``version`` only when given."""
        where = "time >= ? AND time < ?"
        params: tuple[Any, ...] = (start.isoformat(), end.isoformat())
        if version is not None:
            where, params = where + " AND version = ?", (*params, version)
        _, found = self._fetch(
            f"SELECT kind, COUNT(*) FROM request_errors WHERE {where} GROUP BY kind", params
        )
        counts: dict[ErrorKind, int] = {"rejected": 0, "failed": 0}
        counts.update({kind: int(n) for kind, n in found})
        return counts

    def _frame(self, query: str, params: tuple[Any, ...]) -> pd.DataFrame:
        columns, rows = self._fetch(query, params)
        return decoded(pd.DataFrame.from_records(rows, columns=columns))


class SqlitePredictionLog(_SqlPredictionLog):
    """The embedded default: a SQLite file in WAL mode."""

    _errors = (sqlite3.Error,)
    _integrity = sqlite3.IntegrityError

    def __init__(
        self,
        path: Path,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        checkpoint_every_s: float | None = None,
    ) -> None:
        """``checkpoint_every_s``: copy the WAL into the database from a background thread at
        this interval instead of in the commit that fills the WAL (SQLite's auto-checkpoint,
        every 1000 pages: a few milliseconds, with an fsync of the database, on the request
        that happens to commit then). For the serving process."""
        super().__init__()
        self.path = path
        self.where = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path, check_same_thread=False, timeout=30, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            if checkpoint_every_s is not None:
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.executescript(_SCHEMA)
            for column, kind in _MIGRATIONS.items():
                if column not in self._columns():
                    with contextlib.suppress(sqlite3.OperationalError):  # another opener won
                        self._conn.execute(f"ALTER TABLE predictions ADD COLUMN {column} {kind}")
                    if column not in self._columns():
                        raise sqlite3.OperationalError(f"column {column} cannot be added")
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"prediction log {path} cannot be opened: {exc}") from None
        self._stop = threading.Event()
        if checkpoint_every_s is not None:
            threading.Thread(
                target=_checkpoints,
                args=(path, checkpoint_every_s, self._stop),
                name="prodguard-log-checkpoint",
                daemon=True,
            ).start()

    def _connection(self) -> sqlite3.Connection:
        return self._conn

    def _columns(self) -> set[str]:
        return {row[1] for row in self._conn.execute("PRAGMA table_info(predictions)")}

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first insert

    def _end(self, conn: Any, commit: bool) -> None:
        conn.execute("COMMIT" if commit else "ROLLBACK")

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._conn.close()


class PostgresPredictionLog(_SqlPredictionLog):
    """The production backend: every replica writes, every monitor and guard reads, one
    PostgreSQL database. Commits are durable (the server's ``synchronous_commit``). A lost
    connection fails the call in hand with a StorageError; the next call reconnects.

    ``predictions`` is partitioned by day (``PARTITION BY RANGE (time)``): a writer creates the
    partition of a day it meets and the next day's ahead (under a short lock timeout; if that
    fails, rows land in ``predictions_default``, the safety net, until the next creation moves
    them), and retention drops whole partitions. Every read uses the one index of the
    partitions, ``(time, id) INCLUDE (role)``: windows, counts and tails by time range, the
    sample numbered in index order (no sort) and joined back on (time, id).

    Exactly once: a unique key of a partitioned table must contain the partition key, so the
    partitions cannot refuse a second (request_id, role) logged at another time (a retry comes
    later). The unpartitioned ``prediction_ids`` (request_id, role) -> (time, id) holds that
    key for the whole log, in the same transaction as the row; lookups by request id read it
    first (a new id, the common case, ends there), then the rows by (time, id) in their
    partitions only. Its narrow rows cost ~120 bytes a prediction with their index; retention
    deletes them with the partitions they point to (an id is unique within the retention).

    A ``predictions`` table of an earlier release (unpartitioned) becomes the first partition,
    ``predictions_legacy`` (up to the day after its last row), on first open: one line logged."""

    _sample_column = "id"
    _ids = "prediction_ids"

    def _by_request(self, condition: str, params: tuple[Any, ...]) -> list[tuple]:
        """``prediction_ids`` first (a new id, the common case, ends there), then the rows by
        their (time, id): the planner reads only the partitions of those times."""
        _, keys = self._fetch(f"SELECT time, id FROM prediction_ids WHERE {condition}", params)
        if not keys:
            return []
        times, ids = (list(column) for column in zip(*keys, strict=True))
        _, rows = self._fetch(  # ids are unique: no other row matches both lists
            f"SELECT {_SELECT} FROM predictions p WHERE p.time = ANY(?) AND p.id = ANY(?)",
            (times, ids),
        )
        return rows

    def __init__(self, url: str, connect_timeout_s: int = 5) -> None:
        import psycopg

        super().__init__()
        self._errors = (psycopg.Error,)
        self._integrity = psycopg.errors.UniqueViolation
        self._psycopg = psycopg
        self._url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._timeout = connect_timeout_s
        self.where = redact(url)
        self._conn: Any = None
        self._ranges: list[tuple[str, str]] = []  # [from, to) of each day's (or older) partition
        self._days: set[str] = set()  # days known to have a partition
        self._retry_at = 0.0  # no partition creation before (monotonic): the last one waited
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(7460211)")  # one creator at a time
                    kind = conn.execute(
                        "SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')"
                    ).fetchone()
                    if kind is not None and kind[0] == "r":
                        self._partition_legacy(conn)
                    for statement in _PG_SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                self._ranges = self._partitions(conn)
            except psycopg.Error as exc:
                raise StorageError(
                    f"prediction log {self.where} cannot be opened ({redact(first_line(exc))}); "
                    "start PostgreSQL or fix storage.url"
                ) from None

    def _partition_legacy(self, conn: Any) -> None:
        """The unpartitioned table of an earlier release becomes the partition of everything
        up to the day after its last row; its ids fill ``prediction_ids``."""
        for column, kind in _MIGRATIONS.items():
            conn.execute(f"ALTER TABLE predictions ADD COLUMN IF NOT EXISTS {column} {kind}")
        rows, last = conn.execute("SELECT COUNT(*), MAX(time) FROM predictions").fetchone()
        conn.execute("ALTER SEQUENCE IF EXISTS predictions_id_seq OWNED BY NONE")  # ids go on
        conn.execute("ALTER TABLE predictions RENAME TO predictions_legacy")
        conn.execute("ALTER INDEX IF EXISTS predictions_pkey RENAME TO predictions_legacy_pkey")
        conn.execute("ALTER INDEX IF EXISTS predictions_time RENAME TO predictions_legacy_time")
        for statement in _PG_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if not rows:
            conn.execute("DROP TABLE predictions_legacy")
            return
        conn.execute(
            "INSERT INTO prediction_ids (request_id, role, time, id) "
            "SELECT request_id, role, time, id FROM predictions_legacy"
        )
        end = _next_day(last[:10])  # a date: DDL takes no parameters
        conn.execute(
            "ALTER TABLE predictions ATTACH PARTITION predictions_legacy "
            f"FOR VALUES FROM (MINVALUE) TO ('{end}')"
        )
        _log.warning(
            "prediction log %s: the unpartitioned predictions table of an earlier release "
            "(%d rows) is now the partition predictions_legacy, up to %s",
            self.where,
            rows,
            end,
        )

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                with contextlib.suppress(self._psycopg.Error):
                    self._conn.close()
            self._conn = self._psycopg.connect(
                self._url, autocommit=True, connect_timeout=self._timeout
            )
        return self._conn

    def _sql(self, query: str) -> str:
        return query.replace("%", "%%").replace("?", "%s")

    def _end(self, conn: Any, commit: bool) -> None:
        conn.execute("COMMIT" if commit else "ROLLBACK")

    def _insert_committed(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """One statement on the autocommit connection: its own transaction, committed (and
        flushed: ``synchronous_commit`` as the server sets it) when it returns, or undone."""
        self._insert(conn, rows)

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """One statement, one round trip: the rows as one array per column (binary), their
        ids from the sequence, into ``prediction_ids`` (whose unique key refuses a duplicate)
        and ``predictions`` at once."""
        conn.execute(_PG_INSERT, [list(column) for column in zip(*rows, strict=True)])

    # -- partitions ------------------------------------------------------------------------
    def _prepare(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """The partitions of the batch's days, and of the day after each, ahead."""
        for day in sorted({row[2][:10] for row in rows} - self._days):
            if time.monotonic() < self._retry_at:
                return  # a creation was postponed: these rows go to the default partition
            for wanted in (day, _next_day(day)):
                if not self._covered(wanted):
                    self._add_partition(conn, wanted)
            if self._covered(day):
                self._days.add(day)

    def _covered(self, day: str) -> bool:
        return any(lo <= day and _next_day(day) <= hi for lo, hi in self._ranges)

    def _partitions(self, conn: Any) -> list[tuple[str, str]]:
        """[from, to) of every partition but the default (from '' for MINVALUE)."""
        found = conn.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'predictions'::regclass"
        ).fetchall()
        return [_bounds(expr) for (expr,) in found if expr != "DEFAULT"]

    def _add_partition(self, conn: Any, day: str) -> None:
        """Creates the partition of ``day`` (rows of that day in the default partition move
        into it). Under a lock timeout: a busy table skips it (rows land in the default
        partition meanwhile) instead of holding up the writers queued behind the lock."""
        name = f"predictions_{day.replace('-', '')}"
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '1s'")
                conn.execute("SELECT pg_advisory_xact_lock(7460211)")
                self._ranges = self._partitions(conn)
                if self._covered(day):
                    return
                bounds = (day, _next_day(day))
                conn.execute("CREATE TEMP TABLE moved (LIKE predictions) ON COMMIT DROP")
                conn.execute(
                    "WITH d AS (DELETE FROM predictions_default WHERE time >= %s AND time < %s "
                    "RETURNING *) INSERT INTO moved SELECT * FROM d",
                    bounds,
                )
                conn.execute(  # DDL takes no parameters: both are dates checked by _next_day
                    f"CREATE TABLE {name} PARTITION OF predictions "
                    f"FOR VALUES FROM ('{bounds[0]}') TO ('{bounds[1]}')"
                )
                conn.execute("INSERT INTO predictions SELECT * FROM moved")
            self._ranges.append(bounds)
        except self._psycopg.errors.LockNotAvailable:
            self._retry_at = time.monotonic() + _RETRY_PARTITION_S
            _log.warning("prediction log: partition %s postponed (table busy)", name)

    def maintain(self) -> None:
        """Rows in the default partition move into partitions of their days."""
        with self._lock:
            try:
                conn = self._connection()
                days = conn.execute(
                    "SELECT DISTINCT substr(time, 1, 10) FROM predictions_default"
                ).fetchall()
                self._days -= {day for (day,) in days}
                for (day,) in days:
                    self._add_partition(conn, day)
            except self._psycopg.Error as exc:
                raise StorageError(
                    f"prediction log maintenance failed: {redact(first_line(exc))}"
                ) from None

    def expired(self, before: str) -> list[Expired]:
        """Whole partitions older than the day ``before``, then old rows of the default one."""
        with self._lock:
            try:
                conn = self._connection()
                self._ranges = self._partitions(conn)
                found = conn.execute(
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'predictions'::regclass"
                ).fetchall()
            except self._psycopg.Error as exc:
                raise StorageError(
                    f"prediction log read failed: {redact(first_line(exc))}"
                ) from None
        parts = []
        for name, expr in found:
            if expr == "DEFAULT":
                continue
            lo, hi = _bounds(expr)
            if hi <= before:
                parts.append(Expired(name, lo, hi, whole=True))
        parts.sort(key=lambda part: part.start)
        return [*parts, Expired("predictions_default", "", before, whole=False)]

    def _remove(self, conn: Any, part: Expired) -> None:
        conn.execute(
            f"DELETE FROM prediction_ids k USING {part.table} p WHERE k.request_id = "
            "p.request_id AND k.role = p.role AND p.time >= %s AND p.time < %s",
            (part.start, part.end),
        )
        if part.whole:
            conn.execute(f"DROP TABLE {part.table}")
            self._days.clear()
        else:
            conn.execute(
                f"DELETE FROM {part.table} WHERE time >= %s AND time < %s", (part.start, part.end)
            )

    def _lock_for_removal(self, conn: Any, part: Expired) -> None:
        conn.execute("SET LOCAL lock_timeout = '2s'")
        mode = "ACCESS EXCLUSIVE" if part.whole else "EXCLUSIVE"  # EXCLUSIVE: reads go on
        conn.execute(f"LOCK TABLE {part.table} IN {mode} MODE")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _checkpoints(path: Path, every_s: float, stop: threading.Event) -> None:
    """PASSIVE checkpoints on a connection of their own: writers are never blocked by them."""
    try:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    except sqlite3.Error as exc:
        _log.warning("prediction log checkpoints not running: %s", exc)
        return
    try:
        while not stop.wait(every_s):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # busy or gone: the next round retries
                _log.warning("prediction log checkpoint failed: %s", exc)
    finally:
        conn.close()


def _where(start: datetime, end: datetime, role: Roles) -> tuple[str, tuple[Any, ...]]:
    where = "p.time >= ? AND p.time < ?"
    params: tuple[Any, ...] = (start.isoformat(), end.isoformat())
    roles = (role,) if isinstance(role, str) else role
    if roles:
        where += f" AND p.role IN ({', '.join('?' * len(roles))})"
        params = (*params, *roles)
    return where, params


def decoded(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the log as stored (JSON text) -> the frame ``window`` returns (values)."""
    for column in ("features", "flags", "latencies_ms", "request"):
        frame[column] = frame[column].map(json.loads)
    frame["prediction"] = frame["prediction"].map(lambda v: json.loads(v) if v else None)
    frame["outcome"] = frame["outcome"].map(lambda v: json.loads(v) if v else None)
    return frame


def _dumps(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, default=_plain, allow_nan=True)``, one encoder."""
    return _JSON.encode(value)


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


_JSON = json.JSONEncoder(sort_keys=True, default=_plain, allow_nan=True)
_STRING = json.encoder.encode_basestring_ascii  # how the encoder writes a str (ensure_ascii)


def encode_rows(rows: Sequence[dict[str, Any]], encoder: json.JSONEncoder = _JSON) -> list[str]:
    """``[encoder.encode(row) for row in rows]`` for an encoder with ``sort_keys=True`` and
    the default separators, ensure_ascii and allow_nan (``_dumps``'s, or one with another
    ``default``), the same text: when the rows hold the same str keys, each key is encoded
    once and each row is one ``%`` of a template with its values' texts (str, int, float,
    bool and None written as the encoder writes them, anything else by the encoder). Below
    ``_COLUMNWISE_ROWS`` rows, row by row (measured: 8 us a row by the encoder, ~50 us of
    fixed cost column-wise)."""
    if len(rows) < _COLUMNWISE_ROWS:  # a few rows: the encoder is quicker row by row
        return [encoder.encode(row) for row in rows]
    keys = rows[0].keys()
    if not keys or any(type(k) is not str for k in keys) or any(r.keys() != keys for r in rows):
        return [encoder.encode(row) for row in rows]
    names = sorted(keys)
    template = "{" + ", ".join(_STRING(name).replace("%", "%%") + ": %s" for name in names) + "}"
    columns = [_texts([row[name] for row in rows], encoder) for name in names]
    return [template % values for values in zip(*columns, strict=True)]


def _texts(values: list[Any], encoder: json.JSONEncoder) -> list[str]:
    """Each value as ``encoder.encode`` writes it: a column of strings by the encoder's own
    string function, one of numbers and bools by one encoding of the whole list (their texts
    hold no comma), None allowed in both, each distinct value once when a column of one kind
    repeats its values; anything else value by value."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if kinds == {str}:
        distinct = list(dict.fromkeys(values))
        texts = [_STRING(value) if value is not None else "null" for value in distinct]
    elif not kinds <= _NUMBERS or not kinds:
        return [encoder.encode(value) for value in values]
    elif len(kinds) > 1:  # 1, 1.0 and True are one key of a dict: not looked up
        return encoder.encode(values)[1:-1].split(", ")
    else:
        distinct = list(dict.fromkeys(values))  # NaNs by identity; 0.0 and -0.0 fall together
        if 2 * len(distinct) > len(values) or (kinds == {float} and 0.0 in distinct):
            return encoder.encode(values)[1:-1].split(", ")  # mostly distinct, or a zero
        texts = encoder.encode(distinct)[1:-1].split(", ")
    return list(map(dict(zip(distinct, texts, strict=True)).__getitem__, values))


_NUMBERS = frozenset({float, int, bool})
_COLUMNWISE_ROWS = 64
_ANSWER_ROLES = "('champion', 'canary')"  # roles whose prediction the caller got (ANSWERS)
_IDS_PER_QUERY = 500  # request ids per ``answers`` query (SQLite's bound parameters: 32,766)


def _record(row: tuple) -> PredictionRecord:
    return PredictionRecord(
        request_id=row[0],
        role=row[1],
        time=datetime.fromisoformat(row[2]),
        model=row[3],
        version=int(row[4]),
        probability=float(row[5]),
        decision=int(row[6]),
        features=json.loads(row[7]),
        flags=json.loads(row[8]),
        latencies_ms=json.loads(row[9]),
        request=json.loads(row[10]),
        prediction=json.loads(row[11]) if row[11] else None,
        digest=row[12],
    )


def _next_day(day: str) -> str:
    """The day after ``day`` (YYYY-MM-DD); a ValueError for anything else."""
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


_BOUND = re.compile(r"FOR VALUES FROM \((.*)\) TO \((.*)\)")


def _bounds(expression: str) -> tuple[str, str]:
    """``FOR VALUES FROM ('a') TO ('b')`` -> ('a', 'b'); MINVALUE -> ''."""
    match = _BOUND.fullmatch(expression)
    if match is None:
        raise StorageError(f"prediction log: unexpected partition bound {expression}")
    lo, hi = (v.strip("'") if v != "MINVALUE" else "" for v in match.groups())
    return lo, hi
