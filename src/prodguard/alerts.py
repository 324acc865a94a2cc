"""Alerts: one record type, durable by default, delivered to sinks.

For now the sinks are a structured log line (logger ``prodguard.alerts``, JSON payload) and an
append-only JSON-lines file that survives crashes (each record is flushed and fsynced).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from prodguard.durable import append_jsonl, read_jsonl
from prodguard.errors import StorageError

Severity = Literal["info", "warning", "critical"]

_log = logging.getLogger("prodguard.alerts")


@dataclass(frozen=True)
class Alert:
    type: str
    severity: Severity
    source: str
    message: str
    time: datetime
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["time"] = self.time.isoformat()
        return record


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
