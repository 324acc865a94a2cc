"""A team's own model, trained by a plain script outside prodguard and logged to MLflow, adopted
and then guarded like a trained one: adopt -> baseline -> promote -> serve over HTTP -> drill.
And the malformed models adopt refuses, each in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prodguard import wiring
from prodguard.config import load_settings
from prodguard.errors import ModelContractError
from prodguard.rollout.faults import register_faulty
from tests.conftest import DAILY_WINDOWS, FLIGHT_REQUEST, copy_project
from tests.e2e.cli import run, serving
from tests.e2e.test_serving_http import post

pytestmark = pytest.mark.e2e
ENV = {**DAILY_WINDOWS, "PRODGUARD_ROLLOUT__TRIGGERS__MIN_REQUESTS": "40"}
WINDOWS = [
    "--train-start",
    "2013-01-01",
    "--train-end",
    "2013-03-01",
    "--eval-start",
    "2013-03-01",
    "--eval-end",
    "2013-04-01",
]

# What a team writes: its own pipeline on the point-in-time frame, logged to MLflow with a
# signature. Besides the good model it logs the mistakes adopt must refuse.
TEAM_SCRIPT = """
import sys, warnings
import mlflow
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from prodguard import app
from prodguard.config import load_settings
from prodguard.training.dataset import build_frame, is_categorical
from prodguard.training.model import prepare
from prodguard.registry.config import load_registry_config

warnings.simplefilter("ignore")
settings = load_settings(None)
frame = build_frame(
    settings, app.feature_store(settings),
    *[__import__("pandas").Timestamp(d, tz="UTC") for d in ("2013-01-01", "2013-03-01")],
)
X, y = prepare(frame.features), frame.label


def pipeline(frame, estimator):
    columns = list(frame.columns)
    categorical = [c for c in columns if is_categorical(frame[c])]
    numeric = [c for c in columns if c not in categorical]
    return make_pipeline(
        ColumnTransformer([
            ("categorical", OneHotEncoder(handle_unknown="ignore", min_frequency=20), categorical),
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ]),
        estimator,
    )


config = load_registry_config(settings)
mlflow.set_tracking_uri(config.tracking_uri)
mlflow.set_registry_uri(config.registry_uri)
mlflow.set_experiment("team-experiments")


def log(name, model, inputs, signature=True):
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", skops_trusted_types=["numpy.dtype"],
            signature=infer_signature(inputs, model.predict(inputs)) if signature else None,
            registered_model_name=name,
        )
    return info


columns = list(X.columns)
good = pipeline(X, LogisticRegression(max_iter=300)).fit(X, y)
log("team-delay", good, X)
short = X[columns[1:]]
log("team-missing", pipeline(short, LogisticRegression(max_iter=300)).fit(short, y), short)
wide = X.assign(weekday_name=X[columns[0]])
log("team-extra", pipeline(wide, LogisticRegression(max_iter=300)).fit(wide, y), wide)
log("team-unsigned", good, X, signature=False)
log("team-regressor", pipeline(X, LinearRegression()).fit(X, y.astype(float)), X)


# Models without the sklearn flavor, served through their pyfunc: a classifier returning a
# probability frame (columns: the class labels), one returning labels, and a regressor on
# arr_delay that is a plain numpy least-squares fit on the numeric features.
import numpy as np
import pandas as pd


class Probabilities(mlflow.pyfunc.PythonModel):
    def __init__(self, model):
        self.model = model

    def predict(self, model_input, params=None):
        out = self.model.predict_proba(model_input)
        return pd.DataFrame(out, columns=[str(int(c)) for c in self.model.classes_])


class Labels(Probabilities):
    def predict(self, model_input, params=None):
        return self.model.predict(model_input)


class Linear(mlflow.pyfunc.PythonModel):
    def __init__(self, columns, coefficients, medians):
        self.columns, self.coefficients, self.medians = columns, coefficients, medians

    def matrix(self, frame):
        values = frame[self.columns].astype("float64").fillna(self.medians)
        return np.column_stack([np.ones(len(frame)), values.to_numpy()])

    def predict(self, model_input, params=None):
        return self.matrix(model_input) @ self.coefficients


