"""Monitoring at scale (issue 21): ingest, storage, monitor pass, guard check and peak memory at
1M and 10M predictions per 7-day window (prints figures and a table; asserts nothing).

The rows are the flights project's real logged rows: April 1-14 2013 replayed once through the
real request path (v2 champion answering, v1 standby scoring every request in shadow; outcomes
fed back as they became known), then replicated with new request ids and times spread evenly
over a simulated span of 8 days ending at the simulated "now" (the 7-day window, and the day
before it that the matured KPI window also reads). Each answered prediction gets the standby's
shadow row with probability ``serving.shadow_sample`` (0.1 in the example project) and its
outcome 12 h after it was answered (older than that: fed back; younger: still waiting).

- **ingest**: several writer processes (replicas) each call ``PredictionLog.write`` with one
  prediction per call (as ``/predict`` does), for ``--ingest-seconds``, on the loaded table;
  rows/s summed over the writers.
- **bulk load**: loading 10M rows one call at a time would take hours here, so the bulk of each
  scale is loaded with ``COPY`` of replicated rows straight into prodguard's tables (the
  schema the log created); the output says so. The ingest slice is deleted again after.
- **storage**: ``pg_total_relation_size`` of predictions + feedback per answered prediction.
- **monitor pass**: ``run_monitor(build_monitor(...))`` as ``prodguard monitor`` runs it (the
  latest 7-day window and the matured one), in a child process, with its peak RSS
  (``ru_maxrss``) and the RSS it had before the pass.
- **guard check**: ``build_guard(...).check()`` as ``prodguard guard`` builds it, with v2
  promoted over v1 one simulated day before "now" (so its paired tests read a day of traffic),
  in a child process, with its peak RSS.
- **--aggregates [SECONDS]**: the window aggregates are then rebuilt from the raw log (what the
  replicas would have written live) and the monitor pass and guard check run again reading
  them; **--multiply K** then merges every summary with itself K times — the aggregates of K
  times the traffic (700 on 1M rows a week: 100M predictions a day) — and runs them again (the
  raw log keeps its rows: the partial buckets at a window's ends are read at the measured
  scale's traffic, and at most ``monitoring.aggregates.edge_rows`` of them at any traffic).
- **100M/day from rows**: a 7-day window of ~700M rows (~0.9 TB) does not fit this disk; that
  line is extrapolated linearly from the two measured scales and marked so.

Run: .venv/bin/python benchmarks/monitoring_scale.py [--rows 1000000,10000000]
[--writers 1,4,8] [--backend postgres|sqlite] [--json PATH] [--work DIR] [--keep]
[--aggregates [SECONDS] [--multiply K]]
The first run ingests Jan-May 2013, trains v1/v2 and replays the seed (several minutes); the
work folder is reused by later runs. PostgreSQL: database ``prodguard_scale`` on
``--postgres`` (dropped at the end unless ``--keep``). SQLite: a file in the work folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from replay_project import example_settings

SEED = ("2013-04-01", "2013-04-15")  # the replayed traffic every row is copied from
CHAMPION, STANDBY = 2, 1  # v2 (trained Jan-Mar) answers, v1 (Jan-Feb) is its standby
NOW = datetime(2026, 11, 30, tzinfo=UTC)  # the simulated "now" the monitor and guard run at
SPAN_DAYS = 8  # the 7-day window and the day before it (the matured KPI window reaches back 1 d)
OUTCOME_HOURS = 12  # feedback arrives this long after the answer
GUARD_LIVE_HOURS = 24  # the champion was promoted this long before "now"
DATABASE = "prodguard_scale"
PER_DAY_100M = 100_000_000


# ---- the project and the seed rows -------------------------------------------------------------


def prepare(work: Path) -> tuple[Any, Path]:
    """(settings, seed log): the project copied into ``work``, Jan-May 2013 ingested, v1
    (Jan-Feb) and v2 (Jan-Mar) trained, v2 baselined on the seed period, and the seed period
    replayed once with v2 answering and v1 in shadow (all reused by later runs)."""
    from prodguard import app, wiring
    from prodguard.monitoring.jobs import baseline_from_log, replay_version, version_reference
    from prodguard.registry import lineage
    from prodguard.rollout.policy import TrafficPolicy
    from prodguard.serving.prediction_log import SqlitePredictionLog
    from prodguard.timewindows import parse_time as t

    settings = example_settings(work)
    registry = wiring.registry_operations(settings).registry
    began = time.perf_counter()
    if len(registry.versions()) < 2:
        app.ingest(settings, t("2013-01-01"), t("2013-06-01"))
        app.materialize(settings, until=t("2013-06-01"))
        app.train(settings, t("2013-01-01"), t("2013-03-01"), actor="bench")
        app.train(settings, t("2013-01-01"), t("2013-04-01"), actor="bench")
    seed = work / "seed.db"
    start, end = t(SEED[0]), t(SEED[1])
    if not seed.exists():
        partial = work / "seed.partial.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{partial}{suffix}").unlink(missing_ok=True)
        log = SqlitePredictionLog(partial, "NORMAL")
        shadow = TrafficPolicy("shadow", STANDBY)
        result = replay_version(settings, registry, CHAMPION, start, end, log, rollout=shadow)
        log.close()
        partial.rename(seed)
        print(f"seed replayed: {result.predicted} predictions in {result.seconds:.0f} s")
    if lineage.BASELINE not in registry.version(CHAMPION).tags:
        log = SqlitePredictionLog(seed, "NORMAL")
        reference = version_reference(registry, CHAMPION)
        baseline = baseline_from_log(settings, log, CHAMPION, start, end, reference)
        log.close()
        registry.log_json_artifact(CHAMPION, lineage.BASELINE_JSON, baseline.to_json())
        registry.set_version_tag(CHAMPION, lineage.BASELINE, f"{SEED[0]}/{SEED[1]}")
    print(
        f"set-up (ingest, train v1/v2, seed replay, baseline): {time.perf_counter() - began:.0f} s"
    )
    return settings, seed


@dataclass(frozen=True)
class SeedRow:
    """One seed request: its answer and standby shadow row (columns after request_id, role and
    time, as the log stores them) and its outcome as fed back (None: none known)."""

    request_id: str
    answer: tuple[Any, ...]
    shadow: tuple[Any, ...] | None
    outcome: str | None


def seed_rows(seed: Path) -> list[SeedRow]:
    """The seed log's answered requests in time order, with their shadow rows and outcomes."""
    from prodguard.serving.prediction_log import COLUMNS

    rest = ", ".join(COLUMNS[3:])
    conn = sqlite3.connect(seed)
    try:
        shadows = {
            row[0]: row[1:]
            for row in conn.execute(
                f"SELECT request_id, {rest} FROM predictions WHERE role = 'shadow'"
            )
        }
        outcomes = dict(conn.execute("SELECT request_id, outcome FROM feedback"))
        answers = conn.execute(
            f"SELECT request_id, {rest} FROM predictions WHERE role = 'champion' ORDER BY time"
        ).fetchall()
    finally:
        conn.close()
    return [SeedRow(r[0], r[1:], shadows.get(r[0]), outcomes.get(r[0])) for r in answers]


