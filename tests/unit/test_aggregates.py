"""Window summaries: exact, order-free merges; JSON round trips; measures from merged buckets
equal to the measures of the rows."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from ddsketch import DDSketch

from prodguard.config import KpiSettings
from prodguard.monitoring.aggregates import (
    LATENCY_ACCURACY,
    Moments,
    Sketch,
    Slow,
    Summary,
    bucket_of,
    buckets_within,
    exact,
    merge_all,
)
from prodguard.monitoring.measures import (
    FeatureReference,
    measure,
    measure_summary,
    summarise,
    window_bins,
)
from prodguard.monitoring.psi import CategoricalBins, NumericBins
from prodguard.tasks import Task, TaskSpec

KPI = KpiSettings(name="cost", outcome="label", min_labelled=5)
MULTICLASS = TaskSpec(Task.MULTICLASS, ("a", "b", "c"))


def test_moments_are_exact_and_merge_in_any_order() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1e6, 500), rng.random(500) * 1e-9, [math.nan]])
    parts = [Moments.of(values[i : i + 97]) for i in range(0, len(values), 97)]
    forward, backward = merge_all_moments(parts), merge_all_moments(parts[::-1])
    assert forward == backward == Moments.of(values)
    finite = values[np.isfinite(values)]
    exact_mean = float(sum(Fraction(v) for v in finite.tolist()) / len(finite))
    assert forward.mean(skip_missing=True) == exact_mean  # correctly rounded
    assert math.isnan(forward.mean())  # a missing value: NaN, as numpy.mean
    assert forward.count == len(values)
    assert Moments.from_json(json.loads(json.dumps(forward.to_json()))) == forward
    n, total, squares = forward.sums()  # MeanState's fields, for the paired tests
    assert (n, total, squares) == (
        len(finite),
        pytest.approx(finite.sum(), rel=1e-12),
        pytest.approx(np.square(finite).sum(), rel=1e-12),
    )


def test_sketches_and_sums_count_at_once_what_each_value_gives() -> None:
    """``Sketch.of`` holds the bins ``DDSketch.add`` fills value by value, and ``Moments.of``
    the sums of ``exact`` — for values on a bin's edge (where numpy's logarithm may round
    otherwise than the C library's), next to it, zero, negative and subnormal ones."""
    mapping = DDSketch(LATENCY_ACCURACY)._mapping
    edges = np.array([math.pow(2.0, k / mapping._multiplier) for k in range(-400, 1200)])
    rng = np.random.default_rng(11)
    values = np.concatenate(
        [
            rng.gamma(2, 1.5, 3000),
            edges,
            np.nextafter(edges, 0),
            np.nextafter(edges, np.inf),
            [0.0, -2.0, 1e-310, 5e-324, 2.3e-308, 1e150],
            [1.3877300389129667e-19],  # on an edge where numpy's AVX-512 log rounds otherwise
        ]
    )
    sketch = DDSketch(LATENCY_ACCURACY)
    for value in np.maximum(values, 0.0).tolist():
        sketch.add(value)
    store = sketch._store
    expected = Sketch(store.offset, np.asarray(store.bins, float), sketch._zero_count, 0.0, 1e150)
    assert Sketch.of(values).to_json() == expected.to_json()
    assert Sketch.of(values[:0]).to_json() == Sketch().to_json()
    signed = np.concatenate([values, -values, rng.normal(0, 1e-3, 1000), [-0.0, -5e-324]])
    squares = np.square(signed)
    squares = squares[np.isfinite(squares)]
    moments = Moments.of(signed)
    assert moments.total == sum(map(exact, signed.tolist()))
    assert moments.squares == sum(map(exact, squares.tolist()))


