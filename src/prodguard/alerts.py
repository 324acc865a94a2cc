"""Alerts: one record type, durable by default, delivered to sinks.

Sinks: a structured log line (logger ``prodguard.alerts``, JSON payload), an append-only
JSON-lines file that survives crashes (each record flushed and fsynced), a Slack-compatible JSON
webhook, and Prometheus counters; ``prodguard.incidents`` groups alerts by cause and tells the
webhook of incidents instead. Every alert of prodguard — ingestion's quarantine and schema
changes, refused model versions, monitors — goes through the same ``Alerter``. Monitors pass
through an ``AlertGate`` first, so a condition that persists over many windows alerts once.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from prodguard.durable import append_jsonl, locked, read_jsonl, write_json_atomic
from prodguard.errors import StorageError

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")

_log = logging.getLogger("prodguard.alerts")


@dataclass(frozen=True)
class Alert:
    type: str
    severity: Severity
    source: str
    message: str
    time: datetime
    details: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    model_version: int | None = None
    window: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["time"] = self.time.isoformat()
        return {k: v for k, v in record.items() if v is not None}

    def summary(self) -> str:
        parts = [f"[{self.severity}] {self.type}: {self.message}"]
        if self.metric is not None and self.value is not None:
            bound = f" > {self.threshold:.4g}" if self.threshold is not None else ""
            parts.append(f"{self.metric} = {self.value:.4g}{bound}")
        if self.model_version is not None:
            parts.append(f"model v{self.model_version}")
        if self.window is not None:
            parts.append(f"window {self.window}")
        return " | ".join(parts)


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None: ...


class LogSink:
    """Emits each alert as one structured log record."""

    def send(self, alert: Alert) -> None:
        level = logging.CRITICAL if alert.severity == "critical" else logging.WARNING
        _log.log(level, json.dumps(alert.to_json(), default=str, sort_keys=True))


class JsonlSink:
    """Appends each alert to a JSON-lines file, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, alert: Alert) -> None:
        append_jsonl(alert.to_json(), self.path)

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)


class WebhookSink:
    """POSTs each alert as JSON: Slack's ``text`` (and ``blocks``) plus the alert record under
    ``prodguard``. Retries twice; errors name the host only (the URL may carry a secret)."""

    def __init__(self, url: str, timeout_s: float = 5.0, attempts: int = 3) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.attempts = attempts

    def payload(self, alert: Alert) -> dict[str, Any]:
        text = alert.summary()
        return {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
            "prodguard": alert.to_json(),
        }

    def send(self, alert: Alert) -> None:
        self.post(self.payload(alert), f"the '{alert.type}' alert")

    def post(self, payload: dict[str, Any], what: str = "a message") -> None:
        """POST ``payload`` (any JSON document: incidents use this too)."""
        body = json.dumps(payload, default=str).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        host = urllib.parse.urlsplit(self.url).netloc.rpartition("@")[2]
        problem = ""
        for attempt in range(self.attempts):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if 200 <= response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    break  # the receiver refuses this payload: retrying will not help
            except (urllib.error.URLError, OSError) as exc:
                problem = type(getattr(exc, "reason", exc)).__name__
            time.sleep(0.2 * (attempt + 1))
        raise StorageError(f"alert webhook at {host} failed ({what}): {problem}")


class PrometheusSink:
    """Counts alerts in ``prodguard_alerts_total{type, severity}`` of a registry. The ``types``
    given start at 0 for every severity: a series born at 1 shows Prometheus no increase, so
    a rule on ``increase(...)`` would miss the first alert of a type."""

    def __init__(self, registry: Any, types: Iterable[str] = ()) -> None:
        from prometheus_client import Counter

        self.counter = Counter(
            "prodguard_alerts",
            "Alerts sent, by type and severity",
            ["type", "severity"],
            registry=registry,
        )
        for kind in types:
            for severity in SEVERITIES:
                self.counter.labels(type=kind, severity=severity)

    def send(self, alert: Alert) -> None:
        self.counter.labels(type=alert.type, severity=alert.severity).inc()


