"""The fast scoring path (treelite) against the model itself on real flights rows, for each
task: same raw output within 1e-6 on held-out rows (unknown tail numbers, missing values and
the encoder's infrequent bin included), and the model serving itself, with the reason, when it
does not convert. Parity only: nothing here times anything."""

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from prodguard.serving.models import LoadedModel
from prodguard.serving.treelite_adapter import PARITY, Unsupported, compile_model, fast_scorer
from prodguard.tasks import ModelScorer, Task, TaskSpec
from prodguard.training.model import build_pipeline, prepare

pytestmark = pytest.mark.integration

CATEGORICAL = ("carrier", "origin", "dest", "tailnum")
NUMERIC = ("distance", "hour", "minute", "sched_arr_time", "month", "day")
COLUMNS = CATEGORICAL + NUMERIC


@pytest.fixture(scope="module")
def flights(flights_loader) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = flights_loader.raw("flights").dropna(subset=["arr_delay"])
    train = raw[raw.month == 1].sample(4000, random_state=1)
    held_out = raw[raw.month == 2].sample(1500, random_state=2).copy()
    held_out.loc[held_out.index[::7], "dest"] = None  # missing categorical
    held_out.loc[held_out.index[::11], "distance"] = np.nan  # missing numeric
    return train, held_out


def features(rows: pd.DataFrame) -> pd.DataFrame:
    frame = rows[list(COLUMNS)].copy()
    for column in CATEGORICAL:
        frame[column] = frame[column].astype("string")
    return frame.astype({c: "float64" for c in NUMERIC})


def fitted(task: Task, train: pd.DataFrame) -> tuple[Pipeline, TaskSpec]:
    x = features(train)
    pipeline = build_pipeline(x, seed=3)
    pipeline.set_params(model__max_iter=40, model__early_stopping=False)
    delay = train["arr_delay"]
    if task is Task.REGRESSION:
        kept = pipeline.named_steps["model"].get_params()["categorical_features"]
        pipeline.set_params(
            model=HistGradientBoostingRegressor(
                categorical_features=kept, max_iter=40, random_state=3
            )
        )
        y = delay
    elif task is Task.MULTICLASS:
        y = pd.cut(delay, [-np.inf, 0, 30, np.inf], labels=["early", "late", "very late"])
        y = y.astype(str)
    else:
        y = (delay > 15).astype(int)
    pipeline.fit(prepare(x), y)
    classes = tuple(getattr(pipeline, "classes_", ()))
    return pipeline, TaskSpec(task, classes)


def loaded_model(pipeline: Pipeline, spec: TaskSpec, train: pd.DataFrame) -> LoadedModel:
    x = features(train)
    fallbacks = {c: (x[c].mode()[0] if c in CATEGORICAL else float(x[c].median())) for c in COLUMNS}
    categories = {c: frozenset(x[c].dropna().unique()) for c in CATEGORICAL}
    return LoadedModel(1, pipeline, COLUMNS, frozenset(CATEGORICAL), fallbacks, categories, spec)


@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS, Task.REGRESSION])
def test_fast_path_equals_the_model_on_held_out_flights(task, flights) -> None:
    train, held_out = flights
    pipeline, spec = fitted(task, train)
    model = loaded_model(pipeline, spec, train)
    frame = model.frame(features(held_out).to_dict("records"))
    assert frame["tailnum"].isin(model.categories["tailnum"]).mean() < 1  # unknown ones asked
    expected = ModelScorer(pipeline, task).raw(prepare(features(held_out)))
    scorer = compile_model(pipeline, COLUMNS, frame, expected)
    fast = scorer.raw(frame)
    assert (
        fast.shape
        == expected.shape
        == ((len(frame), len(spec.classes)) if spec.classes else (len(frame),))
    )
    assert np.max(np.abs(fast - expected)) <= PARITY
    assert scorer.info["parity_max_abs"] <= PARITY and scorer.info["runtime"].startswith("treelite")


@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS, Task.REGRESSION])
def test_loaded_model_serves_the_same_answers_through_the_fast_path(task, flights) -> None:
    train, held_out = flights
    pipeline, spec = fitted(task, train)
    model = loaded_model(pipeline, spec, train)
    scorer, how = fast_scorer(model)
    assert scorer is not None, how
    fast = LoadedModel(
        1, pipeline, COLUMNS, model.categorical, model.fallbacks, model.categories, spec, scorer
    )
    frame = model.frame(features(held_out.head(300)).to_dict("records"))
    slow, quick = model.predict(frame), fast.predict(frame)
    assert np.max(np.abs(np.asarray(slow.score) - np.asarray(quick.score))) <= PARITY
    if task.classifier:
        assert list(slow.predicted) == list(quick.predicted)


def test_a_model_that_does_not_convert_serves_itself_with_the_reason(flights) -> None:
    train, _ = flights
    pipeline, spec = fitted(Task.BINARY, train)
    x, y = prepare(features(train)), (train["arr_delay"] > 15).astype(int)
    other = Pipeline([("encode", pipeline.named_steps["encode"]), ("model", DummyClassifier())])
    other.fit(x, y)
    model = loaded_model(other, spec, train)
    scorer, reason = fast_scorer(model)
    assert scorer is None and "DummyClassifier is not a tree ensemble" in reason
    with pytest.raises(Unsupported, match="parity"):
        frame = model.frame([model.fallbacks])
        compile_model(pipeline, COLUMNS, frame, np.array([[0.5, 0.5]]) + 0.01)
