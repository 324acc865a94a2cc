"""What a model predicts (its task), and everything that depends on it, as pure logic.

A model is one of three tasks:

- ``binary``: its raw output is a 2-D array of class probabilities (n, 2); a row's ``score`` is
  the probability of the positive class, its ``decision`` is ``score >= threshold`` and its
  ``predicted`` label the class chosen by that decision;
- ``multiclass``: raw output (n, k) class probabilities; ``predicted`` is the most probable class,
  ``score`` its probability, ``decision`` its index in ``classes``;
- ``regression``: raw output a 1-D array of values; ``score`` and ``predicted`` are the value,
  ``interval`` (n, 2) when the model gives one (a ``predict_interval(frame)`` method).

Scoring has two steps so a compiled scorer can replace the model object: ``raw_output`` (one
call, numpy in and out) then ``normalise`` (the same for every scorer). ``check_output`` says in
one line when a model's actual output does not fit its declared task. ``evaluate``,
``score_measures``, ``kpi_cost`` and ``shift_output`` are the task's metrics, monitored score,
business KPI and drill fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import pandas as pd

from prodguard.registry import lineage


class Task(StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"

    @property
    def classifier(self) -> bool:
        return self is not Task.REGRESSION


@dataclass(frozen=True)
class TaskSpec:
    """A model's task with its class labels (classifiers, in the model's column order), the
    binary positive class (default: the second class) and the binary decision threshold."""

    task: Task = Task.BINARY
    classes: tuple[Any, ...] = ()
    threshold: float = 0.5
    positive_class: Any = None

    @property
    def positive(self) -> Any:
        if self.positive_class is not None:
            return same_label(self.positive_class, self.classes)
        return self.classes[1] if len(self.classes) == 2 else 1

    @property
    def positive_column(self) -> int:
        """Which column of a binary model's probabilities is the positive class."""
        return self.classes.index(self.positive) if self.positive in self.classes else 1

    def tags(self) -> dict[str, str]:
        """The version tags recording the task (``spec_from_tags`` reads them back)."""
        tags = {TASK_TAG: self.task.value}
        if self.classes:
            tags[CLASSES_TAG] = json.dumps([_plain(c) for c in self.classes])
        if self.task is Task.BINARY and self.positive_class is not None:
            tags[POSITIVE_TAG] = json.dumps(_plain(self.positive))
        return tags


TASK_TAG = lineage.TASK
CLASSES_TAG = lineage.CLASSES
POSITIVE_TAG = lineage.POSITIVE_CLASS


def spec_from_tags(tags: Mapping[str, str], threshold: float = 0.5) -> TaskSpec:
    """The task a version was registered with; a version registered before tasks existed is a
    binary classifier with classes (0, 1)."""
    task = Task(tags.get(TASK_TAG, Task.BINARY.value))
    default = "[0, 1]" if task is Task.BINARY else "[]"
    classes = tuple(json.loads(tags.get(CLASSES_TAG, default)))
    positive = json.loads(tags[POSITIVE_TAG]) if POSITIVE_TAG in tags else None
    return TaskSpec(task, classes, threshold, positive)


class Scorer(Protocol):
    """What serving calls: ``raw(frame)`` returns class probabilities (n, k) for classifiers or
    values (n,) for regression. ``ModelScorer`` wraps a scikit-learn-like model; a compiled
    scorer (ONNX, treelite) implements the same method."""

    def raw(self, frame: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelScorer:
    model: Any
    task: Task

    def raw(self, frame: Any) -> np.ndarray:
        return raw_output(self.model, self.task, frame)

    def interval(self, frame: Any) -> np.ndarray | None:
        method = getattr(self.model, "predict_interval", None)
        return None if method is None else np.asarray(method(frame), dtype="float64")


def raw_output(model: Any, task: Task, frame: Any) -> np.ndarray:
    """Class probabilities (classifiers) or values (regression) of a scikit-learn-like model."""
    if task.classifier:
        return np.asarray(model.predict_proba(frame), dtype="float64")
    return np.asarray(model.predict(frame), dtype="float64")


def check_model(model: Any, task: Task) -> str:
    """'' when a scikit-learn-like model has the method its task scores with, else one line."""
    if task.classifier and not hasattr(model, "predict_proba"):
        return (
            f"model.task is {task.value} but the model has no predict_proba (a regressor "
            "returns one value per row: set model.task: regression)"
        )
    if not task.classifier and not hasattr(model, "predict"):
        return "model.task is regression but the model has no predict method"
    return ""


def model_classes(model: Any) -> tuple[Any, ...]:
    """The class labels a fitted classifier (or a pipeline ending in one) exposes, else ()."""
    classes = getattr(model, "classes_", None)
    return () if classes is None else tuple(_plain(c) for c in classes)


def check_output(spec: TaskSpec, raw: Any) -> str:
    """'' when ``raw`` (a model's output for a few rows) fits the declared task, else one line
    saying what the model returns instead."""
    array = np.asarray(raw)
    shape = _describe_shape(array)
    declared = f"model.task is {spec.task.value}"
    if not np.issubdtype(array.dtype, np.number):
        return f"{declared} but the model returns non-numeric values ({array.dtype})"
    if spec.task is Task.REGRESSION:
        if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
            return ""
        return f"{declared} but the model returns {shape}"
    if array.ndim != 2 or array.shape[1] < 2:
        return f"{declared} but the model returns {shape}; a classifier returns class probabilities"
    expected = 2 if spec.task is Task.BINARY else len(spec.classes) or array.shape[1]
    if spec.task is Task.MULTICLASS and array.shape[1] < 3:
        return f"{declared} but the model returns {shape}; set model.task: binary"
    if array.shape[1] != expected:
        return f"{declared} with {expected} classes but the model returns {shape}"
    sums = array.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3) or (array < -1e-9).any():
        return f"{declared} but the model's class probabilities do not sum to 1 per row"
    return ""


