"""The prediction log's contract, on both backends: SQLite (embedded) and PostgreSQL (the real
server of this machine, a database of the test's own). Both must give the same answers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from prodguard.errors import DuplicateRequest, FeedbackConflict, StorageError, UnknownRequest
from prodguard.serving.prediction_log import (
    PostgresPredictionLog,
    PredictionRecord,
    SqlitePredictionLog,
)
from tests.conftest import utc

pytestmark = pytest.mark.integration
T0 = utc("2013-05-01 10:00")


def record(i: int, role: str = "champion", version: int = 2, **changes) -> PredictionRecord:
    fields = {
        "request_id": f"r{i}",
        "time": T0 + timedelta(minutes=i),
        "model": "m",
        "version": version,
        "role": role,
        "probability": i / 100,
        "decision": i % 2 == 0,
        "features": {"temp": 50.0 + i, "carrier": "UA"},
        "flags": ["stale:temp"] if i % 3 == 0 else [],
        "latencies_ms": {"total": 1.5},
        "request": {"flight": i},
    }
    return PredictionRecord(**{**fields, **changes})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_log(request, tmp_path: Path) -> Iterator[Callable[[], object]]:
    """Opens (another connection to) one log, as a second process or replica would."""
    if request.param == "sqlite":
        path = tmp_path / "predictions.db"
        opened: list = []

        def make():
            opened.append(SqlitePredictionLog(path, "NORMAL"))
            return opened[-1]
    else:
        url = request.getfixturevalue("pg_database")("log")
        opened = []

        def make():
            opened.append(PostgresPredictionLog(url))
            return opened[-1]

    yield make
    for log in opened:
        log.close()


def test_write_get_answer_and_duplicates(open_log) -> None:
    log = open_log()
    log.write([record(1), record(1, role="shadow", version=1)])
    got = log.get("r1")
    assert got == record(1)
    assert log.get("r1", "shadow").version == 1
    assert log.answer("r1").role == "champion" and log.get("nope") is None
    with pytest.raises(DuplicateRequest):
        log.write([record(2), record(1)])  # all or nothing
    assert log.get("r2") is None


def test_a_second_connection_sees_every_committed_write(open_log) -> None:
    writer, reader = open_log(), open_log()
    writer.write([record(i) for i in range(20)])
    assert reader.count(T0, T0 + timedelta(days=1)) == 20
    with pytest.raises(DuplicateRequest):  # the key is the store's, not the process'
        reader.write([record(5)])


def test_concurrent_writers_share_commits_and_lose_nothing(open_log) -> None:
    log = open_log()
    errors: list[Exception] = []

    def write(start: int) -> None:
        for i in range(start, start + 50):
            try:
                log.write([record(i)])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(k * 50,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert log.count(T0, T0 + timedelta(days=1)) == 200


def test_windows_tails_counts_and_samples(open_log) -> None:
    log = open_log()
    log.write([record(i) for i in range(30)])
    log.write([record(i, role="shadow", version=1) for i in range(0, 30, 2)])
    frame = log.window(T0, T0 + timedelta(minutes=10), role="champion")
    assert list(frame["request_id"]) == [f"r{i}" for i in range(10)]
    assert frame.loc[3, "features"] == {"temp": 53.0, "carrier": "UA"}
    assert frame.loc[3, "flags"] == ["stale:temp"] and frame.loc[3, "outcome"] is None
    assert len(log.window(T0, T0 + timedelta(hours=1))) == 45
    assert log.count(T0, T0 + timedelta(hours=1), role=("shadow",)) == 15
    sampled = log.window(T0, T0 + timedelta(hours=1), role="champion", every=3)
    assert 8 <= len(sampled) <= 12 and sampled["time"].is_monotonic_increasing
    tail = log.tail(5, T0 + timedelta(minutes=20))
    assert list(tail["request_id"]) == [f"r{i}" for i in range(15, 20)]


def test_feedback_is_idempotent_checked_and_joined(open_log) -> None:
    log = open_log()
    log.write([record(1)])
    when = T0 + timedelta(hours=6)
    assert log.record_feedback("r1", {"delayed": 1}, when) == "recorded"
    assert open_log().record_feedback("r1", {"delayed": 1}, when) == "duplicate"
    with pytest.raises(FeedbackConflict):
        log.record_feedback("r1", {"delayed": 0}, when)
    with pytest.raises(UnknownRequest):
        log.record_feedback("r404", {"delayed": 1}, when)
    frame = log.window(T0, T0 + timedelta(hours=1))
    assert frame.loc[0, "outcome"] == {"delayed": 1}
    assert pd.Timestamp(frame.loc[0, "feedback_time"]) == pd.Timestamp(when)


def test_request_errors_are_counted(open_log) -> None:
    log = open_log()
    log.record_error(T0, "rejected", None)
    log.record_error(T0 + timedelta(minutes=1), "failed", 2)
    log.record_error(T0 + timedelta(days=2), "failed", 2)
    assert log.errors(T0, T0 + timedelta(days=1)) == {"rejected": 1, "failed": 1}


@pytest.mark.postgres
def test_postgres_unreachable_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StorageError) as error:
        PostgresPredictionLog("postgresql+psycopg://prodguard:s3cret@127.0.0.1:1/x", 1)
    message = str(error.value)
    assert "cannot be opened" in message and "storage.url" in message
    assert "s3cret" not in message and "***@127.0.0.1:1" in message


@pytest.mark.postgres
def test_postgres_reconnects_after_the_connection_is_lost(pg_database) -> None:
    import psycopg

    url = pg_database("log")
    log = PostgresPredictionLog(url)
    log.write([record(1)])
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StorageError, match="prediction log write failed"):
        log.write([record(2)])  # the call in hand fails: nothing is acknowledged wrongly
    log.write([record(3)])  # the next one reconnects
    assert log.get("r2") is None and log.get("r3") == record(3)
    log.close()


OLD_SCHEMA = """CREATE TABLE predictions (
    {serial} request_id TEXT NOT NULL, role TEXT NOT NULL, time TEXT NOT NULL,
    model TEXT NOT NULL, version INTEGER NOT NULL, probability {real} NOT NULL,
    decision INTEGER NOT NULL, features TEXT NOT NULL, flags TEXT NOT NULL,
    latencies_ms TEXT NOT NULL, request TEXT NOT NULL, PRIMARY KEY (request_id, role)
)"""
OLD_ROW = (
    "INSERT INTO predictions (request_id, role, time, model, version, probability, decision, "
    "features, flags, latencies_ms, request) VALUES ('old', 'champion', '{t}', 'm', 1, 0.7, 1, "
    "'{{}}', '[]', '{{}}', '{{}}')"
)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_log_written_before_tasks_gains_the_prediction_column(
    backend, tmp_path: Path, request
) -> None:
    """Opening a log of the first schema adds the ``prediction`` column; its rows still read."""
    if backend == "sqlite":
        import sqlite3

        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:
            conn.execute(OLD_SCHEMA.format(serial="", real="REAL"))
            conn.execute(OLD_ROW.format(t=T0.isoformat()))
        log = SqlitePredictionLog(path, "NORMAL")
    else:
        import psycopg

        url = request.getfixturevalue("pg_database")("migrate")
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(OLD_SCHEMA.format(serial="id BIGSERIAL,", real="DOUBLE PRECISION"))
            conn.execute(OLD_ROW.format(t=T0.isoformat()))
        log = PostgresPredictionLog(url)
    try:
        old = log.get("old")
        assert old.probability == 0.7 and old.decision == 1 and old.prediction is None
        value = {"value": 12.5, "interval": [3.0, 20.0]}
        log.write([record(1, probability=12.5, decision=0, prediction=value)])
        assert log.get("r1").prediction == value
        frame = log.window(T0 - timedelta(days=1), T0 + timedelta(days=1))
        assert frame.set_index("request_id")["prediction"].to_dict() == {"old": None, "r1": value}
    finally:
        log.close()