class Alerter:
    """Fans an alert out to every sink; a failing sink does not stop the others."""

    def __init__(self, sinks: list[AlertSink]) -> None:
        self.sinks = sinks

    def send(self, alert: Alert) -> None:
        errors: list[Exception] = []
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception as exc:  # noqa: BLE001 - one sink must not silence the others
                errors.append(exc)
                _log.error("alert sink %s failed: %s", type(sink).__name__, exc)
        if errors and len(errors) == len(self.sinks):
            raise StorageError(f"no alert sink accepted the '{alert.type}' alert: {errors[0]}")

    def sweep(self, now: datetime) -> None:
        """Time passed: sinks that keep state over time (incidents resolve when quiet) act on
        it. Never raises: a failing sink is logged and retries at the next sweep."""
        for sink in self.sinks:
            sweep = getattr(sink, "sweep", None)
            if sweep is None:
                continue
            try:
                sweep(now)
            except Exception as exc:  # noqa: BLE001 - a sweep must not stop the monitors
                _log.error("alert sink %s failed to sweep: %s", type(sink).__name__, exc)


RANK = {"info": 0, "warning": 1, "critical": 2}


class GateState(Protocol):
    """Where an AlertGate keeps its open conditions: a document read and rewritten under an
    exclusive lock, so several monitor processes (or replicas) share one state."""

    def read(self) -> dict[str, Any]: ...

    def locked(self) -> AbstractContextManager[dict[str, Any]]:
        """The document, locked; the changes made to it are stored when the block ends."""
        ...


class FileGateState:
    """A JSON file beside a lock file (one host)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        return _read_state(self.path)

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        with locked(self.path.with_name(self.path.name + ".lock")):
            document = _read_state(self.path)
            yield document
            write_json_atomic(document, self.path)


class AlertGate:
    """De-duplicates conditions that persist across windows, durably (a locked state shared by
    every monitor process): a condition alerts when it opens or escalates, not again while it
    holds, and sends an ``info`` 'resolved' alert when it clears. It also remembers up to which
    time windows were judged, so judging the same past windows again alerts nothing."""

    def __init__(self, state: GateState, alerter: Alerter) -> None:
        self.state = state
        self.alerter = alerter

    def open_conditions(self) -> dict[str, dict[str, Any]]:
        return self.state.read()["open"]

    def judged_through(self) -> datetime | None:
        stamp = self.state.read()["judged_through"]
        return datetime.fromisoformat(stamp) if stamp else None

    def update(
        self,
        raised: list[tuple[str, Alert]],
        cleared: list[tuple[str, Alert]],
        through: datetime | None = None,
    ) -> list[Alert]:
        """``raised``: (condition key, alert) holding now; ``cleared``: (key, resolution) of
        conditions seen to be fine now; ``through``: the end of the last window judged. Returns
        the alerts actually sent."""
        sent: list[Alert] = []
        failed: list[str] = []
        with self.state.locked() as document:
            state = document["open"]
            for key, alert in raised:
                known = state.get(key)
                if known is not None and RANK[known["severity"]] >= RANK[alert.severity]:
                    known["repeats"] = known.get("repeats", 0) + 1
                    known["last_seen"] = alert.time.isoformat()
                elif self._deliver(alert, failed):
                    sent.append(alert)
                    stamp = alert.time.isoformat()
                    state[key] = {"severity": alert.severity, "since": stamp, "last_seen": stamp}
            for key, resolution in cleared:
                if key in state and self._deliver(resolution, failed):
                    sent.append(resolution)
                    del state[key]
            if through is not None and not failed:
                document["judged_through"] = through.isoformat()
        if failed:  # undelivered conditions stay as they were: the next run retries them
            raise StorageError(f"{len(failed)} alert(s) undelivered: {failed[0]}")
        return sent

    def _deliver(self, alert: Alert, failed: list[str]) -> bool:
        try:
            self.alerter.send(alert)
            return True
        except StorageError as exc:
            failed.append(str(exc))
            return False


EMPTY_STATE: dict[str, Any] = {"open": {}, "judged_through": None}


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return copy.deepcopy(EMPTY_STATE)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document.get("open"), dict):
            raise ValueError("no 'open' conditions")
        return document
    except (OSError, ValueError, AttributeError) as exc:
        raise StorageError(
            f"alert state {path} is unreadable ({type(exc).__name__}); move it aside to start "
            "afresh (open conditions will alert again)"
        ) from None
