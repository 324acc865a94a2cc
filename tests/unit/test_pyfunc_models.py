"""A model without the sklearn flavor, seen by the core through its MLflow pyfunc: what its
``predict`` may return per task, what is refused (one line), and the drill's faulty copy of it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from prodguard.errors import ModelContractError
from prodguard.registry.adoption import check_task, parse_classes
from prodguard.registry.mlflow_adapter import (
    ForeignModel,
    PyfuncClassifier,
    PyfuncRegressor,
    pyfunc_model,
    same_label,
)
from prodguard.rollout.faults import faulty_model
from prodguard.tasks import Task, TaskSpec, check_output, model_classes, normalise, raw_output
from prodguard.training.dataset import TrainingFrame

pytestmark = pytest.mark.unit
FRAME = pd.DataFrame({"n": [1.0, 2.0, 3.0], "city": ["a", None, "b"]})


class Schema:
    def __init__(self, columns: dict[str, str]) -> None:
        self.columns = columns

    def has_input_names(self) -> bool:
        return True

    def input_names(self) -> list[str]:
        return list(self.columns)

    def input_types(self) -> list[str]:
        return list(self.columns.values())


class Metadata:
    def __init__(self, schema: Schema | None) -> None:
        self.schema = schema

    def get_input_schema(self) -> Schema | None:
        return self.schema


class Pyfunc:
    """What ``mlflow.pyfunc.load_model`` returns, as far as the adapter uses it."""

    def __init__(self, output: Any, schema: Schema | None = None) -> None:
        self.output = output
        self.metadata = Metadata(schema)
        self.seen: pd.DataFrame | None = None

    def predict(self, frame: pd.DataFrame) -> Any:
        self.seen = frame
        return self.output(frame) if callable(self.output) else self.output


def proba_frame(columns: list[Any]) -> Pyfunc:
    p = np.array([0.2, 0.6, 0.9])
    return Pyfunc(pd.DataFrame(np.column_stack([1 - p, p]), columns=columns))


def test_a_probability_frame_gives_the_classes_and_their_column_order() -> None:
    learned = PyfuncClassifier(proba_frame(["no", "yes"]))
    raw = raw_output(learned, Task.BINARY, FRAME)
    assert model_classes(learned) == ("no", "yes")
    assert raw[:, 1] == pytest.approx([0.2, 0.6, 0.9])
    spec = TaskSpec(Task.BINARY, model_classes(learned))
    assert check_output(spec, raw) == ""
    assert normalise(spec, raw).predicted == ["no", "yes", "yes"]

    recorded = PyfuncClassifier(proba_frame(["0", "1"]), classes=(1.0, 0.0))  # reordered
    assert raw_output(recorded, Task.BINARY, FRAME)[:, 0] == pytest.approx([0.2, 0.6, 0.9])
    assert list(recorded.predict(FRAME)) == [0.0, 1.0, 1.0]


def test_an_array_of_probabilities_is_taken_in_the_recorded_class_order() -> None:
    model = pyfunc_model(Pyfunc(np.array([[0.1, 0.2, 0.7]])), True, ("a", "b", "c"))
    assert model_classes(model) == ("a", "b", "c")
    assert raw_output(model, Task.MULTICLASS, FRAME) == pytest.approx(np.array([[0.1, 0.2, 0.7]]))
    assert model_classes(pyfunc_model(Pyfunc(np.ones((1, 3)) / 3), True)) == ()


@pytest.mark.parametrize(
    "output",
    [np.array([0, 1, 1]), pd.Series(["no", "yes", "yes"]), pd.DataFrame({"label": [0, 1, 1]})],
)
def test_a_classifier_pyfunc_returning_labels_is_refused_in_one_line(output: Any) -> None:
    with pytest.raises(ModelContractError) as refused:
        raw_output(PyfuncClassifier(Pyfunc(output)), Task.BINARY, FRAME)
    message = str(refused.value)
    assert "\n" not in message and "per row" in message
    assert 'pyfunc_predict_fn="predict_proba"' in message and "DataFrame with one column" in message


def test_probability_columns_that_are_not_the_recorded_classes_are_refused() -> None:
    model = PyfuncClassifier(proba_frame(["early", "late"]), classes=("early", "on_time"))
    with pytest.raises(ModelContractError, match=r"columns \['early', 'late'\] but its classes"):
        model.predict_proba(FRAME)


@pytest.mark.parametrize(
    "output",
    [
        np.array([1.5, 2.5, 3.5]),
        np.array([[1.5], [2.5], [3.5]]),
        pd.Series([1.5, 2.5, 3.5]),
        pd.DataFrame({"value": [1.5, 2.5, 3.5]}),
        [1.5, 2.5, 3.5],
    ],
)
def test_a_regressor_pyfunc_gives_one_value_per_row(output: Any) -> None:
    model = pyfunc_model(Pyfunc(output), False)
    assert not hasattr(model, "predict_proba")  # adopt tells a regressor from a classifier
    raw = raw_output(model, Task.REGRESSION, FRAME)
    assert raw.shape == (3,) and raw == pytest.approx([1.5, 2.5, 3.5])
    assert check_output(TaskSpec(Task.REGRESSION), raw) == ""


def test_a_regressor_pyfunc_returning_several_columns_fails_the_task_check() -> None:
    raw = raw_output(PyfuncRegressor(proba_frame(["0", "1"])), Task.REGRESSION, FRAME)
    problem = check_output(TaskSpec(Task.REGRESSION), raw)
    assert "returns class probabilities for 2 classes" in problem


def test_float_rows_are_cast_to_the_signature_integer_and_float32_columns() -> None:
    schema = Schema({"n": "long", "m": "long", "x": "float", "city": "string"})
    pyfunc = Pyfunc(lambda frame: np.zeros(len(frame)), schema)
    frame = FRAME.assign(m=[1.0, np.nan, 2.0], x=[0.5, 1.5, 2.5])
    PyfuncRegressor(pyfunc).predict(frame)
    assert pyfunc.seen is not None
    seen = pyfunc.seen.dtypes.astype(str).to_dict()
    assert seen == {"n": "int64", "city": "object", "m": "float64", "x": "float32"}


def test_the_drill_shifts_a_pyfunc_s_outputs() -> None:
    spec = TaskSpec(Task.BINARY, ("no", "yes"))
    faulty = faulty_model(PyfuncClassifier(proba_frame(["no", "yes"])), spec, 0.05)
    assert faulty.predict_proba(FRAME)[:, 1] == pytest.approx([0.25, 0.65, 0.95])
    shifted = faulty_model(
        PyfuncRegressor(Pyfunc(np.array([1.0, 2.0]))), TaskSpec(Task.REGRESSION), 2, 3
    )
    assert shifted.predict(FRAME) == pytest.approx([7.0, 8.0])


def test_class_labels_given_on_the_command_line() -> None:
    assert parse_classes("0,1") == (0, 1)
    assert parse_classes("early, on_time,late") == ("early", "on_time", "late")
    assert parse_classes(None) == ()
    assert same_label("1", 1.0) and same_label(0, "0") and not same_label("a", "b")


def held_out(labels: list[Any]) -> TrainingFrame:
    when = datetime(2013, 1, 1, tzinfo=UTC)
    features = pd.concat([FRAME] * 2, ignore_index=True).head(len(labels))
    return TrainingFrame(features, pd.Series(labels), pd.DataFrame(), when, when, 0)


def adopted(model: Any, task: Task, labels: list[Any]) -> TaskSpec:
    found = ForeignModel("models:/team/1", (("n", "double"), ("city", "string")), model, None)
    found = replace(found, flavor="python_function")
    return check_task(found, task, 0.5, None, held_out(labels), ["n", "city"])


def test_adopt_takes_a_pyfunc_s_classes_as_the_labels_spell_them() -> None:
    spec = adopted(PyfuncClassifier(proba_frame(["0", "1"])), Task.BINARY, [0.0, 1.0, 1.0])
    assert spec.classes == (0.0, 1.0) and spec.positive == 1.0
    array = Pyfunc(lambda frame: np.full((len(frame), 2), 0.5))
    assert adopted(PyfuncClassifier(array), Task.BINARY, [0, 1, 1]).classes == ()  # 0/1
    named = PyfuncClassifier(array, classes=("no", "yes"))
    assert adopted(named, Task.BINARY, ["no", "yes", "no"]).classes == ("no", "yes")


@pytest.mark.parametrize(
    ("model", "task", "labels", "message"),
    [
        (PyfuncClassifier(Pyfunc(lambda f: np.zeros(len(f)))), Task.BINARY, [0, 1, 1], "per row"),
        (
            PyfuncClassifier(Pyfunc(lambda f: np.full((len(f), 3), 1 / 3))),
            Task.MULTICLASS,
            ["a", "b", "c"],
            "pass --classes",
        ),
        (
            PyfuncClassifier(Pyfunc(lambda f: np.full((len(f), 2), 0.5))),
            Task.BINARY,
            ["no", "yes", "no"],
            "pass --classes",
        ),
        (
            PyfuncClassifier(Pyfunc(lambda f: np.full((len(f), 3), 1 / 3)), ("a", "b")),
            Task.MULTICLASS,
            ["a", "b", "c"],
            "model.task is multiclass with 2 classes",
        ),
        (PyfuncRegressor(proba_frame(["0", "1"])), Task.REGRESSION, [1.5, 2.0, 3.0], "for 2"),
    ],
)
def test_adopt_refuses_a_pyfunc_that_does_not_return_what_its_task_needs(
    model: Any, task: Task, labels: list[Any], message: str
) -> None:
    with pytest.raises(ModelContractError) as refused:
        adopted(model, task, labels)
    assert message in str(refused.value) and "\n" not in str(refused.value)
