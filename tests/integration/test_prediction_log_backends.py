"""The prediction log's contract, on both backends: SQLite (embedded) and PostgreSQL (the real
server of this machine, a database of the test's own). Both must give the same answers."""

from __future__ import annotations

import contextlib
import sqlite3
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
    log.record_error(T0 + timedelta(minutes=2), "failed", 3)  # another version's failure
    day = (T0, T0 + timedelta(days=1))
    assert log.errors(*day, version=2) == {"rejected": 0, "failed": 1}
    assert log.errors(*day, version=3) == {"rejected": 0, "failed": 1}
    assert log.errors(*day) == {"rejected": 1, "failed": 2}


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


# the predictions table as the first release created it (no prediction, no request_digest)
PREVIOUS_RELEASE = """CREATE TABLE predictions ({serial} request_id TEXT NOT NULL,
    role TEXT NOT NULL, time TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
    probability {real} NOT NULL, decision INTEGER NOT NULL, features TEXT NOT NULL,
    flags TEXT NOT NULL, latencies_ms TEXT NOT NULL, request TEXT NOT NULL,
    PRIMARY KEY (request_id, role))"""
OLD_ROW = ("r0", "champion", T0.isoformat(), "m", 2, 0.7, 1, "{}", "[]", "{}", '{"flight": 0}')
OLD_INSERT = (
    "INSERT INTO predictions (request_id, role, time, model, version, probability, decision, "
    "features, flags, latencies_ms, request) VALUES ({})"
)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_log_of_the_first_release_gains_the_new_columns_on_open(
    backend, tmp_path: Path, request
) -> None:
    """Opening a log of the first schema adds ``prediction`` (tasks) and ``request_digest``
    (idempotency); its rows still read, with both None."""
    if backend == "sqlite":
        path = tmp_path / "predictions.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(PREVIOUS_RELEASE.format(serial="", real="REAL"))
            conn.execute(OLD_INSERT.format(", ".join("?" * 11)), OLD_ROW)
            conn.commit()

        def make() -> object:
            return SqlitePredictionLog(path, "NORMAL")
    else:
        import psycopg

        url = request.getfixturevalue("pg_database")("migrate")
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(PREVIOUS_RELEASE.format(serial="id BIGSERIAL,", real="DOUBLE PRECISION"))
            conn.execute(OLD_INSERT.format(", ".join(["%s"] * 11)), OLD_ROW)

        def make() -> object:
            return PostgresPredictionLog(url)

    log, replica = make(), make()  # the second open finds the columns there
    try:
        old = log.get("r0")
        assert (old.probability, old.decision, old.request) == (0.7, 1, {"flight": 0})
        assert old.prediction is None and old.digest is None
        value = {"value": 12.5, "interval": [3.0, 20.0]}
        written = record(1, probability=12.5, decision=0, prediction=value, digest="d1")
        log.write([written])
        assert replica.answer("r1").digest == "d1" and replica.get("r1") == written
        frame = replica.window(T0 - timedelta(days=1), T0 + timedelta(days=1)).set_index(
            "request_id"
        )
        assert frame["prediction"].to_dict() == {"r0": None, "r1": value}
        assert frame["request_digest"].to_dict() == {"r0": None, "r1": "d1"}
    finally:
        log.close()
        replica.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_reused_request_id_is_refused_across_replicas(backend, tmp_path: Path, request) -> None:
    """Two replicas on one log: a retry (same payload) replays on either; the same id with
    another payload is refused on either and nothing more is logged."""
    from prodguard.serving.engine import RequestIdReused
    from prodguard.serving.models import ServingState
    from tests.unit.test_request_stages import model, predictor, row

    if backend == "sqlite":
        logs = [SqlitePredictionLog(tmp_path / "p.db", "NORMAL") for _ in range(2)]
    else:
        url = request.getfixturevalue("pg_database")("reuse")
        logs = [PostgresPredictionLog(url) for _ in range(2)]
    state = ServingState(champion=model(1))
    one, two = (predictor(log, state) for log in logs)
    try:
        first = one.predict([row("A")], ["same-id"])[0]
        assert two.predict([row("A")], ["same-id"])[0].probability == first.probability
        with pytest.raises(RequestIdReused) as refused:
            two.predict([row("A", size=9.0)], ["same-id"])
        assert refused.value.problems[0][0] == "request_id" and "9" not in str(refused.value)
        answers = one.predict_each([row("Zed"), row("A", size=9.0)], ["other-id", "same-id"])
        assert isinstance(answers[1], RequestIdReused) and not answers[0].replayed
        everything = (T0.replace(year=2000), T0.replace(year=2100))
        assert logs[0].count(*everything) == 2  # same-id once, other-id once
        assert logs[1].errors(*everything)["rejected"] == 2
    finally:
        for served in (one, two):
            served.close()
        for log in logs:
            log.close()
