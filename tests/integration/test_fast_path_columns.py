"""The fast path scoring a batch's input columns (``LoadedModel.predict_columns``: a float
matrix built from the columns, no DataFrame) gives exactly what it gives on the frame of the
same columns (``predict(frame_of(...))``), for each task, on held-out flights rows plus values
the request path can carry (missing, NaN, pd.NA, unknown categories, numbers as strings,
numpy scalars); a model without the fast path still gets the frame. Equality, not timing."""

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from prodguard.serving.engine import ModelScoring
from prodguard.serving.models import LoadedModel, ServingState
from prodguard.serving.treelite_adapter import ESTIMATOR_ROWS, PARITY, fast_scorer, probe_rows
from prodguard.tasks import Task
from prodguard.training.model import prepare
from tests.integration import test_fast_path as base
from tests.integration.test_fast_path import CATEGORICAL, COLUMNS, features, fitted, loaded_model

pytestmark = pytest.mark.integration
flights = base.flights  # the module's fixture: held-out rows with missing values

ODD = {  # values of each kind in each column (numerics and categoricals alike)
    "carrier": ["UA", None, float("nan"), pd.NA, "\x00unknown", np.str_("AA")],
    "distance": [None, float("nan"), "1400", "x", np.float32(1.5), np.int64(3), True, pd.NA],
}


def with_fast_path(model: LoadedModel) -> LoadedModel:
    scorer, how = fast_scorer(model)
    assert scorer is not None, how
    return LoadedModel(
        1,
        model.pipeline,
        COLUMNS,
        model.categorical,
        model.fallbacks,
        model.categories,
        model.spec,
        scorer,
    )


def columns_of_rows(rows: list[dict]) -> dict[str, list]:
    return {c: [row.get(c) for row in rows] for c in COLUMNS}


def asked(model: LoadedModel, held_out: pd.DataFrame) -> list[dict]:
    rows = features(held_out.head(400)).astype(object).to_dict("records")
    rows += probe_rows(model.fallbacks, model.categories)
    for column, values in ODD.items():
        rows += [{**model.fallbacks, column: value} for value in values]
    return rows


@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS, Task.REGRESSION])
def test_columns_score_exactly_as_the_frame_of_them(task, flights) -> None:
    train, held_out = flights
    pipeline, spec = fitted(task, train)
    fast = with_fast_path(loaded_model(pipeline, spec, train))
    rows = asked(fast, held_out)
    columns = columns_of_rows(rows)
    frame = fast.frame_of(columns, len(rows))
    pd.testing.assert_frame_equal(frame, fast.frame(rows))
    by_frame, by_columns = fast.predict(frame, 0.3), fast.predict_columns(columns, len(rows), 0.3)
    assert np.array_equal(by_columns.score, by_frame.score)
    assert np.array_equal(by_columns.decision, by_frame.decision)
    assert list(by_columns.predicted) == list(by_frame.predicted)
    scorer = fast.scorer
    assert scorer is not None
    assert np.array_equal(scorer.raw_columns(fast.inputs_of(columns, len(rows))), scorer.raw(frame))
    # each row alone (a one-row /predict: GTIL) as in the batch (the estimator itself from
    # ESTIMATOR_ROWS rows on), within the parity
    assert len(rows) >= ESTIMATOR_ROWS and scorer.estimator is not None
    for n in (0, 1, len(rows) - 1):
        alone = fast.predict_columns(columns_of_rows([rows[n]]), 1, 0.3)
        assert abs(alone.score[0] - by_frame.score[n]) <= PARITY
    # the model itself on the frame agrees within the fast path's parity
    itself = LoadedModel(1, pipeline, COLUMNS, frozenset(CATEGORICAL), fast.fallbacks, {}, spec)
    assert np.max(np.abs(itself.raw(frame) - scorer.raw(frame))) <= 1e-6


def test_answers_from_columns_equal_answers_from_the_frame(flights) -> None:
    """``ModelScoring.answer`` (columns) gives each row what ``score`` gives on the frame, for
    the fast path and for a model that serves itself (it still gets the frame)."""
    train, held_out = flights
    pipeline, spec = fitted(Task.BINARY, train)
    x, y = prepare(features(train)), (train["arr_delay"] > 15).astype(int)
    dummy = Pipeline([("encode", pipeline.named_steps["encode"]), ("model", DummyClassifier())])
    dummy.fit(x, y)
    scoring = ModelScoring(0.4)
    itself = loaded_model(dummy, spec, train)
    for model in (with_fast_path(loaded_model(pipeline, spec, train)), itself):
        rows = asked(model, held_out)
        columns = columns_of_rows(rows)
        answered = scoring.answer(
            ServingState(champion=model), rows, [str(n) for n in range(len(rows))], columns
        )
        expected = scoring.score(model, model.frame(rows))
        assert [scored for _, scored in answered] == expected
        assert all(answering is model for answering, _ in answered)
        assert [type(s.probability) for _, s in answered] == [float] * len(rows)


def test_a_missing_input_column_is_named(flights) -> None:
    train, _ = flights
    pipeline, spec = fitted(Task.BINARY, train)
    fast = with_fast_path(loaded_model(pipeline, spec, train))
    columns = columns_of_rows([fast.fallbacks])
    del columns["distance"]
    with pytest.raises(Exception, match=r"needs features this service does not provide.*distance"):
        fast.predict_columns(columns, 1)


@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS, Task.REGRESSION])
def test_large_batches_score_by_the_estimator_within_parity_of_the_model(task, flights) -> None:
    """From ESTIMATOR_ROWS rows on the fast path scores by the model's own estimator on the
    encoded matrix (faster than GTIL there); both paths stay within PARITY of the model, and
    a batch just below the size is GTIL's, exactly."""
    train, held_out = flights
    pipeline, spec = fitted(task, train)
    fast = with_fast_path(loaded_model(pipeline, spec, train))
    scorer = fast.scorer
    assert scorer is not None and scorer.estimator is not None
    rows = asked(fast, held_out)
    while len(rows) < ESTIMATOR_ROWS + 50:
        rows += rows
    columns = columns_of_rows(rows)
    frame = fast.frame_of(columns, len(rows))
    itself = LoadedModel(1, pipeline, COLUMNS, frozenset(CATEGORICAL), fast.fallbacks, {}, spec)
    expected = itself.raw(frame)
    matrix = scorer.encoding.matrix(fast.inputs_of(columns, len(rows)))
    large = scorer.raw_columns(fast.inputs_of(columns, len(rows)))
    assert np.array_equal(large, scorer.own_raw(matrix))  # the estimator's, at this size
    assert np.max(np.abs(large - expected)) <= PARITY
    assert np.max(np.abs(scorer.gtil_raw(matrix) - expected)) <= PARITY
    small = ESTIMATOR_ROWS - 1
    below = scorer.raw_columns(fast.inputs_of(columns, small))
    assert np.array_equal(below, scorer.gtil_raw(matrix[:small]))