def log_pyfunc(name, python_model, inputs):
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=python_model, registered_model_name=name,
            signature=infer_signature(inputs, python_model.predict(inputs)),
        )


log_pyfunc("team-pyfunc-proba", Probabilities(good), X)
log_pyfunc("team-pyfunc-labels", Labels(good), X)
environ = {**__import__("os").environ, "PRODGUARD_MODEL__LABEL": "arr_delay"}
delays = build_frame(
    load_settings(None, environ=environ), app.feature_store(settings),
    *[pd.Timestamp(d, tz="UTC") for d in ("2013-01-01", "2013-03-01")],
)
R = prepare(delays.features)
numeric = [c for c in R.columns if not is_categorical(R[c])]
medians = R[numeric].astype("float64").median()
linear = Linear(numeric, None, medians)
linear.coefficients = np.linalg.lstsq(linear.matrix(R), delays.label.to_numpy(), rcond=None)[0]
log_pyfunc("team-pyfunc-linear", linear, R)
"""


@pytest.fixture(scope="module")
def team_project(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flights project with the team's models logged to its MLflow store (no alias)."""
    project = copy_project(ingested, tmp_path_factory.mktemp("adopt") / "project")
    began = time.perf_counter()
    run(project, "materialize", "--until", "2013-05-01")
    materialize = time.perf_counter() - began
    (project / "team_train.py").write_text(TEAM_SCRIPT)
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "team_train.py"], cwd=project, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (project / "timings.json").write_text(
        json.dumps({"materialize": materialize, "team script": time.perf_counter() - began})
    )
    return project


