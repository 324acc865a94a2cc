"""Use cases behind the CLI: each builds its components from the settings (``wiring``) and runs
one job. Monitoring, rollout and drill jobs live next to their domain (``monitoring.jobs``,
``rollout.jobs``, ``rollout.drill``).

The CLI only parses arguments and renders results; everything it does is callable from here.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodguard.config import Settings
from prodguard.errors import ConfigError, InputError, redact
from prodguard.features.feast_adapter import render_store_config
from prodguard.ingestion.ledger import Ledger
from prodguard.ingestion.pipeline import BatchResult, Ingestor, read_batch_file
from prodguard.ingestion.quarantine import Quarantine
from prodguard.monitoring.aggregates import bucket_of
from prodguard.monitoring.measures import kpi_cost_function
from prodguard.monitoring.monitor import read_version_reference
from prodguard.project import load_loader, load_request_model
from prodguard.registry import lineage
from prodguard.registry.config import RegistryConfig
from prodguard.rollout.traffic_fit import misfits
from prodguard.rollout.triggers import describe as describe_triggers
from prodguard.serving.aggregate_store import summarise_log
from prodguard.serving.log_retention import PruneResult, RetainedLog, cutoff, prune
from prodguard.serving.prediction_log import ANSWERS
from prodguard.training.dataset import check_model_source
from prodguard.wiring import (
    aggregate_store,
    alert_record,
    alerter_for,
    clock_for,
    feature_store,
    incident_store,
    prediction_log,
    registry_operations,
)

if TYPE_CHECKING:
    from prodguard.training.trainer import TrainResult


@dataclass(frozen=True)
class IngestReport:
    batches: list[BatchResult]
    seconds: float
    validation_seconds: float

    @property
    def written(self) -> int:
        return sum(b.rows for b in self.batches if b.status == "written")

    @property
    def quarantined(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status == "quarantined"]


def ingest(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    sources: list[str] | None = None,
    batch_file: Path | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    loader: Any = None,
) -> IngestReport:
    """Ingest a time window of the project's sources, or one batch file for one source;
    ``loader`` reuses a project loader that has read its raw files already."""
    began = time.perf_counter()
    unknown = sorted(set(sources or ()) - set(settings.sources))
    if unknown:
        raise InputError(f"unknown source(s) {unknown}; configured: {sorted(settings.sources)}")
    if batch_file is not None:
        if not sources or len(sources) != 1:
            raise InputError("--file needs exactly one --source naming the table it belongs to")
        frame = read_batch_file(batch_file)  # a bad file is refused before anything is opened
        ingestor = Ingestor(settings, alerter_for(settings), clock=clock_for(settings))
        results = [ingestor.ingest_file(sources[0], batch_file, frame=frame)]
        if on_batch is not None:
            on_batch(results[0])
    else:
        if start is None or end is None:
            raise InputError("give --start and --end (or --file with --source)")
        if end <= start:
            raise InputError("--end must be after --start")
        ingestor = Ingestor(
            settings,
            alerter_for(settings),
            loader=loader or load_loader(settings),
            clock=clock_for(settings),
        )
        results = ingestor.ingest_window(start, end, sources, on_batch=on_batch)
    return IngestReport(
        batches=results,
        seconds=time.perf_counter() - began,
        validation_seconds=sum(r.validation_seconds for r in results),
    )


def alerts(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    """Alerts raised so far, oldest first, optionally of one type."""
    records = alert_record(settings).read()
    return [r for r in records if kind is None or r.get("type") == kind]


def incidents(settings: Settings, open_only: bool = False) -> list[dict[str, Any]]:
    """Incidents (alerts grouped by cause), by first seen; ``open_only``: those still open."""
    _, record = incident_store(settings)
    found = [i.to_json() for i in record.incidents()]
    return [i for i in found if not open_only or i["state"] == "open"]


def quarantined(settings: Settings) -> list[dict[str, Any]]:
    return Quarantine(settings.paths.quarantine_dir).list()


@dataclass(frozen=True)
class MaterializeReport:
    views: list[dict[str, Any]]
    online_rows: dict[str, int]
    until: datetime
    start: datetime | None
    seconds: float


def materialize(
    settings: Settings, until: datetime, start: datetime | None = None
) -> MaterializeReport:
    """Apply the feature repo and load feature values up to ``until`` into the online store."""
    began = time.perf_counter()
    store = feature_store(settings)
    result = store.materialize(until=until, start=start)
    views = [
        {
            "name": v.name,
            "version": v.version,
            "ttl_seconds": v.ttl_seconds,
            "features": len(v.features),
        }
        for v in result.views
    ]
    return MaterializeReport(
        views=views,
        online_rows=result.online_rows,
        until=until,
        start=start,
        seconds=time.perf_counter() - began,
    )


def lookup(settings: Settings, entity: dict[str, str]) -> dict[str, Any]:
    """Online feature values (and their event timestamps) for one entity row."""
    if not entity:
        raise InputError("give at least one entity key, e.g. origin=JFK")
    known = settings.model.entity_keys if settings.model is not None else None
    unknown = sorted(set(entity) - set(known or entity))
    if unknown:
        raise InputError(f"unknown entity key(s) {unknown}; the keys are {', '.join(known or [])}")
    frame = feature_store(settings).online_features([entity])
    return {k: _plain(v) for k, v in frame.iloc[0].to_dict().items()}


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


# ---- registry and training ---------------------------------------------------------------


def train(settings: Settings, start: datetime, end: datetime, actor: str) -> TrainResult:
    """Train on ``[start, end)``, evaluate on the following days, register as candidate."""
    # lazy: scikit-learn loads only for the commands that need it
    from prodguard.training.trainer import train_and_register

    digests = Ledger(settings.paths.state_dir).suite_digests(start, end)
    return train_and_register(
        settings,
        feature_store(settings),
        registry_operations(settings),
        digests,
        start,
        end,
        actor,
    )


def version_summary(version: Any) -> dict[str, Any]:
    return {
        "version": version.version,
        "created": version.created.isoformat(),
        **lineage.summary(version.tags),
        "scoring": lineage.scoring_path(version.tags),
    }


def status(settings: Settings) -> dict[str, Any]:
    """Aliases with lineage, the standby's age and retention, the declared rollback triggers,
    the last data incident the guard held model moves for."""
    operations = registry_operations(settings)
    reconciled = operations.reconcile("prodguard status")  # recorded (completed), not undone
    state, traffic = operations.targets()
    versions = operations.registry.versions()
    by_number = {v.version: v for v in versions}
    config = operations.registry.config
    return {
        "model": operations.model,
        "environment": settings.environment,
        "stores": stores(settings, config),
        "aliases": state.as_dict(),
        "reconciled": reconciled.to_json() if reconciled is not None else None,
        "lineage": {
            alias: version_summary(by_number[v]) if v in by_number else None
            for alias, v in state.as_dict().items()
        },
        "versions": [version_summary(v) for v in versions],
        "mlflow_ui": mlflow_ui_command(config),
        "standby_since": _iso(operations.standby_since(state.standby)) if state.standby else None,
        "standby_hours": settings.rollout.standby_hours,
        "traffic": traffic.to_json() | {"describe": traffic.describe(state.standby is not None)},
        "triggers": describe_triggers(settings.rollout.triggers, settings.monitoring.kpi),
        "data_incident": next(iter(alerts(settings, "pipeline_incident")[-1:]), None),
        "traffic_fit": traffic_fit(settings),
    }


def traffic_fit(settings: Settings, days: int = 7) -> dict[str, Any]:
    """The prediction log's request rate over the last ``days`` and the guard, canary and
    monitoring sizes it cannot fill (``rollout.traffic_fit``)."""
    now = clock_for(settings).now()
    log = prediction_log(settings)
    try:
        rate = log.count(now - timedelta(days=days), now, ANSWERS) / days
    finally:
        log.close()
    return {
        "requests_per_day": rate,
        "problems": misfits(rate, settings.rollout, settings.monitoring),
    }


def stores(settings: Settings, registry_config: RegistryConfig) -> dict[str, str]:
    """Where each kind of state lives (credentials redacted)."""
    online = render_store_config(settings).get("online_store", {})
    where = online.get("connection_string") or online.get("path") or ""
    return {
        "registry": redact(registry_config.tracking_uri),
        "audit": redact(registry_config.audit_uri),
        "records": redact(settings.storage.url or str(settings.paths.prediction_log)),
        "online_store": f"{online.get('type', 'sqlite')} {redact(str(where))}".strip(),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def mlflow_ui_command(config: RegistryConfig) -> str:
    """The exact command that opens the MLflow UI on this store (credentials redacted), or
    the MLflow server's address when the registry is one."""
    if config.tracking_uri.startswith(("http://", "https://")):
        return f"open {redact(config.tracking_uri)}"
    return (
        f".venv/bin/mlflow server --backend-store-uri {redact(config.tracking_uri)} "
        f"--default-artifact-root {config.artifact_location} --host 127.0.0.1 --port 5000"
    )


