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

    .venv/bin/python benchmarks/log_ingest.py --processes 1 8 16 --threads 8 [--seconds 10]
        [--rounds 1] [--ceiling 100000]

``--processes``: PostgreSQL only, several replicas at once: each count of writer processes,
each with ``--threads`` request threads sharing its log, writes one record per call for
``--seconds``. Per line: rows/s summed, rows per commit (``pg_stat_database.xact_commit``,
whose counters the server flushes about once a second: approximate), CPU per 1,000 rows of the
writer processes (with the benchmark's own record building, ~3 us a row) and of their server
backends (``/proc``), and how busy the whole machine was (``/proc/stat``: 100 % means the
figure is bounded by CPU, the benchmark's or another's). ``--ceiling`` then COPies that many
encoded rows in one transaction: the server's CPU per row without per-commit costs.
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


# ---- several writer processes (replicas) into one PostgreSQL ------------------------------------


def _replica(
    url: str, threads: int, seconds: float, name: str, go: Any, done: Any, out: Any
) -> None:
    """A replica: ``threads`` request threads sharing one log, one-record writes for
    ``seconds``; puts (rows, seconds, CPU seconds of this process)."""
    from prodguard.serving.prediction_log import PostgresPredictionLog

    log = PostgresPredictionLog(url)
    log.write([record(0, f"{name}-warm")])  # connected, partitions made
    template = record(0, name)
    counts = [0] * threads

    def serve(thread: int) -> None:
        from dataclasses import replace

        i, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            when = T0 + timedelta(microseconds=i)
            log.write([replace(template, request_id=f"{name}-{thread}-{i:09d}", time=when)])
            i += 1
        counts[thread] = i

    out.put(("ready", 0, 0.0, 0.0))
    go.wait()
    cpu, began = time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=serve, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(("done", sum(counts), time.perf_counter() - began, time.process_time() - cpu))
    done.wait()  # the server's CPU is read while the connections still exist
    log.close()


def _server_cpu(url: str) -> dict[int, float]:
    """CPU seconds of every server process connected to the benchmark's database."""
    import os

    import psycopg

    tick = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
    cpu = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _machine() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _commits(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()[0]
        )


def replicas(url: str, writers: int, threads: int, seconds: float) -> dict[str, float]:
    """``writers`` processes of ``threads`` threads each, writing at once for ``seconds``:
    rows/s, rows per commit, CPU per 1,000 rows of the writers and of their server backends,
    and how busy the machine was."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    go, done, out = context.Event(), context.Event(), context.Queue()
    run = f"p{writers}x{threads}-{time.time_ns()}"
    processes = [
        context.Process(target=_replica, args=(url, threads, seconds, f"{run}-{w}", go, done, out))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        out.get(timeout=300)
    server, commits, machine = _server_cpu(url), _commits(url), _machine()
    go.set()
    results = [out.get(timeout=seconds + 300) for _ in processes]
    busy = [b - a for a, b in zip(machine, _machine(), strict=True)]
    after, commits = _server_cpu(url), _commits(url) - commits - 2  # the two reads' own
    done.set()
    for process in processes:
        process.join()
    rows = sum(r[1] for r in results)
    return {
        "rows_per_s": rows / max(r[2] for r in results),
        "rows_per_commit": rows / max(commits, 1),
        "writer_cpu_ms": 1e6 * sum(r[3] for r in results) / rows,
        "server_cpu_ms": 1e6 * sum(after[p] - server.get(p, after[p]) for p in after) / rows,
        "machine_busy": busy[0] / busy[1],
    }


def ceiling(url: str, rows: int) -> dict[str, float]:
    """The server's side alone: ``rows`` records encoded ahead, then COPied in one
    transaction as a group commit writes them (ids from the sequence, ``prediction_ids``, then
    ``predictions``): the server's rows/s and CPU per 1,000 rows, the bound of any client here."""
    import json
    import os

    import psycopg

    from prodguard.serving.prediction_log import COLUMNS, PostgresPredictionLog

    PostgresPredictionLog(url).close()  # the tables
    name, dumps = f"bulk{time.time_ns()}", json.JSONEncoder(sort_keys=True).encode
    encoded = [
        (r.request_id, r.role, r.time.isoformat(), r.model, r.version, r.probability,
         r.decision, dumps(r.features), dumps(r.flags), dumps(r.latencies_ms), dumps(r.request),
         None, r.digest)
        for r in (record(i, name) for i in range(rows))
    ]  # fmt: skip
    tick = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(url, autocommit=True) as conn:
        stat = Path(f"/proc/{conn.info.backend_pid}/stat")

        def cpu() -> float:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        before, began = cpu(), time.perf_counter()
        with conn.transaction():
            ids = [
                key
                for (key,) in conn.execute(
                    "SELECT nextval('predictions_id_seq') FROM generate_series(1, %s)", (rows,)
                )
            ]
            cursor = conn.cursor()
            with cursor.copy("COPY prediction_ids (request_id, role, time, id) FROM STDIN") as c:
                for key, row in zip(ids, encoded, strict=True):
                    c.write_row((row[0], row[1], row[2], key))
            with cursor.copy(f"COPY predictions (id, {', '.join(COLUMNS)}) FROM STDIN") as c:
                for key, row in zip(ids, encoded, strict=True):
                    c.write_row((key, *row))
        elapsed, used = time.perf_counter() - began, cpu() - before
    return {"rows_per_s": rows / elapsed, "server_cpu_ms": 1e6 * used / rows}


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
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        help="PostgreSQL only: writer processes (replicas) of --threads threads each, "
        "writing for --seconds, instead of threads sharing one log",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--ceiling", type=int, default=0, help="then ROWS in one bulk COPY: the server's bound"
    )
    args = parser.parse_args()
    if args.processes:
        many(args)
        return
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


def many(args: argparse.Namespace) -> None:
    """--processes: each count of writer processes x each --threads, --rounds times."""
    import os

    import psycopg

    name = f"bench_log_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        for processes in args.processes:
            for threads in args.threads:
                for _ in range(args.rounds):
                    r = replicas(url, processes, threads, args.seconds)
                    print(
                        f"postgres {processes:2d}x{threads:<2d} {r['rows_per_s']:8,.0f} rows/s, "
                        f"{r['rows_per_commit']:6.1f} rows/commit, CPU per 1,000 rows: writers "
                        f"{r['writer_cpu_ms']:6.0f} ms, server {r['server_cpu_ms']:5.0f} ms; "
                        f"machine {r['machine_busy']:4.0%} busy, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        if args.ceiling:
            r = ceiling(url, args.ceiling)
            print(
                f"postgres bulk COPY of {args.ceiling:,} rows: {r['rows_per_s']:8,.0f} rows/s, "
                f"server CPU {r['server_cpu_ms']:.0f} ms per 1,000 rows "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
