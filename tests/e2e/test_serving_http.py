"""A real `prodguard serve` process over HTTP: predictions, bad input, feedback, hot swap."""

import http.client
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FLIGHT_REQUEST, make_project
from tests.e2e.cli import get_json, run, serving

pytestmark = pytest.mark.e2e

REQUEST = FLIGHT_REQUEST
MARKER = "PAYLOADMARKER"


def post(base: str, path: str, body: bytes | str | dict) -> tuple[int, dict | list | None]:
    data = (
        body
        if isinstance(body, bytes)
        else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        f"{base}{path}", data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"raw": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def project(served_project, tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("http") / "project")
    shutil.copytree(served_project / ".prodguard", root / ".prodguard")
    return root


@pytest.fixture(scope="module")
def service(project: Path):
    with serving(project, {"PRODGUARD_SERVING__POLL_SECONDS": "1"}) as base:
        yield base


def test_predictions_feedback_and_service_endpoints(service: str) -> None:
    status, body = post(service, "/predict", {**REQUEST, "request_id": "http-1"})
    assert status == 200, body
    assert body["version"] == 2 and body["model"] == "flight-delay"
    assert body["request_id"] == "http-1" and body["degraded"] is False

    status, body = post(
        service, "/predict_batch", {"rows": [REQUEST, {**REQUEST, "tailnum": None}]}
    )
    assert status == 200 and [r["status"] for r in body["results"]] == [200, 200], body
    second = body["results"][1]["prediction"]
    assert second["degraded"] and "seats:missing" in second["flags"]

    # an outcome the KPI cannot use (no monitoring.kpi.outcome key): 422, nothing recorded
    status, body = post(service, "/feedback", {"request_id": "http-1", "outcome": {"late": 4}})
    assert status == 422 and "monitoring.kpi.outcome names ('delayed')" in body["error"], body
    assert "late" not in json.dumps(body)
    assert post(service, "/feedback", {"request_id": "http-1", "outcome": {"delayed": 0}}) == (
        200,
        {"request_id": "http-1", "status": "recorded"},
    )
    assert (
        post(service, "/feedback", {"request_id": "http-1", "outcome": {"delayed": 0}})[1]["status"]
        == "duplicate"
    )
    assert post(service, "/feedback", {"request_id": "http-1", "outcome": {"delayed": 1}})[0] == 409
    assert post(service, "/feedback", {"request_id": "nobody", "outcome": {"delayed": 1}})[0] == 404
    status, body = post(
        service,
        "/feedback_batch",
        {
            "items": [
                {"request_id": "http-1", "outcome": {"delayed": 0}},
                {"request_id": "http-1", "outcome": {"delayed": 1}},
                {"request_id": "nobody", "outcome": {"delayed": 0}},
                {"request_id": "http-1", "outcome": {"late": 4}},
            ]
        },
    )
    assert status == 200, body
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["duplicate", "conflict", "unknown", "invalid"], body
    assert "monitoring.kpi.outcome" in body["results"][3]["error"], body
    assert post(service, "/feedback_batch", {"items": []})[0] == 400

    with urllib.request.urlopen(f"{service}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'prodguard_stage_seconds_bucket{le="0.005",stage="model"}' in metrics
    assert 'prodguard_predictions_total{role="champion",version="2"}' in metrics
    assert "prodguard_degradations_total" in metrics
    assert "prodguard_shadow_dropped_total 0.0" in metrics
    paths = get_json(f"{service}/docs.json")["paths"]
    assert {"/predict", "/predict_batch", "/feedback", "/feedback_batch", "/metrics"} <= set(paths)


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        "null",
        {"carrier": "UA"},
        {**REQUEST, "extra_field": MARKER},
        {**REQUEST, "distance": "NaN"},
        {**REQUEST, "distance": MARKER},
        {**REQUEST, "flight": f"{MARKER}"},
        {**REQUEST, "origin": "BOS", "tailnum": MARKER[:10]},
        {**REQUEST, "dest": MARKER[:8]},
        {**REQUEST, "scheduled_departure": "1899-01-01T00:00:00Z"},
        {**REQUEST, "scheduled_departure": "2013-04-30T22:15:00"},
        {**REQUEST, "request_id": f"{MARKER} with spaces"},
    ],
)
def test_bad_input_is_4xx_without_echo(service: str, body) -> None:
    status, answer = post(service, "/predict", body)
    assert 400 <= status < 500, (status, answer)
    assert MARKER not in json.dumps(answer)
    assert isinstance(answer, dict) and set(answer) == {"error", "problems"}, answer
    assert answer["problems"] and "pydantic" not in json.dumps(answer), answer


def test_batch_limits(service: str) -> None:
    assert post(service, "/predict_batch", {"rows": []})[0] == 400
    status, answer = post(service, "/predict_batch", {"rows": [REQUEST] * 1001})
    assert status == 413 and "serving.max_batch (1000)" in answer["error"], answer
    assert answer["problems"] == [{"field": "rows", "problem": "more than 1000 rows"}]
    item = {"request_id": "x", "outcome": {"note": MARKER}}
    status, answer = post(service, "/feedback_batch", {"items": [item] * 1001})
    assert status == 413 and MARKER not in json.dumps(answer), answer
    assert metric(service, 'prodguard_refused_total{reason="batch_size"}') >= 2


