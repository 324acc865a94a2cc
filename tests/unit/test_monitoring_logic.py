"""Monitoring logic: windows, per-window measures, baselines and thresholds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from prodguard.config import BandSettings, KpiSettings
from prodguard.monitoring.baseline import (
    Baseline,
    MetricBaseline,
    evaluate,
    summarise,
    worst,
)
from prodguard.monitoring.measures import (
    FeatureReference,
    Measure,
    feature_references,
    measure,
    score_reference,
)
from prodguard.monitoring.psi import NumericBins, psi_from_counts
from prodguard.monitoring.windows import WindowSpec, latest_window, tile

pytestmark = pytest.mark.unit
T0 = datetime(2013, 5, 1, tzinfo=UTC)
PSI = BandSettings(warning=0.1, critical=0.25)
SPREAD = BandSettings(warning=1.5, critical=2.0)


def log_frame(n: int, start: datetime = T0, step: timedelta = timedelta(minutes=1), **columns):
    frame = pd.DataFrame(
        {
            "time": [(start + i * step).isoformat() for i in range(n)],
            "role": "champion",
            "version": 1,
            "probability": np.linspace(0.05, 0.95, n),
            "decision": np.linspace(0.05, 0.95, n) >= 0.5,
            "features": [{"x": float(i % 10), "c": "a" if i % 2 else "b"} for i in range(n)],
            "flags": [[] for _ in range(n)],
            "latencies_ms": [
                {"checks_ms": 1.0, "features_ms": 2.0, "model_ms": 3.0 + i % 5, "batch_rows": 1}
                for i in range(n)
            ],
            "outcome": [None] * n,
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


# ---- windows -------------------------------------------------------------------------------


def test_time_windows_tumble_and_hop() -> None:
    frame = log_frame(6 * 60)  # six hours, one row a minute
    end = T0 + timedelta(hours=6)
    tumbling = tile(WindowSpec(minutes=120), frame, T0, end)
    assert [len(w.frame) for w in tumbling] == [120, 120, 120]
    assert tumbling[1].start == T0 + timedelta(hours=2)
    hopping = tile(WindowSpec(minutes=120, step_minutes=60), frame, T0, end)
    assert [w.start for w in hopping] == [T0 + timedelta(hours=h) for h in range(5)]
    assert all(len(w.frame) == 120 for w in hopping)
    assert hopping[-1].end == end  # windows never run past the range


def test_count_windows_leave_the_partial_one_open() -> None:
    frame = log_frame(250)
    windows = tile(WindowSpec(minutes=None, rows=100), frame, T0, T0 + timedelta(days=1))
    assert [len(w.frame) for w in windows] == [100, 100]
    assert windows[1].start == pd.Timestamp(frame["time"][100]).to_pydatetime()


def test_count_and_time_close_at_the_first_bound() -> None:
    frame = log_frame(250)  # 250 minutes
    windows = tile(WindowSpec(minutes=180, rows=100), frame, T0, T0 + timedelta(minutes=360))
    # first 3 hours: 180 rows -> 100 + 80 (closed by time); next window: 70 rows, closed by time
    assert [len(w.frame) for w in windows] == [100, 80, 70]


def test_empty_time_window_is_still_reported() -> None:
    windows = tile(WindowSpec(minutes=60), log_frame(0), T0, T0 + timedelta(hours=2))
    assert [len(w.frame) for w in windows] == [0, 0]


def test_latest_window_keeps_the_last_rows() -> None:
    frame = log_frame(50)
    window = latest_window(WindowSpec(minutes=None, rows=20), frame, T0 + timedelta(hours=2))
    assert len(window.frame) == 20
    assert window.start == pd.Timestamp(frame["time"][30]).to_pydatetime()


def test_window_spec_describes_itself() -> None:
    assert WindowSpec(minutes=10080, step_minutes=1440).describe() == "7 d every 1 d"
    assert WindowSpec(minutes=None, rows=500).describe() == "500 rows"
    assert WindowSpec(minutes=90).same_size({"minutes": 90, "rows": None})
    assert not WindowSpec(minutes=90).same_size({"minutes": 60, "rows": None})


# ---- measures ------------------------------------------------------------------------------


STATS = {
    "x": {
        "kind": "numeric",
        "bin_edges": [2.0, 5.0, 7.0],
        "bin_fractions": [0.3, 0.3, 0.2, 0.2],
    },
    "c": {"kind": "categorical", "categories": {"a": 0.5, "b": 0.5}},
    "empty": {"kind": "numeric", "bin_edges": [], "bin_fractions": []},
}


def _by_name(measures: list[Measure]) -> dict[str, Measure]:
    return {m.metric: m for m in measures}


def test_feature_psi_uses_the_training_bins() -> None:
    refs = feature_references(STATS)
    assert set(refs) == {"x", "c"}  # a feature without reference values is not compared
    values = pd.Series([1.0, 3.0, 6.0, 8.0, 8.0, 9.0, 9.0, 9.0, None])
    counts = np.array([1, 1, 1, 5])  # (-inf,2] (2,5] (5,7] (7,inf); nulls not counted
    expected = psi_from_counts(np.array([30, 30, 20, 20]), counts)
    assert refs["x"].psi(values) == pytest.approx(expected, abs=1e-12)


def test_unseen_categories_land_in_their_own_bin() -> None:
    ref = feature_references(STATS)["c"]
    assert ref.psi(pd.Series(["a", "b"] * 50)) == pytest.approx(0.0, abs=1e-9)
    assert ref.psi(pd.Series(["a", "b", "zz", "zz"] * 25)) > 0.25


def test_measures_of_a_window() -> None:
    frame = log_frame(400)
    outcomes = [{"delayed": i % 3 == 0} for i in range(400)]
    frame["outcome"] = outcomes
    frame.loc[:9, "flags"] = pd.Series([["x:stale"]] * 10)
    frame.loc[:3, "flags"] = pd.Series([["x:stale", "c:unseen"]] * 4)
    kpi = KpiSettings(
        name="delay_cost",
        outcome="delayed",
        min_labelled=100,
        cost_missed=1.0,
        cost_false_alert=0.25,
    )
    got = _by_name(
        measure(
            frame,
            features=feature_references(STATS),
            scores=score_reference(frame["probability"].to_numpy(), 10),
            kpi=kpi,
            matured=True,
            errors={"failed": 4, "rejected": 8},
            min_rows=100,
        )
    )
    truth = np.array([i % 3 == 0 for i in range(400)])
    flagged = frame["decision"].to_numpy()
    expected_cost = ((truth & ~flagged).sum() + 0.25 * (~truth & flagged).sum()) / 400
    assert got["kpi.delay_cost"].value == pytest.approx(expected_cost)
    assert got["rate.failed"].value == pytest.approx(4 / 412)
    assert got["rate.rejected"].value == pytest.approx(8 / 412)
    assert got["rate.degraded"].value == pytest.approx(10 / 400)
    assert got["rate.unseen"].value == pytest.approx(4 / 400)
    assert got["score.psi"].value == pytest.approx(0.0, abs=1e-9)
    assert got["score.mean"].value == pytest.approx(0.5)
    assert got["latency.model.p50"].value == pytest.approx(5.0)
    assert got["latency.checks.p99"].value == pytest.approx(1.0)
    assert got["latency.total.p50"].value == pytest.approx(8.0)  # 1 + 2 + median model 5
    assert got["psi.x"].value is not None and got["psi.c"].value == pytest.approx(0.0, abs=1e-9)


def test_kpi_waits_for_maturity_and_enough_labels() -> None:
    frame = log_frame(300)
    kpi = KpiSettings(name="delay_cost", outcome="delayed", min_labelled=100)
    args = {"features": {}, "scores": None, "kpi": kpi, "errors": {}, "min_rows": 100}
    young = _by_name(measure(frame, matured=False, **args))["kpi.delay_cost"]
    assert young.value is None and young.reason.startswith("not matured")
    frame["outcome"] = [{"delayed": 1}] * 50 + [None] * 250
    few = _by_name(measure(frame, matured=True, **args))["kpi.delay_cost"]
    assert few.value is None and "50 labelled" in few.reason


def test_too_few_rows_measure_nothing_but_counts() -> None:
    got = _by_name(
        measure(
            log_frame(10),
            features=feature_references(STATS),
            scores=None,
            kpi=KpiSettings(name="delay_cost", outcome="delayed"),
            matured=True,
            errors={},
            min_rows=100,
        )
    )
    assert got["rows"].value == 10
    assert got["psi.x"].value is None and got["psi.x"].reason.startswith("insufficient data")
    assert got["score.mean"].value is None


def test_latency_comes_from_single_row_requests_only() -> None:
    frame = log_frame(300)
    frame["latencies_ms"] = [
        {"checks_ms": 1.0, "features_ms": 1.0, "model_ms": 500.0, "batch_rows": 300}
    ] * 200 + [{"checks_ms": 1.0, "features_ms": 1.0, "model_ms": 4.0, "batch_rows": 1}] * 100
    args = {
        "features": {},
        "scores": None,
        "kpi": KpiSettings(name="delay_cost", outcome="delayed"),
        "errors": {},
        "min_rows": 100,
    }
    got = _by_name(measure(frame, matured=False, **args))
    assert got["latency.model.p99"].value == pytest.approx(4.0)


# ---- baselines and thresholds --------------------------------------------------------------


def test_summarise_takes_mean_and_sample_sd() -> None:
    windows = [[Measure("score.mean", v), Measure("rows", 10.0)] for v in (0.1, 0.2, 0.3)]
    windows.append([Measure("score.mean", None, "insufficient data")])
    summary = summarise(windows)
    assert set(summary) == {"score.mean"}  # rows are not a monitored metric
    assert summary["score.mean"].mean == pytest.approx(0.2)
    assert summary["score.mean"].sd == pytest.approx(0.1)
    assert summary["score.mean"].windows == 3
    assert summary["score.mean"].max_deviation == pytest.approx(0.1)


def _baseline(**metrics: MetricBaseline) -> Baseline:
    return Baseline(
        model_version=1,
        start="a",
        end="b",
        window={"minutes": 60, "rows": None},
        metrics=metrics,
        score_edges=[0.5],
        score_fractions=[0.5, 0.5],
        rows=100,
        created="c",
    )


def test_feature_thresholds_are_the_wider_of_band_and_spread() -> None:
    drifted = _baseline(**{"psi.temp": MetricBaseline(3.0, 0.5, 20, 1.0)})
    steady = _baseline(**{"psi.temp": MetricBaseline(0.02, 0.01, 20, 0.01)})
    (f,) = evaluate([Measure("psi.temp", 4.4)], drifted, PSI, SPREAD)
    assert (f.status, f.warning, f.critical) == ("ok", 4.5, 5.0)
    (f,) = evaluate([Measure("psi.temp", 5.2)], drifted, PSI, SPREAD)
    assert f.status == "critical"
    # a PSI's spread is at least 20% of its mean (its sampling noise grows with it)
    noisy = _baseline(**{"shift.seats": MetricBaseline(0.5, 0.01, 20, 0.02)})
    (f,) = evaluate([Measure("shift.seats", 0.6)], noisy, PSI, SPREAD)
    assert (f.status, f.warning) == ("ok", pytest.approx(0.65))
    (f,) = evaluate([Measure("psi.temp", 0.12)], steady, PSI, SPREAD)
    assert (f.status, f.warning, f.critical) == ("warning", 0.1, 0.25)
    (f,) = evaluate([Measure("psi.temp", 0.3)], None, PSI, SPREAD)
    assert f.status == "critical" and f.baseline_mean is None  # bands alone without a baseline


def test_mean_score_shift_counts_both_directions_and_reports_sd() -> None:
    baseline = _baseline(**{"score.mean": MetricBaseline(0.2, 0.02, 20, 0.02)})
    for value, status in ((0.23, "ok"), (0.232, "warning"), (0.15, "critical"), (0.17, "ok")):
        findings = evaluate([Measure("score.mean", value)], baseline, PSI, SPREAD)
        assert findings[0].status == status, value
        assert findings[1].metric == "score.shift_sd"
        assert findings[1].value == pytest.approx((value - 0.2) / 0.02)


def test_worse_is_up_for_costs_latency_and_rates() -> None:
    baseline = _baseline(
        **{
            "kpi.delay_cost": MetricBaseline(0.25, 0.02, 20, 0.02),
            "latency.model.p99": MetricBaseline(20.0, 1.0, 20, 1.0),
        }
    )
    findings = evaluate(
        [Measure("kpi.delay_cost", 0.20), Measure("latency.model.p99", 24.5)],
        baseline,
        PSI,
        SPREAD,
    )
    assert [f.status for f in findings] == ["ok", "critical"]
    # the latency spread is at least 10% of its mean: 20 + 1.5 * 2.0
    assert findings[1].warning == pytest.approx(23.0)


def test_a_spread_of_zero_is_floored() -> None:
    baseline = _baseline(**{"rate.failed": MetricBaseline(0.0, 0.0, 20, 0.0)})
    (one_error,) = evaluate([Measure("rate.failed", 0.001)], baseline, PSI, SPREAD)
    (many,) = evaluate([Measure("rate.failed", 0.02)], baseline, PSI, SPREAD)
    assert one_error.status == "ok" and many.status == "critical"


def test_missing_values_are_never_ok() -> None:
    findings = evaluate(
        [
            Measure("psi.x", None, "insufficient data: 3 rows, 100 needed"),
            Measure("kpi.delay_cost", None, "not matured (24 h after window end)"),
            Measure("score.psi", None, "no staging score reference (no baseline)"),
            Measure("score.mean", 0.3),
        ],
        None,
        PSI,
        SPREAD,
    )
    assert [f.status for f in findings] == [
        "insufficient_data",
        "insufficient_data",
        "inconclusive",
        "no_baseline",
    ]
    assert worst(findings) == "inconclusive"


def test_baseline_round_trips_through_json() -> None:
    baseline = _baseline(**{"psi.temp": MetricBaseline(3.0, 0.5, 20, 0.5)})
    again = Baseline.from_json(json.loads(json.dumps(baseline.to_json())))
    assert again == baseline
    ref = again.score_reference()
    assert isinstance(ref, FeatureReference) and isinstance(ref.bins, NumericBins)


def test_a_baseline_of_another_format_is_refused_clearly() -> None:
    from prodguard.errors import RegistryError

    document = _baseline(**{"psi.temp": MetricBaseline(3.0, 0.5, 20, 0.5)}).to_json()
    del document["metrics"]["psi.temp"]["max_deviation"]
    with pytest.raises(RegistryError, match="re-run `prodguard baseline`"):
        Baseline.from_json(document)


def test_a_latency_baseline_of_zero_spread_has_a_floor() -> None:
    """A staging replay whose timer read the same latency in every window (sd 0) must not make
    every production window an alert: max(sd, 10% of the mean, 1 ms), reported as such."""
    flat = MetricBaseline(0.4, 0.0, 20, 0.0)
    slow = MetricBaseline(50.0, 0.0, 20, 0.0)
    assert flat.spread("latency.model.p99") == pytest.approx(1.0)  # the 1 ms floor
    assert slow.spread("latency.model.p99") == pytest.approx(5.0)  # 10% of the mean
    assert MetricBaseline(50.0, 8.0, 20, 9.0).spread("latency.model.p99") == pytest.approx(9.0)
    baseline = _baseline(**{"latency.model.p99": flat, "latency.total.p99": slow})
    jitter, loaded = evaluate(
        [Measure("latency.model.p99", 1.2), Measure("latency.total.p99", 61.0)],
        baseline,
        PSI,
        SPREAD,
    )
    assert jitter.status == "ok" and jitter.baseline_sd == pytest.approx(1.0)
    assert loaded.status == "critical" and loaded.baseline_sd == pytest.approx(5.0)


def test_calendar_features_are_judged_only_on_windows_as_long_as_their_period() -> None:
    from prodguard.config import MonitoringSettings
    from prodguard.monitoring.measures import judged_features

    references = {"day_of_week": "dow", "temp": "temp"}
    calendar = {"day_of_week": 10080.0}
    assert judged_features(references, calendar, 1440) == {"temp": "temp"}  # type: ignore[arg-type]
    assert judged_features(references, calendar, 10080) == references  # type: ignore[arg-type]
    assert judged_features(references, calendar, None) == references  # type: ignore[arg-type]
    assert judged_features(None, calendar, 1440) is None
    kpi = {"name": "cost", "outcome": "y"}
    with pytest.raises(ValueError, match="period in minutes > 0"):
        MonitoringSettings(kpi=kpi, calendar_features={"day_of_week": 0})  # type: ignore[arg-type]
