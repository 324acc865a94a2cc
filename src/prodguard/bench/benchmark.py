"""``prodguard bench``: the guarded service, a bare model endpoint and the framework floor (a
BentoML endpoint that returns a constant), measured in one run.

All three are started here on free loopback ports (one after the other: each cold start is
measured alone), with the same BentoML settings, and stopped at the end. The guarded service is
``prodguard serve`` on the project's registry, feature store and models, but with a prediction
log (and alert file) of its own in a temporary data folder — bench traffic never reaches the
monitors — and without the in-service guard. Load goes to one service at a time, in alternating
rounds (guarded, then bare with the model features the guarded service used for the same
requests, read back from its prediction log, then the floor with the same bodies), so that
whatever else runs on the machine weighs on all alike. Last, ``/predict_batch`` of
``BATCH_ROWS`` rows is timed on the guarded service, server side and end to end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prodguard import wiring
from prodguard.bench import WORKERS_ENV, workload
from prodguard.bench.load import LevelResult, Samples, drive, merge
from prodguard.bench.stats import Summary, ratio, summarize
from prodguard.config import Settings
from prodguard.errors import ConfigError, InputError, ServiceNotReady
from prodguard.registry.lineage import REFERENCE_STATS_JSON
from prodguard.service_process import free_port, start_service
from prodguard.serving.prediction_log import SqlitePredictionLog

LEVELS = (1, 4, 16)
REQUESTS = 500  # per level
WARMUP = 100
ROUNDS = 5  # each level alternates between the services this many times
BARE_SERVICE = "prodguard.bench.bare_service:BareService"
FLOOR_SERVICE = "prodguard.bench.floor_service:FloorService"
SERVICES = ("guarded", "bare", "floor")
BATCH_ROWS = 1000  # rows per /predict_batch call (at most serving.max_batch)
BATCH_CALLS = 3
SHARED_STATE = ("feast", "mlflow", "offline")  # what the guarded service reads from the project
SETUP_HINT = (
    "run `make demo`, or `prodguard ingest`, `prodguard materialize`, `prodguard train` and "
    "`prodguard promote` (see README)"
)


@dataclass(frozen=True)
class Goal:
    name: str
    value: float
    limit: float
    at_most: bool  # value must be <= limit (else >=)
    where: str = ""  # where the measured value comes from (the stages behind a ratio)

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    @property
    def by(self) -> float:
        """How far from the limit, as a factor: value / limit when it must be at most, limit /
        value when at least (> 1: missed by that factor; <= 1: met with that margin)."""
        if self.at_most:
            return ratio(self.value, self.limit)
        return ratio(self.limit, self.value)

    def to_json(self) -> dict[str, Any]:
        bound = "<=" if self.at_most else ">="
        return {
            "value": self.value,
            "goal": f"{bound} {self.limit:g}",
            "met": self.met,
            "by": self.by,
            **({"where": self.where} if self.where else {}),
        }


@dataclass(frozen=True)
class ServiceRun:
    cold_start_s: float
    levels: list[LevelResult]

    def level(self, concurrency: int) -> LevelResult:
        return next(r for r in self.levels if r.concurrency == concurrency)

    def to_json(self) -> dict[str, Any]:
        first = self.levels[0]
        return {
            "cold_start_s": round(self.cold_start_s, 3),
            # the headline figures: latency one request at a time
            "p50": first.latency.p50,
            "p95": first.latency.p95,
            "p99": first.latency.p99,
            "levels": {str(r.concurrency): r.to_json() for r in self.levels},
        }


@dataclass(frozen=True)
class BatchRun:
    """``/predict_batch`` calls of ``rows`` rows on the guarded service: latency at the client
    and the server's ``total`` (ms)."""

    rows: int
    latency: Summary
    server: Summary

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "latency_ms": self.latency.to_json(),
            "server_ms": self.server.to_json(),
        }


