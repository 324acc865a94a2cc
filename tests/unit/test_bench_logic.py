"""Pure logic of the benchmark: percentiles, summaries, ratios, Server-Timing, goals."""

import math

import numpy as np
import pytest

from prodguard.bench.benchmark import BatchRun, BenchReport, ServiceRun
from prodguard.bench.load import LevelResult, Samples, merge, server_timing
from prodguard.bench.stats import percentile, ratio, summarize

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("q", [0, 1, 25, 50, 95, 99, 100])
def test_percentile_equals_numpys_linear_method(q) -> None:
    values = list(np.random.default_rng(3).lognormal(size=257))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([4.0], q) == 4.0


def test_percentile_refuses_empty_series_and_bad_q() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_is_ordered_and_counts_every_value() -> None:
    summary = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary.count == 5 and summary.mean == 3.0 and summary.max == 5.0
    assert summary.p50 == 3.0 and summary.p50 <= summary.p95 <= summary.p99 <= summary.max


def test_ratio_is_rounded_and_guards_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5 and ratio(1.0, 3.0) == 0.333
    assert math.isinf(ratio(1.0, 0.0))


def test_server_timing_header_parses_stages_in_ms() -> None:
    header = "checks;dur=0.012, features;dur=0.2,model;desc=x;dur=5.5, log;dur=oops, total"
    assert server_timing(header) == {"checks": 0.012, "features": 0.2, "model": 5.5}
    assert server_timing(None) == {}


def level(concurrency: int, p50: float, p99: float, seconds: float, **stages) -> LevelResult:
    latency = summarize([p50] * 98 + [p99] * 2)
    return LevelResult(
        concurrency, 100, 0, seconds, latency, {k: summarize([v]) for k, v in stages.items()}
    )


def test_ratios_and_goals_come_from_the_printed_figures() -> None:
    guarded = ServiceRun(
        6.5, [level(1, 12.0, 20.0, 2.0, features=0.3, log=0.5), level(16, 90.0, 200.0, 1.25)]
    )
    bare = ServiceRun(5.0, [level(1, 10.0, 16.0, 1.0), level(16, 80.0, 150.0, 1.0)])
    report = BenchReport({}, guarded, bare, (1, 16))
    document = report.to_json()
    ratios = document["ratios"]
    assert ratios["p50"] == round(document["guarded"]["p50"] / document["bare"]["p50"], 3)
    assert ratios["p99"] == round(document["guarded"]["p99"] / document["bare"]["p99"], 3)
    assert ratios["throughput_c16"] == 0.8  # 80 req/s against 100
    goals = document["goals"]
    assert goals["p50 ratio"]["met"] and goals["throughput ratio c=16"]["met"]
    assert goals["feature retrieval p99 ms"]["met"]
    assert not goals["prediction log write p99 ms"]["met"]  # 0.5 ms > 0.2 ms
    assert goals["guarded cold start s"] == {"value": 6.5, "goal": "<= 8", "met": True, "by": 0.812}


def test_the_floor_its_ratios_and_the_issue_goals_are_in_the_json() -> None:
    guarded = ServiceRun(
        6.5,
        [
            level(1, 3.0, 8.0, 2.0, model=0.2, log=0.1, total=1.0, http=2.0),
            level(16, 40.0, 90.0, 2.0),
        ],
    )
    bare = ServiceRun(5.0, [level(1, 2.5, 5.0, 1.0), level(16, 30.0, 60.0, 1.0)])
    floor = ServiceRun(4.0, [level(1, 1.5, 3.0, 1.0), level(16, 20.0, 40.0, 1.0)])
    batch = BatchRun(1000, summarize([40.0, 50.0]), summarize([20.0, 30.0]))
    document = BenchReport({}, guarded, bare, (1, 16), floor, batch).to_json()
    assert document["floor"] == floor.to_json()
    ratios = document["ratios_floor"]
    assert ratios["p50"] == 2.0 and ratios["p99"] == round(8.0 / 3.0, 3)
    assert ratios["throughput_c16"] == 0.5  # 50 req/s against 100
    assert document["ratios"]["p50"] == 1.2  # guarded / bare stays beside it
    goals = document["goals"]
    where = goals["p50 / floor"].pop("where")  # the ratio in its parts
    assert goals["p50 / floor"] == {"value": 2.0, "goal": "<= 1.5", "met": False, "by": 1.333}
    assert where == (
        "p50 at c=1: guarded 3.00 ms = server 1.00 ms (model 0.20, log 0.10) + HTTP and "
        "framework 2.00 ms; floor 1.50 ms, all HTTP and framework"
    )
    assert goals["throughput c=16 / floor"].pop("where").startswith("p50 at c=16: guarded 40")
    assert not goals["p99 / floor"]["met"] and goals["p99 / floor"]["by"] == 1.333
    assert goals["throughput c=16 / floor"] == {
        "value": 0.5,
        "goal": ">= 0.6",
        "met": False,
        "by": 1.2,
    }
    assert goals["model stage p50 ms"]["met"] and goals["model stage p50 ms"]["by"] < 1
    batch_goal = goals["predict_batch 1000 rows server p50 ms"]
    assert batch_goal["value"] == 25.0 and batch_goal["met"] and batch_goal["by"] == 1.0
    assert document["batch"]["rows"] == 1000 and document["batch"]["latency_ms"]["p50"] == 45.0


def test_without_a_floor_the_report_has_no_floor_figures() -> None:
    run = ServiceRun(1.0, [level(1, 2.0, 3.0, 1.0)])
    document = BenchReport({}, run, run, (1,)).to_json()
    assert "floor" not in document and "ratios_floor" not in document
    assert "p50 / floor" not in document["goals"]


def test_rounds_merge_into_one_level() -> None:
    first = Samples([1.0, 2.0], {"model": [0.5, 0.6], "total": [0.7, 0.8]}, {"200": 2}, 0, 2, 1.0)
    second = Samples([3.0], {"model": [0.7], "total": [0.9]}, {"200": 1, "503": 1}, 1, 2, 1.0)
    level = merge(4, [first, second])
    assert (level.requests, level.errors, level.seconds) == (4, 1, 2.0)
    assert level.latency.count == 3 and level.latency.p50 == 2.0
    assert level.stages["model"].count == 3 and level.statuses == {"200": 3, "503": 1}
    assert level.throughput == 1.5  # answered per second
