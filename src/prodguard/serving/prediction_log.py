"""The prediction log: the spine of monitoring. Serving writes, monitors read windows.

Every acknowledged prediction is committed before the response leaves: PostgreSQL in
production, shared by every replica; SQLite in WAL mode by default (``synchronous=FULL`` fsyncs
each commit and survives a power loss, ``NORMAL`` does not fsync commits and survives a crash or
kill -9 of the process but not of the machine).
Concurrent writes share one commit (group commit), each still all-or-nothing.
Feedback (observed outcomes) is keyed by request id; repeating the same feedback is idempotent,
a different outcome for the same request is a conflict.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
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
_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    {serial}
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    time TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    probability {real} NOT NULL,
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

# Columns added since the first release, added on open to a log that lacks them (nullable: old
# rows keep NULL).
_MIGRATIONS = {"prediction": "TEXT", "request_digest": "TEXT"}


@dataclass
class _Write:
    rows: list[tuple[Any, ...]]
    done: bool = False
    error: ProdguardError | None = None


class _SqlPredictionLog:
    """The log on a DB-API connection, shared by the SQLite and PostgreSQL backends: one
    connection per process behind a lock, with group commit. Backends give the connection,
    the transaction statements and their error classes."""

    _errors: tuple[type[Exception], ...] = ()  # the driver's errors
    _integrity: type[Exception] = Exception  # ...and its unique-violation error
    _sample_column = "rowid"  # a unique row key: samples are numbered, then joined back
    where: str = ""  # shown in messages (never credentials)

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the connection
        self._queue_lock = threading.Lock()
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

        rows = [
            (
                r.request_id,
                r.role,
                r.time.isoformat(),
                r.model,
                r.version,
                r.probability,
                int(r.decision),
                _dumps(r.features),
                "[]" if not r.flags else _dumps(r.flags),
                latencies(r.latencies_ms),
                _dumps(r.request),
                None if r.prediction is None else _dumps(r.prediction),
                r.digest,
            )
            for r in records
        ]
        pending = _Write(rows)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:  # else an earlier writer committed it with its own
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if pending.error is not None:
            raise pending.error

    def _commit(self, batch: list[_Write]) -> None:
        """Group commit: the writers queued meanwhile share one transaction (one fsync), each
        in a savepoint of its own so that a duplicate refuses only its own records. Every
        writer returns after the commit that holds its records."""
        insert = self._sql(_INSERT)
        conn = None
        try:
            conn = self._connection()
            self._begin(conn)
            for write in batch:
                conn.execute("SAVEPOINT write")
                try:
                    conn.cursor().executemany(insert, write.rows)
                except self._integrity:
                    conn.execute("ROLLBACK TO SAVEPOINT write")
                    write.error = DuplicateRequest(
                        "a prediction was already logged for one of these request ids; use new ids"
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
        for write in batch:
            write.done = True

    def record_feedback(
        self, request_id: str, outcome: dict[str, Any], time: datetime
    ) -> Literal["recorded", "duplicate"]:
        text = _dumps(outcome)
        with self._transaction("feedback write") as conn:
            known = conn.execute(
                self._sql("SELECT 1 FROM predictions WHERE request_id = ? LIMIT 1"), (request_id,)
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

    def get(self, request_id: str, role: Role = "champion") -> PredictionRecord | None:
        _, rows = self._fetch(
            f"SELECT {_SELECT} FROM predictions p WHERE request_id = ? AND role = ?",
            (request_id, role),
        )
        return _record(rows[0]) if rows else None

    def answer(self, request_id: str) -> PredictionRecord | None:
        _, rows = self._fetch(
            f"SELECT {_SELECT} FROM predictions p WHERE request_id = ? "
            "AND role IN ('champion', 'canary') LIMIT 1",
            (request_id,),
        )
        return _record(rows[0]) if rows else None

    def answers(self, request_ids: Sequence[str]) -> dict[str, PredictionRecord]:
        found: dict[str, PredictionRecord] = {}
        unique = list(dict.fromkeys(request_ids))
        for start in range(0, len(unique), _IDS_PER_QUERY):
            chunk = unique[start : start + _IDS_PER_QUERY]
            _, rows = self._fetch(
                f"SELECT {_SELECT} FROM predictions p WHERE request_id IN "
                f"({', '.join('?' * len(chunk))}) AND role IN ('champion', 'canary')",
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
        # only those rows are read and joined with their feedback.
        key = self._sample_column
        numbered = (
            f"SELECT p.{key} AS sample_key, ROW_NUMBER() OVER (ORDER BY p.time, p.{key}) AS n "
            f"FROM predictions p WHERE {where}"
        )
        sampled = _JOINED.replace(
            "FROM predictions p",
            f"FROM ({numbered}) s JOIN predictions p ON p.{key} = s.sample_key",
        )
        return self._frame(f"{sampled} WHERE s.n % ? = 0 ORDER BY p.time", (*params, every))

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
        frame = pd.DataFrame.from_records(rows, columns=columns)
        for column in ("features", "flags", "latencies_ms", "request"):
            frame[column] = frame[column].map(json.loads)
        frame["prediction"] = frame["prediction"].map(lambda v: json.loads(v) if v else None)
        frame["outcome"] = frame["outcome"].map(lambda v: json.loads(v) if v else None)
        return frame


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
            self._conn.executescript(_SCHEMA.format(serial="", real="REAL"))
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
    connection fails the call in hand with a StorageError; the next call reconnects."""

    _sample_column = "id"

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
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(7460211)")  # one creator at a time
                    for statement in _SCHEMA.format(
                        serial="id BIGSERIAL,", real="DOUBLE PRECISION"
                    ).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    for column, kind in _MIGRATIONS.items():
                        conn.execute(
                            f"ALTER TABLE predictions ADD COLUMN IF NOT EXISTS {column} {kind}"
                        )
            except psycopg.Error as exc:
                raise StorageError(
                    f"prediction log {self.where} cannot be opened ({redact(first_line(exc))}); "
                    "start PostgreSQL or fix storage.url"
                ) from None

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
