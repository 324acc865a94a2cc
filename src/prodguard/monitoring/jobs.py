"""Monitoring use cases: record a staging baseline, run the monitors, write drift reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from prodguard import wiring
from prodguard.alert_store import PostgresAlerts
from prodguard.alerts import Alert, AlertGate, FileGateState
from prodguard.clock import Clock
from prodguard.config import Settings
from prodguard.errors import InputError, NoDataError, RegistryError, StorageError
from prodguard.features.as_of import AsOfFeatures
from prodguard.features.feast_adapter import ViewVersion, feature_contract
from prodguard.ingestion.offline import OfflineStore
from prodguard.loops import repeat
from prodguard.monitoring.alerting import MonitorGauges, alerts_of, retired
from prodguard.monitoring.baseline import Baseline, score_sample, summarise
from prodguard.monitoring.evidently_report import write_drift_report
from prodguard.monitoring.measures import (
    class_scores,
    feature_references,
    judged_features,
    kpi_cost_function,
    measure,
    score_reference,
)
from prodguard.monitoring.monitor import (
    Monitor,
    VersionReference,
    WindowReport,
    read_version_reference,
)
from prodguard.monitoring.psi import CategoricalBins
from prodguard.monitoring.replay import SINGLE_SHARE, ReplayResult, replay
from prodguard.monitoring.windows import WindowSpec, tile
from prodguard.registry import lineage
from prodguard.registry.operations import AliasState, RegistryOperations
from prodguard.registry.ports import VersionReader
from prodguard.rollout.policy import TrafficPolicy
from prodguard.serving.engine import OnlineFeatures, Predictor
from prodguard.serving.fast_path import load_verified
from prodguard.serving.models import ServingState
from prodguard.serving.prediction_log import ANSWERS, PredictionLog, SqlitePredictionLog
from prodguard.tasks import ModelScorer, normalise, spec_from_tags
from prodguard.training.dataset import build_frame, check_model_source, is_categorical
from prodguard.training.reference import reference_stats

_log = logging.getLogger("prodguard.monitoring")


def version_reference(registry: VersionReader, version: int) -> VersionReference:
    """A version's training feature bins and (if recorded) its staging baseline."""
    return read_version_reference(registry, version)


def resolve_version(
    operations: RegistryOperations, version: int | None, prefer: tuple[str, ...]
) -> int:
    """``version`` if given (and registered), else the first of the ``prefer`` aliases set."""
    if version is not None:
        operations.registry.version(version)  # unknown: RegistryError naming it
        return version
    aliases = operations.state().as_dict()
    for alias in prefer:
        found = aliases.get(alias)
        if found is not None:
            return found
    raise InputError(f"no {' or '.join(prefer)} version is set; pass --version")


# ---- baselines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineResult:
    baseline: Baseline
    replay: ReplayResult
    log_path: Path
    seconds: float


def staging_log_path(settings: Settings, version: int) -> Path:
    return settings.paths.staging_dir / f"baseline-v{version}.db"


def record_baseline(
    settings: Settings,
    start: datetime,
    end: datetime,
    version: int | None = None,
    *,
    keep: Callable[[str], bool] | None = None,
    store_baseline: bool = True,
) -> BaselineResult:
    """Replay ``[start, end)`` through the serving path with ``version`` (default: candidate,
    else champion) into a fresh staging log, and record each metric's spread across windows
    with the version in the registry."""
    began = time.perf_counter()
    if end <= start:
        raise InputError("--end must be after --start")
    operations = wiring.registry_operations(settings)
    version = resolve_version(operations, version, ("candidate", "champion"))
    path = staging_log_path(settings, version)
    partial = path.with_name(f"{path.name}.partial")  # the last log stays until this one is done
    _remove_log(partial)
    try:
        log = SqlitePredictionLog(partial, "NORMAL")
        try:
            replayed = replay_version(
                settings, operations.registry, version, start, end, log, keep=keep
            )
            reference = version_reference(operations.registry, version)
            baseline = baseline_from_log(settings, log, version, start, end, reference)
        finally:
            log.close()  # the last connection: SQLite folds the WAL into the file, removes it
        if Path(f"{partial}-wal").exists():
            raise StorageError(f"staging log {partial}: its WAL was left at close; run again")
        if store_baseline:
            operations.registry.log_json_artifact(
                version, lineage.BASELINE_JSON, baseline.to_json()
            )
            operations.registry.set_version_tag(
                version, lineage.BASELINE, f"{start.isoformat()}/{end.isoformat()}"
            )
    except BaseException:
        _remove_log(partial)
        raise
    _remove_log(path)
    partial.replace(path)
    return BaselineResult(baseline, replayed, path, time.perf_counter() - began)