def _describe_shape(array: np.ndarray) -> str:
    if array.ndim == 2 and array.shape[1] > 1:
        return f"class probabilities for {array.shape[1]} classes"
    if array.ndim <= 1 or array.shape[1] == 1:
        return "one value per row"
    return f"an array of shape {array.shape}"


@dataclass(frozen=True)
class Outputs:
    """What a model returned for n rows, normalised (see the module docstring)."""

    task: Task
    score: np.ndarray  # (n,) float
    decision: np.ndarray  # (n,) int: binary 0/1, multiclass class index, regression 0
    predicted: list[Any]  # (n,) the predicted label (binary/multiclass) or value (regression)
    probabilities: np.ndarray | None = None  # (n, k) classifiers
    classes: tuple[Any, ...] = ()
    interval: np.ndarray | None = None  # (n, 2) regression, when the model gives one

    def __len__(self) -> int:
        return len(self.score)

    def row(self, i: int) -> dict[str, Any]:
        """One row's task-specific prediction, JSON-ready."""
        if self.task is Task.REGRESSION:
            out: dict[str, Any] = {"value": float(self.score[i])}
            if self.interval is not None:
                out["interval"] = [float(v) for v in self.interval[i]]
            return out
        assert self.probabilities is not None
        return {
            "class": self.predicted[i],
            "probabilities": {
                str(c): float(p) for c, p in zip(self.classes, self.probabilities[i], strict=True)
            },
        }

    def entry(self, i: int) -> tuple[float, int, dict[str, Any] | None]:
        """Row ``i`` as the prediction log keeps it: score, decision, and the task-specific
        prediction (None for binary: score and decision say it all)."""
        prediction = None if self.task is Task.BINARY else self.row(i)
        return float(self.score[i]), int(self.decision[i]), prediction

    def frame(self) -> pd.DataFrame:
        """Columns ``score``, ``predicted`` and, for classifiers, ``proba.<class>`` per class:
        what a project's cost function receives."""
        data: dict[str, Any] = {"score": self.score, "predicted": self.predicted}
        if self.probabilities is not None:
            for j, c in enumerate(self.classes):
                data[f"proba.{c}"] = self.probabilities[:, j]
        return pd.DataFrame(data)


def normalise(spec: TaskSpec, raw: Any, interval: Any = None) -> Outputs:
    """The one output type per row from a scorer's raw output (assumed checked)."""
    array = np.asarray(raw, dtype="float64")
    if spec.task is Task.REGRESSION:
        values = array.reshape(-1)
        bounds = None if interval is None else np.asarray(interval, dtype="float64").reshape(-1, 2)
        return Outputs(
            task=spec.task,
            score=values,
            decision=np.zeros(len(values), dtype="int64"),
            predicted=[float(v) for v in values],
            interval=bounds,
        )
    classes = spec.classes or tuple(range(array.shape[1]))
    if spec.task is Task.BINARY:
        score = array[:, spec.positive_column]
        decision = (score >= spec.threshold).astype("int64")
        column = spec.positive_column
        predicted = [classes[column] if d else classes[1 - column] for d in decision]
    else:
        decision = array.argmax(axis=1).astype("int64")
        score = array[np.arange(len(array)), decision]
        predicted = [classes[d] for d in decision]
    return Outputs(
        task=spec.task,
        score=score,
        decision=decision,
        predicted=predicted,
        probabilities=array,
        classes=classes,
    )


# --- evaluation ----------------------------------------------------------------------------


