"""A real `prodguard serve` with an admin token and tight limits: promotion, rollback and the
traffic policy over HTTP (the CLI's use cases, audited as coming over HTTP, followed by the
replica), and the limits answering 429/504 at once instead of queueing behind hung work."""

import json
import re
import shutil
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FLIGHT_REQUEST, make_project
from tests.e2e.cli import run, serving

pytestmark = pytest.mark.e2e

TOKEN = "test-admin-token-0123456789abcdef"
MAX_IN_FLIGHT = 2
TIMEOUT_S = 2
MARKER = "PAYLOADMARKER"


def call(
    base: str, path: str, body: dict | None = None, token: str | None = TOKEN, timeout: float = 60
) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a POST (``body``) or GET (no body)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}{path}", data=data, headers=headers, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


@pytest.fixture(scope="module")
def project(served_project, tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("admin") / "project")
    shutil.copytree(served_project / ".prodguard", root / ".prodguard")
    return root


@pytest.fixture(scope="module")
def service(project: Path):
    env = {
        "PRODGUARD_SERVING__POLL_SECONDS": "1",
        "PRODGUARD_SERVING__ADMIN_TOKEN": TOKEN,
        "PRODGUARD_SERVING__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "PRODGUARD_SERVING__REQUEST_TIMEOUT_S": str(TIMEOUT_S),
        "PRODGUARD_SERVING__MAX_BODY_BYTES": "65536",
    }
    with serving(project, env, log_name="serve-admin.log") as base:
        yield base
    assert TOKEN not in (project / "serve-admin.log").read_text()


def metric(base: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}}") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def champion_answering(base: str, version: int, within_s: float = 30) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status, body, _ = call(base, "/predict", FLIGHT_REQUEST, token=None)
        if status == 200 and body["version"] == version:
            return True
        time.sleep(0.2)
    return False


ADMIN_CALLS = [
    ("/admin/promote", {"reason": MARKER, "version": 1}),
    ("/admin/rollback", {"reason": MARKER}),
    ("/admin/rollout/start", {"mode": "shadow"}),
    ("/admin/rollout/abort", {"reason": MARKER}),
    ("/admin/status", None),
]


@pytest.mark.parametrize(("path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", ""])
def test_admin_routes_need_the_token(service: str, path: str, body, token) -> None:
    status, answer, headers = call(service, path, body, token=token)
    assert status == 401, answer
    assert headers["www-authenticate"].startswith('Bearer realm="prodguard-admin"')
    assert "PRODGUARD_SERVING__ADMIN_TOKEN" in answer["error"]
    assert MARKER not in json.dumps(answer) and TOKEN not in json.dumps(answer)


def test_status_over_http_is_the_cli_status_without_the_token(service: str, project: Path) -> None:
    status, answer, _ = call(service, "/admin/status")
    assert status == 200, answer
    cli = json.loads(run(project, "status", "--json").stdout)
    assert answer["aliases"] == cli["aliases"] == {"champion": 2, "standby": 1, "candidate": None}
    assert answer["traffic"] == cli["traffic"]
    assert TOKEN not in json.dumps(answer)


