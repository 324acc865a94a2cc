"""A faulty champion rolled back automatically on a real server while a client keeps sending
requests: zero failed requests; the audit trail shows trigger, evidence and move."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import DAILY_WINDOWS, FLIGHT_REQUEST, copy_project
from tests.e2e.cli import CLI, run, serving
from tests.e2e.test_serving_http import post

pytestmark = pytest.mark.e2e
ENV = {
    **DAILY_WINDOWS,
    "PRODGUARD_SERVING__POLL_SECONDS": "1",
    "PRODGUARD_ROLLOUT__TRIGGERS__MIN_REQUESTS": "40",
}


@pytest.mark.parametrize("where", ["process", "service"])
def test_guard_rolls_back_a_faulty_champion_under_load(
    drilled: Path, tmp_path: Path, where: str
) -> None:
    project = copy_project(drilled, tmp_path / "project")
    run(project, "materialize", "--until", "2013-05-01", env=ENV)
    answers: list[tuple[float, int, int | None]] = []  # (time, status, version)
    stop = threading.Event()

    def client(base: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            status, body = post(base, "/predict", {**FLIGHT_REQUEST, "request_id": f"load-{n}"})
            version = body.get("version") if isinstance(body, dict) else None
            answers.append((time.time(), status, version))
            time.sleep(0.02)

    in_service = (
        {"PRODGUARD_ROLLOUT__GUARD_IN_SERVICE_SECONDS": "0.5"} if where == "service" else {}
    )
    with serving(project, {**ENV, **in_service}) as base:
        loader = threading.Thread(target=client, args=(base,), daemon=True)
        loader.start()
        # a user promotes the faulty v3 (its standby v1 is young: the override is audited)
        run(
            project,
            "promote",
            "--version",
            "3",
            "--reason",
            "drill",
            "--override-standby-retention",
            "rollback drill",
            env=ENV,
        )
        guard = None
        if where == "process":
            clean = {k: v for k, v in os.environ.items() if not k.startswith("PRODGUARD_")}
            guard = subprocess.Popen(
                [*CLI, "guard", "--every", "0.5", "--json"],
                cwd=project,
                env={**clean, **ENV},
                stdout=(project / "guard.jsonl").open("w"),
                stderr=(project / "guard.log").open("w"),
            )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the faulty champion served, then rolled back
                seen = [v for _, _, v in answers]
                if 3 in seen and seen[-10:] == [2] * 10 and seen.index(3) < len(seen) - 10:
                    break
                time.sleep(0.2)
        finally:
            if guard is not None:
                guard.terminate()
                guard.wait(timeout=30)
            stop.set()
            loader.join(timeout=30)

    assert answers, "the client got no answers"
    assert {status for _, status, _ in answers} == {200}  # zero failed requests
    served = [v for _, _, v in answers]
    assert 3 in served and served[-1] == 2
    audit = json.loads(run(project, "audit", "--json", env=ENV).stdout)  # oldest first
    rollback = audit[-1]
    assert rollback["action"] == "rollback" and rollback["actor"] == "prodguard-guard"
    assert len([r for r in audit if r["action"] == "rollback"]) == 1
    assert rollback["from_state"]["champion"] == 3 and rollback["to_state"]["champion"] == 2
    fired = [t for t in rollback["evidence"]["triggers"] if t["status"] == "fired"]
    # the paired test: v3's scores minus the standby's shadow scores of the same requests
    # (v3 is v2 shifted by +0.4, clipped to [0, 1]), with its evidence
    assert fired and fired[0]["name"] == "prediction_shift" and fired[0]["value"] > 0.2
    evidence = fired[0]["evidence"]
    assert evidence["compared"].startswith("v3 minus v2 on the same requests")
    assert evidence["n"] >= 40 and evidence["alpha"] == 0.01 and evidence["verdict"] == "fired"
    promote = audit[-2]
    assert promote["evidence"]["standby_retention_override"] == "rollback drill"

    # from the rollback's audit time to the last answer of the faulty version
    fired_at = datetime.fromisoformat(rollback["time"]).timestamp()
    last_faulty = max(t for t, _, v in answers if v == 3)
    recovery = last_faulty - fired_at
    detect = fired_at - datetime.fromisoformat(promote["time"]).timestamp()
    print(
        f"\n[guard in {where}] promotion -> trigger fired and rolled back: {detect:.2f} s (40 "
        "requests needed, "
        f"guard every 0.5 s); rollback -> all traffic on the standby: {recovery:.2f} s "
        f"(poll 1 s); {len(answers)} requests, all 200"
    )
    assert recovery < 10


def test_rollout_and_drill_commands(drilled: Path, tmp_path: Path) -> None:
    project = copy_project(drilled, tmp_path / "project")
    run(project, "materialize", "--until", "2013-05-01", env=ENV)

    run(project, "rollout", "start", "--mode", "canary", "--steps", "10,100", "--version", "3")
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["traffic"]["mode"] == "canary" and status["traffic"]["version"] == 3
    assert any("3 baseline sd" in line for line in status["triggers"])
    text = run(project, "status").stdout
    assert "canary: v3 answers 10%" in text and "rollback triggers" in text
    run(project, "rollout", "abort", "--reason", "changed my mind")
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["traffic"]["mode"] == "blue_green"

    for args, message in (
        (["rollout", "start", "--mode", "canary", "--steps", "5,200"], "percentages in (0, 100]"),
        (["rollout", "start", "--mode", "blue"], "--mode must be canary or shadow"),
        (["rollout", "abort", "--reason", "again"], "no rollout is in progress"),
        (["drill", "--version", "1"], "v1 has no staging baseline"),
    ):
        done = run(project, *args, expect=None)
        assert done.returncode != 0 and message in done.stderr, done.stderr

    drill = json.loads(run(project, "drill", "--version", "2", "--json", env=ENV).stdout)
    assert drill["passed"] and drill["detect_requests"] >= 40  # triggers.min_requests here
    print(
        f"\ndrill of v2: detected after {drill['detect_minutes']:.0f} simulated minutes "
        f"({drill['detect_requests']} faulty answers), standby serving "
        f"{drill['recover_seconds'] * 1000:.0f} ms after the trigger; latency p50 "
        f"{drill['latency_p50_ms']:.1f} ms, p99 {drill['latency_p99_ms']:.1f} ms"
    )
    audit = json.loads(run(project, "audit", "--json").stdout)
    assert [r["action"] for r in audit[-2:]] == ["traffic", "traffic"]  # the drill moved nothing