def evaluate(
    spec: TaskSpec, truth: Sequence[Any] | np.ndarray, raw: Any, interval: Any = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Held-out metrics of the task and a details document (binary: the calibration table)."""
    outputs = normalise(spec, raw, interval)
    if spec.task is Task.BINARY:
        y = (np.asarray(truth) == spec.positive).astype("int64")
        return _binary_metrics(y, outputs.score, spec.threshold)
    if spec.task is Task.MULTICLASS:
        return _multiclass_metrics(np.asarray(truth, dtype=object), outputs), {}
    return _regression_metrics(np.asarray(truth, dtype="float64"), outputs), {}


def _binary_metrics(
    y: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[dict[str, float], dict[str, Any]]:
    from sklearn.metrics import (
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    flags = (scores >= threshold).astype(int)
    metrics = {
        "auc": float(roc_auc_score(y, scores)) if len(set(y)) > 1 else float("nan"),
        "log_loss": float(log_loss(y, scores, labels=[0, 1])),
        "brier": float(brier_score_loss(y, scores)),
        "precision": float(precision_score(y, flags, zero_division=0)),
        "recall": float(recall_score(y, flags, zero_division=0)),
        "f1": float(f1_score(y, flags, zero_division=0)),
        "base_rate": float(y.mean()),
        "mean_score": float(scores.mean()),
    }
    edges = np.linspace(0, 1, 11)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, 9)
    table = []
    ece = 0.0
    for b in range(10):
        mask = index == b
        if not mask.any():
            continue
        predicted, observed = float(scores[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(predicted - observed)
        table.append(
            {
                "bin": [float(edges[b]), float(edges[b + 1])],
                "count": int(mask.sum()),
                "mean_predicted": predicted,
                "observed_rate": observed,
            }
        )
    metrics["ece"] = float(ece)
    return metrics, {"threshold": threshold, "bins": table}


def _multiclass_metrics(y: np.ndarray, outputs: Outputs) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    assert outputs.probabilities is not None
    labels = [_plain(c) for c in outputs.classes]
    y = np.array([same_label(_plain(v), outputs.classes) for v in y], dtype=object)
    predicted = np.array(outputs.predicted, dtype=object)
    index = {c: j for j, c in enumerate(labels)}
    truth_p = np.array(  # a label the model does not know gets probability ~0
        [outputs.probabilities[i, index[v]] if v in index else 0.0 for i, v in enumerate(y)]
    )
    return {
        "log_loss": float(-np.log(np.clip(truth_p, 1e-15, 1.0)).mean()),
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "mean_score": float(outputs.score.mean()),
    }


def _regression_metrics(y: np.ndarray, outputs: Outputs) -> dict[str, float]:
    error = outputs.score - y
    total = float(((y - y.mean()) ** 2).sum())
    metrics = {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": float(1 - (error**2).sum() / total) if total > 0 else float("nan"),
        "mean_prediction": float(outputs.score.mean()),
        "mean_target": float(y.mean()),
    }
    if outputs.interval is not None:
        inside = (y >= outputs.interval[:, 0]) & (y <= outputs.interval[:, 1])
        metrics["interval_coverage"] = float(inside.mean())
    return metrics


# --- monitoring ----------------------------------------------------------------------------


def score_measures(
    spec: TaskSpec,
    scores: np.ndarray,
    decisions: np.ndarray,
    probabilities: np.ndarray | None = None,
) -> dict[str, float]:
    """The prediction-distribution metrics of a window besides ``score.psi``: ``score.mean``
    (binary: mean P(positive); regression: mean value); multiclass: ``score.share.<class>``
    (share of rows predicted as each class) and ``score.proba.<class>`` (mean probability)."""
    if spec.task is not Task.MULTICLASS:
        return {"score.mean": float(np.mean(scores))}
    out = {}
    counts = np.bincount(decisions.astype("int64"), minlength=len(spec.classes))
    for j, c in enumerate(spec.classes):
        out[f"score.share.{c}"] = float(counts[j] / max(len(decisions), 1))
        if probabilities is not None:
            out[f"score.proba.{c}"] = float(probabilities[:, j].mean())
    return out


def score_metric_names(spec: TaskSpec) -> list[str]:
    if spec.task is not Task.MULTICLASS:
        return ["score.mean"]
    return [f"score.{kind}.{c}" for c in spec.classes for kind in ("share", "proba")]


CostFunction = Callable[[np.ndarray, pd.DataFrame], Any]


def kpi_cost(
    spec: TaskSpec,
    outcomes: Sequence[Any] | np.ndarray,
    outputs: Outputs,
    *,
    cost_missed: float = 1.0,
    cost_false_alert: float = 0.25,
    cost_matrix: Mapping[str, Mapping[str, float]] | None = None,
    cost: CostFunction | None = None,
) -> float:
    """Mean cost per labelled prediction (lower is better).

    ``cost`` (a project's ``module:function``, any task) is called once with the outcomes (1-D
    array) and ``outputs.frame()`` and returns one cost per row (or their total as one number).
    Without it: binary, ``cost_missed`` per missed positive plus ``cost_false_alert`` per false
    alert; regression, the mean absolute error; multiclass, ``cost_matrix[actual][predicted]``
    (0 on the diagonal; missing entries cost 1) or else the error rate."""
    n = len(outcomes)
    if n == 0:
        return float("nan")
    if cost is not None:
        result = np.asarray(cost(np.asarray(outcomes), outputs.frame()), dtype="float64")
        return float(result.mean()) if result.ndim else float(result) / n
    costs = kpi_costs(
        spec,
        outcomes,
        outputs,
        cost_missed=cost_missed,
        cost_false_alert=cost_false_alert,
        cost_matrix=cost_matrix,
    )
    return float(np.nanmean(costs)) if spec.task is Task.REGRESSION else float(np.mean(costs))


def kpi_costs(
    spec: TaskSpec,
    outcomes: Sequence[Any] | np.ndarray,
    outputs: Outputs,
    *,
    cost_missed: float = 1.0,
    cost_false_alert: float = 0.25,
    cost_matrix: Mapping[str, Mapping[str, float]] | None = None,
    cost: CostFunction | None = None,
) -> np.ndarray:
    """The cost of each labelled prediction (whose mean is ``kpi_cost``; paired cost
    differences are built from them). A project's ``cost`` function must return one cost per
    row here; NaN where a regression outcome is not a number."""
    if cost is not None:
        result = np.asarray(cost(np.asarray(outcomes), outputs.frame()), dtype="float64")
        if result.ndim != 1 or len(result) != len(outcomes):
            raise ValueError("the KPI cost function returned a total, not one cost per row")
        return result
    if spec.task is Task.BINARY:
        truth = np.array([_truthy(v, spec.positive) for v in outcomes], dtype=bool)
        flagged = outputs.decision.astype(bool)
        return cost_missed * (truth & ~flagged) + cost_false_alert * (~truth & flagged)
    if spec.task is Task.REGRESSION:
        actual = pd.to_numeric(pd.Series(list(outcomes)), errors="coerce").to_numpy("float64")
        return np.abs(actual - outputs.score)
    actual_labels = [same_label(v, spec.classes) for v in outcomes]
    if cost_matrix is None:
        pairs = zip(actual_labels, outputs.predicted, strict=True)
        return np.array([float(a != p) for a, p in pairs], dtype="float64")
    return np.array(
        [
            0.0 if a == p else float(cost_matrix.get(str(a), {}).get(str(p), 1.0))
            for a, p in zip(actual_labels, outputs.predicted, strict=True)
        ],
        dtype="float64",
    )


def _truthy(value: Any, positive: Any) -> bool:
    """Whether a fed-back outcome is the positive class: equal to it, or (positive class 1)
    a true flag ("1", "true", "yes", "y", True, 1)."""
    if value == positive or str(value) == str(positive):
        return True
    if positive not in (1, True):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value)


def same_label(value: Any, classes: tuple[Any, ...]) -> Any:
    """The class label a fed-back outcome stands for (feedback JSON turns 2 into "2" or 2.0)."""
    for c in classes:
        if value == c or str(value) == str(c):
            return c
        if isinstance(value, (int, float)) and isinstance(c, (int, float)) and float(value) == c:
            return c
    return value


# --- drill fault ---------------------------------------------------------------------------


def shift_output(spec: TaskSpec, raw: Any, shift: float, scale: float = 1.0) -> np.ndarray:
    """A faulty model's raw output: binary, P(positive) + ``shift`` (clipped to [0.001, 0.999]);
    regression, values + ``shift * scale`` (scale: the baseline's score sd); multiclass, a
    share ``shift`` (0..1) of every other class's probability moved onto the last class."""
    array = np.asarray(raw, dtype="float64")
    if spec.task is Task.REGRESSION:
        return array + shift * scale
    if spec.task is Task.BINARY:
        column = spec.positive_column
        shifted = array.copy()
        shifted[:, column] = np.clip(array[:, column] + shift, 0.001, 0.999)
        shifted[:, 1 - column] = 1 - shifted[:, column]
        return shifted
    fraction = float(np.clip(abs(shift), 0.0, 1.0))
    moved = array.copy()
    moved[:, :-1] *= 1 - fraction
    moved[:, -1] += array[:, :-1].sum(axis=1) * fraction
    return moved


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (JSON tags, HTTP responses)."""
    return value.item() if isinstance(value, np.generic) else value