def test_promotion_rollback_and_rollout_over_http(service: str, project: Path) -> None:
    # the standby was set just now: a promotion that drops it is refused (409), nothing moves
    status, answer, _ = call(service, "/admin/promote", {"reason": MARKER, "version": 1})
    assert status == 409 and "standby" in answer["error"], answer
    assert MARKER not in json.dumps(answer)
    status, answer, _ = call(service, "/admin/promote", {"reason": "x", "version": 99})
    assert status == 404 and "/admin/status" in answer["error"], answer
    # bad input: 400 in BentoML's format, no value echoed
    status, answer, _ = call(service, "/admin/promote", {"reason": "x", "actor": f"{MARKER} !"})
    assert status == 400 and MARKER not in json.dumps(answer), answer

    status, answer, _ = call(
        service,
        "/admin/promote",
        {
            "version": 1,
            "reason": "v1 back for the holidays",
            "actor": "alice",
            "override_standby_retention": "tested in staging",
        },
    )
    assert status == 200, answer
    assert answer["action"] == "promote" and answer["actor"] == "http:alice"
    assert answer["to_state"]["champion"] == 1 and answer["to_state"]["standby"] == 2
    assert champion_answering(service, 1), "the replica did not follow the promotion"

    records = json.loads(run(project, "audit", "--json").stdout)
    last = records[-1]
    assert last["id"] == answer["audit_id"] and last["actor"] == "http:alice"
    assert last["reason"] == "v1 back for the holidays"
    assert "tested in staging" in json.dumps(last)  # the override's reason is audited

    status, answer, _ = call(
        service, "/admin/rollout/start", {"mode": "canary", "steps": [50, 100]}
    )
    assert status == 409, answer  # no candidate, and v2 is the standby: name it
    status, answer, _ = call(
        service, "/admin/rollout/start", {"mode": "canary", "steps": [50, 100], "version": 2}
    )
    assert status == 200 and answer["action"] == "traffic", answer
    status, answer, _ = call(service, "/admin/rollout/start", {"mode": "shadow", "version": 2})
    assert status == 409 and "a canary rollout of v2 is running" in answer["error"], answer
    status, answer, _ = call(service, "/admin/rollout/abort", {"reason": "enough"})
    assert status == 200 and answer["actor"] == "http:admin", answer
    status, answer, _ = call(service, "/admin/rollout/abort", {"reason": "again"})
    assert status == 400 and "no rollout" in answer["error"], answer

    status, answer, _ = call(
        service, "/admin/rollback", {"reason": "v1 misbehaves", "actor": "bob"}
    )
    assert status == 200 and answer["to_state"]["champion"] == 2, answer
    assert champion_answering(service, 2), "the replica did not follow the rollback"
    actions = [
        (r["action"], r["actor"]) for r in json.loads(run(project, "audit", "--json").stdout)
    ]
    assert actions[-4:] == [
        ("promote", "http:alice"),
        ("traffic", "http:admin"),
        ("traffic", "http:admin"),
        ("rollback", "http:bob"),
    ]


def _hold_log(project: Path) -> sqlite3.Connection:
    """Take the prediction log's write lock: every prediction now hangs in its log stage."""
    conn = sqlite3.connect(project / ".prodguard" / "predictions.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_burst_over_the_limit_is_refused_at_once_and_overruns_answer_504(
    service: str, project: Path
) -> None:
    assert champion_answering(service, 2)
    refused_before = metric(service, "prodguard_refused_total", reason="concurrency")
    lock = _hold_log(project)
    results: dict[str, tuple[int, dict, dict]] = {}
    try:
        ids = [f"burst-{i}" for i in range(12)]
        threads = [
            threading.Thread(
                target=lambda i=i: results.__setitem__(
                    i, call(service, "/predict", {**FLIGHT_REQUEST, "request_id": i}, token=None)
                )
            )
            for i in ids
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        statuses = sorted(status for status, _, _ in results.values())
        # two in flight (then over their deadline), every other one refused at once
        assert statuses == [429] * 10 + [504] * 2, statuses
        for _, answer, headers in results.values():
            assert headers["retry-after"] == "1"
            assert re.search(r"max_in_flight|request_timeout_s", answer["error"]), answer
        # the overrun work still holds its places: no queue builds up behind the hung log
        assert call(service, "/predict", FLIGHT_REQUEST, token=None)[0] == 429
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert champion_answering(service, 2)
    timed_out = [i for i, (status, _, _) in results.items() if status == 504]
    status, answer, _ = call(service, "/predict", {**FLIGHT_REQUEST, "request_id": timed_out[0]})
    assert status == 200 and answer["replayed"] is True  # made meanwhile: a retry replays it
    # 11 above, and any a retry met while the overrun work was finishing
    assert metric(service, "prodguard_refused_total", reason="concurrency") - refused_before >= 11
    assert metric(service, "prodguard_refused_total", reason="timeout") == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sqlite3.connect(project / ".prodguard" / "predictions.db") as conn:
            failed = conn.execute(
                "SELECT COUNT(*) FROM request_errors WHERE kind = 'failed'"
            ).fetchone()[0]
        if failed >= 2:
            break
        time.sleep(0.2)
    assert failed == 2  # each overrun is a failure the guard's error budget sees


def test_an_oversized_body_is_413_before_it_is_read(service: str) -> None:
    rows = [{**FLIGHT_REQUEST, "tailnum": MARKER[:6]}] * 900  # ~135 KB > 64 KiB
    status, answer, _ = call(service, "/predict_batch", {"rows": rows}, token=None)
    assert status == 413 and "serving.max_body_bytes (65536 bytes)" in answer["error"], answer
    assert MARKER[:6] not in json.dumps(answer)
    status, answer, _ = call(service, "/admin/promote", {"reason": "x" * 70000})
    assert status == 413, answer
    assert metric(service, "prodguard_refused_total", reason="body_size") >= 2