@pytest.mark.timeout(2400)  # a shared machine: the steps' times are printed, not asserted
def test_an_adopted_model_is_promoted_served_and_drilled(team_project: Path, tmp_path: Path):
    project = copy_project(team_project, tmp_path / "project")
    timings = json.loads((team_project / "timings.json").read_text())

    def step(name: str, *args: str, env: dict[str, str] | None = None) -> str:
        began = time.perf_counter()
        done = run(project, *args, env=env)
        timings[name] = time.perf_counter() - began
        return done.stdout

    step("materialize (copy)", "materialize", "--until", "2013-05-01")
    result = json.loads(
        step("adopt", "adopt", "--model-uri", "models:/team-delay/1", *WINDOWS, "--json")
    )
    assert result["version"] == 1 and result["registered"] and result["task"] == "binary"
    assert 0.6 < result["metrics"]["auc"] < 1 and result["rows_eval"] > 20000
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["aliases"] == {"champion": None, "standby": None, "candidate": 1}
    lineage = status["lineage"]["candidate"]
    assert lineage["train_window"].startswith("2013-01-01")
    assert lineage["headline"]["metric"] == "auc"
    audit = json.loads(run(project, "audit", "--json").stdout)
    assert audit[-1]["action"] == "set_candidate" and "models:/team-delay/1" in audit[-1]["reason"]

    step("baseline", "baseline", "--start", "2013-04-01", "--end", "2013-04-04", env=ENV)
    step("promote", "promote", "--reason", "the team's model")
    began = time.perf_counter()
    with serving(project) as base:
        timings["serve ready"] = time.perf_counter() - began
        code, body = post(base, "/predict", {**FLIGHT_REQUEST, "request_id": "team-1"})
    assert code == 200 and body["version"] == 1 and 0 <= body["probability"] <= 1, body
    drill = json.loads(step("drill", "drill", "--version", "1", "--json", env=ENV))
    assert drill["passed"], drill["reason"]
    print("\nadopt e2e, seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    # adopting a version that already carries lineage is refused; register moves the alias
    done = run(project, "adopt", "--model-uri", "models:/flight-delay/1", *WINDOWS, expect=2)
    assert "already carries prodguard lineage" in done.stderr


REGRESSION = {
    "PRODGUARD_MODEL__TASK": "regression",
    "PRODGUARD_MODEL__LABEL": "arr_delay",
    "PRODGUARD_MONITORING__KPI__OUTCOME": "arr_delay",
}


@pytest.mark.parametrize(
    ("uri", "project_env"),
    [("models:/team-pyfunc-linear/1", REGRESSION), ("models:/team-pyfunc-proba/1", {})],
    ids=["regression", "binary"],
)
@pytest.mark.timeout(2400)
def test_a_pyfunc_model_is_adopted_promoted_served_and_drilled(
    team_project: Path, tmp_path: Path, uri: str, project_env: dict[str, str]
) -> None:
    """Custom mlflow.pyfunc.PythonModels (no sklearn flavor), served through their pyfunc."""
    project = copy_project(team_project, tmp_path / "project")
    env = {**ENV, **project_env}
    run(project, "materialize", "--until", "2013-05-01")
    result = json.loads(
        run(project, "adopt", "--model-uri", uri, *WINDOWS, "--json", env=env).stdout
    )
    regression = bool(project_env)
    assert result["task"] == ("regression" if regression else "binary"), result
    if regression:
        assert result["metrics"]["mae"] > 0 and result["metrics"]["r2"] < 1
    else:
        assert 0.6 < result["metrics"]["auc"] < 1
    run(project, "baseline", "--start", "2013-04-01", "--end", "2013-04-04", env=env)
    run(project, "promote", "--reason", "the team's pyfunc", env=env)
    with serving(project, env=env) as base:
        code, body = post(base, "/predict", {**FLIGHT_REQUEST, "request_id": "pyfunc-1"})
    assert code == 200 and body["version"] == 1, body
    if regression:
        assert isinstance(body["prediction"]["value"], float), body
    else:
        assert 0 <= body["probability"] <= 1, body
    drill = json.loads(run(project, "drill", "--version", "1", "--json", env=env).stdout)
    assert drill["passed"], drill["reason"]

    # a pyfunc's faulty copy is not registered (the drill's lives in memory): one line
    settings = load_settings(project / "prodguard.yaml", environ=env)
    with pytest.raises(ModelContractError, match="faulty copy is registered for sklearn models"):
        register_faulty(wiring.registry_operations(settings), 1, 0.5, "tests", [])


@pytest.mark.parametrize(
    ("uri", "task", "message"),
    [
        ("models:/team-missing/1", None, "missing ["),
        ("models:/team-extra/1", None, "extra ['weekday_name']"),
        ("models:/team-unsigned/1", None, "has no input signature"),
        ("models:/team-regressor/1", None, "has no predict_proba"),
        ("models:/team-delay/1", "regression", "declared 'regression' (--task or model.task)"),
        ("models:/team-delay/1", "multiclass", "probabilities for 2 classes"),
        ("models:/team-pyfunc-labels/1", None, 'pyfunc_predict_fn="predict_proba"'),
        ("models:/team-pyfunc-proba/1", "regression", "returns class probabilities for 2"),
        ("models:/team-pyfunc-proba/1", "multiclass", "probabilities for 2 classes"),
        ("models:/no-such-model/1", None, "cannot load the model at models:/no-such-model/1"),
        ("runs:/0123456789abcdef/model", None, "cannot load the model at runs:/"),
        ("s3://bucket/model", None, "neither models:/NAME/VERSION"),
    ],
)
@pytest.mark.timeout(1800)  # the first one prepares the project
def test_a_malformed_model_is_refused_in_one_line(
    team_project: Path, uri: str, task: str | None, message: str
) -> None:
    args = ["adopt", "--model-uri", uri, *WINDOWS, *(["--task", task] if task else [])]
    done = run(team_project, *args, expect=2)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "bug" not in done.stderr
    # nothing registered (read in process: a `status` process per case cost ~10 s each)
    settings = load_settings(team_project / "prodguard.yaml", environ={})
    assert wiring.registry_operations(settings).state().candidate is None
