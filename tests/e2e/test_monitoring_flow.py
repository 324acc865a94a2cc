"""Monitoring as a user drives it: `prodguard baseline`, `monitor` (alerts to a webhook),
`report` (Evidently HTML with an index page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DAILY_WINDOWS, copy_project, utc
from tests.e2e.cli import run
from tests.unit.test_alerts import Receiver

pytestmark = pytest.mark.e2e
DAILY = {**DAILY_WINDOWS, "PRODGUARD_MONITORING__KPI__MIN_LABELLED": "100"}


class Celsius:
    """A feature source that serves temperature and dew point in degrees Celsius."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def online_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = self.store.online_records(rows)
        for record in records:
            for column in ("temp", "dewp"):
                value = record[column]
                record[column] = None if value is None else (value - 32) * 5 / 9
        return records


@pytest.fixture
def monitored(served_project: Path, tmp_path: Path) -> Path:
    return copy_project(served_project, tmp_path / "project")


def test_baseline_monitor_alert_and_report(monitored: Path) -> None:
    from prodguard import wiring
    from prodguard.config import load_settings
    from prodguard.monitoring.jobs import replay_version
    from prodguard.serving.prediction_log import SqlitePredictionLog

    run(monitored, "materialize", "--until", "2013-05-01", env=DAILY)
    baseline = run(
        monitored, "baseline", "--start", "2013-04-01", "--end", "2013-04-08", "--json", env=DAILY
    )
    document = json.loads(baseline.stdout)
    assert document["model_version"] == 2  # the champion (no candidate is set)
    assert document["details"]["windows"] == 7
    assert document["replay"]["predicted"] > 5000
    assert {"psi.temp", "shift.temp", "score.mean", "kpi.delay_cost"} <= set(document["metrics"])
    status = json.loads(run(monitored, "status", "--json").stdout)
    assert status["lineage"]["champion"]["baseline"].startswith("2013-04-01")
    assert "baseline" in run(monitored, "status").stdout

    # production traffic of the following week, with temperatures arriving in degrees Celsius
    settings = load_settings(monitored / "prodguard.yaml", environ=DAILY)
    log = SqlitePredictionLog(settings.paths.prediction_log, "NORMAL")
    registry = wiring.registry_operations(settings).registry
    replay_version(
        settings,
        registry,
        2,
        utc("2013-04-08"),
        utc("2013-04-15"),
        log,
        wrap_store=lambda store, clock: Celsius(store),
    )
    log.close()

    receiver = Receiver()
    try:
        env = {**DAILY, "PRODGUARD_ALERTS__WEBHOOK_URL": receiver.url}
        args = ["monitor", "--start", "2013-04-08", "--end", "2013-04-15", "--json"]
        first = json.loads(run(monitored, *args, env=env).stdout)
        again = json.loads(run(monitored, *args, env=env).stdout)
    finally:
        receiver.close()
    reports = first["reports"]
    assert len(reports) == 7 and all(r["model_version"] == 2 for r in reports)
    dewp_alerts = 0
    for report in reports:
        statuses = {f["metric"]: f["status"] for f in report["findings"]}
        values = {f["metric"]: f["value"] for f in report["findings"]}
        # against staging, degrees Celsius fall below every April decile: far beyond its spread
        assert statuses["shift.temp"] == "critical", values
        # against training (Jan-Mar, already far from April) PSI saturates: a warning at least
        assert statuses["psi.temp"] in ("warning", "critical"), values
        dewp_alerts += statuses["shift.dewp"] in ("warning", "critical")
    assert dewp_alerts >= 4  # daily dew points overlap more between °C and a cold April week
    sent = {(a["type"], a.get("metric")) for a in first["alerts_sent"]}
    assert ("drift_alert", "shift.temp") in sent
    # a condition that holds over seven windows alerts once, and not again on the next run
    assert sum(1 for a in first["alerts_sent"] if a.get("metric") == "shift.temp") == 1
    assert again["alerts_sent"] == []
    # the webhook hears of incidents: the weather source's drifted features are one of them
    received = [(b["prodguard"]["event"], b["prodguard"]["incident"]) for b in receiver.bodies]
    assert all(b["text"] for b in receiver.bodies)
    assert len(received) < len(first["alerts_sent"])
    opened = [i["cause_key"] for event, i in received if event == "opened"]
    assert "source:weather" in opened and len(opened) == len(set(opened))
    incidents = [
        json.loads(line) for line in run(monitored, "incidents", "--json").stdout.splitlines()
    ]
    (weather,) = [i for i in incidents if i["cause_key"] == "source:weather"]
    assert {"shift.temp", "shift.dewp"} <= set(weather["metrics"])
    stored = run(monitored, "alerts", "--type", "drift_alert").stdout.splitlines()
    assert len(stored) == len([a for a in first["alerts_sent"] if a["type"] == "drift_alert"])

    table = run(monitored, "monitor", "--start", "2013-04-08", "--end", "2013-04-10", env=DAILY)
    assert "critical" in table.stdout and "shift.temp" in table.stdout

    report = run(monitored, "report", "--start", "2013-04-08", "--end", "2013-04-15", env=DAILY)
    assert "temp" in report.stdout
    reports_dir = monitored / ".prodguard" / "reports"
    index = (reports_dir / "index.html").read_text()
    (entry,) = json.loads((reports_dir / "index.json").read_text())
    assert entry["file"] in index and (reports_dir / entry["file"]).stat().st_size > 100_000
    assert {"temp", "dewp"} <= set(entry["drifted"])
    assert entry["current_total"] > 5000 and entry["reference_rows"] <= 20_000


def test_monitor_on_an_empty_log_is_insufficient_not_quiet(monitored: Path) -> None:
    done = run(monitored, "monitor", "--once", "--json", env=DAILY)
    (report,) = json.loads(done.stdout)["reports"]
    assert report["status"] == "insufficient_data"
    assert report["reason"] == "no predictions in the window"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["monitor", "--once", "--every", "5"], "--once or --every"),
        (["monitor", "--start", "2013-04-01"], "both --start and --end"),
        (["monitor", "--every", "0"], "--every must be a positive"),
        (["baseline", "--start", "soon", "--end", "2013-05-01"], "--start 'soon' is not"),
        (["baseline", "--start", "2013-05-01", "--end", "2013-04-01"], "--end must be after"),
        (["report", "--start", "2013-04-01", "--end", "2013-04-02"], "no predictions of v2"),
    ],
)
def test_bad_monitoring_input_one_line_error(monitored: Path, args: list[str], message: str):
    done = run(monitored, *args, expect=None, env=DAILY)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_monitor_loop_serves_prometheus_gauges(monitored: Path) -> None:
    import os
    import subprocess
    import time
    import urllib.request

    from tests.e2e.cli import CLI, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
    process = subprocess.Popen(
        [*CLI, "monitor", "--every", "0.5", "--metrics-port", str(port), "--json"],
        cwd=monitored,
        env={**env, **DAILY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "prodguard_monitor_window_status{" not in text:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                assert process.poll() is None, "the monitor loop exited"
                time.sleep(0.3)
        # nothing logged in the last 24 h: the window is insufficient (-1), never "ok" (0)
        assert sample(text, "prodguard_monitor_window_status") == -1.0
        first = sample(text, "prodguard_monitor_last_run_timestamp_seconds")
        assert first > 0
        time.sleep(1.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            later = r.read().decode()
        # the loop keeps running
        assert sample(later, "prodguard_monitor_last_run_timestamp_seconds") > first
    finally:
        process.terminate()
        process.wait(timeout=20)


def sample(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name:
                return found.value
    raise AssertionError(f"{name} not exported")
