"""Rollback triggers: fired, clean or inconclusive, from a version's findings."""

from __future__ import annotations

import pytest

from prodguard.config import KpiSettings, TriggerSettings
from prodguard.monitoring.baseline import Baseline, Finding, MetricBaseline
from prodguard.rollout.triggers import describe, evaluate_triggers

pytestmark = pytest.mark.unit
TRIGGERS = TriggerSettings(
    prediction_shift_sd=3.0,
    kpi_worse_pct=5.0,
    error_rate=0.01,
    p99_latency_ms=100.0,
    critical_psi_features=["temp"],
    min_requests=100,
)
BASELINE = Baseline(
    model_version=1,
    start="s",
    end="e",
    window={"minutes": 60, "rows": None},
    metrics={"kpi.delay_cost": MetricBaseline(0.25, 0.01, 20, 0.02)},
    score_edges=[0.5],
    score_fractions=[0.5, 0.5],
    rows=1000,
    created="c",
)


def findings(**values: float | None) -> list[Finding]:
    found = []
    for metric, value in values.items():
        name = metric.replace("__", ".")
        status = "critical" if name.startswith(("psi.", "shift.")) and (value or 0) > 1 else "ok"
        found.append(Finding(name, value, status, critical=1.0))
    return found


def by_name(results):
    return {r.name: r for r in results}


def healthy() -> dict[str, float]:
    return {
        "score__shift_sd": 0.5,
        "kpi__delay_cost": 0.255,
        "rate__failed": 0.0,
        "latency__total__p99": 40.0,
        "psi__temp": 0.05,
        "shift__temp": 0.1,
    }


def test_a_healthy_version_is_clean() -> None:
    results = evaluate_triggers(findings(**healthy()), 500, BASELINE, TRIGGERS, "delay_cost")
    assert {r.status for r in results} == {"clean"}
    assert by_name(results)["kpi"].value == pytest.approx(2.0)  # 2% worse than baseline


@pytest.mark.parametrize(
    ("change", "trigger"),
    [
        ({"score__shift_sd": -3.5}, "prediction_shift"),
        ({"kpi__delay_cost": 0.27}, "kpi"),
        ({"rate__failed": 0.02}, "error_rate"),
        ({"latency__total__p99": 180.0}, "latency_p99"),
        ({"shift__temp": 4.0}, "psi:temp"),
    ],
)
def test_each_trigger_fires_alone(change: dict[str, float], trigger: str) -> None:
    results = evaluate_triggers(
        findings(**{**healthy(), **change}), 500, BASELINE, TRIGGERS, "delay_cost"
    )
    assert [r.name for r in results if r.status == "fired"] == [trigger]


def test_too_little_traffic_is_inconclusive_never_clean() -> None:
    results = evaluate_triggers(findings(**healthy()), 50, BASELINE, TRIGGERS, "delay_cost")
    assert {r.status for r in results} == {"inconclusive"}
    assert results[0].reason == "50 requests, 100 needed"


def test_missing_baseline_or_unmatured_kpi_is_inconclusive() -> None:
    values = {**healthy(), "kpi__delay_cost": None}
    del values["score__shift_sd"]
    results = by_name(evaluate_triggers(findings(**values), 500, None, TRIGGERS, "delay_cost"))
    assert results["prediction_shift"].status == "inconclusive"
    assert results["kpi"].status == "inconclusive" and results["kpi"].reason == "no KPI baseline"
    assert results["error_rate"].status == "clean"


def test_triggers_read_as_a_reviewable_list() -> None:
    lines = describe(TRIGGERS, KpiSettings(name="delay_cost", outcome="delayed"))
    assert lines[0] == "prediction shift: |mean score - baseline| > 3 baseline sd"
    assert any("worse than baseline by > 5%" in line for line in lines)
    assert "critical PSI on temp" in lines


def test_drill_gate_needs_a_passed_recent_drill() -> None:
    import json
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from prodguard.errors import PromotionRefused
    from prodguard.registry.lineage import DRILL as DRILL_TAG
    from prodguard.rollout.policy import drill_gate

    now = datetime(2026, 11, 29, tzinfo=UTC)

    class Tags:
        def __init__(self, **drill: object) -> None:
            self.tags = {DRILL_TAG: json.dumps(drill)} if drill else {}

        def version(self, version: int) -> SimpleNamespace:
            return SimpleNamespace(tags=self.tags)

    fresh = (now - timedelta(hours=2)).isoformat()
    drill_gate(Tags(passed=True, at=fresh), 4, 168, now)
    with pytest.raises(PromotionRefused, match="v4 has no rollback drill"):
        drill_gate(Tags(), 4, 168, now)
    with pytest.raises(PromotionRefused, match=r"last drill failed \(latency p99"):
        drill_gate(Tags(passed=False, at=fresh, reason="latency p99 300 ms"), 4, 168, now)
    old = (now - timedelta(hours=200)).isoformat()
    with pytest.raises(PromotionRefused, match="drill is 200 h old"):
        drill_gate(Tags(passed=True, at=old), 4, 168, now)


def test_prediction_shift_is_judged_net_of_the_reference() -> None:
    from prodguard.rollout.triggers import TriggerResult, net_shift

    raw = TriggerResult("prediction_shift", "fired", 3.6, 3.0)
    world = net_shift(raw, 3.1, "v1 (900 shadow)")  # the standby moved alike: the weather
    assert world.status == "clean" and world.value == pytest.approx(0.5)
    assert "+3.60 sd net of +3.10 sd of v1 (900 shadow)" in world.reason
    fault = net_shift(TriggerResult("prediction_shift", "clean", 2.0, 3.0), -1.5, "v2")
    assert fault.status == "fired" and fault.value == pytest.approx(3.5)  # opposite ways
    unknown = TriggerResult("prediction_shift", "inconclusive", None, 3.0, "no baseline")
    assert net_shift(unknown, 1.0, "v1") is unknown
