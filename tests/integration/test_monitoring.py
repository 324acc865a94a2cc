"""Monitors on a real prediction log; the staging replay and its as-of feature store on the
ingested flights data; baselines stored with the model version in MLflow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard.clock import FixedClock
from prodguard.config import KpiSettings, MonitoringSettings, WindowSettings
from prodguard.errors import ConfigError, RegistryError
from prodguard.monitoring.baseline import Baseline, MetricBaseline
from prodguard.monitoring.measures import feature_references
from prodguard.monitoring.monitor import Monitor, VersionReference
from prodguard.serving.prediction_log import PredictionRecord, SqlitePredictionLog
from tests.conftest import DAILY_WINDOWS, copy_project, utc

pytestmark = pytest.mark.integration
T0 = datetime(2013, 6, 1, tzinfo=UTC)
STATS = {
    "x": {"kind": "numeric", "bin_edges": [0.0], "bin_fractions": [0.5, 0.5]},
    "c": {"kind": "categorical", "categories": {"a": 0.5, "b": 0.5}},
}


def records(n: int, start: datetime, version: int = 1, shift: float = 0.0, **extra):
    rng = np.random.default_rng(version + int(shift * 10))
    for i in range(n):
        yield PredictionRecord(
            request_id=f"r{version}-{start:%m%d%H}-{i}",
            time=start + timedelta(seconds=30 * i),
            model="m",
            version=version,
            role="champion",
            probability=float(np.clip(rng.normal(0.3 + shift, 0.05), 0, 1)),
            decision=False,
            features={"x": float(rng.normal(shift * 10, 1)), "c": "a" if i % 2 else "b"},
            latencies_ms={"checks_ms": 1.0, "features_ms": 1.0, "model_ms": 2.0, "batch_rows": 1},
            **extra,
        )


KPI = KpiSettings(name="delay_cost", outcome="delayed")  # the example project's KPI


def settings(**window) -> MonitoringSettings:
    defaults = {"minutes": 60, "step_minutes": None, "min_rows": 50}
    return MonitoringSettings(window=WindowSettings(**{**defaults, **window}), kpi=KPI)


def baseline() -> Baseline:
    return Baseline(
        model_version=1,
        start="s",
        end="e",
        window={"minutes": 60, "rows": None},
        metrics={
            "score.mean": MetricBaseline(0.3, 0.01, 20, 0.01),
            "psi.x": MetricBaseline(0.02, 0.01, 20, 0.01),
        },
        score_edges=[0.25, 0.3, 0.35],
        score_fractions=[0.16, 0.34, 0.34, 0.16],
        rows=1000,
        created="now",
    )


@pytest.fixture
def log(tmp_path: Path):
    found = SqlitePredictionLog(tmp_path / "predictions.db", "NORMAL")
    yield found
    found.close()


def monitor(log, clock, reference=None, **window) -> Monitor:
    ref = reference or (lambda version: VersionReference(feature_references(STATS), baseline()))
    return Monitor(log, ref, settings(**window), clock)


def test_log_counts_errors_and_serves_windows(log) -> None:
    log.write(list(records(10, T0)))
    log.record_error(T0 + timedelta(minutes=1), "rejected", 1)
    log.record_error(T0 + timedelta(minutes=2), "failed", None)
    log.record_error(T0 + timedelta(hours=2), "failed", 1)
    assert log.errors(T0, T0 + timedelta(hours=1)) == {"rejected": 1, "failed": 1}
    assert log.count(T0, T0 + timedelta(hours=1), role="champion") == 10
    assert len(log.window(T0, T0 + timedelta(hours=1), every=3)) in (3, 4)
    tail = log.tail(4, before=T0 + timedelta(hours=1))
    assert list(tail["request_id"]) == [f"r1-060100-{i}" for i in range(6, 10)]


def test_windows_split_by_version_and_judge_each(log) -> None:
    log.write(list(records(100, T0)))
    log.write(list(records(100, T0 + timedelta(minutes=60), version=2, shift=0.2)))
    clock = FixedClock(T0 + timedelta(days=3))
    reports = monitor(log, clock).over(T0, T0 + timedelta(hours=2))
    assert [(r.model_version, r.rows) for r in reports] == [(1, 100), (2, 100)]
    assert reports[0].status == "ok"
    shifted = reports[1]
    assert shifted.status == "critical"
    assert shifted.finding("score.mean").status == "critical"
    assert shifted.finding("score.shift_sd").value > 10
    assert shifted.finding("psi.x").status == "critical"
    assert shifted.finding("psi.c").status == "ok"


def test_small_and_empty_windows_are_insufficient_never_ok(log) -> None:
    log.write(list(records(10, T0)))
    reports = monitor(log, FixedClock(T0 + timedelta(days=3))).over(T0, T0 + timedelta(hours=2))
    assert [r.status for r in reports] == ["insufficient_data", "insufficient_data"]
    assert reports[1].reason == "no predictions in the window"
    assert reports[0].finding("psi.x").reason.startswith("insufficient data: 10 rows")


def test_unreadable_references_make_the_window_inconclusive(log) -> None:
    log.write(list(records(100, T0)))

    def broken(version: int) -> VersionReference:
        raise RegistryError("MLflow store unreachable")

    (report,) = monitor(log, FixedClock(T0), broken).over(T0, T0 + timedelta(hours=1))
    assert report.status == "inconclusive"
    assert "unreachable" in report.reason


def test_a_failing_monitor_is_inconclusive_with_the_reason(log) -> None:
    log.write(list(records(100, T0)))

    def odd(version: int) -> VersionReference:
        return VersionReference({"x": "not a reference"}, None)  # type: ignore[dict-item]

    (report,) = monitor(log, FixedClock(T0), odd).over(T0, T0 + timedelta(hours=1))
    assert report.status == "inconclusive"
    assert report.reason.startswith("monitor failed: AttributeError")


def test_a_baseline_of_other_windows_is_not_used(log) -> None:
    log.write(list(records(100, T0)))
    (report,) = monitor(log, FixedClock(T0), minutes=30).over(T0, T0 + timedelta(minutes=30))
    score = report.finding("score.mean")
    assert score.status == "no_baseline" and "re-run `prodguard baseline`" in score.reason


def test_latest_window_takes_its_kpi_from_the_matured_window(log) -> None:
    day_before = T0 - timedelta(hours=25)
    log.write(list(records(100, day_before)))
    for i in range(100):
        log.record_feedback(f"r1-{day_before:%m%d%H}-{i}", {"delayed": i % 4 == 0}, T0)
    log.write(list(records(100, T0 - timedelta(minutes=55))))
    clock = FixedClock(T0)
    (report,) = monitor(log, clock).latest()
    assert report.rows == 100
    kpi = report.finding("kpi.delay_cost")
    # every decision is False: cost = missed delays (1 in 4) x 1.0
    assert kpi.value == pytest.approx(0.25)
    assert "window 2013-05-30T23:00:00+00:00" in kpi.reason


def test_oversized_windows_are_sampled_with_the_rate_stated(log) -> None:
    log.write(
        list(
            records(
                3000,
                T0,
            )
        )
    )  # 25 hours at one row every 30 s
    big = monitor(log, FixedClock(T0 + timedelta(days=3)), minutes=1440, max_rows=1000)
    (report,) = big.over(T0, T0 + timedelta(days=1))
    assert report.sampled_every == 3
    assert 2800 <= report.rows <= 2900  # 2880 rows in the day, counted from the sample


# ---- the staging replay on the flights data -------------------------------------------


def test_as_of_store_matches_feasts_point_in_time_join(ingested: Path) -> None:
    from prodguard import wiring
    from prodguard.config import load_settings
    from prodguard.features.as_of import AsOfFeatures
    from prodguard.ingestion.offline import OfflineStore

    settings = load_settings(ingested / "prodguard.yaml", environ={})
    store = wiring.feature_store(settings)
    views = store.versions()
    flights = OfflineStore(settings.paths.offline_dir).read("flights")
    sample = flights[flights["event_timestamp"] >= utc("2013-04-01")].sample(300, random_state=3)
    entities = sample[["origin", "carrier", "tailnum", "event_timestamp"]].reset_index(drop=True)
    feast = store.historical_features(entities.assign(tailnum=entities["tailnum"].fillna("")))
    feast = feast.sort_values("event_timestamp", kind="stable")
    clock = FixedClock(utc("2013-04-01"))
    as_of = AsOfFeatures(OfflineStore(settings.paths.offline_dir), views, clock)
    ttl = {name: v.ttl_seconds for v in views for name, _ in v.features}
    compared = 0
    for row in feast.to_dict("records"):
        stamp = pd.Timestamp(row["event_timestamp"])
        clock.set(stamp.to_pydatetime())
        entity = {k: row[k] for k in ("origin", "carrier", "tailnum")}
        got = as_of.online_records([entity])[0]
        for name, limit in ttl.items():
            age = stamp.timestamp() - got[f"{name}__ts"]
            ours = got[name] if got[f"{name}__ts"] and (limit == 0 or age <= limit) else None
            theirs = row[name]
            if pd.isna(theirs):
                assert ours is None or pd.isna(ours), (name, entity, stamp)
            else:
                assert (
                    ours == pytest.approx(theirs) if isinstance(theirs, float) else ours == theirs
                )
                compared += 1
    assert compared > 300 * 10  # most features of most rows carried a value


def test_baseline_replays_staging_and_is_stored_with_the_version(
    served_project: Path, tmp_path: Path
) -> None:
    from prodguard import wiring
    from prodguard.config import load_settings
    from prodguard.monitoring.baseline import SAMPLE_SIZE, pair_spread
    from prodguard.monitoring.jobs import (
        build_monitor,
        record_baseline,
        version_reference,
    )
    from prodguard.registry.lineage import BASELINE as BASELINE_TAG

    root = copy_project(served_project, tmp_path / "project")
    settings = load_settings(root / "prodguard.yaml", environ=DAILY_WINDOWS)
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    result = record_baseline(settings, utc("2013-04-01"), utc("2013-04-08"), version=2)
    replay = result.replay
    assert replay.predicted + replay.rejected == replay.requests > 5000
    assert replay.feedback > 0.9 * replay.predicted  # cancelled flights have no outcome
    b = result.baseline
    assert b.model_version == 2 and b.details["windows"] == 7
    for metric in ("psi.temp", "score.mean", "score.psi", "kpi.delay_cost", "rate.degraded"):
        assert b.metrics[metric].windows == 7 and b.metrics[metric].sd > 0, metric
    registry = wiring.registry_operations(settings).registry
    assert registry.version(2).tags[BASELINE_TAG].startswith("2013-04-01")
    stored = version_reference(registry, 2).baseline
    assert stored == b
    assert version_reference(registry, 1).baseline is None
    # v1 baselined on the same staging requests: the two samples pair request by request
    other = record_baseline(settings, utc("2013-04-01"), utc("2013-04-08"), version=1).baseline
    assert len(b.sample_keys) == len(b.score_sample["score.mean"]) == SAMPLE_SIZE
    assert set(other.sample_keys) == set(b.sample_keys)  # the same requests, in any order
    spread = pair_spread(b, other, "score.mean")
    assert spread is not None and spread.n == SAMPLE_SIZE and 0.01 < spread.sd < 0.5
    means = b.metrics["score.mean"].mean - other.metrics["score.mean"].mean
    assert abs(spread.mean - means) < 4 * spread.sd / SAMPLE_SIZE**0.5 + 0.01

    # the staging log monitored against its own baseline: within bounds, nearly everywhere
    staging = SqlitePredictionLog(result.log_path, "NORMAL")
    monitor = build_monitor(settings, FixedClock(utc("2013-05-01")), staging)
    reports = monitor.over(utc("2013-04-01"), utc("2013-04-08"))
    assert [r.model_version for r in reports] == [2] * 7
    critical = [f.metric for r in reports for f in r.findings if f.status == "critical"]
    assert len(critical) <= 2, critical
    logged = staging.count(utc("2013-04-01"), utc("2013-04-08"))
    staging.close()

    # a replay refused by its settings leaves the last staging log (and the baseline) as they were
    wrong = settings.model_copy(
        update={"model": settings.model.model_copy(update={"label": "no_such_column"})}
    )
    with pytest.raises(ConfigError, match="model.label"):
        record_baseline(wrong, utc("2013-04-01"), utc("2013-04-08"), version=2)
    kept = SqlitePredictionLog(result.log_path, "NORMAL")
    assert kept.count(utc("2013-04-01"), utc("2013-04-08")) == logged > 5000
    kept.close()
    assert not list(result.log_path.parent.glob("*.partial*"))
    assert version_reference(registry, 2).baseline == b
