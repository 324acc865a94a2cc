"""Window aggregates on the demo's real traffic: replayed through the serving path (v2 champion,
v3 in shadow) into a log whose replica summarises what it logs; the aggregates rebuilt from
that log equal the live ones, and monitors measuring from them find what the rows find (PSI to
1e-9 and better, means and rates exactly, latency percentiles within the sketch's accuracy) —
for the binary flights model and a multiclass one; the store on the real PostgreSQL."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from prodguard import app, wiring
from prodguard.clock import FixedClock
from prodguard.config import Settings, load_settings
from prodguard.monitoring.aggregates import LATENCY_ACCURACY, Key, Summary, merge_all
from prodguard.monitoring.jobs import replay_version
from prodguard.monitoring.measures import kpi_cost_function, request_timings
from prodguard.monitoring.monitor import (
    Monitor,
    PairedStates,
    WindowReport,
    read_version_reference,
)
from prodguard.rollout.policy import TrafficPolicy
from prodguard.serving.aggregate_store import (
    AggregatingLog,
    Aggregator,
    PostgresAggregateStore,
    SqliteAggregateStore,
    summarise_log,
)
from prodguard.serving.prediction_log import ANSWERS, SqlitePredictionLog
from tests.conftest import DAILY_WINDOWS, FLIGHT_REQUEST, copy_project, utc

pytestmark = pytest.mark.integration
START, END = utc("2013-04-04"), utc("2013-04-07")
BUCKET = 60


class Replayed:
    def __init__(self, settings: Settings, root: Path, tmp: Path) -> None:
        self.settings = settings
        self.root = root
        self.registry = wiring.registry_operations(settings).registry
        self.log = SqlitePredictionLog(tmp / "predictions.db", "NORMAL")
        self.live = SqliteAggregateStore(tmp / "live.db", BUCKET)
        self.rebuilt = SqliteAggregateStore(tmp / "rebuilt.db", BUCKET)

    def references(self, version: int):
        return read_version_reference(self.registry, version)

    def aggregator(self) -> Aggregator:
        monitoring = self.settings.monitoring
        return Aggregator(
            self.live,
            self.references,
            monitoring.aggregates,
            monitoring.kpi,
            kpi_cost_function(monitoring.kpi),
            self.settings.rollout.triggers.p99_latency_ms,
            FixedClock(START),
            interval="test replica",
            background=False,
        )

    def rebuild(self) -> dict[Key, Summary]:
        monitoring = self.settings.monitoring
        summaries = summarise_log(
            self.log,
            START,
            END,
            self.references,
            BUCKET,
            monitoring.kpi,
            kpi_cost_function(monitoring.kpi),
            self.settings.rollout.triggers.p99_latency_ms,
        )
        self.rebuilt.replace(START, END, summaries)
        return summaries

    def monitor(self, now: datetime, aggregates: bool) -> Monitor:
        return Monitor(
            self.log,
            self.references,
            self.settings.monitoring,
            FixedClock(now),
            aggregates=self.rebuilt if aggregates else None,
            latency_budget_ms=self.settings.rollout.triggers.p99_latency_ms,
        )

    def paired_states(
        self, aggregates: bool, version: int, reference: int, shadow: bool
    ) -> PairedStates:
        """The guard's states of ``version`` (a shadow rollout: its shadow rows against the
        champion's answers; the champion: its answers against the shadow scores) over a span
        that starts and ends mid-bucket, failures and slow requests of its last two hours."""
        start = START + timedelta(hours=3, seconds=97)
        end = END - timedelta(minutes=7, seconds=13)
        monitor = self.monitor(END, aggregates)
        states = monitor.paired(
            start,
            end,
            version,
            reference,
            ("shadow",) if shadow else ANSWERS,
            ANSWERS if shadow else ("shadow",),
            self.settings.rollout.triggers.p99_latency_ms,
            recent=end - timedelta(hours=2),
        )
        assert monitor.pairs_from_aggregates == aggregates
        return states


def replay_into_aggregates(settings: Settings, root: Path, tmp: Path, **replay) -> Replayed:
    found = Replayed(settings, root, tmp)
    aggregator = found.aggregator()
    logged = AggregatingLog(found.log, aggregator)
    version = replay.pop("version")
    result = replay_version(settings, found.registry, version, START, END, logged, **replay)
    assert result.predicted > 1500 and result.feedback > 1000
    aggregator.flush(everything=True)
    # a few request errors, counted by the replica and in the log
    for i, kind in enumerate(["failed", "rejected", "failed"]):
        logged.record_error(START + timedelta(hours=30, minutes=i), kind, version)  # type: ignore[arg-type]
    aggregator.flush(everything=True)
    return found


@pytest.fixture(scope="module")
def binary(drilled: Path, tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    """v2 (with its staging baseline) answers April 4-6, v3 scores every request in shadow."""
    tmp = tmp_path_factory.mktemp("aggregates")
    root = copy_project(drilled, tmp / "project")
    settings = load_settings(root / "prodguard.yaml", environ=DAILY_WINDOWS)
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    return replay_into_aggregates(
        settings, root, tmp, version=2, rollout=TrafficPolicy("shadow", version=3)
    )


def comparable(summary: Summary) -> dict:
    document = summary.to_json()
    return document


def test_rebuild_from_the_log_equals_live_accumulation(binary: Replayed) -> None:
    rebuilt = binary.rebuild()
    live = binary.live.read(START - timedelta(days=1), END + timedelta(days=1))
    errors = {k: v for k, v in live.items() if k.role == "errors"}
    assert sum(sum(s.errors.values()) for s in errors.values()) == 3
    answers = {k: v for k, v in live.items() if k.role != "errors"}
    assert answers.keys() == {k for k in rebuilt if k.role != "errors"}
    assert {k.role for k in answers} == {"champion", "shadow"}
    for key, summary in answers.items():
        assert comparable(summary) == comparable(rebuilt[key]), key
    paired = [s.paired[3] for k, s in answers.items() if k.role == "champion" and 3 in s.paired]
    assert sum(m.n for m in paired) > 1500  # every answer paired with v3's shadow score
    assert per_version(binary.rebuilt.read(START, END)) == per_version(rebuilt)
    # the second read takes the hours rolled up by the first
    assert per_version(binary.rebuilt.read(START, END)) == per_version(rebuilt)


def per_version(summaries: dict[Key, Summary]) -> dict[tuple[int, str], dict]:
    """The summaries merged per version and role (however they are bucketed), comparable."""
    found: dict[tuple[int, str], list[Summary]] = {}
    for key, summary in summaries.items():
        found.setdefault((key.version, key.role), []).append(summary)
    return {k: comparable(merge_all(v)) for k, v in found.items()}


def within_sketch_accuracy(log, report: WindowReport, metric: str, value: float) -> bool:
    """The sketch's quantile lies within its relative accuracy of the rows' values at the two
    ranks numpy's percentile interpolates between."""
    _, stage, percentile = metric.split(".")
    frame = log.window(report.start, report.end, role=ANSWERS)
    timings = request_timings(frame[frame["version"] == report.model_version])
    values = np.sort(timings[f"{stage}_ms"].dropna().to_numpy("float64"))
    rank = int(percentile[1:]) / 100 * (len(values) - 1)
    low, high = values[math.floor(rank)], values[math.ceil(rank)]
    return low * (1 - LATENCY_ACCURACY) <= value <= high * (1 + LATENCY_ACCURACY)


