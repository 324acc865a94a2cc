"""What ``/feedback`` accepts: an outcome the KPI can use, by the rules the KPI turns it into a
cost with (``tasks.kpi_costs``). An outcome it would leave out — no ``monitoring.kpi.outcome``
key, text for a regression, a class no served model knows — is refused with one line naming
the setting and what is expected, never the value sent."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prodguard.config import KpiSettings
from prodguard.errors import RequestRejected
from prodguard.tasks import Task, TaskSpec, same_label

SHOWN = 20  # classes named in a message


class UnusableOutcome(RequestRejected):
    """An outcome the KPI cannot use (422): nothing is recorded."""


def check_outcome(outcome: Mapping[str, Any], kpi: KpiSettings, specs: Iterable[TaskSpec]) -> None:
    """Raises ``UnusableOutcome`` unless ``outcome[kpi.outcome]`` is usable by at least one of
    the served versions' tasks (``specs``: none loaded, or a project cost function
    (``monitoring.kpi.cost``) that reads any value: only the key is checked). Binary outcomes
    are read as flags or the positive class, so any value is usable."""
    key = kpi.outcome
    field = f"outcome.{key}"
    if key not in outcome:
        raise UnusableOutcome(
            f"the outcome lacks the key monitoring.kpi.outcome names ('{key}'); send "
            f'{{"outcome": {{"{key}": <the observed value>}}}}',
            [("outcome", f"no '{key}' (monitoring.kpi.outcome)")],
        )
    specs = list(specs)
    if kpi.cost is not None or not specs:
        return
    problems = [_problem(outcome[key], spec) for spec in specs]
    if all(problems):
        problem = problems[0]
        raise UnusableOutcome(
            f"the outcome's '{key}' (monitoring.kpi.outcome) {problem}; the KPI could not "
            "use it, nothing was recorded",
            [(field, problem)],
        )


def _problem(value: Any, spec: TaskSpec) -> str:
    """'' when the task's KPI can use ``value``, else what is expected (without the value)."""
    if spec.task is Task.REGRESSION:
        return (
            "" if _number(value) else f"must be a number for a regression model, not {_kind(value)}"
        )
    if spec.task is Task.MULTICLASS and spec.classes:
        if same_label(value, spec.classes) in spec.classes:
            return ""
        shown = ", ".join(map(str, spec.classes[:SHOWN]))
        more = f", ... ({len(spec.classes)} in all)" if len(spec.classes) > SHOWN else ""
        return f"must be one of the model's classes ({shown}{more})"
    return ""


def _number(value: Any) -> bool:
    """A value the regression KPI reads as a number (``pd.to_numeric``: numbers and numeric
    text), finite; a flag is not a measurement."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a true/false flag"
    if isinstance(value, str):
        return "text"
    return "a non-finite number" if isinstance(value, float) else type(value).__name__
