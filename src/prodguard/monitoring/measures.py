"""What one window of champion predictions measures: input drift, prediction distribution,
business KPI, latency, degradation and error rates.

Metric names:

- ``psi.<feature>``: PSI of the served feature values against the version's training
  reference (decile bins for numeric features, category shares plus an unseen bin);
- ``shift.<feature>``: the same against the staging period of the baseline (when there is one);
- ``score.psi`` (against the staging scores of the baseline) and the task's score measures
  (``prodguard.tasks.score_measures``: ``score.mean`` for binary and regression models,
  ``score.share.<class>`` and ``score.proba.<class>`` for multiclass ones);
- ``kpi.<name>``: mean cost per labelled prediction (``prodguard.tasks.kpi_cost``: binary,
  ``cost_missed`` per missed positive and ``cost_false_alert`` per false alert; regression, the
  mean absolute error; multiclass, the cost matrix or error rate; or the project's cost
  function); only for matured windows with enough labels;
- ``latency.<stage>.p50|p95|p99`` in ms (checks, features, model, and their total per request),
  over single-row requests (batch calls share one timing);
- ``rate.degraded`` (rows with a feature the store could not serve), ``rate.unseen`` (rows with
  a category the model never saw, flagged ``<field>:unseen``; not part of ``rate.degraded``:
  the guard compares live degradation with it), ``rate.failed`` and
  ``rate.rejected``
  (requests that got no prediction, from the log's error counts).

A value of ``None`` carries a reason (too few rows, not matured, no reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from prodguard.config import KpiSettings
from prodguard.monitoring.psi import CategoricalBins, NumericBins, psi_from_fractions
from prodguard.serving.prediction_log import ErrorKind
from prodguard.tasks import (
    CostFunction,
    Outputs,
    Task,
    TaskSpec,
    kpi_cost,
    kpi_costs,
    score_measures,
    score_metric_names,
)

BINARY = TaskSpec(Task.BINARY, (0, 1))

LATENCY_STAGES = ("checks", "features", "model", "total")  # total: the three, per request
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Measure:
    metric: str
    value: float | None
    reason: str = ""  # why value is None


@dataclass(frozen=True)
class FeatureReference:
    bins: NumericBins | CategoricalBins
    fractions: np.ndarray

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> FeatureReference | None:
        """From one feature's entry of ``reference_stats.json`` (None: nothing to compare)."""
        if stats["kind"] == "categorical":
            categories = tuple(sorted(stats["categories"]))
            if not categories:
                return None
            shares = [stats["categories"][c] for c in categories]
            return cls(CategoricalBins(categories), np.array([*shares, 0.0]))
        if not stats.get("bin_fractions"):
            return None
        return cls(
            NumericBins(np.asarray(stats["bin_edges"], dtype="float64")),
            np.asarray(stats["bin_fractions"], dtype="float64"),
        )

    def psi(self, values: pd.Series) -> float | None:
        if isinstance(self.bins, CategoricalBins):
            counts = self.bins.counts(values.tolist())
        else:
            counts = self.bins.counts(pd.to_numeric(values, errors="coerce").to_numpy("float64"))
        total = counts.sum()
        if total == 0:
            return None
        return psi_from_fractions(self.fractions, counts / total)


def feature_references(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, FeatureReference]:
    found = {name: FeatureReference.from_stats(s) for name, s in stats.items()}
    return {name: ref for name, ref in found.items() if ref is not None}


def score_reference(scores: np.ndarray, bins: int) -> FeatureReference:
    fitted = NumericBins.from_reference(scores, bins)
    counts = fitted.counts(scores)
    return FeatureReference(fitted, counts / counts.sum())


def served_degraded(flags: Sequence[str] | None) -> set[str]:
    """The features of one row that the feature store could not serve (stale, missing,
    unavailable: flags read ``feature:reason``). A category the model never saw
    (``field:unseen``) is the traffic's, not a source's, and is not one of them."""
    return {
        name
        for name, _, reason in (str(flag).partition(":") for flag in flags or ())
        if reason != "unseen"
    }