def assert_same_findings(
    log, from_rows: list[WindowReport], from_aggregates: list[WindowReport]
) -> int:
    assert [(r.start, r.end, r.model_version, r.rows) for r in from_aggregates] == [
        (r.start, r.end, r.model_version, r.rows) for r in from_rows
    ]
    compared = 0
    for rows, summed in zip(from_rows, from_aggregates, strict=True):
        assert rows.sampled_every == 1
        assert [f.metric for f in summed.findings] == [f.metric for f in rows.findings]
        for expected, got in zip(rows.findings, summed.findings, strict=True):
            metric = expected.metric
            if expected.value is None or got.value is None:
                assert (got.value, got.reason) == (expected.value, expected.reason), metric
            elif metric.startswith("latency."):
                assert within_sketch_accuracy(log, rows, metric, got.value), metric
            elif metric.startswith(("psi.", "shift.", "score.psi")):
                assert abs(got.value - expected.value) <= 1e-9, metric
                assert got.status == expected.status, metric
            else:  # rows, rates, score means and shares, the KPI: exactly
                assert got.value == expected.value, metric
                assert got.status == expected.status, metric
            compared += expected.value is not None
    return compared


def test_monitor_passes_from_aggregates_find_what_the_rows_find(binary: Replayed) -> None:
    binary.rebuild()
    later = utc("2013-04-20")
    by_rows = binary.monitor(later, aggregates=False)
    by_aggregates = binary.monitor(later, aggregates=True)
    daily_rows, daily = by_rows.over(START, END), by_aggregates.over(START, END)
    assert by_aggregates.windows_from_aggregates == 3  # every daily window from the summaries
    compared = assert_same_findings(binary.log, daily_rows, daily)
    metrics = {f.metric for r in daily for f in r.findings if f.value is not None}
    assert {"psi.distance", "shift.distance", "score.psi", "score.mean", "rate.degraded"} <= (
        metrics
    )
    assert {"rate.unseen", "rate.failed", "rate.rejected", "kpi.delay_cost"} <= metrics
    assert compared > 3 * 20
    assert any(r.finding("rate.failed").value for r in daily)

    # the latest window ends mid-bucket: its edges are read from the log, the rest merged
    now = utc("2013-04-06") + timedelta(hours=13, minutes=17, seconds=29)
    latest_rows = binary.monitor(now, aggregates=False).latest()
    monitor = binary.monitor(now, aggregates=True)
    assert_same_findings(binary.log, latest_rows, monitor.latest())
    assert monitor.windows_from_aggregates == 2  # the current window and the matured one (its KPI)

    again = binary.monitor(later, aggregates=True).over(START, END)  # from the hourly roll-ups
    assert [r.to_json() for r in again] == [r.to_json() for r in daily]