# ---- the replicated rows -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """``rows`` answered predictions per 7-day window, over ``SPAN_DAYS`` ending at ``NOW``."""

    rows: int
    shadow_share: float

    @property
    def total(self) -> int:  # answered predictions in the whole span
        return self.rows * SPAN_DAYS // 7

    @property
    def start(self) -> datetime:
        return NOW - timedelta(days=SPAN_DAYS)

    def shadowed(self, k: int) -> bool:
        """A deterministic ``shadow_share`` of the requests (a multiplicative hash of ``k``)."""
        return (k * 2654435761) % 2**32 < self.shadow_share * 2**32


def replicated(
    scale: Scale, seeds: list[SeedRow]
) -> Iterator[tuple[str, str, str, SeedRow, bool, str | None]]:
    """(request id, time, role, seed, shadow?, feedback time) of every row of the span, in time
    order: the k-th answer copies seed ``k mod len(seeds)`` at ``start + k * span / total``;
    its shadow row follows it; feedback time None for shadow rows and unmatured answers."""
    step = timedelta(days=SPAN_DAYS) / scale.total
    outcome_after = timedelta(hours=OUTCOME_HOURS)
    for k in range(scale.total):
        seed = seeds[k % len(seeds)]
        when = scale.start + k * step
        rid = f"r{k:010d}-{seed.request_id}"
        matured = when + outcome_after
        feedback = matured.isoformat() if matured < NOW and seed.outcome is not None else None
        yield rid, when.isoformat(), "champion", seed, False, feedback
        if seed.shadow is not None and scale.shadowed(k):
            yield rid, when.isoformat(), "shadow", seed, True, None


def replace_record(seed: SeedRow, request_id: str, when: datetime) -> Any:
    """The seed's answer as the ``PredictionRecord`` a replica hands the log, with a new id
    and time."""
    from prodguard.serving.prediction_log import PredictionRecord

    model, version, probability, decision, features, flags, latencies, request, *rest = seed.answer
    prediction, digest = rest
    return PredictionRecord(
        request_id=request_id,
        time=when,
        model=model,
        version=int(version),
        role="champion",
        probability=float(probability),
        decision=int(decision),
        features=json.loads(features),
        flags=json.loads(flags),
        latencies_ms=json.loads(latencies),
        request=json.loads(request),
        prediction=json.loads(prediction) if prediction else None,
        digest=digest,
    )


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        text = text.replace("\r", "\\r")
    return text


