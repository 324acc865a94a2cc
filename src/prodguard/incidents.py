"""Alerts grouped into incidents: one cause, one incident, one message per change.

A stale source moves every feature it feeds; each moved feature is a condition of its own for
the monitors, so one cause would page once per feature. ``IncidentSink`` is an alert sink that
groups the alerts it receives by **cause** and speaks for the group:

- a data source (``source:<name>``): alerts raised by the source itself (quarantine, schema
  change), drift alerts (``psi.<feature>``, ``shift.<feature>``) on the features its feature
  views feed, and alerts naming degraded ``features`` mostly fed by it (a data incident) — the
  feature-to-source map comes from the feature store's views, never from names;
- a model version (``model:v<n>``): its score, KPI, error-rate and guard alerts (rollback, ...),
  drift on features no source feeds (request features);
- a version's latency (``latency:v<n>``);
- anything else by its origin and type (``service:<origin>:<type>``).

An incident keeps the largest severity of its members, its first and last member times, the
member count by alert type and the metrics and versions involved, and a one-line cause. It stays
open while any de-duplicated monitor condition among its members is still open, and until no
member arrived for ``gap`` (so a condition that flaps rejoins its incident instead of opening a
new one); then it resolves. Channels (the webhook, the Prometheus gauge) hear of an incident
when it opens, when it escalates and once when it resolves — never once per member.

The open incidents live in a locked document shared by every process (``GateState``: a file, or
a row of PostgreSQL); every change of an incident is also written to an ``IncidentRecord`` that
``prodguard incidents`` lists.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from prodguard.alerts import RANK, Alert, GateState, Severity, WebhookSink
from prodguard.durable import append_jsonl, read_jsonl
from prodguard.errors import StorageError

_log = logging.getLogger("prodguard.incidents")

Event = Literal["opened", "escalated", "resolved"]
Kind = Literal["source", "model", "latency", "service"]
DRIFT_FAMILIES = ("psi", "shift")
# metrics and features named in a cause line before "and N more"
NAMED = 4


@dataclass(frozen=True)
class Cause:
    key: str  # e.g. "source:<name>", "model:v2", "latency:v2", "service:<origin>:<type>"
    kind: Kind
    subject: str  # the source's name, "v2", or "<origin> <type>"


@dataclass(frozen=True)
class Incident:
    id: str
    cause_key: str
    kind: Kind
    subject: str
    severity: Severity
    first_seen: datetime
    last_seen: datetime
    members: int
    types: dict[str, int]  # member count per alert type
    metrics: tuple[str, ...] = ()  # the metrics of its members, in order of arrival
    versions: tuple[int, ...] = ()
    conditions: tuple[str, ...] = ()  # de-duplicated monitor conditions still open
    state: Literal["open", "resolved"] = "open"
    resolved_at: datetime | None = None
    announced: Severity | None = None  # the severity channels last heard of (None: not yet)
    quiet_since: datetime | None = None  # when its last open condition cleared

    @property
    def cause(self) -> str:
        """One line: what the members have in common and what they say."""
        what = []
        drifted = [m.split(".", 1)[1] for m in self.metrics if m.split(".", 1)[0] in DRIFT_FAMILIES]
        others = [m for m in self.metrics if m.split(".", 1)[0] not in DRIFT_FAMILIES]
        events = [t for t in self.types if not t.endswith("_alert") and t != "monitor_inconclusive"]
        if events:
            what.append(", ".join(events))
        if drifted:
            what.append(f"drift in {_named(list(dict.fromkeys(drifted)), 'feature')}")
        if others:
            what.append(_named(others, "metric"))
        if "monitor_inconclusive" in self.types:
            what.append("monitor inconclusive")
        head = {
            "source": f"source '{self.subject}'",
            "model": f"model {self.subject}",
            "latency": f"latency of {self.subject}",
            "service": self.subject,
        }[self.kind]
        versions = (
            f" (model {', '.join(f'v{v}' for v in self.versions)})"
            if self.versions and self.kind == "source"
            else ""
        )
        alerts = f"{self.members} alert{'s' if self.members != 1 else ''}"
        return f"{head}{versions}: {'; '.join(what) or alerts} ({alerts})"

    def summary(self, event: Event) -> str:
        since = f"since {self.first_seen.isoformat()}"
        if event == "resolved":
            since = f"{self.first_seen.isoformat()} .. {self.last_seen.isoformat()}"
        return f"[{self.severity}] incident {event}: {self.cause} | {since} | id {self.id}"

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        for name in ("first_seen", "last_seen", "resolved_at", "quiet_since"):
            record[name] = record[name].isoformat() if record[name] is not None else None
        record["metrics"] = list(self.metrics)
        record["versions"] = list(self.versions)
        record["conditions"] = list(self.conditions)
        record["cause"] = self.cause
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Incident:
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        for name in ("first_seen", "last_seen", "resolved_at", "quiet_since"):
            if fields.get(name) is not None:
                fields[name] = datetime.fromisoformat(fields[name])
        for name in ("metrics", "versions", "conditions"):
            fields[name] = tuple(fields.get(name) or ())
        return cls(**fields)


def _named(names: list[str], noun: str) -> str:
    """``a, b, c, d and 5 more``; features are counted first (``9 features: ...``)."""
    shown = ", ".join(names[:NAMED])
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    if noun == "feature" and len(names) > 1:
        return f"{len(names)} features: {shown}{more}"
    return f"{shown}{more}"


class Grouping:
    """Finds an alert's cause. ``feature_sources`` maps a served feature to the data source its
    feature view reads (a mapping, or a function that builds it when first needed: reading the
    feature store is not free); ``sources`` are the configured source names."""

    def __init__(
        self,
        sources: Iterable[str],
        feature_sources: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.sources = frozenset(sources)
        self._build: Callable[[], Mapping[str, str]] | None = None
        self._resolved: Mapping[str, str] | None = None
        if callable(feature_sources):
            self._build = feature_sources
        else:
            self._resolved = feature_sources or {}

    def feature_sources(self) -> Mapping[str, str]:
        if self._resolved is None and self._build is not None:
            try:
                self._resolved = self._build()
            except Exception as exc:  # noqa: BLE001 - grouping must never lose an alert
                _log.warning("feature sources unknown, drift grouped by model version: %s", exc)
                return {}
        return self._resolved or {}

    def cause_of(self, alert: Alert) -> Cause:
        source = self._source_of(alert)
        if source is not None:
            return Cause(f"source:{source}", "source", source)
        version = alert.model_version
        if version is not None and (alert.metric or "").startswith("latency."):
            return Cause(f"latency:v{version}", "latency", f"v{version}")
        if version is not None:
            return Cause(f"model:v{version}", "model", f"v{version}")
        return Cause(
            f"service:{alert.source}:{alert.type}", "service", f"{alert.source} {alert.type}"
        )

    def _source_of(self, alert: Alert) -> str | None:
        if alert.source in self.sources:
            return alert.source
        named = alert.details.get("source")
        if isinstance(named, str) and named in self.sources:
            return named
        family, _, feature = (alert.metric or "").partition(".")
        if family in DRIFT_FAMILIES and feature:
            return self.feature_sources().get(feature)
        return self._dominant_source(alert.details.get("features"))

    def _dominant_source(self, features: Any) -> str | None:
        """The source feeding most of ``features`` (a list, or feature -> affected rows, as a
        data incident's degraded features come); None when no source feeds any of them."""
        if isinstance(features, list):
            features = dict.fromkeys(features, 1)
        if not isinstance(features, dict) or not features:
            return None
        weight: dict[str, float] = {}
        for name, rows in features.items():
            source = self.feature_sources().get(str(name).split(":", 1)[0])
            if source is not None:
                count = rows if isinstance(rows, int | float) else 1
                weight[source] = weight.get(source, 0) + count
        return min(weight, key=lambda s: (-weight[s], s)) if weight else None


def condition_of(alert: Alert) -> str | None:
    """The de-duplicated monitor condition an alert opens or resolves (the gate's key); None
    for one-off alerts and for a monitor failing before it knew the version."""
    if alert.source != "monitor" or alert.model_version is None:
        return None
    return f"{alert.metric or 'monitor'}|v{alert.model_version}"


class IncidentRecord(Protocol):
    """Every incident's latest state, kept for listing."""

    def put(self, incident: Incident) -> None: ...

    def incidents(self) -> list[Incident]:
        """Every incident, by first seen."""
        ...


class FileIncidentRecord:
    """Incident states appended to a JSON-lines file (durably); the last line of an id wins."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, incident: Incident) -> None:
        append_jsonl(incident.to_json(), self.path)

    def incidents(self) -> list[Incident]:
        latest: dict[str, Incident] = {}
        for record in read_jsonl(self.path):
            latest[record["id"]] = Incident.from_json(record)
        return sorted(latest.values(), key=lambda i: (i.first_seen, i.id))


class IncidentChannel(Protocol):
    """Hears of incidents as they open, escalate and resolve."""

    def incident(self, event: Event, incident: Incident) -> None: ...


class WebhookChannel:
    """One webhook message per incident event: Slack's ``text`` (and ``blocks``) plus the
    incident under ``prodguard`` (``event`` and ``incident``)."""

    def __init__(self, webhook: WebhookSink) -> None:
        self.webhook = webhook

    def payload(self, event: Event, incident: Incident) -> dict[str, Any]:
        text = incident.summary(event)
        return {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
            "prodguard": {"event": event, "incident": incident.to_json()},
        }

    def incident(self, event: Event, incident: Incident) -> None:
        self.webhook.post(self.payload(event, incident), f"incident {event}")


class IncidentGauges:
    """``prodguard_incidents_open{kind, severity}`` and ``prodguard_incidents_total{kind,
    event}`` (opened, escalated, resolved) in a Prometheus registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.open = Gauge(
            "prodguard_incidents_open",
            "Open incidents, by cause kind and severity",
            ["kind", "severity"],
            registry=registry,
        )
        self.events = Counter(
            "prodguard_incidents",
            "Incident events (opened, escalated, resolved), by cause kind",
            ["kind", "event"],
            registry=registry,
        )

    def incident(self, event: Event, incident: Incident) -> None:
        self.events.labels(kind=incident.kind, event=event).inc()

    def publish(self, open_incidents: Iterable[Incident]) -> None:
        counts = {(k, s): 0 for k in ("source", "model", "latency", "service") for s in RANK}
        for incident in open_incidents:
            counts[(incident.kind, incident.severity)] += 1
        for (kind, severity), count in counts.items():
            self.open.labels(kind=kind, severity=severity).set(count)


@dataclass
class Book:
    """The open incidents of a document, changed by alerts and by time (pure logic)."""

    document: dict[str, Any]
    grouping: Grouping
    gap: timedelta
    changed: dict[str, Incident] = field(default_factory=dict)

    @property
    def open(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.document.setdefault("open", {})
        return found

    def incidents(self) -> list[Incident]:
        return [Incident.from_json(r) for r in self.open.values()]

    def _put(self, incident: Incident) -> None:
        self.open[incident.id] = incident.to_json()
        self.changed[incident.id] = incident

    def add(self, alert: Alert) -> None:
        """A member joins the open incident of its cause (or opens one); a ``resolved`` alert
        closes its condition in whichever incident holds it."""
        condition = condition_of(alert)
        if alert.type == "resolved":
            for incident in self.incidents():
                if condition is not None and condition in incident.conditions:
                    left = tuple(c for c in incident.conditions if c != condition)
                    self._put(replace(incident, conditions=left, quiet_since=alert.time))
            return
        cause = self.grouping.cause_of(alert)
        current = next(
            (i for i in self.incidents() if i.cause_key == cause.key and i.state == "open"),
            None,
        )
        if current is None:
            current = Incident(
                id=f"{cause.key}@{alert.time.isoformat()}",
                cause_key=cause.key,
                kind=cause.kind,
                subject=cause.subject,
                severity=alert.severity,
                first_seen=alert.time,
                last_seen=alert.time,
                members=0,
                types={},
            )
        severity = max(current.severity, alert.severity, key=RANK.__getitem__)
        metrics = current.metrics
        if alert.metric is not None and alert.metric not in metrics:
            metrics = (*metrics, alert.metric)
        versions = current.versions
        if alert.model_version is not None and alert.model_version not in versions:
            versions = tuple(sorted((*versions, alert.model_version)))
        conditions = current.conditions
        if condition is not None and condition not in conditions:
            conditions = (*conditions, condition)
        self._put(
            replace(
                current,
                severity=severity,
                first_seen=min(current.first_seen, alert.time),
                last_seen=max(current.last_seen, alert.time),
                members=current.members + 1,
                types={**current.types, alert.type: current.types.get(alert.type, 0) + 1},
                metrics=metrics,
                versions=versions,
                conditions=conditions,
                quiet_since=None,
            )
        )

    def sweep(self, now: datetime) -> None:
        """Resolve the incidents with no open condition and no member for ``gap``."""
        for incident in self.incidents():
            if incident.state != "open" or incident.conditions:
                continue
            quiet = max(incident.last_seen, incident.quiet_since or incident.last_seen)
            if now - quiet >= self.gap:
                self._put(replace(incident, state="resolved", resolved_at=now))

    def due(self) -> list[tuple[Event, Incident]]:
        """What channels have not heard yet: openings, escalations, resolutions."""
        found: list[tuple[Event, Incident]] = []
        for incident in self.incidents():
            if incident.state == "resolved":
                found.append(("resolved", incident))
            elif incident.announced is None:
                found.append(("opened", incident))
            elif RANK[incident.severity] > RANK[incident.announced]:
                found.append(("escalated", incident))
        return found

    def announced(self, event: Event, incident: Incident) -> None:
        if event == "resolved":
            del self.open[incident.id]
        else:
            self._put(replace(incident, announced=incident.severity))


class IncidentSink:
    """An alert sink that groups alerts into incidents (see the module's documentation) and
    tells ``channels`` of incidents, not of alerts. An undelivered incident event stays due and
    is sent again with the next alert (or ``sweep``)."""

    def __init__(
        self,
        state: GateState,
        record: IncidentRecord,
        grouping: Grouping,
        channels: list[IncidentChannel] | None = None,
        *,
        gap: timedelta = timedelta(hours=24),
        gauges: IncidentGauges | None = None,
    ) -> None:
        self.state = state
        self.record = record
        self.grouping = grouping
        self.channels = list(channels or [])
        self.gap = gap
        self.gauges = gauges

    def send(self, alert: Alert) -> None:
        def change(book: Book) -> None:
            book.sweep(alert.time)  # an incident quiet for the gap is over: the alert opens anew
            book.add(alert)

        self._change(change)

    def sweep(self, now: datetime) -> None:
        """Resolve what has been quiet for the gap (run by the monitors after each pass)."""
        self._change(lambda book: book.sweep(now))

    def open_incidents(self) -> list[Incident]:
        return Book(self.state.read(), self.grouping, self.gap).incidents()

    def _change(self, change: Callable[[Book], None]) -> None:
        failed: list[str] = []
        with self.state.locked() as document:
            book = Book(document, self.grouping, self.gap)
            change(book)
            for event, incident in book.due():
                if self._deliver(event, incident, failed):
                    book.announced(event, incident)
                    if self.gauges is not None:
                        self.gauges.incident(event, incident)
            for incident in book.changed.values():
                self.record.put(incident)
            remaining = book.incidents()
        if self.gauges is not None:
            self.gauges.publish(i for i in remaining if i.state == "open")
        if failed:
            raise StorageError(f"{len(failed)} incident message(s) undelivered: {failed[0]}")

    def _deliver(self, event: Event, incident: Incident, failed: list[str]) -> bool:
        ok = True
        for channel in self.channels:
            try:
                channel.incident(event, incident)
            except Exception as exc:  # noqa: BLE001 - one channel must not silence the others
                ok = False
                failed.append(str(exc))
                _log.error("incident channel %s failed: %s", type(channel).__name__, exc)
        return ok


def feature_sources(views: Iterable[Any]) -> dict[str, str]:
    """``feature -> source`` from feature views (objects with ``source`` and ``features``, the
    latter ``(name, type)`` pairs, as the feature store's ``versions()`` returns them)."""
    return {name: view.source for view in views for name, _ in view.features}


def as_json_lines(incidents: Iterable[Incident]) -> Iterable[str]:
    for incident in incidents:
        yield json.dumps(incident.to_json(), sort_keys=True, default=str)