@dataclass(frozen=True)
class BenchReport:
    setup: dict[str, Any]
    guarded: ServiceRun
    bare: ServiceRun
    concurrencies: tuple[int, ...] = field(default=LEVELS)
    floor: ServiceRun | None = None
    batch: BatchRun | None = None

    def ratios(self, baseline: str = "bare") -> dict[str, Any]:
        """guarded / ``baseline`` (bare or floor): p50 and p99 one request at a time,
        throughput at the highest concurrency (``throughput_c16`` with the default levels), and
        every level's."""
        low, high = self.concurrencies[0], self.concurrencies[-1]
        g, b = self.guarded, self.bare if baseline == "bare" else self.floor
        assert b is not None
        by_level = {
            str(c): {
                "p50": ratio(g.level(c).latency.p50, b.level(c).latency.p50),
                "p99": ratio(g.level(c).latency.p99, b.level(c).latency.p99),
                "throughput": ratio(g.level(c).throughput, b.level(c).throughput),
            }
            for c in self.concurrencies
        }
        return {
            "p50": by_level[str(low)]["p50"],
            "p99": by_level[str(low)]["p99"],
            f"throughput_c{high}": by_level[str(high)]["throughput"],
            "levels": by_level,
        }

    def goals(self) -> list[Goal]:
        ratios = self.ratios()
        high = self.concurrencies[-1]
        stages = self.guarded.levels[0].stages
        goals = [
            Goal("p50 ratio", ratios["p50"], 1.5, True),
            Goal("p99 ratio", ratios["p99"], 2.0, True),
            Goal(f"throughput ratio c={high}", ratios[f"throughput_c{high}"], 0.7, False),
            Goal("guarded cold start s", round(self.guarded.cold_start_s, 3), 8.0, True),
        ]
        if "features" in stages:
            goals.append(Goal("feature retrieval p99 ms", stages["features"].p99, 1.0, True))
        if "log" in stages:
            goals.append(Goal("prediction log write p99 ms", stages["log"].p99, 0.2, True))
        if self.floor is not None:  # the framework floor (issue 19)
            floor = self.ratios("floor")
            goals += [
                Goal("p50 / floor", floor["p50"], 1.5, True, self._where("p50")),
                Goal("p99 / floor", floor["p99"], 2.0, True, self._where("p99")),
                Goal(
                    f"throughput c={high} / floor",
                    floor[f"throughput_c{high}"],
                    0.6,
                    False,
                    self._where("p50", high),
                ),
            ]
        if "model" in stages:
            goals.append(Goal("model stage p50 ms", stages["model"].p50, 0.3, True))
        if self.batch is not None:
            name = f"predict_batch {self.batch.rows} rows server p50 ms"
            goals.append(Goal(name, self.batch.server.p50, 25.0, True))
        return goals

    def _where(self, stat: str, concurrency: int | None = None) -> str:
        """A floor ratio in its parts: the guarded request's server stages and its HTTP layer
        (client minus server) against the floor's whole request, at ``concurrency`` (default:
        one request at a time)."""
        assert self.floor is not None
        at = self.concurrencies[0] if concurrency is None else concurrency
        level, floor = self.guarded.level(at), self.floor.level(at)
        named = [s for s in ("checks", "features", "model", "log") if s in level.stages]
        parts = ", ".join(f"{s} {getattr(level.stages[s], stat):.2f}" for s in named)
        server = level.stages.get("total")
        http = level.stages.get("http")
        return (
            f"{stat} at c={at}: guarded {getattr(level.latency, stat):.2f} ms"
            + (f" = server {getattr(server, stat):.2f} ms ({parts})" if server else "")
            + (f" + HTTP and framework {getattr(http, stat):.2f} ms" if http else "")
            + f"; floor {getattr(floor.latency, stat):.2f} ms, all HTTP and framework"
        )

    def to_json(self) -> dict[str, Any]:
        document = {
            "setup": self.setup,
            "guarded": self.guarded.to_json(),
            "bare": self.bare.to_json(),
            "ratios": self.ratios(),
        }
        if self.floor is not None:
            document["floor"] = self.floor.to_json()
            document["ratios_floor"] = self.ratios("floor")
        if self.batch is not None:
            document["batch"] = self.batch.to_json()
        document["goals"] = {g.name: g.to_json() for g in self.goals()}
        return document