def assert_same_states(from_rows: PairedStates, from_aggregates: PairedStates) -> None:
    """Counts exactly; sums to the last bits (exact sums rounded once against float sums)."""
    rows, summed = from_rows.__dict__, from_aggregates.__dict__
    assert rows.keys() == summed.keys()
    for name, expected in rows.items():
        got = summed[name]
        if name in ("score", "cost"):
            assert got.n == expected.n, name
            assert got.total == pytest.approx(expected.total, rel=1e-12, abs=1e-12), name
            assert got.squares == pytest.approx(expected.squares, rel=1e-12, abs=1e-12), name
        elif name == "classes":
            assert got.keys() == expected.keys()
            for metric, state in expected.items():
                assert got[metric].n == state.n, metric
                assert got[metric].total == pytest.approx(state.total, rel=1e-12, abs=1e-12)
        else:
            assert got == expected, name


def test_the_guard_reads_the_same_paired_states_from_aggregates(binary: Replayed) -> None:
    binary.rebuild()
    for version, reference, shadow in ((3, 2, True), (2, 3, False)):
        from_rows = binary.paired_states(False, version, reference, shadow)
        from_aggregates = binary.paired_states(True, version, reference, shadow)
        assert from_rows.paired and from_rows.rows > 1000
        assert from_rows.score.n == from_rows.rows  # every request scored by both
        assert from_rows.cost.n > 500  # labelled requests served healthy
        assert from_rows.slow_pairs is not None and from_rows.slow_pairs[0].n > 20  # single calls
        assert_same_states(from_rows, from_aggregates)
    # the guard's look for a data incident: degraded answers per feature
    start, end = START + timedelta(hours=2, seconds=41), END - timedelta(minutes=3)
    degraded = binary.monitor(END, aggregates=False).degraded(start, end)
    assert degraded[0].n > 1000
    assert binary.monitor(END, aggregates=True).degraded(start, end) == degraded