def metric(base: str, series: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def test_a_body_over_the_limit_is_413_declared_or_chunked(service: str) -> None:
    big = json.dumps({"rows": [{**REQUEST, "tailnum": MARKER[:6]}] * 9000}).encode()
    assert len(big) > 1_048_576  # serving.max_body_bytes' default
    status, answer = post(service, "/predict_batch", big)
    assert status == 413 and "serving.max_body_bytes (1048576 bytes)" in answer["error"], answer
    assert MARKER[:6] not in json.dumps(answer)

    connection = http.client.HTTPConnection(service.removeprefix("http://"), timeout=30)
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    connection.request(
        "POST",
        "/predict_batch",
        body=chunks,
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 413 and "max_body_bytes" in json.loads(response.read())["error"]
    connection.close()
    assert metric(service, 'prodguard_refused_total{reason="body_size"}') >= 2


@pytest.mark.parametrize(
    "path", ["/admin/promote", "/admin/rollback", "/admin/rollout/abort", "/admin/status"]
)
def test_admin_endpoints_are_disabled_without_a_token(service: str, path: str) -> None:
    request = urllib.request.Request(
        f"{service}{path}",
        data=None if path.endswith("status") else json.dumps({"reason": MARKER}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer anything-at-all"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert json.loads(refused.value.read()) == {
        "error": "admin endpoints are disabled: set PRODGUARD_SERVING__ADMIN_TOKEN in the "
        "service's environment",
        "problems": [],
    }


def test_a_refused_request_is_422_and_a_batch_answers_row_by_row(service: str) -> None:
    refused = {**REQUEST, "dest": "xyz"}  # well-formed, but the checks refuse it
    assert post(service, "/predict", refused)[0] == 422
    unseen = {**REQUEST, "carrier": "QQ"}  # a carrier the model never saw: scored, flagged
    status, answer = post(service, "/predict", unseen)
    assert status == 200 and "carrier:unseen" in answer["flags"] and answer["degraded"], answer
    malformed = {**REQUEST, "distance": MARKER}
    rows = [REQUEST, refused, malformed, unseen, {**REQUEST, "extra": MARKER}]
    status, answer = post(service, "/predict_batch", {"rows": rows})
    assert status == 200, answer
    results = answer["results"]
    assert [r["status"] for r in results] == [200, 422, 400, 200, 400]
    assert results[1]["problems"][0]["field"] == "dest" and results[1]["prediction"] is None
    assert results[2]["problems"][0]["field"] == "distance" and results[2]["error"]
    status, alone = post(service, "/predict", malformed)  # as /predict answers the same row
    assert status == 400 and alone["problems"] == results[2]["problems"], alone
    assert alone["error"] == results[2]["error"].replace("malformed row", "malformed request")
    assert "carrier:unseen" in results[3]["prediction"]["flags"]
    assert MARKER not in json.dumps(answer)


def test_a_reused_request_id_is_409_unless_the_request_is_the_same(service: str) -> None:
    status, first = post(service, "/predict", {**REQUEST, "request_id": "reuse-1"})
    assert status == 200, first
    status, again = post(service, "/predict", {**REQUEST, "request_id": "reuse-1"})
    assert status == 200 and again["replayed"] and again["probability"] == first["probability"]
    other = {**REQUEST, "distance": 1234.5, "request_id": "reuse-1"}
    status, answer = post(service, "/predict", other)
    assert status == 409 and answer["problems"][0]["field"] == "request_id", answer
    assert "1234.5" not in json.dumps(answer)
    rows = [other, {**REQUEST, "request_id": "reuse-2"}]
    status, answer = post(service, "/predict_batch", {"rows": rows})
    assert status == 200 and [r["status"] for r in answer["results"]] == [409, 200], answer
    assert answer["results"][0]["problems"][0]["field"] == "request_id"
    status, answer = post(service, "/predict", {**other, "request_id": "reuse-2"})
    assert status == 409  # the batch logged reuse-2 with the first payload
    outcome = {"request_id": "reuse-1", "outcome": {"delayed": 0}}
    assert post(service, "/feedback", outcome)[1]["status"] == "recorded"
    status, answer = post(service, "/feedback", {**outcome, "outcome": {"delayed": "late-77"}})
    assert status == 409 and answer["problems"][0]["field"] == "request_id", answer
    assert "late-77" not in json.dumps(answer)


def test_champion_moved_in_mlflow_is_followed_with_no_failed_request(
    service: str, project: Path, mlflow_ui
) -> None:
    status = json.loads(run(project, "status", "--json").stdout)
    assert status["aliases"]["champion"] == 2
    results: list[tuple[float, int, int | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            code, body = post(service, "/predict", REQUEST)
            results.append((time.monotonic(), code, body.get("version") if code == 200 else None))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        mlflow = mlflow_ui(status)
        time.sleep(1)
        moved_at = time.monotonic()
        code, _ = post(
            mlflow,
            "/api/2.0/mlflow/registered-models/alias",
            {"name": "flight-delay", "alias": "champion", "version": "1"},
        )
        assert code == 200
        deadline = moved_at + 30
        while time.monotonic() < deadline and not any(
            v == 1 and t > moved_at for t, _, v in results
        ):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert results and all(code == 200 for _, code, _ in results), [
        c for _, c, _ in results if c != 200
    ]
    first_new = min(t for t, _, v in results if v == 1 and t > moved_at)
    assert first_new - moved_at < 1 + 5  # one poll interval (1 s) + loading the model
    after = [v for t, _, v in results if t > first_new]
    assert after and set(after) == {1}  # no flapping back
    with urllib.request.urlopen(f"{service}/metrics", timeout=10) as response:
        swaps = [
            float(line.split()[-1])
            for line in response.read().decode().splitlines()
            if line.startswith("prodguard_model_swaps_total")
        ]
    assert swaps and swaps[0] >= 2  # the start-up load and the move
