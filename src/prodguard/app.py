"""Use cases behind the CLI: each builds its components from the settings and runs one job.

The CLI only parses arguments and renders results; everything it does is callable from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodguard.alerts import Alerter, JsonlSink, LogSink, PrometheusSink, WebhookSink
from prodguard.clock import Clock, FileClock, SystemClock
from prodguard.config import Settings
from prodguard.errors import ConfigError, InputError
from prodguard.ingestion.pipeline import BatchResult, Ingestor, read_batch_file
from prodguard.project import import_object, load_loader

if TYPE_CHECKING:
    from prodguard.registry.operations import RegistryOperations
    from prodguard.training.trainer import TrainResult


def clock_for(settings: Settings) -> Clock:
    """The system clock, or the simulated time of ``clock.file`` (shared by every process)."""
    if settings.clock.file is not None:
        return FileClock(settings.clock.file)
    return SystemClock()


def alert_record(settings: Settings) -> Any:
    """Where alerts are recorded durably: the ``alerts`` table of ``storage.url`` (production),
    else ``<data_dir>/alerts.jsonl``. Both ``send`` and ``read``."""
    if settings.storage.url:
        from prodguard.alert_store import PostgresAlerts

        return PostgresAlerts(settings.storage.url)
    return JsonlSink(settings.paths.alerts_file)


def alerter_for(settings: Settings, metrics_registry: Any = None) -> Alerter:
    """Every alert of prodguard goes to the log, the durable alert record, the webhook (when
    ``alerts.webhook_url`` is set) and, given a Prometheus registry, its alert counter."""
    sinks: list[Any] = [LogSink(), alert_record(settings)]
    if settings.alerts.webhook_url:
        sinks.append(WebhookSink(settings.alerts.webhook_url, settings.alerts.webhook_timeout_s))
    if metrics_registry is not None:
        sinks.append(PrometheusSink(metrics_registry))
    return Alerter(sinks)


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


def quarantined(settings: Settings) -> list[dict[str, Any]]:
    from prodguard.ingestion.quarantine import Quarantine

    return Quarantine(settings.paths.quarantine_dir).list()


def feature_store(settings: Settings) -> Any:
    from prodguard.features.feast_adapter import FeastStore

    return FeastStore(settings)


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


def _model_name(settings: Settings) -> str:
    if settings.model is None:
        raise ConfigError("prodguard.yaml has no 'model' section; add one (see README)")
    return settings.model.name


def registry_operations(settings: Settings, with_checks: bool = False) -> RegistryOperations:
    """Alias operations on the configured registry; ``with_checks`` adds promotion checks."""
    from prodguard.registry.audit import AuditLog
    from prodguard.registry.config import load_registry_config
    from prodguard.registry.mlflow_adapter import MlflowRegistry
    from prodguard.registry.operations import RegistryOperations

    config = load_registry_config(settings)
    registry = MlflowRegistry(config, _model_name(settings))
    check = promotion_check(registry, feature_store(settings), settings) if with_checks else None
    return RegistryOperations(
        registry,
        AuditLog(config.audit_uri),
        clock=clock_for(settings),
        promotion_check=check,
        standby_hours=settings.rollout.standby_hours,
    )


def promotion_check(
    registry: Any, store: Any, settings: Settings | None = None
) -> Callable[[int], None]:
    """Refuse a version whose input contract differs from the feature service, or that does not
    load and score one row (the same verification serving applies before a swap), or — with
    ``rollout.require_drill`` — that has no passed rollback drill recent enough."""
    from prodguard.features.feast_adapter import feature_contract
    from prodguard.rollout.drill import drill_gate
    from prodguard.serving.models import load_verified

    def check(version: int) -> None:
        if settings is not None and settings.rollout.require_drill:
            drill_gate(registry, version, settings.rollout.drill_max_age_hours, datetime.now(UTC))
        load_verified(registry, feature_contract(store.versions()), version)

    return check


def train(settings: Settings, start: datetime, end: datetime, actor: str) -> TrainResult:
    """Train on ``[start, end)``, evaluate on the following days, register as candidate."""
    from prodguard.ingestion.ledger import Ledger
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


LINEAGE_SUMMARY = (
    "train_window",
    "eval_window",
    "rows_train",
    "rows_eval",
    "rows_unlabelled",
    "dataset_digest",
    "feature_service",
    "feature_views",
    "suite_digests",
    "code_version",
    "eval.auc",
    "eval.log_loss",
    "eval.precision",
    "eval.recall",
    "eval.ece",
    "demoted_reason",
    "baseline",
)


def version_summary(version: Any) -> dict[str, Any]:
    tags = version.tags
    summary: dict[str, Any] = {"version": version.version, "created": version.created.isoformat()}
    for key in LINEAGE_SUMMARY:
        value = tags.get(f"prodguard.{key}")
        if value is not None and key in ("feature_views", "suite_digests"):
            value = json.loads(value)
        summary[key] = value
    return summary


def status(settings: Settings) -> dict[str, Any]:
    """Aliases with lineage, the standby's age and retention, the declared rollback triggers."""
    from prodguard.rollout.triggers import describe as describe_triggers

    operations = registry_operations(settings)
    reconciled = operations.reconcile()  # an unaudited move is recorded, not undone
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
        "traffic": traffic.to_json() | {"describe": traffic.describe()},
        "triggers": describe_triggers(settings.rollout.triggers, settings.monitoring.kpi),
    }


