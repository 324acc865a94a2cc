"""The demo's record of what happened: ``events.json``, one object per event.

Alias moves come from the audit log and alerts from the alert log (the records themselves, read
after each step); the demo adds its own milestones (training, baselines, drills, reports). Each
event has ``type``, ``time`` (simulated), ``model_version``, ``details`` and ``source``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prodguard.alerts import JsonlSink
from prodguard.durable import write_json_atomic
from prodguard.registry.operations import RegistryOperations

# audit actions -> event types (a rollout's traffic moves keep their own words)
AUDIT_TYPES = {"promote": "promotion", "rollback": "rollback", "traffic": "traffic"}


class EventLog:
    def __init__(self, path: Path, alerts_file: Path, operations: RegistryOperations) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._alerts = JsonlSink(alerts_file)
        self._operations = operations
        self._audit_seen = 0
        self._alerts_seen = 0
        self._write()  # at once: it also marks the folder as the demo's (a rerun may clear it)

    def add(
        self,
        type: str,
        time: datetime,
        model_version: int | None = None,
        source: str = "demo",
        **details: Any,
    ) -> dict[str, Any]:
        event = {
            "type": type,
            "time": time.isoformat(),
            "model_version": model_version,
            "source": source,
            "details": details,
        }
        self.events.append(event)
        self._write()
        return event

    def collect(self, now: datetime) -> list[dict[str, Any]]:
        """Turn the audit and alert records written since the last call into events."""
        new: list[dict[str, Any]] = []
        for record in self._operations.history()[self._audit_seen :]:
            self._audit_seen += 1
            kind = AUDIT_TYPES.get(record.action, record.action)
            moved = record.to_state.get("candidate" if kind == "set_candidate" else "champion")
            if kind == "traffic":
                policies = [record.evidence.get(k) or {} for k in ("to", "from")]
                moved = next((p["version"] for p in policies if p.get("version")), None)
            new.append(
                {
                    "type": kind,
                    "time": record.time.isoformat(),
                    "model_version": moved,
                    "source": "audit",
                    "details": {
                        "audit_id": record.id,
                        "actor": record.actor,
                        "reason": record.reason,
                        "from": record.from_state,
                        "to": record.to_state,
                    },
                }
            )
        for alert in self._alerts.read()[self._alerts_seen :]:
            self._alerts_seen += 1
            new.append(
                {
                    "type": alert["type"],
                    "time": alert.get("time", now.isoformat()),
                    "model_version": alert.get("model_version"),
                    "source": "alerts",
                    "details": {
                        k: alert[k]
                        for k in ("severity", "source", "message", "metric", "value", "window")
                        if k in alert
                    },
                }
            )
        if new:
            self.events.extend(new)
            self._write()
        return new

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] in types]

    def _write(self) -> None:
        write_json_atomic(self.events, self.path)