def test_busy_edges_are_left_out_and_the_window_states_the_whole_buckets_it_measured(
    binary: Replayed,
) -> None:
    binary.rebuild()
    # half a bucket after an answer: the window's last edge holds rows
    hour = binary.log.window(utc("2013-04-06T13:00"), utc("2013-04-06T15:00"), role=ANSWERS)
    now = datetime.fromisoformat(hour["time"].iloc[0]) + timedelta(seconds=30)
    assert now.second == 30
    monitoring = binary.settings.monitoring
    busy = monitoring.model_copy(
        update={"aggregates": monitoring.aggregates.model_copy(update={"edge_rows": 0})}
    )
    budget = binary.settings.rollout.triggers.p99_latency_ms
    monitor = Monitor(
        binary.log,
        binary.references,
        busy,
        FixedClock(now),
        aggregates=binary.rebuilt,
        latency_budget_ms=budget,
    )
    whole = now.replace(second=0)
    reports = monitor.latest()
    assert monitor.windows_from_aggregates == 2
    assert (reports[0].start, reports[0].end) == (
        whole - timedelta(days=1) + timedelta(minutes=1),
        whole,
    )
    every = binary.monitor(now, aggregates=True).latest()
    assert (every[0].start, every[0].end) == (now - timedelta(days=1), now)
    assert 0 < reports[0].rows <= every[0].rows
    states = monitor.paired(now - timedelta(hours=5), now, 2, 3, ANSWERS, ("shadow",), budget)
    assert monitor.pairs_from_aggregates and states.rows > 0
    assert states.rows == binary.log.count(
        whole - timedelta(hours=5) + timedelta(minutes=1), whole, role=ANSWERS
    )


def test_windows_the_aggregates_do_not_cover_are_read_from_rows(binary: Replayed) -> None:
    binary.rebuild()
    monitor = binary.monitor(utc("2013-04-20"), aggregates=True)
    reports = monitor.over(START - timedelta(days=1), END)  # April 3: never aggregated
    assert monitor.windows_from_aggregates == 3
    assert reports[0].status == "insufficient_data" and reports[0].rows == 0


@pytest.mark.postgres
def test_the_store_on_postgresql_merges_partials_and_tracks_coverage(
    binary: Replayed, pg_database
) -> None:
    summaries = binary.rebuild()
    store = PostgresAggregateStore(pg_database("aggregates"), BUCKET)
    try:
        store.replace(START, END, summaries)
        assert per_version(store.read(START, END)) == per_version(summaries)
        assert per_version(store.read(START, END)) == per_version(summaries)  # rolled up
        key = next(k for k in summaries if k.role == "champion")
        store.add({key: summaries[key]})  # a second partial of the same bucket
        doubled = store.read(key.bucket, key.bucket + timedelta(seconds=BUCKET))[key]
        assert doubled.rows == 2 * summaries[key].rows
        assert doubled.score == summaries[key].score.merge(summaries[key].score)
        assert store.compact(START, END) == 1
        assert store.read(key.bucket, key.bucket + timedelta(seconds=BUCKET))[key].rows == (
            doubled.rows
        )
        assert store.span(START, END) == (START, END)
        assert store.span(START - timedelta(hours=1), END) == (START - timedelta(hours=1),) * 2
        # a live replica that has flushed until noon of the second day: the rest from the log
        noon = START + timedelta(hours=36)
        store.cover("replica a", START, noon, closed=False)
        assert store.span(START, END) == (START, noon)
        store.cover("replica a", START, noon, closed=True)
        assert store.span(START, END) == (START, END)
    finally:
        store.close()


