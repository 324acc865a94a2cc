"""Model tasks: normalisation, output checks, metrics, monitored score, KPI and drill faults."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from prodguard.tasks import (
    ModelScorer,
    Task,
    TaskSpec,
    check_model,
    check_output,
    evaluate,
    kpi_cost,
    model_classes,
    normalise,
    score_measures,
    score_metric_names,
    shift_output,
    spec_from_tags,
)

pytestmark = pytest.mark.unit

BINARY = TaskSpec(Task.BINARY, (0, 1), threshold=0.3)
THREE = TaskSpec(Task.MULTICLASS, ("early", "on_time", "late"))
REGRESSION = TaskSpec(Task.REGRESSION)


def test_binary_normalisation_decides_at_the_threshold() -> None:
    out = normalise(BINARY, [[0.8, 0.2], [0.6, 0.4]])
    assert out.score.tolist() == [0.2, 0.4]
    assert out.decision.tolist() == [0, 1] and out.predicted == [0, 1]
    assert out.row(1) == {"class": 1, "probabilities": {"0": 0.6, "1": 0.4}}


def test_multiclass_normalisation_picks_the_most_probable_class() -> None:
    out = normalise(THREE, [[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]])
    assert out.predicted == ["on_time", "early"] and out.decision.tolist() == [1, 0]
    assert out.score.tolist() == [0.7, 0.5]
    assert out.row(0)["probabilities"] == {"early": 0.1, "on_time": 0.7, "late": 0.2}
    assert list(out.frame().columns) == [
        "score",
        "predicted",
        "proba.early",
        "proba.on_time",
        "proba.late",
    ]


def test_regression_normalisation_keeps_values_and_intervals() -> None:
    out = normalise(REGRESSION, [3.5, -1.0], interval=[[3, 4], [-2, 0]])
    assert out.score.tolist() == [3.5, -1.0] and out.predicted == [3.5, -1.0]
    assert out.row(0) == {"value": 3.5, "interval": [3.0, 4.0]}
    assert normalise(REGRESSION, [[2.0]]).row(0) == {"value": 2.0}


@pytest.mark.parametrize(
    ("spec", "raw", "problem"),
    [
        (REGRESSION, np.full((4, 3), 1 / 3), "model.task is regression but the model returns "),
        (BINARY, np.arange(4.0), "model.task is binary but the model returns one value per row"),
        (THREE, np.full((2, 2), 0.5), "model.task is multiclass but the model returns class "),
        (THREE, np.full((2, 4), 0.25), "model.task is multiclass with 3 classes but"),
        (BINARY, [[0.5, 0.9]], "probabilities do not sum to 1"),
        (REGRESSION, np.array(["a"]), "non-numeric values"),
    ],
)
def test_output_check_names_the_mismatch(spec: TaskSpec, raw: object, problem: str) -> None:
    assert problem in check_output(spec, raw)


def test_output_check_accepts_matching_outputs() -> None:
    assert check_output(BINARY, [[0.2, 0.8]]) == ""
    assert check_output(THREE, [[0.2, 0.3, 0.5]]) == ""
    assert check_output(REGRESSION, [1.0, 2.0]) == ""
    assert check_output(REGRESSION, np.full((3, 3), 1 / 3)) == (
        "model.task is regression but the model returns class probabilities for 3 classes"
    )


def test_scorer_wraps_scikit_learn_models_by_task() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    classifier = LogisticRegression().fit(x, ["a", "a", "b", "b", "c", "c"])
    assert model_classes(classifier) == ("a", "b", "c")
    raw = ModelScorer(classifier, Task.MULTICLASS).raw(x)
    assert (
        raw.shape == (6, 3) and check_output(TaskSpec(Task.MULTICLASS, ("a", "b", "c")), raw) == ""
    )
    regressor = LinearRegression().fit(x, 2 * x[:, 0])
    scorer = ModelScorer(regressor, Task.REGRESSION)
    assert scorer.raw(x).shape == (6,) and scorer.interval(x) is None
    assert model_classes(regressor) == ()
    assert "no predict_proba" in check_model(regressor, Task.BINARY)
    assert check_model(classifier, Task.MULTICLASS) == ""


def test_binary_metrics_as_before() -> None:
    truth = np.array([0, 0, 1, 1])
    metrics, details = evaluate(BINARY, truth, [[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.1, 0.9]])
    assert metrics["auc"] == 1.0 and metrics["base_rate"] == 0.5
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == 1.0
    assert details["threshold"] == 0.3
    assert sum(b["count"] for b in details["bins"]) == 4


def test_multiclass_metrics() -> None:
    raw = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]]
    metrics, _ = evaluate(THREE, ["early", "on_time", "late", "late"], raw)
    assert metrics["accuracy"] == 0.75
    assert metrics["log_loss"] == pytest.approx(-(3 * np.log(0.8) + np.log(0.1)) / 4)
    assert 0 < metrics["macro_f1"] < 1


def test_regression_metrics_with_interval_coverage() -> None:
    metrics, _ = evaluate(
        REGRESSION, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0], interval=[[0, 2]] * 4
    )
    assert metrics["mae"] == 0.5 and metrics["rmse"] == 1.0
    assert metrics["r2"] == pytest.approx(1 - 4 / 5)
    assert metrics["interval_coverage"] == 0.5


def test_monitored_score_per_task() -> None:
    assert score_measures(REGRESSION, np.array([1.0, 3.0]), np.zeros(2)) == {"score.mean": 2.0}
    out = normalise(THREE, [[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.6, 0.2]])
    measures = score_measures(THREE, out.score, out.decision, out.probabilities)
    assert set(measures) == set(score_metric_names(THREE))
    assert measures["score.share.on_time"] == pytest.approx(2 / 3)
    assert measures["score.share.late"] == 0.0
    assert measures["score.proba.early"] == pytest.approx(0.8 / 3)


def test_binary_kpi_counts_missed_positives_and_false_alerts() -> None:
    out = normalise(BINARY, [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    cost = kpi_cost(BINARY, ["yes", True, 0, 1], out, cost_missed=2.0, cost_false_alert=0.5)
    assert cost == pytest.approx((2 * 2.0 + 1 * 0.5) / 4)
    named = TaskSpec(Task.BINARY, ("on_time", "late"))
    assert kpi_cost(named, ["late", "on_time"], normalise(named, [[0.9, 0.1]] * 2)) == 0.5


def test_regression_and_multiclass_kpis() -> None:
    values = normalise(REGRESSION, [10.0, 0.0, 5.0])
    assert kpi_cost(REGRESSION, [12, "1", 5.0], values) == pytest.approx(1.0)
    out = normalise(THREE, [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert kpi_cost(THREE, ["early", "late", "late"], out) == pytest.approx(1 / 3)
    matrix = {"late": {"on_time": 5.0}}
    assert kpi_cost(THREE, ["early", "late", "late"], out, cost_matrix=matrix) == pytest.approx(
        5 / 3
    )


def squared_cost(outcomes: np.ndarray, predictions: pd.DataFrame) -> np.ndarray:
    return (outcomes.astype(float) - predictions["score"].to_numpy()) ** 2


def test_a_project_cost_function_replaces_the_default_for_any_task() -> None:
    values = normalise(REGRESSION, [10.0, 0.0])
    assert kpi_cost(REGRESSION, np.array([12.0, 1.0]), values, cost=squared_cost) == 2.5
    out = normalise(THREE, [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])

    def total(outcomes: np.ndarray, predictions: pd.DataFrame) -> float:
        return float((predictions["proba.late"] * (outcomes == "late")).sum())

    assert kpi_cost(THREE, ["late", "late"], out, cost=total) == pytest.approx(0.1)


def test_drill_faults_per_task() -> None:
    binary = shift_output(BINARY, [[0.5, 0.5], [0.0, 1.0]], 0.3)
    assert binary[:, 1].tolist() == pytest.approx([0.8, 0.999])
    assert binary.sum(axis=1).tolist() == pytest.approx([1, 1])
    assert shift_output(REGRESSION, [1.0, 2.0], 2.0, scale=3.0).tolist() == [7.0, 8.0]
    moved = shift_output(THREE, [[0.6, 0.3, 0.1]], 0.5)
    assert moved[0].tolist() == pytest.approx([0.3, 0.15, 0.55])
    assert check_output(THREE, moved) == ""


def test_positive_class_and_tags_round_trip() -> None:
    spec = TaskSpec(Task.BINARY, ("late", "on_time"), threshold=0.5, positive_class="late")
    assert spec.positive_column == 0
    out = normalise(spec, [[0.7, 0.3], [0.2, 0.8]])
    assert out.score.tolist() == [0.7, 0.2] and out.predicted == ["late", "on_time"]
    assert shift_output(spec, [[0.5, 0.5]], 0.2)[0].tolist() == pytest.approx([0.7, 0.3])
    assert spec_from_tags(spec.tags(), threshold=0.5) == spec
    assert spec_from_tags(THREE.tags()) == THREE
    assert spec_from_tags({}) == TaskSpec(Task.BINARY, (0, 1))


def logged(task_spec: TaskSpec, raw: object, outcomes: list[object]) -> pd.DataFrame:
    """Prediction-log rows (as ``PredictionLog.window`` returns them) of ``raw`` outputs."""
    out = normalise(task_spec, raw)
    entries = [out.entry(i) for i in range(len(out))]
    return pd.DataFrame(
        {
            "probability": [e[0] for e in entries],
            "decision": [e[1] for e in entries],
            "prediction": [e[2] for e in entries],
            "features": [{} for _ in entries],
            "flags": [[] for _ in entries],
            "latencies_ms": [{} for _ in entries],
            "outcome": [{"y": o} for o in outcomes],
        }
    )


def test_window_measures_of_a_multiclass_model_with_a_project_cost() -> None:
    from prodguard.config import KpiSettings
    from prodguard.monitoring.measures import measure

    raw = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]
    frame = logged(THREE, raw, ["early", "late", "late", "on_time"])
    kpi = KpiSettings(name="cost", outcome="y", min_labelled=1)

    def late_cost(outcomes: np.ndarray, predictions: pd.DataFrame) -> np.ndarray:
        return (outcomes == "late") * (1 - predictions["proba.late"].to_numpy())

    common = {"features": {}, "scores": None, "kpi": kpi, "matured": True, "errors": {}}
    found = {m.metric: m.value for m in measure(frame, min_rows=1, spec=THREE, **common)}
    assert found["score.share.early"] == 0.5 and found["score.share.late"] == 0.25
    assert found["score.proba.on_time"] == pytest.approx(0.35)
    assert found["kpi.cost"] == 0.5  # error rate
    costed = measure(frame, min_rows=1, spec=THREE, cost=late_cost, **common)
    assert {m.metric: m.value for m in costed}["kpi.cost"] == pytest.approx((0.9 + 0.3) / 4)
    short = {m.metric: m.reason for m in measure(frame, min_rows=10, spec=THREE, **common)}
    assert short["score.share.late"].startswith("insufficient data")


def test_faulty_copies_per_task_wrap_real_models() -> None:
    from prodguard.rollout.faults import ShiftedScores, ShiftedValues, faulty_model, score_scale

    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    three = LogisticRegression().fit(x, ["a", "a", "b", "b", "c", "c"])
    spec = TaskSpec(Task.MULTICLASS, ("a", "b", "c"))
    faulty = faulty_model(three, spec, 0.5)
    assert isinstance(faulty, ShiftedScores)
    shifted, base = faulty.predict_proba(x), three.predict_proba(x)
    assert (shifted[:, 2] > base[:, 2]).all() and check_output(spec, shifted) == ""
    assert set(faulty.predict(x)) <= {"a", "b", "c"}
    regressor = LinearRegression().fit(x, x[:, 0])
    values = faulty_model(regressor, REGRESSION, 2.0, scale=0.5)
    assert isinstance(values, ShiftedValues) and not hasattr(values, "predict_proba")
    assert values.predict(x) == pytest.approx(x[:, 0] + 1.0)
    baseline = {"score_edges": [1.0, 2.0, 3.0], "score_fractions": [0.25, 0.25, 0.25, 0.25]}
    assert score_scale(baseline) == pytest.approx(np.std([1.0, 1.5, 2.5, 3.0]))
    assert score_scale(None) == 1.0
