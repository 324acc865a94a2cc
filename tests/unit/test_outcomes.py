"""/feedback accepts only outcomes the KPI can use (the rules of tasks.kpi_costs): one line
naming monitoring.kpi.outcome and what is expected, never the value sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from prodguard.config import KpiSettings
from prodguard.serving.outcomes import UnusableOutcome, check_outcome
from prodguard.tasks import Outputs, Task, TaskSpec, kpi_costs

REGRESSION = TaskSpec(Task.REGRESSION)
WINE = TaskSpec(Task.MULTICLASS, ("barbera", "barolo", "grignolino"))
LEVELS = TaskSpec(Task.MULTICLASS, (1, 2, 3))
BINARY = TaskSpec(Task.BINARY, (0, 1))


def kpi(outcome: str = "progression", **more: Any) -> KpiSettings:
    return KpiSettings(name="cost", outcome=outcome, **more)


def refusal(sent: dict[str, Any], spec: TaskSpec, **more: Any) -> str:
    with pytest.raises(UnusableOutcome) as refused:
        check_outcome(sent, kpi(**more), [spec])
    message = str(refused.value)
    assert "\n" not in message and "monitoring.kpi.outcome" in message
    assert "SECRET" not in message and "SECRET" not in str(refused.value.problems)
    return message


def test_an_outcome_without_the_kpi_key_is_refused_for_every_task() -> None:
    for spec in (REGRESSION, WINE, BINARY):
        assert "'progression'" in refusal({"target": 100, "SECRET": 1}, spec)
    with pytest.raises(UnusableOutcome):  # no model loaded yet: the key is still checked
        check_outcome({"target": 100}, kpi(), [])


@pytest.mark.parametrize("value", ["SECRET", True, float("inf"), float("nan")])
def test_a_regression_outcome_must_be_a_number(value: Any) -> None:
    assert "must be a number for a regression model" in refusal({"progression": value}, REGRESSION)


@pytest.mark.parametrize("value", [151, 75.5, "151", "7.5e1", 0])
def test_a_regression_outcome_the_kpi_reads_as_a_number_is_accepted(value: Any) -> None:
    check_outcome({"progression": value}, kpi(), [REGRESSION])
    outputs = Outputs(REGRESSION.task, np.array([100.0]), np.array([0]), [100.0])
    assert np.isfinite(kpi_costs(REGRESSION, [value], outputs)).all()  # the same rule


def test_a_multiclass_outcome_must_be_a_known_class() -> None:
    message = refusal({"cultivar": "SECRET"}, WINE, outcome="cultivar")
    assert "one of the model's classes (barbera, barolo, grignolino)" in message
    check_outcome({"cultivar": "barolo"}, kpi("cultivar"), [WINE])
    for sent in (2, "2", 2.0):  # feedback JSON turns 2 into "2" or 2.0: the same class
        check_outcome({"level": sent}, kpi("level"), [LEVELS])
    refusal({"level": 4}, LEVELS, outcome="level")


def test_a_class_any_served_version_knows_is_accepted() -> None:
    other = TaskSpec(Task.MULTICLASS, ("barbera", "nebbiolo"))
    check_outcome({"cultivar": "nebbiolo"}, kpi("cultivar"), [WINE, other])


def test_binary_outcomes_and_project_cost_functions_take_any_value() -> None:
    check_outcome({"delayed": "yes"}, kpi("delayed"), [BINARY])
    check_outcome({"progression": "text"}, kpi(cost="my_project.kpi:cost"), [REGRESSION])
