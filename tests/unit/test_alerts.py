"""Alert sinks (webhook against a real local HTTP receiver, Prometheus) and the de-duplicating
gate."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prodguard.alerts import (
    Alert,
    Alerter,
    AlertGate,
    FileGateState,
    JsonlSink,
    PrometheusSink,
    WebhookSink,
)
from prodguard.errors import StorageError

pytestmark = pytest.mark.unit
T0 = datetime(2013, 9, 1, tzinfo=UTC)


class Receiver:
    """A local webhook receiver that answers with the queued status codes (then 200)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/SECRET"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def drift(severity: str = "warning", time: datetime = T0, value: float = 4.2) -> Alert:
    return Alert(
        type="drift_alert",
        severity=severity,  # type: ignore[arg-type]
        source="monitor",
        message="psi.temp out of bounds",
        time=time,
        metric="psi.temp",
        value=value,
        threshold=3.75,
        model_version=1,
        window="2013-08-25T00:00:00+00:00..2013-09-01T00:00:00+00:00",
    )


def test_webhook_posts_a_slack_compatible_payload(receiver: Receiver) -> None:
    WebhookSink(receiver.url).send(drift())
    (body,) = receiver.bodies
    assert body["text"].startswith("[warning] drift_alert: psi.temp out of bounds")
    assert "psi.temp = 4.2 > 3.75" in body["text"] and "model v1" in body["text"]
    assert body["blocks"][0]["text"]["type"] == "mrkdwn"
    record = body["prodguard"]
    assert (record["metric"], record["value"], record["threshold"]) == ("psi.temp", 4.2, 3.75)
    assert record["model_version"] == 1 and record["window"].startswith("2013-08-25")


def test_webhook_retries_server_errors(receiver: Receiver) -> None:
    receiver.statuses = [503, 500]
    WebhookSink(receiver.url).send(drift())
    assert len(receiver.bodies) == 3


def test_webhook_refusal_is_not_retried_and_hides_the_url(receiver: Receiver) -> None:
    receiver.statuses = [400]
    with pytest.raises(StorageError) as failure:
        WebhookSink(receiver.url).send(drift())
    assert len(receiver.bodies) == 1
    assert "HTTP 400" in str(failure.value) and "SECRET" not in str(failure.value)


def test_webhook_down_is_an_error_naming_the_host() -> None:
    sink = WebhookSink("http://user:pw@127.0.0.1:9/hook", timeout_s=0.5, attempts=1)
    with pytest.raises(StorageError) as failure:
        sink.send(drift())
    assert "127.0.0.1:9" in str(failure.value) and "pw" not in str(failure.value)


def test_prometheus_sink_counts_alerts() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    sink.send(drift())
    sink.send(drift("critical"))
    sink.send(drift("critical"))
    labels = {"type": "drift_alert", "severity": "critical"}
    assert registry.get_sample_value("prodguard_alerts_total", labels) == 2
    # the types given start at 0: Prometheus' increase() sees the first alert of a type
    started = CollectorRegistry()
    PrometheusSink(started, ["prediction_alert"])
    for severity in ("warning", "critical"):
        labels = {"type": "prediction_alert", "severity": severity}
        assert started.get_sample_value("prodguard_alerts_total", labels) == 0


def test_gate_alerts_once_escalates_and_resolves(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    gate = AlertGate(FileGateState(tmp_path / "open.json"), Alerter([sink]))
    key = "psi.temp|v1"
    resolved = Alert("resolved", "info", "monitor", "psi.temp: back", T0, metric="psi.temp")
    assert gate.update([(key, drift())], []) == [drift()]
    assert gate.update([(key, drift(time=T0 + timedelta(days=1)))], []) == []  # still open
    again = AlertGate(
        FileGateState(tmp_path / "open.json"), Alerter([sink])
    )  # another process, same state
    assert again.update([(key, drift(time=T0 + timedelta(days=2)))], []) == []
    critical = drift("critical", T0 + timedelta(days=3))
    assert again.update([(key, critical)], []) == [critical]
    assert again.update([], [(key, resolved)]) == [resolved]
    assert again.update([], [(key, resolved)]) == []  # nothing open any more
    assert [r["severity"] for r in sink.read()] == ["warning", "critical", "info"]
    assert again.open_conditions() == {}
    assert again.judged_through() is None
    again.update([], [], through=T0 + timedelta(days=4))
    assert gate.judged_through() == T0 + timedelta(days=4)


def test_gate_keeps_undelivered_conditions_for_the_next_run(tmp_path: Path) -> None:
    class Down:
        def send(self, alert: Alert) -> None:
            raise OSError("down")

    gate = AlertGate(FileGateState(tmp_path / "open.json"), Alerter([Down()]))
    with pytest.raises(StorageError, match="undelivered"):
        gate.update([("psi.temp|v1", drift())], [])
    assert gate.open_conditions() == {}  # not marked open: the next run sends it again
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    assert AlertGate(FileGateState(tmp_path / "open.json"), Alerter([sink])).update(
        [("psi.temp|v1", drift())], []
    )
    assert len(sink.read()) == 1


def test_gate_refuses_a_corrupt_state_file(tmp_path: Path) -> None:
    (tmp_path / "open.json").write_text("{not json")
    gate = AlertGate(
        FileGateState(tmp_path / "open.json"), Alerter([JsonlSink(tmp_path / "a.jsonl")])
    )
    with pytest.raises(StorageError, match="unreadable"):
        gate.update([("k", drift())], [])
