"""Group commit on both backends (SQLite, and the machine's real PostgreSQL in a database of the
test's own): concurrent writers share commits and still get exactly-once (a duplicate refuses
only its own write), nothing acknowledged is missing, and a commit that fails fails exactly the
writes in it — none of their rows is stored, every other write is, once."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from prodguard.errors import DuplicateRequest, StorageError
from tests.integration.test_prediction_log_backends import T0, open_log, record  # noqa: F401

pytestmark = pytest.mark.integration
EVERYTHING = (T0 - timedelta(days=1), T0 + timedelta(days=400))


def hammer(log, writers: int, writes: int, ids) -> dict[str, list]:
    """``writers`` threads, each ``writes`` one-request writes of ``ids(writer, i)``; what each
    write ended with, per outcome."""
    outcomes: dict[str, list] = {"ok": [], "duplicate": [], "failed": []}
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def run(writer: int) -> None:
        start.wait()
        for i in range(writes):
            request_ids = ids(writer, i)
            records = [record(0, request_id=r, time=T0 + timedelta(hours=i)) for r in request_ids]
            try:
                log.write(records)
                outcome = "ok"
            except DuplicateRequest:
                outcome = "duplicate"
            except StorageError:
                outcome = "failed"
            with lock:
                outcomes[outcome].append(request_ids)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def stored(log) -> Counter:
    return Counter(log.window(*EVERYTHING)["request_id"])


def test_concurrent_writers_with_duplicates_log_each_id_exactly_once(open_log) -> None:  # noqa: F811
    """8 writers; every 5th write of each repeats an id another writer also writes (one of
    them wins), some writes carry two ids of which one is taken: refused whole."""
    log = open_log()

    def ids(writer: int, i: int) -> list[str]:
        if i % 5 == 0:
            return [f"shared-{i}"]  # all 8 writers race for it
        if i % 7 == 0:
            return [f"w{writer}-{i}", f"shared-{i - 2}"] if i > 2 else [f"w{writer}-{i}"]
        return [f"w{writer}-{i}"]

    outcomes = hammer(log, writers=8, writes=40, ids=ids)
    counts = stored(log)
    assert outcomes["failed"] == [] and set(counts.values()) == {1}  # exactly once
    acknowledged = {r for request_ids in outcomes["ok"] for r in request_ids}
    assert acknowledged == set(counts)  # nothing acknowledged missing, nothing refused stored
    assert all(f"shared-{i}" in counts for i in range(0, 40, 5))
    assert len(outcomes["duplicate"]) >= 8 * 7  # 7 of the 8 racers lose each shared id
    refused = {r for request_ids in outcomes["duplicate"] for r in request_ids}
    assert not {r for r in refused if r.startswith("w")} & set(counts)  # all or nothing


def test_writes_queued_behind_a_commit_are_led_by_one_of_them(open_log, monkeypatch) -> None:  # noqa: F811
    """A commit is under way (held at its start) while 5 more writers queue: when it ends, only
    its own writer returns, and one of the 5 leads the next commit with all 5 — nobody waits
    for a commit that never comes, every write is stored once."""
    log = open_log()
    commit, sizes = log._commit, []
    entered, release = threading.Event(), threading.Event()

    def held(batch) -> None:
        sizes.append(len(batch))
        if len(sizes) == 1:
            entered.set()
            release.wait(timeout=60)
        commit(batch)

    monkeypatch.setattr(log, "_commit", held)
    first = threading.Thread(target=log.write, args=([record(0, request_id="first")],))
    first.start()
    assert entered.wait(timeout=60)
    queued = [
        threading.Thread(target=log.write, args=([record(i, request_id=f"q{i}")],))
        for i in range(5)
    ]
    for thread in queued:
        thread.start()
    for _ in range(6000):  # until all 5 are queued behind the held commit
        with log._turn:
            if len(log._queue) == 5:
                break
        threading.Event().wait(0.01)
    release.set()
    for thread in [first, *queued]:
        thread.join(timeout=60)
    assert sizes == [1, 5]
    assert stored(log) == Counter({"first": 1, **{f"q{i}": 1 for i in range(5)}})


@pytest.mark.postgres
def test_a_failed_commit_fails_exactly_its_writes(pg_database) -> None:
    """A write the server refuses (a trigger raising for one request id, as a full disk or a
    broken connection would fail a commit) fails the commit it shares: every write of that
    batch gets a StorageError and none of its rows is stored; the other batches commit."""
    import psycopg

    from prodguard.serving.prediction_log import PostgresPredictionLog

    url = pg_database("fail")
    log = PostgresPredictionLog(url)
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.request_id LIKE 'poison%' THEN RAISE EXCEPTION 'refused'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON prediction_ids FOR EACH ROW "
            "EXECUTE FUNCTION refuse()"
        )
    try:

        def ids(writer: int, i: int) -> list[str]:
            return [f"poison-{i}" if (writer, i % 10) == (0, 5) else f"w{writer}-{i}"]

        outcomes = hammer(log, writers=8, writes=30, ids=ids)
        counts = stored(log)
        failed = {r for request_ids in outcomes["failed"] for r in request_ids}
        acknowledged = {r for request_ids in outcomes["ok"] for r in request_ids}
        assert {"poison-5", "poison-15", "poison-25"} <= failed
        assert not failed & set(counts) and acknowledged == set(counts)
        assert set(counts.values()) == {1} and outcomes["duplicate"] == []
        assert len(failed) + len(acknowledged) == 8 * 30
        print(f"\n[failed batches] 3 poisoned writes failed {len(failed)} writes in all")
    finally:
        log.close()
