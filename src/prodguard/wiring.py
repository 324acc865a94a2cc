"""Components built from the settings: the one place that chooses the implementations (clock,
alert sinks, feature store, registry, prediction log, the request path) for a configuration.

Use cases (``app``, ``monitoring.jobs``, ``rollout.jobs``, ``rollout.drill``), the service and the
benchmark ask this module for their components; nothing below it imports it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prodguard.alert_store import PostgresAlerts
from prodguard.alerts import (
    Alerter,
    AlertSink,
    FileGateState,
    GateState,
    JsonlSink,
    LogSink,
    PrometheusSink,
    WebhookSink,
)
from prodguard.clock import Clock, FileClock, SystemClock
from prodguard.config import ServingSettings, Settings
from prodguard.contracts.row_checks import RowContract
from prodguard.contracts.suites import read_suite
from prodguard.errors import ConfigError
from prodguard.features.feast_adapter import FeastStore, ViewVersion, feature_contract
from prodguard.features.ports import FeatureVersions
from prodguard.incidents import (
    FileIncidentRecord,
    Grouping,
    IncidentChannel,
    IncidentGauges,
    IncidentRecord,
    IncidentSink,
    WebhookChannel,
    feature_sources,
)
from prodguard.monitoring.alerting import MONITOR_ALERT_TYPES
from prodguard.monitoring.measures import kpi_cost_function
from prodguard.monitoring.monitor import read_version_reference
from prodguard.project import load_request_model
from prodguard.registry.audit import AuditLog
from prodguard.registry.config import load_registry_config
from prodguard.registry.mlflow_adapter import MlflowRegistry
from prodguard.registry.operations import ObservedTargets, RegistryOperations, default_actor
from prodguard.registry.ports import ModelRegistry
from prodguard.rollout.policy import drill_gate
from prodguard.serving.aggregate_store import (
    AggregateStore,
    AggregatingLog,
    Aggregator,
    PostgresAggregateStore,
    SqliteAggregateStore,
)
from prodguard.serving.engine import (
    AnswerLog,
    FeatureLookup,
    Metrics,
    ModelScoring,
    OnlineFeatures,
    Predictor,
    RequestChecks,
    Shadow,
    StoreFeature,
)
from prodguard.serving.fast_path import load_verified
from prodguard.serving.models import ModelFollower, ServingState
from prodguard.serving.prediction_log import (
    SERVING_CHECKPOINT_S,
    PostgresPredictionLog,
    PredictionLog,
    SqlitePredictionLog,
)
from prodguard.training.dataset import load_request_columns, load_request_features


def clock_for(settings: Settings) -> Clock:
    """The system clock, or the simulated time of ``clock.file`` (shared by every process)."""
    if settings.clock.file is not None:
        return FileClock(settings.clock.file)
    return SystemClock()


def alert_record(settings: Settings) -> JsonlSink | PostgresAlerts:
    """Where alerts are recorded durably: the ``alerts`` table of ``storage.url`` (production),
    else ``<data_dir>/alerts.jsonl``. Both ``send`` and ``read``."""
    if settings.storage.url:
        return PostgresAlerts(settings.storage.url)
    return JsonlSink(settings.paths.alerts_file)


def alerter_for(settings: Settings, metrics_registry: Any = None) -> Alerter:
    """Every alert of prodguard goes to the log, the durable alert record and the incidents
    (which tell the webhook, when ``alerts.webhook_url`` is set, of incidents rather than of
    each alert) and, given a Prometheus registry, its alert counter and incident gauges."""
    sinks: list[AlertSink] = [LogSink(), alert_record(settings)]
    sinks.append(incident_sink(settings, metrics_registry))
    if metrics_registry is not None:
        sinks.append(PrometheusSink(metrics_registry, MONITOR_ALERT_TYPES))
    return Alerter(sinks)


def incident_store(settings: Settings) -> tuple[GateState, IncidentRecord]:
    """Where incidents are kept: the open ones in a locked document and every incident's latest
    state in a record; in ``storage.url`` (production) or beside ``alerts.jsonl``."""
    if settings.storage.url:
        store = PostgresAlerts(settings.storage.url)
        return store.gate("incidents"), store.incident_record()
    return (
        FileGateState(settings.paths.state_dir / "open_incidents.json"),
        FileIncidentRecord(settings.paths.data_dir / "incidents.jsonl"),
    )


def incident_sink(settings: Settings, metrics_registry: Any = None) -> IncidentSink:
    """Alerts grouped into incidents by cause: a data source with the features its feature
    views feed (read from the feature store when a drift alert first needs it), a model
    version, a version's latency."""
    channels: list[IncidentChannel] = []
    if settings.alerts.webhook_url:
        webhook = WebhookSink(settings.alerts.webhook_url, settings.alerts.webhook_timeout_s)
        channels.append(WebhookChannel(webhook))
    state, record = incident_store(settings)
    return IncidentSink(
        state,
        record,
        Grouping(settings.sources, lambda: feature_sources(feature_store(settings).versions())),
        channels,
        gap=timedelta(hours=settings.alerts.incident_gap_hours),
        gauges=IncidentGauges(metrics_registry) if metrics_registry is not None else None,
    )


def feature_store(settings: Settings) -> FeastStore:
    return FeastStore(settings)


def model_name(settings: Settings) -> str:
    if settings.model is None:
        raise ConfigError("prodguard.yaml has no 'model' section; add one (see README)")
    return settings.model.name