# ---- backends: bulk load (COPY / one transaction), the write path's log, storage ---------------


class Backend:
    """Where the log lives. ``bulk_load`` writes replicated rows into prodguard's tables
    directly (not the write path); ``open_log`` is prodguard's own ``PredictionLog``."""

    name = ""
    loads_with = ""  # how ``bulk_load`` writes, for the output

    def target(self) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        """An empty log (prodguard creates its tables)."""
        raise NotImplementedError

    def bulk_load(self, scale: Scale, seeds: list[SeedRow]) -> None:
        raise NotImplementedError

    def storage_bytes(self) -> int:
        raise NotImplementedError

    def scalar(self, query: str) -> int:
        raise NotImplementedError

    def delete_after(self, when: datetime) -> None:
        """Drop rows logged at or after ``when`` (the ingest slice)."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


def _value(conn: Any, query: str, params: tuple[Any, ...] | None = None) -> Any:
    """The first column of the first row ``query`` returns."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def open_log(backend: str, target: str, serving: bool = False) -> Any:
    """prodguard's log on ``target`` as monitors and the guard open it, or (``serving``) as a
    replica does (SQLite: ``synchronous=FULL``, checkpoints off the request path)."""
    from prodguard.serving.prediction_log import (
        SERVING_CHECKPOINT_S,
        PostgresPredictionLog,
        SqlitePredictionLog,
    )

    if backend == "postgres":
        return PostgresPredictionLog(target)
    if serving:
        return SqlitePredictionLog(Path(target), "FULL", checkpoint_every_s=SERVING_CHECKPOINT_S)
    return SqlitePredictionLog(Path(target), "NORMAL")


class PostgresBackend(Backend):
    name = "postgres"
    loads_with = "COPY"

    def __init__(self, server: str, database: str) -> None:
        self.server, self.database = server.rstrip("/"), database

    def target(self) -> str:
        return f"{self.server}/{self.database}"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(f"{self.server}/postgres", autocommit=True)

    def reset(self) -> None:
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {self.database}")
        open_log(self.name, self.target()).close()

    def bulk_load(self, scale: Scale, seeds: list[SeedRow]) -> None:
        """COPY into the tables the log created: each simulated day gets a first row through
        ``PredictionLog.write`` (whatever the log makes per day, e.g. a partition, exists),
        removed again; the row ids are taken from the log's sequence, and a table of request
        ids (``prediction_ids``) is filled too when the log keeps one."""
        import psycopg

        from prodguard.serving.prediction_log import COLUMNS

        probes = [
            replace_record(seeds[0], f"bulk-probe-{day}", scale.start + timedelta(days=day))
            for day in range(SPAN_DAYS + 1)
        ]
        log = open_log(self.name, self.target())
        log.write(probes)
        log.close()
        answers = ["\t".join(_copy_text(v) for v in s.answer) for s in seeds]
        shadows = [
            None if s.shadow is None else "\t".join(_copy_text(v) for v in s.shadow) for s in seeds
        ]
        outcomes = [None if s.outcome is None else _copy_text(s.outcome) for s in seeds]
        index = {id(s): i for i, s in enumerate(seeds)}
        with psycopg.connect(self.target(), autocommit=True) as conn:
            ids_table = _value(conn, "SELECT to_regclass('prediction_ids')")
            sequence = (
                _value(conn, "SELECT pg_get_serial_sequence('predictions', 'id')")
                or "predictions_id_seq"
            )
            conn.execute("DELETE FROM predictions WHERE request_id LIKE 'bulk-probe-%'")
            if ids_table:
                conn.execute("DELETE FROM prediction_ids WHERE request_id LIKE 'bulk-probe-%'")
            rows = scale.total + sum(1 for k in range(scale.total) if scale.shadowed(k))
            query = "SELECT setval(%s, nextval(%s) + %s)"
            first = _value(conn, query, (sequence, sequence, rows)) - rows
        statements = {
            "predictions": f"COPY predictions ({', '.join(('id', *COLUMNS))}) FROM STDIN",
            "feedback": "COPY feedback (request_id, time, outcome) FROM STDIN",
        }
        if ids_table:
            statements["prediction_ids"] = (
                "COPY prediction_ids (request_id, role, time, id) FROM STDIN"
            )
        # one streaming COPY per table side by side, each committed when its connection closes
        with contextlib.ExitStack() as connections, contextlib.ExitStack() as copying:
            copies = {
                table: copying.enter_context(
                    connections.enter_context(psycopg.connect(self.target())).cursor().copy(query)
                )
                for table, query in statements.items()
            }
            lines: dict[str, list[str]] = {t: [] for t in statements}
            for n, (rid, when, role, seed, shadow, fed) in enumerate(replicated(scale, seeds)):
                i = index[id(seed)]
                rest = shadows[i] if shadow else answers[i]
                lines["predictions"].append(f"{first + n}\t{rid}\t{role}\t{when}\t{rest}\n")
                if ids_table:
                    lines["prediction_ids"].append(f"{rid}\t{role}\t{when}\t{first + n}\n")
                if fed is not None:
                    lines["feedback"].append(f"{rid}\t{fed}\t{outcomes[i]}\n")
                if n % 20_000 == 0:
                    for table, found in lines.items():
                        copies[table].write("".join(found))
                        found.clear()
            for table, found in lines.items():
                copies[table].write("".join(found))
        with psycopg.connect(self.target(), autocommit=True) as conn:
            for table in statements:
                conn.execute(f"VACUUM ANALYZE {table}")

    def storage_bytes(self) -> int:
        """Predictions (every partition, indexes, TOAST), feedback and any id table."""
        return self.scalar(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM "
            "pg_partition_tree('predictions')), pg_total_relation_size('predictions')) + "
            "pg_total_relation_size('feedback') + "
            "coalesce(pg_total_relation_size(to_regclass('prediction_ids')), 0)"
        )

    def scalar(self, query: str) -> int:
        import psycopg

        with psycopg.connect(self.target()) as conn:
            return int(_value(conn, query))

    def delete_after(self, when: datetime) -> None:
        import psycopg

        with psycopg.connect(self.target()) as conn:
            conn.execute("DELETE FROM predictions WHERE time >= %s", (when.isoformat(),))

    def drop(self) -> None:
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