def test_a_multiclass_model_measures_the_same_from_aggregates(
    ingested: Path, tmp_path: Path
) -> None:
    root = copy_project(ingested, tmp_path / "project")
    environ = {
        **DAILY_WINDOWS,
        "PRODGUARD_MODEL__TASK": "multiclass",
        "PRODGUARD_MODEL__LABEL": "delay_class",
        "PRODGUARD_MODEL__EVALUATION_DAYS": "7",
        "PRODGUARD_MONITORING__KPI__OUTCOME": "delay_class",
        "PRODGUARD_MONITORING__KPI__MIN_LABELLED": "100",
    }
    settings = load_settings(root / "prodguard.yaml", environ=environ)
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    trained = app.train(settings, utc("2013-01-01"), utc("2013-01-22"), actor="tests")
    other = app.train(settings, utc("2013-01-08"), utc("2013-01-29"), actor="tests")
    found = replay_into_aggregates(
        settings,
        root,
        tmp_path,
        version=trained.version,
        rollout=TrafficPolicy("shadow", version=other.version),
    )
    rebuilt = found.rebuild()
    live = found.live.read(START, END)
    for key, summary in live.items():
        if key.role != "errors":
            assert comparable(summary) == comparable(rebuilt[key]), key
    later = utc("2013-04-20")
    monitor = found.monitor(later, aggregates=True)
    daily = monitor.over(START, END)
    assert monitor.windows_from_aggregates == 3
    assert_same_findings(found.log, found.monitor(later, aggregates=False).over(START, END), daily)
    metrics = {f.metric for r in daily for f in r.findings if f.value is not None}
    assert {"score.share.late", "score.proba.early", "kpi.delay_cost", "psi.distance"} <= metrics
    json.dumps([r.to_json() for r in daily])  # reports stay serialisable
    # the guard's paired states of the version in shadow, per class score
    from_rows = found.paired_states(False, other.version, trained.version, shadow=True)
    assert from_rows.paired and set(from_rows.classes) == {
        f"score.proba.{c}" for c in ("early", "on_time", "late")
    }
    assert_same_states(from_rows, found.paired_states(True, other.version, trained.version, True))


def test_a_serving_replica_with_aggregates_on_summarises_what_it_answers(binary: Replayed) -> None:
    environ = {**DAILY_WINDOWS, "PRODGUARD_MONITORING__AGGREGATES__ENABLED": "true"}
    settings = load_settings(binary.root / "prodguard.yaml", environ=environ)
    when = utc("2013-04-10") + timedelta(hours=12, seconds=5)
    serving = wiring.build_serving(settings, clock=FixedClock(when))
    serving.follower.refresh()
    try:
        requests = [
            serving.request_model(**{**FLIGHT_REQUEST, "request_id": f"agg{i}", "distance": d})
            for i, d in enumerate((200.0, 800.0, 1400.0, 2500.0))
        ]
        answers = serving.predictor.predict(
            [r.to_row() for r in requests], [r.request_id for r in requests]
        )
        serving.log.record_feedback(answers[0].request_id, {"delayed": 1}, when)
    finally:
        serving.predictor.close()
        serving.log.close()  # the replica's shutdown: its buckets flushed, its interval closed
    store = wiring.aggregate_store(settings)
    assert store is not None
    try:
        bucket = when.replace(second=0)
        summaries = store.read(bucket, bucket + timedelta(minutes=1))
        champion = [s for k, s in summaries.items() if k.role == "champion"]
        assert sum(s.rows for s in champion) == len(answers) == 4
        assert sum(s.kpi.count for s in champion) == 1
        # it started in the middle of this bucket (another replica may have served its start):
        # monitors read the bucket from the log
        assert store.span(bucket, bucket + timedelta(minutes=1)) == (bucket, bucket)
    finally:
        store.close()