def judged_features(
    references: Mapping[str, FeatureReference] | None,
    calendar: Mapping[str, float],
    window_minutes: float | None,
) -> dict[str, FeatureReference] | None:
    """The references a window of ``window_minutes`` can judge: without the calendar features
    whose period is longer (their share in the window is set by the calendar, not by drift);
    all of them for windows counted in rows."""
    if references is None:
        return None
    if window_minutes is None:
        return dict(references)
    return {n: r for n, r in references.items() if calendar.get(n, 0.0) <= window_minutes}


def measure(
    frame: pd.DataFrame,
    *,
    features: Mapping[str, FeatureReference],
    scores: FeatureReference | None,
    staging: Mapping[str, FeatureReference] | None = None,
    kpi: KpiSettings,
    matured: bool,
    errors: Mapping[ErrorKind, int],
    min_rows: int,
    spec: TaskSpec = BINARY,
    cost: CostFunction | None = None,
) -> list[Measure]:
    """Every metric of one window (``frame``: champion rows of one model version, whose task
    is ``spec``; ``cost``: the project's KPI cost function, if it names one)."""
    rows = len(frame)
    measures = [Measure("rows", float(rows))]
    attempts = rows + sum(errors.values())
    for kind in ("failed", "rejected"):
        value = errors.get(kind, 0) / attempts if attempts else None
        measures.append(Measure(f"rate.{kind}", value, "" if attempts else "no requests"))
    if rows < min_rows:
        short = f"insufficient data: {rows} rows, {min_rows} needed"
        names = [f"psi.{n}" for n in features] + [f"shift.{n}" for n in staging or {}]
        names += ["score.psi", *score_metric_names(spec), "rate.degraded", "rate.unseen"]
        names += [f"kpi.{kpi.name}"] + _latency_names()
        return measures + [Measure(n, None, short) for n in names]

    served = pd.DataFrame(frame["features"].tolist())
    for prefix, references in (("psi", features), ("shift", staging or {})):
        for name, reference in references.items():
            metric = f"{prefix}.{name}"
            if name not in served.columns:
                measures.append(Measure(metric, None, "feature not in the logged inputs"))
                continue
            value = reference.psi(served[name])
            measures.append(Measure(metric, value, "" if value is not None else "all null"))

    probability = frame["probability"].to_numpy("float64")
    if scores is None:
        measures.append(Measure("score.psi", None, "no staging score reference (no baseline)"))
    else:
        measures.append(Measure("score.psi", scores.psi(pd.Series(probability))))
    outputs = logged_outputs(spec, frame)
    for metric, value in score_measures(
        spec, outputs.score, outputs.decision, outputs.probabilities
    ).items():
        measures.append(Measure(metric, value))
    degraded = frame["flags"].map(lambda flags: bool(served_degraded(flags)))
    measures.append(Measure("rate.degraded", float(degraded.mean())))
    unseen = frame["flags"].map(lambda flags: any(f.endswith(":unseen") for f in flags))
    measures.append(Measure("rate.unseen", float(unseen.mean())))
    measures.append(_kpi(frame, kpi, matured, spec, cost))
    measures.extend(_latency(frame, min_rows))
    return measures


def kpi_cost_function(kpi: KpiSettings) -> CostFunction | None:
    """The project's KPI cost function (``monitoring.kpi.cost``), if it names one."""
    if kpi.cost is None:
        return None
    from prodguard.project import import_object

    return import_object(kpi.cost, "monitoring.kpi.cost")


