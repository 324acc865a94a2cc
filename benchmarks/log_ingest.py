"""Prediction log ingest: rows/s through ``PredictionLog.write`` and bytes per prediction.

    .venv/bin/python benchmarks/log_ingest.py [--rows 2000] [--threads 1 8]
        [--backends sqlite postgres] [--storage-rows 50000] [--rounds 3]

Each write is one request's champion record (what ``/predict`` logs), committed before it
returns, from 1 and from 8 threads sharing one log object (one replica); the median of
``--rounds`` runs (fsyncs on a shared disk vary by 10x from one second to the next). SQLite
is the serving writer's setting (WAL, ``synchronous=FULL``: an fsync per commit); PostgreSQL is
the machine's server (127.0.0.1:5432) in a database of the benchmark's own, dropped afterwards.
Then it adds
``--storage-rows`` predictions over a week (writes of 1,000) and prints the storage per
prediction: table + indexes (PostgreSQL: partitions, their index and ``prediction_ids``), no
feedback. Figures only; nothing here asserts a time. Run it with ``PYTHONPATH`` on an older
tree (``git archive <rev> src``) for a baseline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
T0 = datetime(2013, 5, 1, tzinfo=UTC)


def record(i: int, prefix: str) -> Any:
    from prodguard.serving.prediction_log import PredictionRecord

    return PredictionRecord(
        request_id=f"{prefix}-{i:08d}-{uuid.uuid4().hex[:8]}",
        time=T0 + timedelta(seconds=i * 0.37),
        model="m",
        version=2,
        role="champion",
        probability=0.3125,
        decision=0,
        features={f"f{k}": 10.5 + k for k in range(12)} | {"carrier": "UA", "origin": "EWR"},
        flags=[],
        latencies_ms={"checks": 0.05, "features": 0.4, "model": 0.2, "total": 1.1},
        request={"id": i, "carrier": "UA", "origin": "EWR", "dest": "ORD", "hour": 9},
        digest="d" * 16,
    )


def week(i: int, rows: int) -> Any:
    """The ``i``-th of ``rows`` storage rows, in time order over a week (seven daily
    partitions)."""
    from dataclasses import replace

    return replace(record(i, "s"), request_id=f"s-{i:09d}", time=T0 + timedelta(days=7) * i / rows)


def reads(log: Any, backend: str, rows: int) -> None:
    """Milliseconds (best of 3) of the monitor's and the service's reads on the storage rows
    (PostgreSQL analysed first): one day of the week sampled 1 in 10, counted, the last 1,000
    answers, 500 answers by id."""
    day = (T0 + timedelta(days=3), T0 + timedelta(days=4))
    ids = [week(i, rows).request_id for i in range(0, rows, max(1, rows // 500))][:500]
    for name, call in (
        ("window 1 day, every 10", lambda: log.window(*day, role="champion", every=10)),
        ("count 1 day", lambda: log.count(*day, role="champion")),
        ("tail 1,000", lambda: log.tail(1000, day[1])),
        ("answers of 500 ids", lambda: log.answers(ids)),
    ):
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - began)
        print(f"{backend:8s} read {name}: {best * 1000:8.1f} ms ({rows:,} rows in the log)")


def ingest(log: Any, rows: int, threads: int, prefix: str) -> float:
    """Rows per second of ``rows`` one-record writes from ``threads`` threads."""
    per = rows // threads
    batches = [[record(t * per + i, prefix) for i in range(per)] for t in range(threads)]
    started = threading.Barrier(threads + 1)

    def run(mine: list) -> None:
        started.wait()
        for one in mine:
            log.write([one])

    workers = [threading.Thread(target=run, args=(b,)) for b in batches]
    for worker in workers:
        worker.start()
    started.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return per * threads / (time.perf_counter() - began)


def sqlite_bytes(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = (
            conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size")
        )
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * size


def pg_bytes(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "AND c.relkind = 'r' AND (c.relname LIKE 'prediction%')"
        ).fetchone()
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--storage-rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    args = parser.parse_args()
    from prodguard.serving.prediction_log import PostgresPredictionLog, SqlitePredictionLog

    for backend in args.backends:
        with tempfile.TemporaryDirectory() as folder:
            if backend == "sqlite":
                path = Path(folder) / "predictions.db"
                log: Any = SqlitePredictionLog(path, "FULL")
                url = name = ""
            else:
                import psycopg

                name = f"bench_log_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute(f'CREATE DATABASE "{name}"')
                url = f"postgresql://postgres@127.0.0.1:5432/{name}"
                log = PostgresPredictionLog(url)
            try:
                for threads in args.threads:
                    rates = sorted(
                        ingest(log, args.rows, threads, f"t{threads}r{k}")
                        for k in range(args.rounds)
                    )
                    print(
                        f"{backend:8s} {threads:2d} thread(s): {statistics.median(rates):8,.0f} "
                        f"rows/s (median of {args.rounds}; {rates[0]:,.0f}-{rates[-1]:,.0f})",
                        flush=True,
                    )
                if not args.storage_rows:
                    continue
                size = sqlite_bytes if backend == "sqlite" else pg_bytes
                where: Any = path if backend == "sqlite" else url
                empty, n = size(where), args.storage_rows
                for start in range(0, n, 1000):
                    log.write([week(i, n) for i in range(start, min(n, start + 1000))])
                per = (size(where) - empty) / n
                print(f"{backend:8s} storage: {per:,.0f} bytes per prediction ({n:,} rows)")
                if backend == "postgres":  # what autovacuum does within a minute
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("ANALYZE")
                reads(log, backend, n)
            finally:
                log.close()
                if name:
                    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
