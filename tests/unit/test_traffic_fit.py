"""Sizes that the observed traffic cannot fill are named, with the values that would fit."""

import pytest

from prodguard.config import (
    KpiSettings,
    MonitoringSettings,
    RolloutSettings,
    TriggerSettings,
    WindowSettings,
)
from prodguard.rollout.drill import inconclusive_note
from prodguard.rollout.traffic_fit import FEWEST, fitted, misfits
from prodguard.rollout.triggers import TriggerResult

pytestmark = pytest.mark.unit
KPI = KpiSettings(name="cost", outcome="y")


def test_a_low_traffic_project_is_told_what_to_set() -> None:
    rollout = RolloutSettings(guard_minutes=1440, triggers=TriggerSettings(min_requests=200))
    lines = misfits(35, rollout, MonitoringSettings(window=WindowSettings(min_rows=1000), kpi=KPI))
    guard = next(line for line in lines if "rollout.triggers.min_requests" in line)
    assert "at ~35 requests/day" in guard and "every guard check inconclusive" in guard
    assert "set rollout.triggers.min_requests <= 35 or rollout.guard_minutes >= 8229" in guard
    assert any("monitoring.window.min_rows" in line for line in lines)  # 7 days: ~245 < 1000


def test_enough_traffic_or_none_yet_is_no_problem() -> None:
    rollout = RolloutSettings(guard_minutes=1440, triggers=TriggerSettings(min_requests=200))
    monitoring = MonitoringSettings(window=WindowSettings(minutes=1440, min_rows=200), kpi=KPI)
    rollout = rollout.model_copy(update={"bake_min_requests": 200, "bake_minutes": 1440})
    assert misfits(5000, rollout, monitoring) == []
    assert misfits(0, rollout, monitoring) == []


def test_the_drill_says_which_triggers_were_inconclusive_and_why() -> None:
    waiting = [
        TriggerResult("prediction_shift", "inconclusive", None, 0.0, "12 requests, 200 needed"),
        TriggerResult("kpi", "inconclusive", None, 0.0, "12 requests, 200 needed"),
    ]
    note = inconclusive_note(waiting)
    assert "prediction_shift, kpi (12 requests, 200 needed)" in note
    assert "rollout.triggers.min_requests" in note
    assert inconclusive_note([TriggerResult("kpi", "clean", 1.0, 5.0)]) == ""


def _applied(changes: dict[str, int]) -> tuple[RolloutSettings, MonitoringSettings]:
    document = {
        "rollout": RolloutSettings().model_dump(),
        "monitoring": MonitoringSettings(kpi=KPI).model_dump(),
    }
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        section = document
        for part in path:
            section = section[part]
        section[key] = value
    return (
        RolloutSettings.model_validate(document["rollout"]),
        MonitoringSettings.model_validate(document["monitoring"]),
    )


@pytest.mark.parametrize("rate", [0.2, 1, 3, 35, 72, 300, 1000, 4000, 20000, 1e6])
def test_fitted_sizes_fill_at_the_rate_and_never_go_below_the_fewest(rate: float) -> None:
    defaults = RolloutSettings(), MonitoringSettings(kpi=KPI)
    changes = fitted(rate, *defaults)
    rollout, monitoring = _applied(changes)
    left = misfits(rate, rollout, monitoring)
    # what may be left: a first canary step that waits more than a day for its fewest requests
    assert all("rollout.bake_min_requests 20 keeps the first canary step" in line for line in left)
    assert "rollout.bake_minutes" not in changes  # a step's least duration is never lengthened
    for name, value in changes.items():
        if not name.endswith("minutes"):
            assert value >= FEWEST, (name, value)
    if not misfits(rate, *defaults):
        assert changes == {}


def test_a_few_requests_a_day_lowers_counts_after_lengthening_periods() -> None:
    defaults = RolloutSettings(), MonitoringSettings(kpi=KPI)
    assert fitted(72, *defaults) == {  # 3 days hold 200 guard requests; 5 % of 72 a day: 3.6
        "rollout.guard_minutes": 4320,
        "rollout.bake_min_requests": 20,
    }
    assert fitted(1, *defaults) == {  # a week holds 7: 20 requests need 20 days
        "rollout.triggers.min_requests": 20,
        "rollout.guard_minutes": 28800,
        "rollout.bake_min_requests": 20,
        "monitoring.window.min_rows": 20,
        "monitoring.window.minutes": 28800,
    }
    assert fitted(4000, *defaults) == {"rollout.bake_min_requests": 200}  # 5 % of a day's
    assert fitted(0, *defaults) == {}


def test_a_canary_step_that_waits_long_is_named_with_its_days() -> None:
    rollout = RolloutSettings(bake_min_requests=500, bake_minutes=60)
    lines = misfits(1000, rollout, MonitoringSettings(kpi=KPI))
    assert lines == [
        "at ~1e+03 requests/day, rollout.bake_min_requests 500 keeps the first canary step "
        "(5 % of the traffic) waiting ~10 days for its requests: set "
        "rollout.bake_min_requests <= 50"
    ]