def logged_outputs(spec: TaskSpec, frame: pd.DataFrame) -> Outputs:
    """The normalised outputs of logged predictions (columns ``probability``: the score,
    ``decision`` and, for multiclass and regression, ``prediction``)."""
    score = frame["probability"].to_numpy("float64")
    decision = frame["decision"].to_numpy("int64")
    logged = frame["prediction"] if "prediction" in frame else pd.Series([None] * len(frame))
    if spec.task is Task.BINARY:
        classes = spec.classes or (0, 1)
        column = spec.positive_column
        predicted = [classes[column] if d else classes[1 - column] for d in decision]
        return Outputs(spec.task, score, decision, predicted, classes=classes)
    if spec.task is Task.REGRESSION:
        return Outputs(spec.task, score, decision, [float(v) for v in score])
    names = [str(c) for c in spec.classes]
    probabilities = np.array(
        [
            [p["probabilities"].get(n, np.nan) for n in names]
            if isinstance(p, dict)
            else [np.nan] * len(names)
            for p in logged
        ],
        dtype="float64",
    ).reshape(len(frame), len(names))
    predicted = [spec.classes[d] if 0 <= d < len(spec.classes) else None for d in decision]
    return Outputs(spec.task, score, decision, predicted, probabilities, spec.classes)


def _kpi(
    frame: pd.DataFrame,
    kpi: KpiSettings,
    matured: bool,
    spec: TaskSpec,
    cost: CostFunction | None,
) -> Measure:
    metric = f"kpi.{kpi.name}"
    if not matured:
        return Measure(metric, None, f"not matured ({kpi.maturity_hours:g} h after window end)")
    outcomes = frame["outcome"].map(lambda o: o.get(kpi.outcome) if isinstance(o, dict) else None)
    labelled = outcomes.notna().to_numpy()
    if int(labelled.sum()) < kpi.min_labelled:
        return Measure(
            metric,
            None,
            f"insufficient data: {int(labelled.sum())} labelled, {kpi.min_labelled} needed",
        )
    outputs = logged_outputs(spec, frame[labelled].reset_index(drop=True))
    value = kpi_cost(
        spec,
        outcomes[labelled].to_numpy(),
        outputs,
        cost_missed=kpi.cost_missed,
        cost_false_alert=kpi.cost_false_alert,
        cost_matrix=kpi.cost_matrix,
        cost=cost,
    )
    return Measure(metric, value)


def _latency_names() -> list[str]:
    return [f"latency.{s}.p{p}" for s in LATENCY_STAGES for p in PERCENTILES]


def request_timings(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-stage timings of the single-row requests of ``frame`` (batch calls share one timing),
    with their ``total_ms`` (the three stages) when all are logged."""
    timings = pd.DataFrame(frame["latencies_ms"].tolist())
    if "batch_rows" in timings.columns:
        timings = timings[timings["batch_rows"] == 1]
    stages = [f"{s}_ms" for s in LATENCY_STAGES if s != "total"]
    if set(stages) <= set(timings.columns):
        timings = timings.assign(total_ms=timings[stages].sum(axis=1, min_count=len(stages)))
    return timings


def row_costs(
    frame: pd.DataFrame, kpi: KpiSettings, spec: TaskSpec, cost: CostFunction | None
) -> np.ndarray:
    """The KPI cost of each labelled row of ``frame`` (NaN where there is no outcome yet): the
    per-request terms whose mean is ``kpi.<name>``, for paired cost differences."""
    outcomes = frame["outcome"].map(lambda o: o.get(kpi.outcome) if isinstance(o, dict) else None)
    labelled = outcomes.notna().to_numpy()
    costs = np.full(len(frame), np.nan)
    if not labelled.any():
        return costs
    outputs = logged_outputs(spec, frame[labelled].reset_index(drop=True))
    costs[labelled] = kpi_costs(
        spec,
        outcomes[labelled].to_numpy(),
        outputs,
        cost_missed=kpi.cost_missed,
        cost_false_alert=kpi.cost_false_alert,
        cost_matrix=kpi.cost_matrix,
        cost=cost,
    )
    return costs


def _latency(frame: pd.DataFrame, min_rows: int) -> list[Measure]:
    timings = request_timings(frame)
    measures = []
    for stage in LATENCY_STAGES:
        column = f"{stage}_ms"
        values = timings[column].dropna().to_numpy("float64") if column in timings else np.array([])
        for p in PERCENTILES:
            name = f"latency.{stage}.p{p}"
            if values.size < max(20, min_rows // 10):
                measures.append(Measure(name, None, f"insufficient data: {values.size} requests"))
            else:
                measures.append(Measure(name, float(np.percentile(values, p))))
    return measures