def stores(settings: Settings, registry_config: Any) -> dict[str, str]:
    """Where each kind of state lives (credentials redacted)."""
    from prodguard.errors import redact
    from prodguard.features.feast_adapter import render_store_config

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


def mlflow_ui_command(config: Any) -> str:
    """The exact command that opens the MLflow UI on this store (credentials redacted), or
    the MLflow server's address when the registry is one."""
    from prodguard.errors import redact

    if config.tracking_uri.startswith(("http://", "https://")):
        return f"open {redact(config.tracking_uri)}"
    return (
        f".venv/bin/mlflow server --backend-store-uri {redact(config.tracking_uri)} "
        f"--default-artifact-root {config.artifact_location} --host 127.0.0.1 --port 5000"
    )


# ---- serving -----------------------------------------------------------------------------


def prediction_log(settings: Settings, serving: bool = False) -> Any:
    """The shared prediction log: PostgreSQL at ``storage.url`` (production), else the SQLite
    file of the data folder. ``serving``: the writer of a serving process (``log_sync``, WAL
    checkpoints off the request path); readers (monitors, guard, reports) use ``NORMAL``."""
    from prodguard.serving.prediction_log import (
        SERVING_CHECKPOINT_S,
        PostgresPredictionLog,
        SqlitePredictionLog,
    )

    if settings.storage.url:
        return PostgresPredictionLog(settings.storage.url)
    if serving:
        sync = settings.serving.log_sync if settings.serving else "FULL"
        return SqlitePredictionLog(
            settings.paths.prediction_log, sync, checkpoint_every_s=SERVING_CHECKPOINT_S
        )
    return SqlitePredictionLog(settings.paths.prediction_log, "NORMAL")


@dataclass
class Serving:
    """Everything the service needs, built from the settings."""

    settings: Settings
    predictor: Any
    follower: Any
    log: Any
    request_model: type
    clock: Clock

    def ready(self) -> bool:
        """Both models loaded (or no standby alias, or a standby refused with an alert)."""
        state = self.follower.state
        follower = self.follower
        return state.champion is not None and (
            state.standby is not None or follower.standby_unset or follower.standby_refused
        )


def build_serving(settings: Settings, metrics: Any = None, clock: Any = None) -> Serving:
    from prodguard.features.feast_adapter import FeastStore, feature_contract
    from prodguard.rollout.policy import read_targets
    from prodguard.serving.models import ModelFollower, load_verified

    serving = _serving_settings(settings)
    clock = clock or clock_for(settings)
    store = FeastStore(settings, serving=True)
    registry = registry_operations(settings).registry
    follower = ModelFollower(
        targets=lambda: read_targets(registry),
        load=lambda version: load_verified(registry, feature_contract(store.versions()), version),
        alerter=alerter_for(settings),
        poll_seconds=serving.poll_seconds,
        clock=clock,
        on_swap=getattr(metrics, "swapped", None),
    )
    log = prediction_log(settings, serving=True)
    predictor = build_predictor(
        settings,
        store,
        lambda: follower.state,
        log,
        views=store.versions(),
        clock=clock,
        metrics=metrics,
    )
    request_model = import_object(serving.request_model, "serving.request_model")
    return Serving(settings, predictor, follower, log, request_model, clock)


