"""`prodguard demo --short` as a newcomer runs it: every chapter of the story leaves its records
(audit log, alert log, events.json), and the summary page renders in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_project
from tests.e2e.cli import HEADLESS_CHROMIUM_FLAGS, run

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("demo") / "project")
    run(project, "demo", "--short", timeout=900)
    return project


def test_every_story_event_is_on_record(demo: Path) -> None:
    from prodguard.alerts import JsonlSink
    from prodguard.config import load_settings
    from prodguard.registry.audit import AuditLog
    from prodguard.registry.config import load_registry_config

    output = demo / ".prodguard" / "demo"
    events = json.loads((output / "events.json").read_text())
    assert all({"type", "time", "model_version", "details"} <= set(e) for e in events)
    kinds = {e["type"] for e in events}
    assert {"training", "baseline", "drill", "promotion", "traffic", "quarantine"} <= kinds
    assert {"drift_alert", "drift_report", "faulty_version", "rollback"} <= kinds

    settings = load_settings(demo / "prodguard.yaml", environ={})
    audit = AuditLog(load_registry_config(settings).audit_uri).records("flight-delay")
    audit.sort(key=lambda r: r.id)  # oldest first
    promotions = [r for r in audit if r.action == "promote"]
    assert promotions[0].to_state["champion"] == 1  # the first champion, after its drill
    # the canary baked step by step (traffic moves by the guard) ...
    assert any(r.action == "traffic" and r.actor == "prodguard-guard" for r in audit)
    # ... and the faulty version promoted from the CLI was rolled back by the guard
    faulty = next(e for e in events if e["type"] == "faulty_version")["model_version"]
    promoted = next(r for r in promotions if r.to_state["champion"] == faulty)
    rollback = next(r for r in audit if r.action == "rollback" and r.id > promoted.id)
    assert rollback.actor == "prodguard-guard" and rollback.from_state["champion"] == faulty
    assert "prediction_shift" in rollback.reason
    assert (rollback.time - promoted.time).total_seconds() <= 24 * 3600  # simulated
    # no false rollback: the faulty version is the only one the guard ever rolled back
    rollbacks = [r.from_state["champion"] for r in audit if r.action == "rollback"]
    assert rollbacks == [faulty]
    assert "evidence" in rollback.evidence["triggers"][0]  # each decision keeps its evidence
    page = (output / "summary.html").read_text()  # the summary shows incidents and evidence
    assert "Incidents (alerts grouped by cause)" in page and "source &#x27;weather&#x27;" in page
    assert "prediction_shift: fired: effect" in page

    alerts = JsonlSink(settings.paths.alerts_file).read()
    quarantine = [a for a in alerts if a["type"] == "quarantine"]
    assert quarantine and quarantine[0]["source"] == "weather"
    assert quarantine[0]["time"].startswith("2013-07-01")  # simulated time, not wall time
    # the guard saw a data incident, not a model fault: it held and named the features
    held = [a for a in alerts if a["type"] == "pipeline_incident"]
    assert (
        held
        and held[0]["time"].startswith("2013-07-0")
        and "temp" in held[0]["details"]["features"]
    )
    assert any(a["type"] == "drift_alert" and a["metric"].startswith("psi.") for a in alerts)
    assert any(a["type"] == "rollback" and a["model_version"] == faulty for a in alerts)
    # nothing was lost on the way: every answered request is in the prediction log
    traffic = json.loads((output / "traffic.json").read_text())
    answered = sum(t["answered"] for t in traffic)
    assert answered > 10000 and sum(t["failed"] for t in traffic) == 0
    import sqlite3

    with sqlite3.connect(settings.paths.prediction_log) as conn:
        logged = conn.execute(
            "SELECT COUNT(DISTINCT request_id) FROM predictions WHERE request_id LIKE 'http-%' "
            "AND role IN ('champion', 'canary')"
        ).fetchone()[0]
    assert logged == answered
    # while the weather was quarantined, serving flagged it and kept going
    celsius = next(t for t in traffic if t["start"].startswith("2013-07-01"))
    assert celsius["degraded"] > 0.8 * celsius["answered"]


def test_the_demo_never_deletes_state_it_did_not_make(tmp_path: Path) -> None:
    foreign = make_project(tmp_path / "foreign")
    (foreign / ".prodguard").mkdir()
    (foreign / ".prodguard" / "precious.db").write_text("x")
    refused = run(foreign, "demo", "--short", expect=2)
    assert "did not create" in refused.stderr
    assert (foreign / ".prodguard" / "precious.db").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_the_summary_renders_in_chromium_without_console_errors(demo: Path, tmp_path: Path):
    page = demo / ".prodguard" / "demo" / "summary.html"
    text = page.read_text()
    for heading in ("Drift", "Predictions", "Business KPI", "Latency", "Timeline"):
        assert f"<h2>{heading}</h2><svg" in text
    assert "<script" not in text and "http://" not in text.split("<svg", 1)[0]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo-summary.png"
    errors = _console_errors(page, shot, tmp_path / "profile")
    assert errors == [], errors
    assert shot.stat().st_size > 20_000
    # the check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    assert _console_errors(broken, tmp_path / "broken.png", tmp_path / "profile2")


def _console_errors(page: Path, screenshot: Path, profile: Path) -> list[str]:
    done = subprocess.run(
        [
            str(CHROMIUM),
            *HEADLESS_CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1100,2400",
            f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert screenshot.exists(), done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