def replay_predictor(
    settings: Settings,
    views: list[ViewVersion],
    log: PredictionLog,
    wrap_store: Callable[[OnlineFeatures, Clock], OnlineFeatures] | None = None,
) -> Callable[[Callable[[], ServingState], Clock], Predictor]:
    """Builds the real request path over the as-of feature store for a replay's clock (the
    model settings checked against the source's columns first: a replay reads its rows)."""

    check_model_source(settings, views)
    offline = OfflineStore(settings.paths.offline_dir)
    timestamps = {name: s.timestamp for name, s in settings.sources.items()}

    def predictor_for(state: Callable[[], ServingState], clock: Clock) -> Predictor:
        store: OnlineFeatures = AsOfFeatures(offline, views, clock, timestamps)
        if wrap_store is not None:
            store = wrap_store(store, clock)
        return wiring.build_predictor(
            settings,
            store,
            state,
            log,
            views=views,
            clock=clock,
            shadow_sample=0.0,
            shed_shadow=False,  # a replay's shadow rows are complete, whatever the machine's load
        )

    return predictor_for


def replay_version(
    settings: Settings,
    registry: VersionReader,
    version: int,
    start: datetime,
    end: datetime,
    log: PredictionLog,
    *,
    keep: Callable[[str], bool] | None = None,
    wrap_store: Callable[[OnlineFeatures, Clock], OnlineFeatures] | None = None,
    single_share: float | None = None,
    rollout: TrafficPolicy | None = None,
) -> ReplayResult:
    """Serve ``[start, end)`` with ``version`` as champion (and ``rollout``'s version in canary
    or shadow traffic) into ``log`` over the as-of feature store (``wrap_store`` may inject
    faults into it)."""

    views = wiring.feature_store(settings).versions()
    contract = feature_contract(views)
    state = ServingState(champion=load_verified(registry, contract, version))
    if rollout is not None and rollout.version is not None:
        rolled = load_verified(registry, contract, rollout.version)
        state = ServingState(champion=state.champion, rollout=rolled, policy=rollout)
    predictor_for = replay_predictor(settings, views, log, wrap_store)
    return replay(
        settings,
        state,
        predictor_for,
        log,
        start,
        end,
        prefix=f"v{version}-",
        keep=keep,
        single_share=SINGLE_SHARE if single_share is None else single_share,
    )


