"""The second project's whole loop through the CLI and HTTP, as its team runs it (issue 17):
ingest -> materialize -> the team's own training script -> adopt -> baseline -> promote ->
serve over HTTP -> feedback -> monitor -> drill (a faulty version rolled back by the guard) ->
report. For the regression project (examples/chicago) and its multi-class variant.

Kept short for CI: 16 months ingested (2013-01 to 2014-04), a model fitted on 2013, the first
quarter of 2014 as the staging baseline, the next day (2014-05-01) asked for over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.cli import run, serving
from tests.e2e.test_serving_http import post

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "chicago"
CONFIGS = {"regression": "prodguard.yaml", "multiclass": "prodguard.multiclass.yaml"}
DATA_DIRS = {"regression": ".prodguard", "multiclass": ".prodguard-multiclass"}
ENV = {"OMP_NUM_THREADS": "1"}
ADOPT_WINDOWS = [
    "--train-start",
    "2013-01-01",
    "--train-end",
    "2013-10-03",
    "--eval-start",
    "2013-10-03",
    "--eval-end",
    "2014-01-01",
]
NEXT_DAY = date(2014, 5, 1)  # the day after the last materialized one


def copy_example(target: Path) -> Path:
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", ".prodguard*", "mlruns")
    )
    return target


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A copy of the project with 2013-01 to 2014-04 ingested through its suites (once)."""
    project = copy_example(tmp_path_factory.mktemp("chicago") / "chicago")
    began = time.perf_counter()
    done = run(project, "ingest", "--start", "2013-01-01", "--end", "2014-05-01", "--json", env=ENV)
    report = json.loads(done.stdout)
    assert report["quarantined"] == 0
    return project, {"ingest (16 months)": time.perf_counter() - began}


def project_for(ingested, task: str, target: Path) -> Path:
    source, _ = ingested
    project = copy_example(target)
    shutil.copytree(source / ".prodguard", project / DATA_DIRS[task])
    return project


@pytest.mark.timeout(1800)  # a shared machine: the steps' times are printed, not asserted
@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_the_whole_loop(ingested, task: str, tmp_path: Path) -> None:
    project = project_for(ingested, task, tmp_path / "chicago")
    config = ["--config", CONFIGS[task]]
    timings = dict(ingested[1])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}

    def step(name: str, *args: str, expect: int = 0) -> str:
        began = time.perf_counter()
        done = run(project, *config, *args, env=ENV, expect=expect)
        timings[name] = time.perf_counter() - began
        return done.stdout

    def script(name: str, *args: str) -> str:
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *args],
            cwd=project,
            env={**clean, **ENV},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        timings[name] = time.perf_counter() - began
        return done.stdout

    step("materialize", "materialize", "--until", "2014-05-01")
    trained = script(
        "train_outside.py",
        "train_outside.py",
        "--config",
        CONFIGS[task],
        "--start",
        "2013-01-01",
        "--end",
        "2014-01-01",
    )
    name = "clark-lake-ridership" if task == "regression" else "clark-lake-level"
    assert f"{name} version 1:" in trained
    adopted = json.loads(
        step("adopt", "adopt", "--model-uri", f"models:/{name}/1", *ADOPT_WINDOWS, "--json")
    )
    assert adopted["version"] == 1 and adopted["task"] == task
    assert adopted["rows_train"] == 275 and adopted["rows_eval"] == 90
    if task == "regression":
        assert 0 < adopted["metrics"]["mae"] < 4 and adopted["metrics"]["r2"] > 0.3
    else:
        assert adopted["metrics"]["accuracy"] > 0.6
    step("baseline", "baseline", "--start", "2014-01-01", "--end", "2014-04-01")
    step("promote", "promote", "--reason", "the team's model")

    # the service asked for the next day, 30 times (a few callers), each outcome fed back
    outcome = "entries" if task == "regression" else "level"
    began = time.perf_counter()
    with serving(project, {**ENV, "PRODGUARD_CONFIG": CONFIGS[task]}) as base:
        timings["serve ready"] = time.perf_counter() - began
        began = time.perf_counter()
        for caller in range(30):
            rid = f"caller-{caller}"
            request = {"service_date": str(NEXT_DAY), "request_id": rid}
            code, body = post(base, "/predict", request)
            assert code == 200 and body["version"] == 1 and not body["degraded"], body
            if task == "regression":
                assert 3 < body["prediction"]["value"] < 30, body
                fed = {outcome: 15.0}
            else:
                assert body["prediction"]["class"] in {"low", "normal", "high"}, body
                fed = {outcome: "normal"}
            code, body = post(base, "/feedback", {"request_id": rid, "outcome": fed})
            assert code == 200 and body["status"] == "recorded", body
        timings["30 requests + feedback"] = time.perf_counter() - began
    monitored = json.loads(step("monitor", "monitor", "--json"))
    assert monitored, monitored

    # the drill: a faulty copy of v1 (per task: its values shifted, or probability mass moved
    # between classes) promoted in staging over the first quarter of 2014, the guard judging it
    drill = json.loads(step("drill", "drill", "--version", "1", "--json"))
    assert drill["passed"], drill["reason"]
    assert drill["detect_requests"] >= 20 and drill["standby_answers"] >= 1
    status = json.loads(run(project, *config, "status", "--json").stdout)
    assert status["aliases"]["champion"] == 1  # production aliases never moved
    headline = status["lineage"]["champion"]["headline"]  # the task's metric, not AUC
    assert headline["metric"] == ("rmse" if task == "regression" else "macro_f1"), headline

    today = date.today()
    reported = step(
        "report", "report", "--start", str(today), "--end", str(today + timedelta(days=1))
    )
    html = list((project / DATA_DIRS[task] / "reports").rglob("*.html"))
    assert html, reported
    print(
        f"\nchicago {task} loop, seconds per step: "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f"; drill: detected after {drill['detect_requests']} faulty answers"
    )