class SqliteBackend(Backend):
    name = "sqlite"
    loads_with = "INSERTs in one transaction"

    def __init__(self, path: Path) -> None:
        self.path = path

    def target(self) -> str:
        return str(self.path)

    def reset(self) -> None:
        self.drop()
        open_log(self.name, self.target()).close()

    def bulk_load(self, scale: Scale, seeds: list[SeedRow]) -> None:
        from prodguard.serving.prediction_log import COLUMNS

        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN")
            insert = (
                f"INSERT INTO predictions ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})"
            )
            rows: list[tuple[Any, ...]] = []
            feedback: list[tuple[str, str, str]] = []
            for rid, when, role, seed, shadow, fed in replicated(scale, seeds):
                rest = seed.shadow if shadow else seed.answer
                rows.append((rid, role, when, *rest))  # type: ignore[misc]
                if fed is not None and seed.outcome is not None:
                    feedback.append((rid, fed, seed.outcome))
                if len(rows) >= 20_000:
                    conn.executemany(insert, rows)
                    rows = []
            conn.executemany(insert, rows)
            conn.executemany(
                "INSERT INTO feedback (request_id, time, outcome) VALUES (?, ?, ?)", feedback
            )
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def storage_bytes(self) -> int:
        return sum(
            Path(f"{self.path}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{self.path}{suffix}").exists()
        )

    def scalar(self, query: str) -> int:
        conn = sqlite3.connect(self.path)
        try:
            return int(conn.execute(query).fetchone()[0])
        finally:
            conn.close()

    def delete_after(self, when: datetime) -> None:
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("DELETE FROM predictions WHERE time >= ?", (when.isoformat(),))
            conn.commit()
        finally:
            conn.close()

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


# ---- the reads: monitor pass and guard check, each in a process of its own ----------------------


