"""Online store: Redis (production) against SQLite (embedded), measured in one run.

    .venv/bin/python benchmarks/online_store.py [--reads 2000] [--e2e [--requests 300]]
        [--pg-admin postgresql://postgres@127.0.0.1:5432/postgres] [--redis 127.0.0.1:6379]

In a throw-away copy of the example project it ingests a few weeks of 2013 and materializes them
into both online stores: the embedded one (feature_repo/feature_store.yaml, SQLite) and the
production one (feature_repo/feature_store.production.yaml: the registry in a PostgreSQL database
made for the run, the online store in Redis under a Feast project of its own). Then it prints

- the request path's read, ``FeastStore.online_records`` of one entity row, on each store, in
  alternating rounds (p50/p99 over ``--reads`` reads each), and Feast's ``get_online_features``
  on Redis for reference, with ratios to the SQLite read;
- with ``--e2e``: a model trained and promoted in the copy, then ``prodguard bench`` (the guarded
  service against the bare endpoint) once per store — the same settings but the feature store —
  and the guarded ``/predict`` p50/p99 of each, their ratio and each one's ratio to its bare run.

The database and the Redis keys of the run are removed at the end. Figures only; nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_YAML = "feature_repo/feature_store.production.yaml"


def utc(text: str):
    import pandas as pd

    return pd.Timestamp(text, tz="UTC").to_pydatetime()


def copy_project(target: Path) -> Path:
    target.mkdir(parents=True)
    shutil.copy(ROOT / "prodguard.yaml", target / "prodguard.yaml")
    for folder in ("expectations", "mlruns_config", "feature_repo"):
        shutil.copytree(
            ROOT / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def timed(function, rows: list[dict], reads: int) -> list[float]:
    took = []
    for i in range(reads):
        row = [rows[i % len(rows)]]
        began = time.perf_counter()
        function(row)
        took.append((time.perf_counter() - began) * 1000)
    return took


def show(name: str, summary, baseline=None) -> None:
    from prodguard.bench.stats import ratio

    line = f"  {name:<44} p50 {summary.p50:7.3f} ms   p99 {summary.p99:7.3f} ms"
    if baseline is not None:
        line += (
            f"   x{ratio(summary.p50, baseline.p50):.2f} p50"
            f"  x{ratio(summary.p99, baseline.p99):.2f} p99"
        )
    print(line, flush=True)


def reads(sqlite_store, redis_store, rows: list[dict], count: int, rounds: int = 10) -> None:
    from prodguard.bench.stats import summarize

    for store in (sqlite_store, redis_store):  # warm: registry resolved, connections open
        for row in rows[:50]:
            store.online_records([row])
    per_round = max(count // rounds, 1)
    ours: dict[str, list[float]] = {"sqlite": [], "redis": []}
    for r in range(rounds):  # alternating, so that other load on the machine weighs on both
        chunk = rows[(r * per_round) % len(rows) :] + rows
        ours["sqlite"] += timed(sqlite_store.online_records, chunk, per_round)
        ours["redis"] += timed(redis_store.online_records, chunk, per_round)
    feast = timed(
        lambda row: redis_store.online_features(row).to_dict("records"), rows, max(count // 4, 1)
    )
    base = summarize(ours["sqlite"])
    print(f"online_records, one entity row ({per_round * rounds} reads per store):")
    show("SQLite (embedded), direct read", base)
    show("Redis (production), direct read", summarize(ours["redis"]), base)
    show(f"Redis, Feast get_online_features ({len(feast)})", summarize(feast), base)


def end_to_end(sqlite_settings, redis_settings, requests: int) -> None:
    from prodguard.bench.benchmark import run_bench
    from prodguard.bench.stats import ratio

    runs = {}
    for name, settings in (("sqlite", sqlite_settings), ("redis", redis_settings)):
        print(f"prodguard bench, {name} online store ...", flush=True)
        runs[name] = run_bench(settings, requests, (1, 4), 50)
    print(f"/predict one request at a time ({requests} requests per level):")
    base = runs["sqlite"].guarded.level(1).latency
    for name, report in runs.items():
        g, b = report.guarded.level(1), report.bare.level(1)
        features = g.stages.get("features")
        print(
            f"  {name:<7} guarded p50 {g.latency.p50:6.2f} ms  p99 {g.latency.p99:6.2f} ms"
            f"  (x{ratio(g.latency.p50, base.p50):.2f} / x{ratio(g.latency.p99, base.p99):.2f}"
            f" of sqlite)  bare p50 {b.latency.p50:5.2f} ms  guarded/bare p50"
            f" x{report.ratios()['p50']:.2f}"
            + (
                f"  feature stage p50 {features.p50:.3f} p99 {features.p99:.3f} ms"
                if features
                else ""
            )
        )
        c4 = report.guarded.level(4)
        print(
            f"          c=4: p50 {c4.latency.p50:6.2f} ms  p99 {c4.latency.p99:6.2f} ms"
            f"  {c4.throughput:.0f} req/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--e2e", action="store_true", help="also bench /predict on each store")
    parser.add_argument("--requests", type=int, default=300, help="bench requests per level")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    args = parser.parse_args()

    import psycopg
    import redis

    from prodguard.app import alerter_for, feature_store, registry_operations, train
    from prodguard.config import load_settings
    from prodguard.features.feast_adapter import FeastStore
    from prodguard.ingestion.offline import OfflineStore
    from prodguard.ingestion.pipeline import Ingestor
    from prodguard.telemetry import disable_telemetry
    from prodguard_flights.loader import FlightsLoader

    disable_telemetry()
    name = f"bench_feast_{uuid.uuid4().hex[:10]}"
    work = Path(tempfile.mkdtemp(prefix="prodguard-online-store-"))
    host, _, port = args.redis.split(",")[0].partition(":")
    with psycopg.connect(args.pg_admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    os.environ.update(
        PRODGUARD_DATABASE_URL=f"{database}/{name}",
        PRODGUARD_REDIS=args.redis,
        PRODGUARD_FEAST_PROJECT=name,
    )
    try:
        root = copy_project(work / "project")
        sqlite_settings = load_settings(root / "prodguard.yaml", environ={})
        redis_settings = load_settings(
            root / "prodguard.yaml",
            environ={"PRODGUARD_FEATURE_STORE__CONFIG": str(root / PRODUCTION_YAML)},
        )
        start, until = (
            (utc("2013-02-01"), utc("2013-04-01"))
            if args.e2e
            else (utc("2013-03-18"), utc("2013-04-01"))
        )
        began = time.perf_counter()
        Ingestor(
            sqlite_settings, alerter_for(sqlite_settings), loader=FlightsLoader()
        ).ingest_window(start, until)
        sqlite_store, redis_store = FeastStore(sqlite_settings), FeastStore(redis_settings)
        for store in (sqlite_store, redis_store):
            store.materialize(until=until)
        print(
            f"ingested {start:%Y-%m-%d} to {until:%Y-%m-%d} and materialized both stores "
            f"in {time.perf_counter() - began:.0f} s; online rows (Redis): "
            f"{redis_store.online_row_counts(redis_store.versions())}",
            flush=True,
        )
        flights = OfflineStore(sqlite_settings.paths.offline_dir).read("flights")
        keys = flights[["origin", "carrier", "tailnum"]].fillna("").drop_duplicates()
        rows = keys.sample(min(len(keys), 1000), random_state=3).to_dict("records")
        reads(sqlite_store, redis_store, rows, args.reads)
        if args.e2e:
            began = time.perf_counter()
            train(sqlite_settings, start, utc("2013-03-18"), actor="bench")
            registry_operations(sqlite_settings, with_checks=True).promote(
                "bench", "online store bench", version=1
            )
            assert feature_store(redis_settings).materialized_until() == until
            print(f"trained and promoted v1 in {time.perf_counter() - began:.0f} s", flush=True)
            end_to_end(sqlite_settings, redis_settings, args.requests)
    finally:
        client = redis.Redis(host=host, port=int(port or 6379))
        keys = list(client.scan_iter(match=f"*{name}".encode(), count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()
        with psycopg.connect(args.pg_admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