def _remove_log(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def baseline_from_log(
    settings: Settings,
    log: PredictionLog,
    version: int,
    start: datetime,
    end: datetime,
    reference: VersionReference,
) -> Baseline:
    spec = WindowSpec.from_settings(settings.monitoring.window)
    frame = log.window(start, end, role="champion")
    frame = frame[frame["version"] == version]
    if len(frame) < spec.min_rows:
        raise NoDataError(
            f"the staging replay logged {len(frame)} predictions of v{version}; a baseline needs "
            f"at least one window of {spec.min_rows}; choose a longer period or lower "
            "monitoring.window.min_rows to your traffic"
        )
    scores = score_reference(frame["probability"].to_numpy("float64"), settings.monitoring.bins)
    staging_stats = reference_stats(_served_features(frame, reference))
    calendar = settings.monitoring.calendar_features
    staging = judged_features(feature_references(staging_stats), calendar, spec.minutes)
    windows = [
        measure(
            w.frame,
            features=judged_features(reference.features, calendar, spec.minutes) or {},
            scores=scores,
            staging=staging,
            kpi=settings.monitoring.kpi,
            matured=True,
            errors=log.errors(w.start, w.end),
            min_rows=spec.min_rows,
            spec=reference.spec,
            cost=kpi_cost_function(settings.monitoring.kpi),
        )
        for w in tile(spec, frame, start, end)
    ]
    judged = [w for w in windows if w[0].value is not None and w[0].value >= spec.min_rows]
    if len(judged) < 2:
        raise NoDataError(
            f"the staging period gives {len(judged)} full window(s) of {spec.describe()}; a spread "
            "needs at least 2 (ideally 20+): choose a longer period or smaller windows"
        )
    prefix = f"v{version}-"  # replay_version's request ids: the same key in every version's
    keys = [r.removeprefix(prefix) for r in frame["request_id"].astype(str)]
    values = {"score.mean": frame["probability"].to_numpy("float64")}
    sample_keys, sample = score_sample(keys, {**values, **class_scores(frame, reference.spec)})
    return Baseline(
        model_version=version,
        start=start.isoformat(),
        end=end.isoformat(),
        window=spec.to_json(),
        metrics=summarise(judged),
        score_edges=[float(e) for e in scores.bins.edges],  # type: ignore[union-attr]
        score_fractions=[float(f) for f in scores.fractions],
        rows=len(frame),
        created=datetime.now(UTC).isoformat(),
        feature_stats=staging_stats,
        details={"windows": len(judged), "windows_short": len(windows) - len(judged)},
        sample_keys=sample_keys,
        score_sample=sample,
    )


def _served_features(frame: pd.DataFrame, reference: VersionReference) -> pd.DataFrame:
    """The logged model inputs as columns, typed as in training (categories stay text)."""
    served = pd.DataFrame(frame["features"].tolist())
    for column in served.columns:
        known = reference.features.get(column)
        if known is not None and isinstance(known.bins, CategoricalBins):
            served[column] = served[column].astype(object)
        else:
            served[column] = pd.to_numeric(served[column], errors="coerce").astype("float64")
    return served


# ---- monitors ------------------------------------------------------------------------------


@dataclass
class MonitorRun:
    reports: list[WindowReport]
    sent: list[Alert] = field(default_factory=list)
    seconds: float = 0.0


def build_monitor(
    settings: Settings, clock: Clock | None = None, log: PredictionLog | None = None
) -> Monitor:
    registry = wiring.registry_operations(settings).registry
    return Monitor(
        log or wiring.prediction_log(settings),
        lambda version: version_reference(registry, version),
        settings.monitoring,
        clock or wiring.clock_for(settings),
        aggregates=wiring.aggregate_store(settings) if log is None else None,
        latency_budget_ms=settings.rollout.triggers.p99_latency_ms,
    )


def served_versions(aliases: AliasState, policy: TrafficPolicy) -> set[int]:
    """The versions that serve or score traffic: champion, standby and a rollout's version."""
    found = {aliases.champion, aliases.standby, policy.version if policy.active else None}
    return {v for v in found if v is not None}


def alert_gate(settings: Settings, metrics_registry: Any = None) -> AlertGate:
    """The gate monitors send through: open conditions in ``storage.url`` (shared by every
    monitor of the deployment), else in the state folder."""
    alerter = wiring.alerter_for(settings, metrics_registry)
    if settings.storage.url:
        return AlertGate(PostgresAlerts(settings.storage.url).gate("monitor"), alerter)
    return AlertGate(FileGateState(settings.paths.state_dir / "open_alerts.json"), alerter)


def run_monitor(
    monitor: Monitor,
    gate: AlertGate | None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    gauges: MonitorGauges | None = None,
    now: datetime | None = None,
    served: Callable[[], Collection[int]] | None = None,
) -> MonitorRun:
    """One monitoring pass: the latest window, or every closed window of ``[start, end)``;
    alerts go through ``gate`` (de-duplicated; windows judged before alert nothing again),
    values to ``gauges``. ``served``: the versions serving now; on a pass over the latest
    window, the open conditions of a version neither served nor in the window resolve (it was
    rolled back or replaced, and its rows have left the window: nothing else would clear them).
    A version still in the window is judged as before, so its conditions do not flap."""
    began = time.perf_counter()
    if (start is None) != (end is None):
        raise InputError("give both --start and --end, or neither (the latest window)")
    reports = (
        monitor.over(start, end) if start is not None and end is not None else monitor.latest()
    )
    run = MonitorRun(reports)
    stamp = now or monitor.now()
    if gauges is not None:
        gauges.publish(reports, stamp)
    if gate is not None and reports:
        judged = gate.judged_through()
        fresh = [r for r in reports if judged is None or r.end > judged]
        raised, cleared = alerts_of(fresh, stamp)
        if served is not None and start is None:  # judged in this pass: alerts_of decides
            judged_now = {r.model_version for r in reports if r.model_version is not None}
            cleared += retired(gate.open_conditions(), set(served()) | judged_now, stamp)
        run.sent = gate.update(raised, cleared, through=max(r.end for r in reports))
    if gate is not None:
        gate.alerter.sweep(stamp)  # incidents quiet for their gap resolve
    run.seconds = time.perf_counter() - began
    return run


def watch(
    settings: Settings,
    on_run: Callable[[MonitorRun], None],
    *,
    every: float | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run the monitors once (``every`` None) or every ``every`` seconds (``runs`` times, or
    until interrupted), serving Prometheus gauges on ``metrics_port`` when given. A failing run
    (e.g. the log unreadable) is reported as inconclusive and the loop goes on."""
    if every is not None and start is not None:
        raise InputError("--every watches the latest window; drop --start/--end")
    if every is not None and every <= 0:
        raise InputError("--every must be a positive number of seconds")
    if metrics_port is not None and every is None:
        raise InputError("--metrics-port serves gauges while watching; give --every too")
    if metrics_port is not None and not 0 < metrics_port < 65536:
        raise InputError("--metrics-port must be between 1 and 65535")
    if (start is None) != (end is None):
        raise InputError("give both --start and --end, or neither (the latest window)")
    if start is not None and end is not None and end <= start:
        raise InputError("--end must be after --start")
    registry = gauges = None
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        gauges = MonitorGauges(registry)
        start_http_server(metrics_port, addr=metrics_host, registry=registry)
    monitor = build_monitor(settings)
    gate = alert_gate(settings, registry)
    operations = wiring.registry_operations(settings)

    def monitors() -> MonitorRun:
        try:
            return run_monitor(
                monitor,
                gate,
                start=start,
                end=end,
                gauges=gauges,
                served=lambda: served_versions(*operations.targets()),
            )
        except (RegistryError, StorageError) as error:
            if every is None:  # a single pass fails with the error, alerted as inconclusive
                failed(error)
            raise

    def failed(error: Exception) -> MonitorRun:
        now = monitor.now()
        report = WindowReport(now, now, None, 0, "inconclusive", reason=f"monitor failed: {error}")
        run = MonitorRun([report])
        try:
            run.sent = gate.update(*alerts_of(run.reports, now))
        except StorageError as undelivered:
            _log.error("monitor failure not alerted: %s", undelivered)
        return run

    repeat(monitors, on_run, every=every, failed=failed, runs=runs, sleep=sleep)


# ---- Evidently reports ---------------------------------------------------------------------


def drift_report(
    settings: Settings,
    start: datetime,
    end: datetime,
    version: int | None = None,
    log: PredictionLog | None = None,
    now: datetime | None = None,
) -> Any:
    """An Evidently drift report of the served window ``[start, end)`` against the version's
    training window (features as the model saw them, and its scores), into the reports folder."""
    # lazy: scikit-learn loads only for the commands that need it
    from prodguard.training.model import prepare

    if end <= start:
        raise InputError("--end must be after --start")
    operations = wiring.registry_operations(settings)
    registry = operations.registry
    version = resolve_version(operations, version, ("champion",))
    log = log or wiring.prediction_log(settings)
    served = log.window(start, end, role=ANSWERS)
    served = served[served["version"] == version]
    if served.empty:
        raise NoDataError(
            f"no predictions of v{version} were logged in [{start:%Y-%m-%d}, {end:%Y-%m-%d}); "
            "choose a window with traffic (see `prodguard monitor`)"
        )
    window = registry.version(version).tags.get(lineage.TRAIN_WINDOW)
    if not window:
        raise RegistryError(f"v{version} has no recorded training window; train it with prodguard")
    train_start, train_end = (pd.Timestamp(t).to_pydatetime() for t in window.split("/"))
    training = build_frame(settings, wiring.feature_store(settings), train_start, train_end)
    limit = settings.monitoring.reports_max_rows
    task = spec_from_tags(registry.version(version).tags)
    scorer = ModelScorer(registry.load_model(version), task.task)
    reference = training.features.assign(
        prediction=normalise(task, scorer.raw(prepare(training.features))).score
    )
    current = pd.DataFrame(served["features"].tolist())[list(training.features.columns)]
    current["prediction"] = served["probability"].to_numpy("float64")
    categorical = [c for c in training.features.columns if is_categorical(training.features[c])]
    numeric = [c for c in training.features.columns if c not in categorical]
    for column in numeric:
        current[column] = pd.to_numeric(current[column], errors="coerce")
    return write_drift_report(
        reference,
        current,
        numeric=numeric,
        categorical=categorical,
        prediction="prediction",
        reports_dir=settings.paths.reports_dir,
        name=f"drift_v{version}_{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}",
        title=f"v{version} served {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} vs training "
        f"{train_start:%Y-%m-%d} .. {train_end:%Y-%m-%d}",
        now=now or datetime.now(UTC),
        max_rows=limit,
        psi_threshold=settings.monitoring.psi.warning,
        details={
            "model_version": version,
            "window": f"{start.isoformat()}/{end.isoformat()}",
            "training_window": window,
        },
    )
