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

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from prodguard.config import KpiSettings
from prodguard.monitoring.aggregates import Moments, Sketch, Slow, Summary, exact
from prodguard.monitoring.psi import CategoricalBins, NumericBins, psi_from_fractions
from prodguard.serving.prediction_log import ANSWERS, ErrorKind
from prodguard.tasks import (
    CostFunction,
    Outputs,
    Task,
    TaskSpec,
    kpi_costs,
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

    def counts(self, values: pd.Series) -> np.ndarray:
        """The non-null values per bin."""
        if isinstance(self.bins, CategoricalBins):
            return _categorical_counts(self.bins, values.tolist())
        return self.bins.counts(pd.to_numeric(values, errors="coerce").to_numpy("float64"))

    def psi(self, values: pd.Series) -> float | None:
        return self.psi_of_counts(self.counts(values))

    def psi_of_counts(self, counts: np.ndarray) -> float | None:
        """PSI of counted values (of one window, or of merged buckets); None: none counted."""
        total = counts.sum()
        if total == 0:
            return None
        return psi_from_fractions(self.fractions, counts / total)


def _categorical_counts(bins: CategoricalBins, values: list[Any]) -> np.ndarray:
    """``bins.counts(values)`` with each distinct text looked up once (served categories
    repeat). Values other than texts and nulls are counted one by one: equal ones of other
    types (``1``, ``1.0``) would be tallied together but are binned by their own text."""
    tally = Counter(values)
    if not all(isinstance(v, str) or v is None or (isinstance(v, float) and v != v) for v in tally):
        return bins.counts(values)
    index = {category: i for i, category in enumerate(bins.categories)}
    counts = np.zeros(len(index) + 1, dtype="int64")
    for value, n in tally.items():
        if isinstance(value, str):
            counts[index.get(value, len(index))] += n
    return counts


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
    window: pd.DataFrame | Summary,
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
    """Every metric of one window of one model version, whose task is ``spec``: its rows (the
    rows' summary measured, latency percentiles exact from the rows; ``cost``: the project's
    KPI cost function, if it names one) or its merged ``Summary`` (window aggregates)."""
    if isinstance(window, Summary):
        summary, exact_latencies = window, None
    else:
        bins = window_bins(features, scores, staging)
        summary = summarise(window, bins, spec, kpi=kpi, cost=cost)
        timings = request_timings(window) if len(window) else pd.DataFrame()
        exact_latencies = {
            stage: timings[f"{stage}_ms"].dropna().to_numpy("float64")
            if f"{stage}_ms" in timings
            else np.array([])
            for stage in LATENCY_STAGES
        }
    return measure_summary(
        summary,
        features=features,
        scores=scores,
        staging=staging,
        kpi=kpi,
        matured=matured,
        errors=errors,
        min_rows=min_rows,
        spec=spec,
        latencies=exact_latencies,
    )


def measure_summary(
    summary: Summary,
    *,
    features: Mapping[str, FeatureReference],
    scores: FeatureReference | None,
    staging: Mapping[str, FeatureReference] | None = None,
    kpi: KpiSettings,
    matured: bool,
    errors: Mapping[ErrorKind, int],
    min_rows: int,
    spec: TaskSpec = BINARY,
    latencies: Mapping[str, np.ndarray] | None = None,
) -> list[Measure]:
    """Every metric of one window from its (merged) summary: the same names and values as
    from its rows — PSI from the same counts, means exact; latency percentiles from the
    summary's sketches (within ``LATENCY_ACCURACY`` of a rank's value), or exact from
    ``latencies`` (per stage, the rows' values) when given."""
    rows = summary.rows
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

    for prefix, references in (("psi", features), ("shift", staging or {})):
        for name, reference in references.items():
            metric = f"{prefix}.{name}"
            counts = summary.counts.get(metric)
            if counts is None:
                measures.append(Measure(metric, None, "feature not in the logged inputs"))
                continue
            value = reference.psi_of_counts(counts)
            measures.append(Measure(metric, value, "" if value is not None else "all null"))

    if scores is None:
        measures.append(Measure("score.psi", None, "no staging score reference (no baseline)"))
    else:
        measures.append(Measure("score.psi", scores.psi_of_counts(summary.counts["score"])))
    for metric, value in summary_score_measures(spec, summary).items():
        measures.append(Measure(metric, value))
    measures.append(Measure("rate.degraded", summary.degraded / rows))
    measures.append(Measure("rate.unseen", summary.unseen / rows))
    measures.append(_kpi(summary, kpi, matured, spec))
    measures.extend(_latency(summary, min_rows, latencies))
    return measures


def window_bins(
    features: Mapping[str, FeatureReference],
    scores: FeatureReference | None,
    staging: Mapping[str, FeatureReference] | None,
) -> dict[str, FeatureReference]:
    """The bins a window's summary counts on, keyed as its ``counts``."""
    bins = {f"psi.{name}": reference for name, reference in features.items()}
    bins.update({f"shift.{name}": reference for name, reference in (staging or {}).items()})
    if scores is not None:
        bins["score"] = scores
    return bins


def bins_fingerprint(bins: Mapping[str, FeatureReference]) -> str:
    """A digest of the bins (edges, categories) a summary counts on: summaries on other bins
    are not merged."""
    described = {
        key: [float(e) for e in reference.bins.edges]
        if isinstance(reference.bins, NumericBins)
        else list(reference.bins.categories)
        for key, reference in sorted(bins.items())
    }
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def summarise(
    frame: pd.DataFrame,
    bins: Mapping[str, FeatureReference],
    spec: TaskSpec,
    *,
    kpi: KpiSettings | None = None,
    cost: CostFunction | None = None,
    latency_budget_ms: float | None = None,
    features: bool = True,
) -> Summary:
    """The summary of log rows of one model version (``frame``, with their feedback): counts
    on ``bins`` (keyed ``psi.<feature>``, ``shift.<feature>``, ``score``), and, given ``kpi``,
    the labelled rows' costs. ``features`` False (what the guard's tests read): no bin counts,
    null counts or latency sketches."""
    summary = Summary(fingerprint=bins_fingerprint(bins), rows=len(frame))
    if frame.empty:
        return summary
    served = pd.DataFrame(frame["features"].tolist()) if features else pd.DataFrame()
    for key, reference in bins.items() if features else ():
        if key == "score":
            summary.counts[key] = reference.counts(frame["probability"])
            continue
        name = key.partition(".")[2]
        if name in served.columns:
            summary.counts[key] = reference.counts(served[name])
    summary.nulls = {str(name): int(n) for name, n in served.isna().sum().items()}
    outputs = logged_outputs(spec, frame)
    summary.score = Moments.of(outputs.score)
    if spec.task is Task.MULTICLASS:
        summary.decisions = np.bincount(
            outputs.decision.astype("int64"), minlength=len(spec.classes)
        )
        assert outputs.probabilities is not None
        summary.probabilities = [
            Moments.of(outputs.probabilities[:, j]) for j in range(len(spec.classes))
        ]
    for flags, rows in Counter(tuple(flags or ()) for flags in frame["flags"]).items():
        names = served_degraded(flags)  # rows share few sets of flags: each is read once
        summary.degraded += rows * bool(names)
        for name in names:
            summary.degraded_features[name] = summary.degraded_features.get(name, 0) + rows
        summary.unseen += rows * any(str(f).endswith(":unseen") for f in flags)
    timings = request_timings(frame)
    for stage in LATENCY_STAGES if features else ():
        column = f"{stage}_ms"
        if column not in timings:
            continue
        values = timings[column].dropna().to_numpy("float64")
        if values.size:
            summary.latency[stage] = Sketch.of(values)
    if "total_ms" in timings:
        totals = timings["total_ms"].dropna().to_numpy("float64")
        summary.timed = int(totals.size)
        if latency_budget_ms is not None:
            summary.slow = int(np.count_nonzero(totals > latency_budget_ms))
    if kpi is not None and "outcome" in frame:
        summary.kpi = kpi_moments(frame, kpi, spec, cost)
        summary.healthy_kpi = kpi_moments(frame[healthy_rows(frame)], kpi, spec, cost)
    return summary


def healthy_rows(frame: pd.DataFrame) -> np.ndarray:
    """Which rows were served with every feature the store holds (the ones a model's cost is
    judged on: a source that failed makes every model worse, and that is not the model's
    fault)."""
    return np.array([not served_degraded(flags) for flags in frame["flags"]], dtype=bool)


PAIRED = "_ref"  # the suffix of the other version's columns in a frame of pairs


def pair_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The requests of ``frame`` scored by an answering version and a shadow one, on both
    sides: each answer with the shadow row of its request (columns suffixed ``_ref``), and each
    shadow row with its answer. The outcome is the request's, on both sides."""
    answers = frame[frame["role"].isin(ANSWERS)]
    shadows = frame[frame["role"] == "shadow"]
    if answers.empty or shadows.empty:
        return frame.iloc[0:0].join(frame.iloc[0:0].add_suffix(PAIRED))
    ahead = answers.merge(shadows, on="request_id", suffixes=("", PAIRED))
    behind = shadows.merge(answers, on="request_id", suffixes=("", PAIRED))
    if "outcome" in frame:
        behind = behind.assign(outcome=behind[f"outcome{PAIRED}"])
    return pd.concat([ahead, behind], ignore_index=True)


def summarise_pairs(
    pairs: pd.DataFrame,
    spec: TaskSpec,
    other_spec: TaskSpec,
    *,
    scores: bool = True,
    kpi: KpiSettings | None = None,
    cost: CostFunction | None = None,
    latency_budget_ms: float | None = None,
) -> Summary:
    """What the guard's paired tests read of pairs of one version's rows with another
    version's rows of the same requests (``pair_rows``; one version on each side): the score
    differences (per class score metric for multiclass models), the timed single-row pairs with
    the requests of each side over ``latency_budget_ms`` (``scores``), and, given ``kpi``, the
    cost differences of the labelled requests served healthy (by this version's row)."""
    summary = Summary()
    if pairs.empty:
        return summary
    other = int(pairs[f"version{PAIRED}"].iloc[0])
    theirs = pairs.assign(
        probability=pairs[f"probability{PAIRED}"],
        decision=pairs[f"decision{PAIRED}"],
        prediction=pairs[f"prediction{PAIRED}"],
    )
    if scores:
        difference = pairs["probability"].to_numpy("float64")
        difference = difference - theirs["probability"].to_numpy("float64")
        summary.paired[other] = Moments.of(difference)
        mine_classes, their_classes = class_scores(pairs, spec), class_scores(theirs, other_spec)
        if mine_classes:
            summary.pair_classes[other] = {
                m: Moments.of(v - their_classes[m])
                for m, v in mine_classes.items()
                if m in their_classes
            }
        slow = paired_slow(pairs, latency_budget_ms) if latency_budget_ms is not None else None
        if slow is not None:
            summary.pair_slow[other] = slow
    if kpi is not None and "outcome" in pairs:
        healthy = healthy_rows(pairs)
        mine = row_costs(pairs[healthy].reset_index(drop=True), kpi, spec, cost)
        costs = mine - row_costs(theirs[healthy].reset_index(drop=True), kpi, other_spec, cost)
        if np.isfinite(costs).any():
            summary.pair_costs[other] = Moments.of(costs[np.isfinite(costs)])
    return summary


def summarise_all_pairs(
    frame: pd.DataFrame,
    by: Sequence[str],
    specs: Callable[[int], TaskSpec],
    *,
    scores: bool = True,
    kpi: KpiSettings | None = None,
    cost: CostFunction | None = None,
    latency_budget_ms: float | None = None,
) -> dict[tuple[Any, ...], Summary]:
    """The pair summaries of ``frame``'s rows (``pair_rows``), grouped by this side's ``by``
    columns (e.g. bucket, version and role) and the other side's version."""
    pairs = pair_rows(frame)
    found: dict[tuple[Any, ...], Summary] = {}
    if pairs.empty:
        return found
    for group, rows in pairs.groupby([*by, f"version{PAIRED}"], sort=False):
        key = tuple(group)[:-1]
        version, other = int(rows["version"].iloc[0]), int(rows[f"version{PAIRED}"].iloc[0])
        summary = summarise_pairs(
            rows,
            specs(version),
            specs(other),
            scores=scores,
            kpi=kpi,
            cost=cost,
            latency_budget_ms=latency_budget_ms,
        )
        found[key] = found[key].merge(summary) if key in found else summary
    return found


def class_scores(frame: pd.DataFrame, spec: TaskSpec) -> dict[str, np.ndarray]:
    """A multiclass version's per-row value of each class score metric: its probability
    (``score.proba.<class>``), or whether it was the predicted class (``score.share.<class>``)
    when the rows logged no probabilities; NaN where a row has none. Empty for other tasks."""
    if spec.task is not Task.MULTICLASS or frame.empty:
        return {}
    outputs = logged_outputs(spec, frame.reset_index(drop=True))
    probabilities = outputs.probabilities
    if probabilities is not None and np.isfinite(probabilities).any():
        return {f"score.proba.{c}": probabilities[:, j] for j, c in enumerate(spec.classes)}
    decisions = outputs.decision
    return {
        f"score.share.{c}": (decisions == j).astype("float64") for j, c in enumerate(spec.classes)
    }


def paired_slow(pairs: pd.DataFrame, budget_ms: float) -> Slow | None:
    """Of the pairs of single-row requests (the version's row and the reference's, suffixed
    ``_ref``) that both timed their model stage, how many, and the version's and the
    reference's requests slower than ``budget_ms``: both with the shared stages (checks,
    features) of whichever row timed them (a shadow row times only its model stage, scored off
    the response path) and each its own model stage. None when no pair was timed."""
    stages = ["checks_ms", "features_ms", "model_ms", "batch_rows"]
    mine = pd.DataFrame(pairs["latencies_ms"].tolist(), index=pairs.index)
    theirs = pd.DataFrame(pairs[f"latencies_ms{PAIRED}"].tolist(), index=pairs.index)
    mine, theirs = mine.reindex(columns=stages), theirs.reindex(columns=stages)
    shared = (mine["checks_ms"] + mine["features_ms"]).fillna(
        theirs["checks_ms"] + theirs["features_ms"]
    )
    own, other = shared + mine["model_ms"], shared + theirs["model_ms"]
    single = (mine["batch_rows"] == 1) & (theirs["batch_rows"] == 1)
    timed = single & own.notna() & other.notna()
    if not timed.any():
        return None
    return Slow(
        int(timed.sum()),
        int((own[timed] > budget_ms).sum()),
        int((other[timed] > budget_ms).sum()),
    )


def kpi_moments(
    frame: pd.DataFrame, kpi: KpiSettings, spec: TaskSpec, cost: CostFunction | None
) -> Moments:
    """The KPI costs of the labelled rows of ``frame`` (``kpi.<name>`` is their mean; the
    regression default skips costs it cannot compute). A project cost function that returns
    one total counts as the sum of its rows' costs."""
    outcomes = frame["outcome"].map(lambda o: o.get(kpi.outcome) if isinstance(o, dict) else None)
    labelled = outcomes.notna().to_numpy()
    if not labelled.any():
        return Moments()
    outputs = logged_outputs(spec, frame[labelled].reset_index(drop=True))
    truth = outcomes[labelled].to_numpy()
    if cost is not None:
        result = np.asarray(cost(np.asarray(truth), outputs.frame()), dtype="float64")
        if result.ndim == 0:
            total = float(result)
            finite = math.isfinite(total)
            n = int(labelled.sum())
            return Moments(n if finite else 0, exact(total) if finite else 0, 0, 0 if finite else n)
        return Moments.of(result)
    return Moments.of(
        kpi_costs(
            spec,
            truth,
            outputs,
            cost_missed=kpi.cost_missed,
            cost_false_alert=kpi.cost_false_alert,
            cost_matrix=kpi.cost_matrix,
        )
    )


def summary_score_measures(spec: TaskSpec, summary: Summary) -> dict[str, float]:
    """``prodguard.tasks.score_measures`` of the summarised rows (means exact)."""
    if spec.task is not Task.MULTICLASS:
        return {"score.mean": summary.score.mean()}
    out = {}
    rows = max(summary.rows, 1)
    for j, c in enumerate(spec.classes):
        out[f"score.share.{c}"] = float(
            (summary.decisions[j] if j < len(summary.decisions) else 0) / rows
        )
        if j < len(summary.probabilities):
            out[f"score.proba.{c}"] = summary.probabilities[j].mean()
    return out


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


def _kpi(summary: Summary, kpi: KpiSettings, matured: bool, spec: TaskSpec) -> Measure:
    metric = f"kpi.{kpi.name}"
    if not matured:
        return Measure(metric, None, f"not matured ({kpi.maturity_hours:g} h after window end)")
    labelled = summary.kpi.count
    if labelled < kpi.min_labelled:
        return Measure(
            metric, None, f"insufficient data: {labelled} labelled, {kpi.min_labelled} needed"
        )
    return Measure(metric, summary.kpi.mean(skip_missing=spec.task is Task.REGRESSION))


def _latency_names() -> list[str]:
    return [f"latency.{s}.p{p}" for s in LATENCY_STAGES for p in PERCENTILES]


def request_timings(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-stage timings of the single-row requests of ``frame`` (batch calls share one timing;
    a row logged without ``batch_rows`` counts as single), with their ``total_ms`` (the three
    stages) when all are logged. Row by row, so that buckets summarised apart add up."""
    timings = pd.DataFrame(frame["latencies_ms"].tolist())
    if "batch_rows" in timings.columns:
        timings = timings[timings["batch_rows"].isna() | (timings["batch_rows"] == 1)]
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


def _latency(
    summary: Summary, min_rows: int, latencies: Mapping[str, np.ndarray] | None
) -> list[Measure]:
    measures = []
    for stage in LATENCY_STAGES:
        sketch = summary.latency.get(stage)
        exact_values = latencies.get(stage) if latencies is not None else None
        size = exact_values.size if exact_values is not None else int(sketch.count if sketch else 0)
        for p in PERCENTILES:
            name = f"latency.{stage}.p{p}"
            if size < max(20, min_rows // 10):
                measures.append(Measure(name, None, f"insufficient data: {size} requests"))
            elif exact_values is not None:
                measures.append(Measure(name, float(np.percentile(exact_values, p))))
            else:
                assert sketch is not None
                measures.append(Measure(name, sketch.quantile(p / 100)))
    return measures