# ---- serving -----------------------------------------------------------------------------


SERVICE = "prodguard.serving.bento_service:PredictionService"


def bentoml_home(settings: Settings, port: int) -> Path:
    """The service's own BentoML home (see ``serve_command``)."""
    data = hashlib.sha256(str(settings.paths.data_dir.resolve()).encode()).hexdigest()[:10]
    home = f"{data}-{socket.gethostname()}-port-{port}"
    return Path(tempfile.gettempdir()) / "prodguard-bentoml" / home


def serve_command(settings: Settings, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment that run the prediction service.

    Each service gets a BentoML home of its own, on the host's local temporary folder
    (``<tmp>/prodguard-bentoml/<data dir digest>-<host>-port-<port>``): BentoML keeps
    Prometheus' multiprocess files there and wipes them when a service starts, so a shared home
    (the default ``~/bentoml``, or one folder on a data volume that replicas on several hosts
    mount) would reset and mix the metrics of every service — replicas included. Not on the
    data volume: those files are memory-mapped, and with them on a full disk the worker stopped
    answering (no response at all) instead of refusing the requests it cannot log."""
    if settings.serving is None:
        raise ConfigError("prodguard.yaml has no 'serving' section; add one (see README)")
    if not 0 < port < 65536:
        raise InputError("--port must be between 1 and 65535")
    load_request_model(settings)  # a wrong serving.request_model: one line here, not a traceback
    # model.entity_keys / label / source keys against the ingested columns, when there are any
    # here (the feature service's join keys are not read: Feast would add seconds to a start)
    check_model_source(settings, [])
    bentoml = Path(sys.executable).with_name("bentoml")
    env = {
        **os.environ,
        "PRODGUARD_CONFIG": str(settings.config_path),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(bentoml_home(settings, port)),
    }
    return [str(bentoml), "serve", SERVICE, "--host", host, "--port", str(port)], env


# ---- prediction log ----------------------------------------------------------------------


def prune_log(settings: Settings, export: Path | None = None) -> PruneResult:
    """``prodguard log prune``: drop the predictions older than ``storage.log_retention_days``
    (never what monitors still read: the monitoring window plus the KPI maturity), each day
    exported to parquet in ``export`` first when given, and the window aggregates of those days
    (summaries the raw log can no longer rebuild)."""
    days = settings.storage.log_retention_days
    if days is None:
        raise ConfigError(
            "storage.log_retention_days is not set (the log keeps everything); set it to prune"
        )
    monitoring = settings.monitoring
    keep = timedelta(hours=monitoring.kpi.maturity_hours, minutes=monitoring.window.minutes or 0)
    log = prediction_log(settings)
    try:
        if not isinstance(log, RetainedLog):
            raise ConfigError(f"the prediction log {type(log).__name__} has no retention")
        result = prune(log, cutoff(clock_for(settings).now(), days, keep), export)
    finally:
        log.close()
    store = aggregate_store(settings)
    if store is None:
        return result
    try:
        before = datetime.fromisoformat(result.before).replace(tzinfo=UTC)
        return replace(result, aggregates_dropped=store.drop_before(before))
    finally:
        store.close()


@dataclass(frozen=True)
class AggregatesRebuilt:
    start: datetime
    end: datetime
    summaries: int
    rows: int
    seconds: float


def rebuild_aggregates(settings: Settings, start: datetime, end: datetime) -> AggregatesRebuilt:
    """Summarise ``[start, end)`` (widened to whole buckets) from the raw prediction log into
    the aggregate store, replacing what was there: the aggregates of a log written before they
    were on, or of what a crashed replica had not flushed. For past ranges: a replica still
    flushing buckets of the range would add to the rebuilt ones."""
    began = time.perf_counter()
    if end <= start:
        raise InputError("--end must be after --start")
    store = aggregate_store(settings)
    if store is None:
        raise ConfigError(
            "window aggregates are off; set monitoring.aggregates.enabled: true in prodguard.yaml"
        )
    monitoring = settings.monitoring
    seconds = monitoring.aggregates.bucket_seconds
    low = bucket_of(start, seconds)
    high = bucket_of(end, seconds)
    if high < end:
        high += timedelta(seconds=seconds)
    registry = registry_operations(settings).registry
    log = prediction_log(settings)
    try:
        summaries = summarise_log(
            log,
            low,
            high,
            lambda version: read_version_reference(registry, version),
            seconds,
            monitoring.kpi,
            kpi_cost_function(monitoring.kpi),
            settings.rollout.triggers.p99_latency_ms,
        )
        store.replace(low, high, summaries)
    finally:
        log.close()
        store.close()
    rows = sum(s.rows for s in summaries.values())
    return AggregatesRebuilt(low, high, len(summaries), rows, time.perf_counter() - began)