def _serving_settings(settings: Settings) -> Any:
    if settings.serving is None or settings.model is None:
        raise ConfigError("prodguard.yaml needs 'model' and 'serving' sections to serve")
    return settings.serving


def build_predictor(
    settings: Settings,
    store: Any,
    state: Callable[[], Any],
    log: Any,
    *,
    views: list[Any] | None = None,
    clock: Any = None,
    metrics: Any = None,
    shadow_sample: float | None = None,
) -> Any:
    """The request path of the settings over ``store`` (Feast, or a replay's as-of store);
    ``views`` default to the feature store's current versions."""
    from prodguard.contracts.row_checks import RowContract
    from prodguard.contracts.suites import read_suite
    from prodguard.serving.engine import (
        AnswerLog,
        FeatureLookup,
        ModelScoring,
        Predictor,
        RequestChecks,
        Shadow,
        StoreFeature,
    )
    from prodguard.training.dataset import load_request_features

    serving = _serving_settings(settings)
    model = settings.model
    assert model is not None
    suites = {name: read_suite(settings.suite_path(name)) for name in settings.sources}
    views = feature_store(settings).versions() if views is None else views
    unknown_sources = sorted({v.source for v in views} - set(suites))
    if unknown_sources:
        raise ConfigError(
            f"feature views read source(s) {unknown_sources} that prodguard.yaml does not declare"
        )
    features = [
        StoreFeature(
            name, v.name, v.ttl_seconds, v.join_keys, RowContract.from_suites([suites[v.source]])
        )
        for v in views
        for name, _ in v.features
    ]
    names = {f.name for f in features}
    request_fields = set(import_object(serving.request_model, "serving.request_model").model_fields)
    for key, listed, known, what in (
        (
            "critical_features",
            serving.critical_features,
            names | request_fields,
            "store features or request fields",
        ),
        ("fallback_overrides", list(serving.fallback_overrides), names, "store features"),
    ):
        unknown = sorted(set(listed) - known)
        if unknown:
            raise ConfigError(f"serving.{key}: {unknown} are not {what}")
    critical = serving.critical_features
    scoring = ModelScoring(model.threshold, settings.rollout.sticky_fields or model.entity_keys)
    answers = AnswerLog(log, model.name)
    sample = serving.shadow_sample if shadow_sample is None else shadow_sample
    return Predictor(
        state=state,
        checks=RequestChecks(RowContract.from_suites([suites[model.source]]), critical),
        features=FeatureLookup(
            store,
            features,
            model.entity_keys,
            serving.feature_timeout_ms / 1000,
            fallback=serving.fallback,
            fallback_overrides=serving.fallback_overrides,
            critical=critical,
            clock=clock,
        ),
        derive=load_request_features(model),
        scoring=scoring,
        answers=answers,
        shadow=Shadow(scoring, answers, sample, metrics),
        clock=clock,
        metrics=metrics,
    )


SERVICE = "prodguard.serving.bento_service:PredictionService"


def serve_command(settings: Settings, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment that run the prediction service.

    Each service gets a BentoML home of its own (``<data_dir>/state/bentoml/<host>-port-<port>``):
    BentoML keeps Prometheus' multiprocess files there and wipes them when a service starts, so
    a shared home (the default ``~/bentoml``, or one folder on a data volume that replicas on
    several hosts mount) would reset and mix the metrics of every service — replicas included."""
    import os
    import socket
    import sys
    from pathlib import Path

    if settings.serving is None:
        raise ConfigError("prodguard.yaml has no 'serving' section; add one (see README)")
    if not 0 < port < 65536:
        raise InputError("--port must be between 1 and 65535")
    bentoml = Path(sys.executable).with_name("bentoml")
    env = {
        **os.environ,
        "PRODGUARD_CONFIG": str(settings.config_path),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(
            settings.paths.state_dir / "bentoml" / f"{socket.gethostname()}-port-{port}"
        ),
    }
    return [str(bentoml), "serve", SERVICE, "--host", host, "--port", str(port)], env