def _levels(levels: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(sorted(set(levels)))
    if not chosen or chosen[0] < 1 or chosen[-1] > 256:
        raise InputError("--concurrency levels must be between 1 and 256")
    return chosen


def run_bench(
    settings: Settings,
    requests: int = REQUESTS,
    levels: Sequence[int] = LEVELS,
    warmup: int = WARMUP,
    progress: Callable[[str], None] = lambda _: None,
    workers: int | None = None,
) -> BenchReport:
    """Measure the guarded service and the bare endpoint on this machine (see module doc)."""

    concurrencies = _levels(levels)
    if requests < 1 or warmup < 0:
        raise InputError("--requests must be at least 1 and --warmup at least 0")
    if settings.serving is None or settings.model is None or settings.config_path is None:
        raise ConfigError("prodguard.yaml needs 'model' and 'serving' sections to benchmark")
    if workers is not None and not 1 <= workers <= 64:
        raise InputError("--workers must be between 1 and 64")
    workers = workers or settings.serving.workers
    registry = wiring.registry_operations(settings).registry
    aliases = registry.aliases()
    champion = aliases.get("champion")
    if champion is None:
        raise InputError(f"there is no champion to benchmark; {SETUP_HINT}")
    at = wiring.feature_store(settings).materialized_until()
    if at is None:
        raise InputError(f"the online store was never materialized; {SETUP_HINT}")
    stats = registry.load_json_artifact(champion, REFERENCE_STATS_JSON)
    categories = {
        name: frozenset(s.get("categories", {}))
        for name, s in stats.items()
        if s.get("kind") == "categorical"
    }
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    batch_rows = min(BATCH_ROWS, settings.serving.max_batch)
    measured = warmup + requests * len(concurrencies)
    total = measured + batch_rows * BATCH_CALLS
    guarded_bodies = workload.guarded_bodies(settings, at, total, categories, f"bench-{run_id}-")
    setup = {
        "model": settings.model.name,
        "champion": champion,
        "standby": aliases.get("standby"),
        "shadow_sample": settings.serving.shadow_sample,
        "log_sync": settings.serving.log_sync,
        "workers": workers,
        "requests_per_level": requests,
        "warmup": warmup,
        "levels": list(concurrencies),
        "batch_rows": batch_rows,
        "batch_calls": BATCH_CALLS,
        "asked_at": at.isoformat(),
        "cpus": os.cpu_count(),
    }
    root = Path(tempfile.mkdtemp(prefix="prodguard-bench-"))
    try:
        data = _overlay(settings, root)
        env = _environment(settings, data, workers)
        cwd = settings.config_path.parent
        log_path = data / "predictions.db"
        port = free_port()
        progress(f"starting the guarded service (prodguard serve) on port {port}")
        guarded = start_service(
            [sys.executable, "-m", "prodguard", "serve", "--port", str(port)],
            env,
            cwd,
            port,
            root / "guarded.log",
        )
        try:
            progress(f"ready after {guarded.cold_start_s:.1f} s")
            bare = _start_bentoml(BARE_SERVICE, "bare endpoint", env, cwd, root, progress)
            try:
                floor = _start_bentoml(FLOOR_SERVICE, "floor endpoint", env, cwd, root, progress)
                try:
                    trio = _Trio(guarded.base_url, bare.base_url, floor.base_url, log_path)
                    if warmup:
                        trio.round(guarded_bodies[:warmup], min(4, concurrencies[-1]))
                    results: dict[int, tuple[LevelResult, ...]] = {}
                    for i, concurrency in enumerate(concurrencies):
                        chunk = guarded_bodies[warmup + i * requests : warmup + (i + 1) * requests]
                        results[concurrency] = trio.level(chunk, concurrency)
                        progress(_describe(concurrency, results[concurrency]))
                    batch = trio.batch(guarded_bodies[measured:], batch_rows)
                    progress(
                        f"/predict_batch {batch_rows} rows: server p50 {batch.server.p50:.1f} ms, "
                        f"end to end p50 {batch.latency.p50:.1f} ms"
                    )
                    trio.close()
                finally:
                    floor.stop()
            finally:
                bare.stop()
        finally:
            guarded.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return BenchReport(
        setup,
        ServiceRun(guarded.cold_start_s, [results[c][0] for c in concurrencies]),
        ServiceRun(bare.cold_start_s, [results[c][1] for c in concurrencies]),
        concurrencies,
        ServiceRun(floor.cold_start_s, [results[c][2] for c in concurrencies]),
        batch,
    )


def _describe(concurrency: int, results: tuple[LevelResult, ...]) -> str:
    return f"c={concurrency}: " + " | ".join(
        f"{name} p50 {r.latency.p50:.2f} ms, p99 {r.latency.p99:.2f} ms, {r.throughput:.0f} req/s"
        for name, r in zip(SERVICES, results, strict=True)
    )


def _start_bentoml(
    service: str,
    name: str,
    env: dict[str, str],
    cwd: Path,
    root: Path,
    progress: Callable[[str], None],
) -> Any:
    port = free_port()
    progress(f"starting the {name} on port {port}")
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    started = start_service(
        [bentoml, "serve", service, "--host", "127.0.0.1", "--port", str(port)],
        env,
        cwd,
        port,
        root / f"{name.split()[0]}.log",
    )
    progress(f"ready after {started.cold_start_s:.1f} s")
    return started


class _Trio:
    """The three services, measured in alternating rounds — guarded, then bare on the features
    the guarded service used, then the floor on the same bodies — so that load from elsewhere
    on the machine affects all alike."""

    def __init__(self, guarded_url: str, bare_url: str, floor_url: str, log_path: Path) -> None:
        self.urls = (guarded_url, bare_url, floor_url)
        self.log = SqlitePredictionLog(log_path)

    def round(self, bodies: list[dict[str, Any]], concurrency: int) -> tuple[Samples, ...]:
        guarded = drive(self.urls[0], "/predict", workload.encode(bodies), concurrency)
        bare_bodies = workload.bare_bodies(self.log, [b["request_id"] for b in bodies])
        if not bare_bodies:
            raise ServiceNotReady(f"the guarded service answered none of: {guarded.statuses}")
        encoded = workload.encode(bare_bodies)
        bare = drive(self.urls[1], "/predict", encoded, concurrency)
        floor = drive(self.urls[2], "/predict", encoded, concurrency)
        return guarded, bare, floor

    def batch(self, bodies: list[dict[str, Any]], rows: int) -> BatchRun:
        """``/predict_batch`` calls of ``rows`` rows each, one at a time."""
        calls = [{"rows": bodies[i : i + rows]} for i in range(0, len(bodies) - rows + 1, rows)]
        done = drive(self.urls[0], "/predict_batch", workload.encode(calls), 1)
        if not done.latencies or "total" not in done.stages:
            raise ServiceNotReady(f"the guarded service answered no batch: {done.statuses}")
        return BatchRun(rows, summarize(done.latencies), summarize(done.stages["total"]))

    def close(self) -> None:
        self.log.close()

    def level(self, bodies: list[dict[str, Any]], concurrency: int) -> tuple[LevelResult, ...]:
        size = max(len(bodies) // ROUNDS, concurrency)
        runs = [self.round(bodies[i : i + size], concurrency) for i in range(0, len(bodies), size)]
        return tuple(merge(concurrency, [r[k] for r in runs]) for k in range(3))


def _overlay(settings: Settings, root: Path) -> Path:
    """A data folder whose feature store, registry and offline store are the project's
    (symlinks) and whose prediction log, alerts and state are its own."""
    data = root / "data"
    data.mkdir()
    for name in SHARED_STATE:
        shared = settings.paths.data_dir.resolve() / name
        if shared.exists():
            (data / name).symlink_to(shared, target_is_directory=True)
    return data


def _environment(settings: Settings, data: Path, workers: int) -> dict[str, str]:
    return {
        **os.environ,
        "PRODGUARD_SERVING__WORKERS": str(workers),  # the guarded service's
        WORKERS_ENV: str(workers),  # the bare and floor endpoints
        "PRODGUARD_CONFIG": str(settings.config_path),
        "PRODGUARD_PATHS__DATA_DIR": str(data),
        # the feature store of the settings as given (e.g. the production yaml: Redis online)
        "PRODGUARD_FEATURE_STORE__CONFIG": str(settings.feature_store.config),
        "PRODGUARD_ROLLOUT__GUARD_IN_SERVICE_SECONDS": "null",  # no rollback on bench traffic
        # the steady state: the reference scores shadow_sample of the requests, not every one
        # of the first shadow_burst after the service starts (a transient after each change)
        "PRODGUARD_SERVING__SHADOW_BURST": "0",
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