def test_categorical_counts_look_each_text_up_once_and_bin_as_the_values_do() -> None:
    bins = CategoricalBins(("1", "AA", "B6"))
    reference = FeatureReference(bins, np.array([0.3, 0.3, 0.4, 0.0]))
    texts = pd.Series(["AA", "B6", "AA", None, "ZZ", math.nan, "1"] * 5)
    mixed = pd.Series(["AA", 1, 1.0, True, None, math.nan, "1"] * 5)  # 1.0 and True: unseen
    assert reference.counts(texts).tolist() == [5, 10, 5, 5]
    assert reference.counts(mixed).tolist() == [10, 5, 0, 10]
    for values in (texts, mixed):
        assert reference.counts(values).tolist() == bins.counts(values.tolist()).tolist()


def merge_all_moments(parts: list[Moments]) -> Moments:
    total = Moments()
    for part in parts:
        total = total.merge(part)
    return total


def _frame(n: int, seed: int, multiclass: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    probabilities = rng.dirichlet([1, 1, 1], n)
    rows = []
    for i in range(n):
        single = i % 7 != 0
        rows.append(
            {
                "request_id": f"r{seed}-{i}",
                "time": (start + timedelta(seconds=int(rng.integers(0, 600)))).isoformat(),
                "version": 2,
                "role": "champion",
                "probability": float(probabilities[i].max() if multiclass else rng.random()),
                "decision": int(probabilities[i].argmax()) if multiclass else int(i % 3 == 0),
                "features": {
                    "distance": None if i % 11 == 0 else float(rng.gamma(2, 300)),
                    "carrier": str(rng.choice(["AA", "B6", "ZZ", "UA"])),
                },
                "flags": ["distance:stale"] if i % 13 == 0 else (["carrier:unseen"] * (i % 5 == 0)),
                "latencies_ms": {
                    "checks_ms": float(rng.gamma(2, 0.1)),
                    "features_ms": float(rng.gamma(2, 0.4)),
                    "model_ms": float(rng.gamma(2, 1.0)),
                    "batch_rows": 1 if single else 8,
                },
                "prediction": {
                    "probabilities": dict(zip("abc", probabilities[i].tolist(), strict=True))
                }
                if multiclass
                else None,
                "outcome": {"label": ("abc"[i % 3] if multiclass else i % 2)} if i % 4 else None,
            }
        )
    return pd.DataFrame(rows)


def _references(frame: pd.DataFrame):
    distance = pd.to_numeric(pd.DataFrame(frame["features"].tolist())["distance"])
    bins = NumericBins.from_reference(distance.to_numpy("float64"), 10)
    features = {
        "distance": FeatureReference(bins, np.full(len(bins.edges) + 1, 1 / (len(bins.edges) + 1))),
        "carrier": FeatureReference(
            CategoricalBins(("AA", "B6", "UA")), np.array([0.5, 0.3, 0.2, 0])
        ),
    }
    scores = FeatureReference(NumericBins(np.linspace(0.1, 0.9, 9)), np.full(10, 0.1))
    return features, scores


@pytest.mark.parametrize("spec", [TaskSpec(Task.BINARY, (0, 1)), MULTICLASS], ids=str)
def test_measures_of_merged_buckets_equal_the_rows(spec: TaskSpec) -> None:
    frame = _frame(900, 1, multiclass=spec.task is Task.MULTICLASS)
    features, scores = _references(_frame(400, 2))
    bins = window_bins(features, scores, features)
    stamps = pd.to_datetime(frame["time"])
    buckets = [
        summarise(part, bins, spec, kpi=KPI, latency_budget_ms=5.0)
        for _, part in frame.groupby(stamps.dt.floor("60s"))
    ]
    # serialised and merged in shuffled order
    merged = merge_all(
        Summary.from_json(json.loads(json.dumps(b.to_json()))) for b in buckets[::-1]
    )
    whole = summarise(frame, bins, spec, kpi=KPI, latency_budget_ms=5.0)
    assert merged.counts.keys() == whole.counts.keys()
    for key in whole.counts:
        assert merged.counts[key].tolist() == whole.counts[key].tolist()
    assert (merged.rows, merged.degraded, merged.unseen, merged.slow, merged.timed) == (
        whole.rows,
        whole.degraded,
        whole.unseen,
        whole.slow,
        whole.timed,
    )
    assert merged.score == whole.score and merged.kpi == whole.kpi
    assert merged.nulls == whole.nulls == {"distance": 82, "carrier": 0}

    arguments = dict(
        features=features,
        scores=scores,
        staging=features,
        kpi=KPI,
        matured=True,
        errors={"failed": 3, "rejected": 1},
        min_rows=100,
        spec=spec,
    )
    from_rows = {m.metric: m for m in measure(frame, **arguments)}
    from_summary = {m.metric: m for m in measure_summary(merged, **arguments)}
    assert from_rows.keys() == from_summary.keys()
    for metric, expected in from_rows.items():
        got = from_summary[metric].value
        if metric.startswith("latency."):
            # the sketch: within its relative accuracy of the rank's value (np.percentile
            # interpolates between two ranks)
            stage, p = metric.split(".")[1], int(metric.split(".")[2][1:])
            values = np.sort(_stage_values(frame, stage))
            rank = p / 100 * (len(values) - 1)
            low, high = values[math.floor(rank)], values[math.ceil(rank)]
            assert low * (1 - LATENCY_ACCURACY) <= got <= high * (1 + LATENCY_ACCURACY), metric
        else:  # PSI from the same counts, rates and exact means: equal
            assert got == expected.value, metric
    assert from_rows["score.mean" if spec.task is Task.BINARY else "score.proba.a"].value == (
        pytest.approx(
            frame["probability"].mean()
            if spec.task is Task.BINARY
            else np.mean([p["probabilities"]["a"] for p in frame["prediction"]]),
            rel=1e-15,
        )
    )


def _stage_values(frame: pd.DataFrame, stage: str) -> np.ndarray:
    timings = pd.DataFrame(frame["latencies_ms"].tolist())
    timings = timings[timings["batch_rows"] == 1]
    if stage == "total":
        return (timings["checks_ms"] + timings["features_ms"] + timings["model_ms"]).to_numpy()
    return timings[f"{stage}_ms"].to_numpy()


def test_a_summary_round_trips_through_json() -> None:
    frame = _frame(200, 4)
    features, scores = _references(frame)
    summary = summarise(frame, window_bins(features, scores, None), TaskSpec(Task.BINARY, (0, 1)))
    summary = summary.merge(Summary(errors={"failed": 2}, paired={3: Moments.of([0.1, -0.2])}))
    summary = summary.merge(
        Summary(
            healthy_kpi=Moments.of([1.0, 0.0]),
            pair_costs={3: Moments.of([0.5, -1.0])},
            pair_classes={3: {"score.proba.a": Moments.of([0.1])}},
            pair_slow={3: Slow(4, 1, 2)},
        )
    )
    again = Summary.from_json(json.loads(json.dumps(summary.to_json())))
    assert again.to_json() == summary.to_json()
    assert again.pair_slow == {3: Slow(4, 1, 2)}
    # summaries stored before the guard's pair fields existed still read
    older = {k: v for k, v in summary.to_json().items() if not k.startswith(("pair_", "healthy"))}
    assert Summary.from_json(older).pair_costs == {}
    for stage, sketch in summary.latency.items():
        assert again.latency[stage].quantile(0.95) == sketch.quantile(0.95)


def test_summaries_on_other_bins_do_not_merge() -> None:
    with pytest.raises(Exception, match="different reference bins"):
        Summary(fingerprint="a", rows=1).merge(Summary(fingerprint="b", rows=1))


def test_buckets_align_on_the_epoch() -> None:
    moment = datetime(2026, 3, 1, 10, 7, 31, tzinfo=UTC)
    assert bucket_of(moment, 60) == datetime(2026, 3, 1, 10, 7, tzinfo=UTC)
    assert buckets_within(moment, moment + timedelta(minutes=3), 60) == (
        datetime(2026, 3, 1, 10, 8, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 10, tzinfo=UTC),
    )
    assert buckets_within(moment, moment + timedelta(seconds=20), 60) == (moment, moment)


def test_bucket_seconds_must_divide_a_day() -> None:
    from pydantic import ValidationError

    from prodguard.config import AggregateSettings

    with pytest.raises(ValidationError, match="does not divide a day; choose e.g. 10, 30, 60"):
        AggregateSettings(bucket_seconds=7)
    assert AggregateSettings(bucket_seconds=300).bucket_seconds == 300


def test_a_replica_flushes_closed_buckets_and_vouches_only_for_them(tmp_path) -> None:
    from prodguard.clock import FixedClock
    from prodguard.config import AggregateSettings
    from prodguard.monitoring.monitor import VersionReference
    from prodguard.serving.aggregate_store import Aggregator, SqliteAggregateStore
    from prodguard.serving.prediction_log import PredictionRecord

    frame = _frame(300, 5)
    features, scores = _references(frame)
    reference = VersionReference(features, None)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = FixedClock(start - timedelta(seconds=30))
    store = SqliteAggregateStore(tmp_path / "aggregates.db", 60)
    aggregator = Aggregator(
        store, lambda v: reference, AggregateSettings(), KPI, None, 5.0, clock, "a", False
    )
    records = [
        PredictionRecord(
            f"r{i // 2}",  # each request answered by v2, then scored by v3 in shadow
            start + timedelta(seconds=i),
            "m",
            2 + i % 2,
            "shadow" if i % 2 else "champion",
            0.5 + i / 1000,
            0,
            {"distance": float(i), "carrier": "AA"},
            latencies_ms={"checks_ms": 1.0, "features_ms": 1.0, "model_ms": 1.0},
        )
        for i in range(150)
    ]
    aggregator.add(records)
    clock.set(start + timedelta(seconds=150))  # two buckets closed, the third open
    aggregator.flush()
    assert {k.bucket.minute for k in store.read(start, start + timedelta(minutes=5))} == {0, 1}
    end = start + timedelta(minutes=3)
    assert store.span(start, end) == (start, start + timedelta(minutes=2))
    # readers stop at the last bucket flushed whole (a crash would lose the open one only);
    # a clean shutdown flushes the open bucket and closes the interval
    aggregator.close()
    summaries = store.read(start, end)
    assert sum(s.rows for s in summaries.values()) == 150
    assert store.span(start, end) == (start, end)
    paired = merge_all(s for k, s in summaries.items() if k.role == "champion").paired[3]
    assert paired.n == 75 and paired.mean() == pytest.approx(-0.001)  # v2 minus v3
    shadow = merge_all(s for k, s in summaries.items() if k.role == "shadow").paired[2]
    assert shadow.n == 75 and shadow.total == -paired.total
    store.close()


def test_a_replica_pairs_the_costs_of_labelled_requests_even_when_the_shadow_comes_later(
    tmp_path,
) -> None:
    from prodguard.clock import FixedClock
    from prodguard.config import AggregateSettings
    from prodguard.monitoring.monitor import VersionReference
    from prodguard.serving.aggregate_store import Aggregator, SqliteAggregateStore
    from prodguard.serving.prediction_log import PredictionRecord

    frame = _frame(300, 5)
    features, _ = _references(frame)
    reference = VersionReference(features, None)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = FixedClock(start)
    store = SqliteAggregateStore(tmp_path / "aggregates.db", 60)
    aggregator = Aggregator(
        store, lambda v: reference, AggregateSettings(), KPI, None, 5.0, clock, "a", False
    )

    def record(request: str, version: int, decision: int, flags: list[str]) -> PredictionRecord:
        role = "champion" if version == 2 else "shadow"
        return PredictionRecord(
            request, start, "m", version, role, 0.4 + 0.2 * decision, decision, {}, flags
        )

    # r1: both scored, then labelled; r2: labelled before its shadow score was logged;
    # r3: served with a degraded feature (its costs are not the model's to answer for)
    r1 = [record("r1", 2, 1, []), record("r1", 3, 0, [])]
    r2 = record("r2", 2, 0, [])
    r3 = [record("r3", 2, 0, ["distance:stale"]), record("r3", 3, 1, ["distance:stale"])]
    aggregator.add([*r1, r2, *r3])
    aggregator.feedback(r1[0], r1[1], {"label": 1})
    aggregator.feedback(r2, None, {"label": 0})
    aggregator.await_shadow(r2, {"label": 0})
    aggregator.feedback(r3[0], r3[1], {"label": 1})
    aggregator.flush()
    aggregator.add([record("r2", 3, 1, [])])  # the shadow of r2 arrives after its label
    aggregator.close()
    summaries = store.read(start, start + timedelta(minutes=1))
    champion = merge_all(s for k, s in summaries.items() if k.role == "champion")
    shadow = merge_all(s for k, s in summaries.items() if k.role == "shadow")
    assert champion.kpi.n == shadow.kpi.n == 3  # every labelled request, each version's cost
    assert champion.healthy_kpi.n == shadow.healthy_kpi.n == 2  # not r3
    # r1: v2 caught the positive (cost 0), v3 missed it (cost_missed); r2: v3's false alert
    missed, false_alert = KPI.cost_missed, KPI.cost_false_alert
    assert champion.pair_costs[3].n == 2
    assert champion.pair_costs[3].mean() == pytest.approx((-missed - false_alert) / 2)
    assert shadow.pair_costs[2].total == -champion.pair_costs[3].total
    assert champion.paired[3].n == 3  # score differences of every pair, labelled or not
    store.close()


def test_a_replica_summarises_its_queue_once_a_bucket_closed_or_the_queue_is_long(
    tmp_path, monkeypatch
) -> None:
    from prodguard.clock import FixedClock
    from prodguard.config import AggregateSettings
    from prodguard.monitoring.monitor import VersionReference
    from prodguard.serving import aggregate_store
    from prodguard.serving.aggregate_store import Aggregator, SqliteAggregateStore
    from prodguard.serving.prediction_log import PredictionRecord

    features, _ = _references(_frame(300, 5))
    reference = VersionReference(features, None)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    clock = FixedClock(start)
    store = SqliteAggregateStore(tmp_path / "aggregates.db", 60)
    summarised: list[int] = []

    def counted(frame: pd.DataFrame, *args, **kwargs) -> Summary:
        summarised.append(len(frame))
        return summarise(frame, *args, **kwargs)

    monkeypatch.setattr(aggregate_store, "summarise", counted)
    aggregator = Aggregator(
        store, lambda v: reference, AggregateSettings(), KPI, None, 5.0, clock, "a", False
    )
    records = [
        PredictionRecord(
            f"r{i}",
            start + timedelta(seconds=i),
            "m",
            2,
            "champion",
            0.5,
            0,
            {"distance": float(i), "carrier": "AA"},
            latencies_ms={"checks_ms": 1.0, "features_ms": 1.0, "model_ms": 1.0},
        )
        for i in range(90)
    ]
    aggregator.flush()  # its first look
    for second in range(0, 60, 10):  # it looks every 10 s, the bucket still open
        clock.set(start + timedelta(seconds=second))
        aggregator.add(records[second : second + 10])
        aggregator.flush()
    assert summarised == []  # the queue waits: nothing to append before the bucket closes
    clock.set(start + timedelta(seconds=61))
    aggregator.flush()
    assert summarised == [60]  # one batch: the bucket's rows at once
    assert [s.rows for s in store.read(start, start + timedelta(minutes=1)).values()] == [60]
    monkeypatch.setattr(aggregate_store, "SUMMARISE_ROWS", 20)
    aggregator.add(records[60:85])
    aggregator.flush()  # a long queue does not wait (memory)
    assert summarised == [60, 25]
    aggregator.add(records[85:])
    aggregator.close()  # and all on shutdown
    assert summarised == [60, 25, 5]
    assert sum(s.rows for s in store.read(start, start + timedelta(minutes=2)).values()) == 90
    store.close()