def registry_operations(settings: Settings, with_checks: bool = False) -> RegistryOperations:
    """Alias operations on the configured registry; ``with_checks`` adds promotion checks."""
    config = load_registry_config(settings)
    registry = MlflowRegistry(config, model_name(settings))
    check = promotion_check(registry, feature_store(settings), settings) if with_checks else None
    return RegistryOperations(
        registry,
        AuditLog(config.audit_uri),
        clock=clock_for(settings),
        promotion_check=check,
        standby_hours=settings.rollout.standby_hours,
        alerter=alerter_for(settings),
    )


def promotion_check(
    registry: ModelRegistry, store: FeatureVersions, settings: Settings | None = None
) -> Callable[[int], None]:
    """Refuse a version whose input contract differs from the feature service, or that does not
    load and score one row (the same verification serving applies before a swap), or — with
    ``rollout.require_drill`` — that has no passed rollback drill recent enough."""

    def check(version: int) -> None:
        if settings is not None and settings.rollout.require_drill:
            drill_gate(registry, version, settings.rollout.drill_max_age_hours, datetime.now(UTC))
        load_verified(registry, feature_contract(store.versions()), version)

    return check


def prediction_log(settings: Settings, serving: bool = False) -> PredictionLog:
    """The shared prediction log: PostgreSQL at ``storage.url`` (production), else the SQLite
    file of the data folder. ``serving``: the writer of a serving process (``log_sync``, WAL
    checkpoints off the request path); readers (monitors, guard, reports) use ``NORMAL``."""
    if settings.storage.url:
        return PostgresPredictionLog(settings.storage.url)
    if serving:
        sync = settings.serving.log_sync if settings.serving else "FULL"
        return SqlitePredictionLog(
            settings.paths.prediction_log, sync, checkpoint_every_s=SERVING_CHECKPOINT_S
        )
    return SqlitePredictionLog(settings.paths.prediction_log, "NORMAL")


def aggregate_store(settings: Settings) -> AggregateStore | None:
    """The window aggregates (``monitoring.aggregates``): tables in ``storage.url``, else a
    SQLite file next to the prediction log; None when they are off."""
    aggregates = settings.monitoring.aggregates
    if not aggregates.enabled:
        return None
    if settings.storage.url:
        return PostgresAggregateStore(settings.storage.url, aggregates.bucket_seconds)
    return SqliteAggregateStore(settings.paths.aggregates, aggregates.bucket_seconds)


def aggregating(
    settings: Settings, log: PredictionLog, registry: ModelRegistry, clock: Clock
) -> PredictionLog:
    """``log`` as a serving replica writes it: with aggregates on, what it commits is also
    summarised into the aggregate store (off the request path)."""
    store = aggregate_store(settings)
    if store is None:
        return log
    monitoring = settings.monitoring
    aggregator = Aggregator(
        store,
        lambda version: read_version_reference(registry, version),
        monitoring.aggregates,
        monitoring.kpi,
        kpi_cost_function(monitoring.kpi),
        settings.rollout.triggers.p99_latency_ms,
        clock,
        interval=f"replica {default_actor()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
    )
    return AggregatingLog(log, aggregator)


@dataclass
class Serving:
    """Everything the service needs, built from the settings."""

    settings: Settings
    predictor: Predictor
    follower: ModelFollower
    log: PredictionLog
    request_model: type
    clock: Clock

    def ready(self) -> bool:
        """Both models loaded (or no standby alias, or a standby refused with an alert)."""
        state = self.follower.state
        follower = self.follower
        return state.champion is not None and (
            state.standby is not None or follower.standby_unset or follower.standby_refused
        )


def build_serving(
    settings: Settings, metrics: Metrics | None = None, clock: Clock | None = None
) -> Serving:
    serving = serving_settings(settings)
    clock = clock or clock_for(settings)
    store = FeastStore(settings, serving=True)
    operations = registry_operations(settings)
    registry = operations.registry
    follower = ModelFollower(
        # an alias move without an audit record is recorded when this replica first sees it
        targets=ObservedTargets(operations, f"serving replica {default_actor()}:{os.getpid()}"),
        load=lambda version: load_verified(registry, feature_contract(store.versions()), version),
        alerter=alerter_for(settings),
        poll_seconds=serving.poll_seconds,
        clock=clock,
        on_swap=getattr(metrics, "swapped", None),
    )
    log = aggregating(settings, prediction_log(settings, serving=True), registry, clock)
    predictor = build_predictor(
        settings,
        store,
        lambda: follower.state,
        log,
        views=store.versions(),
        clock=clock,
        metrics=metrics,
    )
    request_model = load_request_model(settings)
    return Serving(settings, predictor, follower, log, request_model, clock)


def serving_settings(settings: Settings) -> ServingSettings:
    if settings.serving is None or settings.model is None:
        raise ConfigError("prodguard.yaml needs 'model' and 'serving' sections to serve")
    return settings.serving


def build_predictor(
    settings: Settings,
    store: OnlineFeatures,
    state: Callable[[], ServingState],
    log: PredictionLog,
    *,
    views: list[ViewVersion] | None = None,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    shadow_sample: float | None = None,
    shed_shadow: bool = True,
) -> Predictor:
    """The request path of the settings over ``store`` (Feast, or a replay's as-of store);
    ``views`` default to the feature store's current versions. ``shed_shadow`` False (a
    replay): shadow work waits for a backlog slot instead of being dropped."""
    serving = serving_settings(settings)
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
    request_fields = set(load_request_model(settings).model_fields)
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
            fallback_overrides=dict[str, str](serving.fallback_overrides),
            critical=critical,
            clock=clock,
        ),
        derive=load_request_features(model),
        derive_columns=load_request_columns(settings),
        scoring=scoring,
        answers=answers,
        shadow=Shadow(
            scoring,
            answers,
            sample,
            metrics,
            serving.shadow_burst if sample > 0 else 0,
            shed=shed_shadow,
        ),
        clock=clock,
        metrics=metrics,
    )