def peak_rss_mb() -> float:
    """This process's peak resident set so far: ``VmHWM`` of ``/proc/self/status`` on Linux
    (``ru_maxrss`` carries the forking parent's peak over ``exec`` there: a child started from
    a big parent would report the parent's), else ``ru_maxrss`` (KiB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(
    project: str, backend: str = "", target: str = "", aggregates: int | None = None
) -> Any:
    """The project's settings as a deployment on ``target`` has them: PostgreSQL as
    ``storage.url`` (SQLite: the project's own log file), window aggregates off (None) or on
    with buckets of ``aggregates`` seconds (0: the project's setting)."""
    from prodguard.config import load_settings
    from prodguard.telemetry import disable_telemetry

    disable_telemetry()
    environ = {"PRODGUARD_STORAGE__URL": target} if backend == "postgres" else {}
    if aggregates is not None:
        environ["PRODGUARD_MONITORING__AGGREGATES__ENABLED"] = "true"
        if aggregates:
            environ["PRODGUARD_MONITORING__AGGREGATES__BUCKET_SECONDS"] = str(aggregates)
    return load_settings(Path(project), environ=environ)


def monitor_pass(project: str, backend: str, target: str, aggregates: int | None) -> dict[str, Any]:
    """One ``prodguard monitor`` pass (the latest 7-day window and the matured one) at ``NOW``:
    ``run_monitor(build_monitor(settings))`` with no alert gate."""
    from prodguard.clock import FixedClock
    from prodguard.monitoring.jobs import build_monitor, run_monitor

    settings = _settings(project, backend, target, aggregates)
    monitor = build_monitor(settings, FixedClock(NOW))
    before = peak_rss_mb()
    run = run_monitor(monitor, None)
    return {
        "seconds": run.seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": before,
        "reports": [
            {
                "version": r.model_version,
                "rows": r.rows,
                "status": r.status,
                "sampled_every": r.sampled_every,
            }
            for r in run.reports
        ],
    }


def guard_check(project: str, backend: str, target: str, aggregates: int | None) -> dict[str, Any]:
    """One ``prodguard guard`` check at ``NOW``: ``build_guard(settings).check()`` (v2 champion
    for ``GUARD_LIVE_HOURS``, v1 standby scoring in shadow)."""
    from prodguard.clock import FixedClock
    from prodguard.rollout.jobs import build_guard

    settings = _settings(project, backend, target, aggregates)
    guard = build_guard(settings, FixedClock(NOW))
    before = peak_rss_mb()
    began = time.perf_counter()
    decisions = guard.check()
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": before,
        "decisions": [
            {
                "action": d.action,
                "version": d.version,
                "rows": d.rows,
                "paired": d.paired,
                "triggers": {t.name: t.status for t in d.triggers},
            }
            for d in decisions
        ],
    }


def rebuild_aggregates(project: str, backend: str, target: str, bucket: int) -> dict[str, Any]:
    """``prodguard aggregates rebuild`` over the simulated span: the window aggregates summarised
    from the raw log (what the replicas would have written live)."""
    from prodguard import app

    settings = _settings(project, backend, target, bucket)
    began = time.perf_counter()
    rebuilt = app.rebuild_aggregates(  # type: ignore[attr-defined]  # issue 21's aggregates
        settings, NOW - timedelta(days=SPAN_DAYS), NOW
    )
    return {
        "seconds": time.perf_counter() - began,
        "peak_rss_mb": peak_rss_mb(),
        "summaries": rebuilt.summaries,
        "rows": rebuilt.rows,
    }


def multiply_aggregates(
    project: str, backend: str, target: str, bucket: int, times: int
) -> dict[str, Any]:
    """The rebuilt aggregates of the span, each summary merged with itself ``times`` times:
    the summaries a window of ``times`` x the traffic would have (every count, sum and sketch
    bin ``times`` as large), written back in their place."""
    from prodguard import wiring
    from prodguard.monitoring.aggregates import merge_all

    settings = _settings(project, backend, target, bucket)
    store = wiring.aggregate_store(settings)
    assert store is not None
    began = time.perf_counter()
    start, end = NOW - timedelta(days=SPAN_DAYS), NOW
    try:
        found = store.read(start, end)
        store.replace(start, end, {k: merge_all([s] * times) for k, s in found.items()})
    finally:
        store.close()
    return {"seconds": time.perf_counter() - began, "summaries": len(found)}


def in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``function(*args)`` in a fresh process (its peak RSS is its own)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def ensure_aliases(project: str) -> None:
    """v2 champion since ``NOW - GUARD_LIVE_HOURS`` with v1 standby (audited at those simulated
    times); a rollback by an earlier guard check is undone the same way."""
    from prodguard import wiring
    from prodguard.clock import FixedClock

    operations = wiring.registry_operations(_settings(project))
    state = operations.state()
    if state.champion == CHAMPION and state.standby == STANDBY:
        return
    why = "scale benchmark set-up"
    if state.champion != STANDBY:
        operations.clock = FixedClock(NOW - timedelta(hours=GUARD_LIVE_HOURS + 24))
        operations.promote(
            "bench", why, version=STANDBY, override_retention=why, override_demoted=why
        )
    operations.clock = FixedClock(NOW - timedelta(hours=GUARD_LIVE_HOURS))
    operations.promote("bench", why, version=CHAMPION, override_retention=why, override_demoted=why)


# ---- the write path: writer processes (replicas) ------------------------------------------------


def _writer(
    backend: str,
    target: str,
    seed: str,
    writer: int,
    threads: int,
    per_call: int,
    seconds: float,
    run: str,
    go: Any,
    ready: Any,
    results: Any,
) -> None:
    """A replica: ``threads`` request threads sharing one log, each writing ``per_call``
    predictions per ``PredictionLog.write`` (new ids, times from ``NOW`` on) for ``seconds``."""
    import threading

    from prodguard.telemetry import disable_telemetry

    disable_telemetry()
    seeds = seed_rows(Path(seed))
    log = open_log(backend, target, serving=True)
    counts = [0] * threads

    def serve(thread: int) -> None:
        i, n = 0, len(seeds)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            batch = [
                replace_record(
                    seeds[(i + j) % n],
                    f"ingest-{run}-w{writer}-t{thread}-{i + j:09d}",
                    NOW + timedelta(microseconds=i + j),
                )
                for j in range(per_call)
            ]
            log.write(batch)
            i += per_call
        counts[thread] = i

    ready.put(writer)
    go.wait()
    began = time.perf_counter()
    workers = [threading.Thread(target=serve, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((sum(counts), time.perf_counter() - began))
    log.close()


def ingest(
    backend: str,
    target: str,
    seed: Path,
    writers: int,
    threads: int,
    per_call: int,
    seconds: float,
) -> dict[str, Any]:
    """Rows/s of ``writers`` replica processes writing at once through ``PredictionLog.write``."""
    context = multiprocessing.get_context("spawn")
    run = f"{writers}x{threads}x{per_call}-{time.time_ns()}"  # ids of their own in every run
    go, ready, results = context.Event(), context.Queue(), context.Queue()
    processes = [
        context.Process(
            target=_writer,
            args=(
                backend,
                target,
                str(seed),
                w,
                threads,
                per_call,
                seconds,
                run,
                go,
                ready,
                results,
            ),
        )
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=300)
    go.set()
    done = [results.get(timeout=seconds + 300) for _ in processes]
    for process in processes:
        process.join()
    rows = sum(n for n, _ in done)
    elapsed = max(s for _, s in done)
    return {
        "writers": writers,
        "threads": threads,
        "per_call": per_call,
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
    }


# ---- one scale, the table, the extrapolation ---------------------------------------------------


@dataclass
class ScaleResult:
    rows: int  # answered predictions per 7-day window
    rows_stored: int = 0  # predictions + shadow rows in the span
    feedback_rows: int = 0
    load_seconds: float = 0.0
    storage_bytes: int = 0
    monitor: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    rebuild: dict[str, Any] = field(default_factory=dict)  # --aggregates: their rebuild
    monitor_aggregates: dict[str, Any] = field(default_factory=dict)  # ...and reads from them
    guard_aggregates: dict[str, Any] = field(default_factory=dict)
    multiplied: int = 0  # --multiply: the aggregates of that many times the traffic...
    monitor_multiplied: dict[str, Any] = field(default_factory=dict)  # ...and reads from them
    guard_multiplied: dict[str, Any] = field(default_factory=dict)
    ingest: list[dict[str, Any]] = field(default_factory=list)
    extrapolated: bool = False
    load: dict[str, float] = field(default_factory=dict)  # 1-min load average at each step

    @property
    def bytes_per_prediction(self) -> float:
        return self.storage_bytes / max(1, self.rows * SPAN_DAYS // 7)


def run_scale(
    args: argparse.Namespace,
    backend: Backend,
    project: str,
    seed: Path,
    seeds: list[SeedRow],
    rows: int,
    shadow_share: float,
) -> ScaleResult:
    scale = Scale(rows, shadow_share)
    result = ScaleResult(rows)
    print(f"\n== {rows:,} answered predictions per 7-day window ({backend.name}) ==")
    backend.reset()
    began = time.perf_counter()
    backend.bulk_load(scale, seeds)
    result.load_seconds = time.perf_counter() - began
    result.rows_stored, result.feedback_rows = counts(backend)
    result.storage_bytes = backend.storage_bytes()
    print(
        f"bulk load ({backend.loads_with} of replicated rows straight into the log's tables, "
        f"NOT the write path): {result.rows_stored:,} rows + {result.feedback_rows:,} feedback "
        f"over {SPAN_DAYS} simulated days in {result.load_seconds:.0f} s"
    )
    print(
        f"storage: {result.storage_bytes / 1e9:.2f} GB, "
        f"{result.bytes_per_prediction / 1000:.2f} KB per answered prediction "
        "(with its shadow share and feedback)"
    )
    ensure_aliases(project)
    result.monitor, result.guard = reads(project, backend, result, None)
    if args.aggregates is not None:
        result.rebuild = in_child(
            rebuild_aggregates, project, backend.name, backend.target(), args.aggregates
        )
        print(
            f"aggregates rebuilt from the raw log (prodguard aggregates rebuild): "
            f"{result.rebuild['summaries']:,} summaries of {result.rebuild['rows']:,} rows in "
            f"{result.rebuild['seconds']:.0f} s, peak RSS {result.rebuild['peak_rss_mb']:.0f} MB"
        )
        ensure_aliases(project)
        result.monitor_aggregates, result.guard_aggregates = reads(
            project, backend, result, args.aggregates
        )
        if args.multiply > 1:
            multiplied = in_child(
                multiply_aggregates,
                project,
                backend.name,
                backend.target(),
                args.aggregates,
                args.multiply,
            )
            result.multiplied = args.multiply
            print(
                f"aggregates of {args.multiply} x the traffic ({rows * args.multiply / 7:,.0f} "
                f"predictions a day): {multiplied['summaries']:,} summaries multiplied in "
                f"{multiplied['seconds']:.0f} s (the raw log keeps its rows: the partial buckets "
                "at a window's ends are read at this scale's traffic)"
            )
            result.monitor_multiplied, result.guard_multiplied = reads(
                project, backend, result, args.aggregates, f" from aggregates x{args.multiply}"
            )
    for writers in args.writers:
        load = os.getloadavg()[0]
        found = ingest(
            backend.name,
            backend.target(),
            seed,
            writers,
            args.threads,
            args.per_call,
            args.ingest_seconds,
        )
        result.ingest.append({**found, "load": load})
        print(
            f"ingest through PredictionLog.write: {writers} writer process(es) x "
            f"{args.threads} thread(s), {args.per_call} prediction(s) per call: "
            f"{found['rows_per_s']:,.0f} rows/s ({found['rows']:,} rows in "
            f"{found['seconds']:.1f} s; load {load:.1f})"
        )
    backend.delete_after(NOW)
    return result


def reads(
    project: str,
    backend: Backend,
    result: ScaleResult,
    aggregates: int | None,
    how: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A monitor pass, then a guard check, each in a process of its own (with the window
    aggregates when ``aggregates`` is not None: see ``_settings``)."""
    if how is None:
        how = "" if aggregates is None else " from aggregates"
    result.load["monitor" + how] = os.getloadavg()[0]
    monitor = in_child(monitor_pass, project, backend.name, backend.target(), aggregates)
    print(
        f"monitor pass{how}: {monitor['seconds']:.1f} s, peak RSS {monitor['peak_rss_mb']:.0f} MB "
        f"(before the pass {monitor['rss_before_mb']:.0f} MB; load "
        f"{result.load['monitor' + how]:.1f}); reports {monitor['reports']}"
    )
    result.load["guard" + how] = os.getloadavg()[0]
    guard = in_child(guard_check, project, backend.name, backend.target(), aggregates)
    print(
        f"guard check{how}: {guard['seconds']:.1f} s, peak RSS {guard['peak_rss_mb']:.0f} MB "
        f"(load {result.load['guard' + how]:.1f}); decisions {guard['decisions']}"
    )
    return monitor, guard


def counts(backend: Backend) -> tuple[int, int]:
    """Rows in predictions and feedback."""
    return backend.scalar("SELECT COUNT(*) FROM predictions"), backend.scalar(
        "SELECT COUNT(*) FROM feedback"
    )


def extrapolate(results: list[ScaleResult], rows: int) -> ScaleResult:
    """A line through the two largest measured scales, evaluated at ``rows`` (times, memory,
    storage), never below the larger measured value; ingest is not extrapolated (it depends on
    the writers, not on the window)."""
    low, high = sorted(results, key=lambda r: r.rows)[-2:]

    def line(a: float, b: float) -> float:
        return a + (b - a) * (rows - low.rows) / (high.rows - low.rows)

    def part(key: str) -> dict[str, Any]:
        a, b = getattr(low, key), getattr(high, key)
        if not a or not b:
            return {}
        return {  # never below what was measured (a sampled read's memory stays flat)
            name: max(line(a[name], b[name]), a[name], b[name])
            for name in ("seconds", "peak_rss_mb")
        }

    found = ScaleResult(rows, extrapolated=True)
    found.storage_bytes = int(line(low.storage_bytes, high.storage_bytes))
    found.monitor, found.guard = part("monitor"), part("guard")
    found.monitor_aggregates = part("monitor_aggregates")
    found.guard_aggregates = part("guard_aggregates")
    found.monitor_multiplied = part("monitor_multiplied")
    found.guard_multiplied = part("guard_multiplied")
    return found


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 600 else f"{value / 3600:.1f} h"


def _megabytes(value: float) -> str:
    return f"{value:,.0f} MB" if value < 10_000 else f"{value / 1024:,.0f} GB"


def table(results: list[ScaleResult], backend: str) -> str:
    writers = sorted({i["writers"] for r in results for i in r.ingest})
    reads = [("monitor", "monitor pass"), ("guard", "guard check")]
    if any(r.monitor_aggregates for r in results):
        reads += [("monitor_aggregates", "monitor (aggregates)")]
        reads += [("guard_aggregates", "guard (aggregates)")]
    times = max((r.multiplied for r in results), default=0)
    if times:
        reads += [("monitor_multiplied", f"monitor (aggregates x{times})")]
        reads += [("guard_multiplied", f"guard (aggregates x{times})")]
    columns = ["rows per 7-day window", *(f"{name} | peak RSS" for _, name in reads)]
    columns += ["storage per prediction"]
    columns += [f"ingest {w} writer{'s' if w > 1 else ''}" for w in writers]
    head = "| " + " | ".join(columns) + " |"
    lines = [f"backend: {backend}", head, "|" + "---|" * (2 + 2 * len(reads) + len(writers))]
    for r in results:
        mark = " (extrapolated)" if r.extrapolated else ""
        by_writers = {i["writers"]: i["rows_per_s"] for i in r.ingest}
        measured = [getattr(r, key) for key, _ in reads]
        lines.append(
            f"| {r.rows:,}{mark} | "
            + " | ".join(
                f"{_seconds(m['seconds'])} | {_megabytes(m['peak_rss_mb'])}" if m else "- | -"
                for m in measured
            )
            + f" | {r.bytes_per_prediction / 1000:.2f} KB |"
            + "".join(f" {by_writers[w]:,.0f}/s |" if w in by_writers else " - |" for w in writers)
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        default="1000000,10000000",
        help="answered predictions per 7-day window, comma-separated",
    )
    parser.add_argument("--writers", default="1,4,8", help="writer processes, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="request threads per writer")
    parser.add_argument(
        "--per-call",
        type=int,
        default=1,
        help="predictions per PredictionLog.write call (1: /predict)",
    )
    parser.add_argument("--ingest-seconds", type=float, default=15.0)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432",
        help="server URL (no database); the benchmark makes its own database",
    )
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the database of the last scale")
    parser.add_argument(
        "--multiply",
        type=int,
        default=1,
        help="with --aggregates: then multiply every rebuilt summary by this factor (the "
        "aggregates of that many times the traffic, e.g. 700 on 1M rows a week: 100M a day) "
        "and run the monitor pass and guard check again",
    )
    parser.add_argument(
        "--aggregates",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="BUCKET_SECONDS",
        help="also rebuild the window aggregates from the raw log (app.rebuild_aggregates) and "
        "run the monitor pass and guard check with monitoring.aggregates on (issue 21), with "
        "buckets of BUCKET_SECONDS (default: the project's setting)",
    )
    args = parser.parse_args()
    args.writers = [int(w) for w in args.writers.split(",") if w]
    scales = [int(float(r)) for r in args.rows.split(",") if r]

    from prodguard.telemetry import disable_telemetry

    disable_telemetry()
    work = args.work or Path(tempfile.mkdtemp(prefix="prodguard-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    settings, seed = prepare(work)
    project = str(settings.config_path)
    seeds = seed_rows(seed)
    shadow_share = settings.serving.shadow_sample if settings.serving else 0.0
    print(
        f"seed: {len(seeds):,} real answers (April 1-14 2013, v{CHAMPION}; v{STANDBY} in shadow "
        f"on {shadow_share:.0%} of the copies); simulated now {NOW:%Y-%m-%d %H:%M} UTC; "
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    backend: Backend = (
        PostgresBackend(args.postgres, args.database)
        if args.backend == "postgres"
        else SqliteBackend(settings.paths.prediction_log)
    )
    results: list[ScaleResult] = []
    try:
        for rows in sorted(scales):
            results.append(run_scale(args, backend, project, seed, seeds, rows, shadow_share))
    finally:
        if not args.keep:
            backend.drop()
    per_window_100m = PER_DAY_100M * 7
    if len(results) >= 2:
        results.append(extrapolate(results, per_window_100m))
        print(
            f"\n100M predictions/day = {per_window_100m:,} per 7-day window: "
            f"~{results[-1].storage_bytes / 1e12:.2f} TB here, more than this disk; that line is "
            "EXTRAPOLATED linearly from the two largest measured scales, not measured"
        )
    print()
    print(table(results, args.backend))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "backend": args.backend,
                    "now": NOW.isoformat(),
                    "span_days": SPAN_DAYS,
                    "seed_answers": len(seeds),
                    "bulk_load": f"{backend.loads_with} of replicated rows (not the write path)",
                    "results": [
                        {**asdict(r), "bytes_per_prediction": r.bytes_per_prediction}
                        for r in results
                    ],
                },
                indent=2,
            )
        )
        print(f"\nfigures written to {args.json}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
