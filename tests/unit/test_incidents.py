"""Alerts grouped into incidents: by cause, escalated, resolved once; the file store's contract
(the PostgreSQL store runs the same contract in tests/integration/test_alert_store.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from prodguard.alerts import Alert, Alerter, AlertGate, FileGateState, GateState, WebhookSink
from prodguard.errors import StorageError
from prodguard.incidents import (
    FileIncidentRecord,
    Grouping,
    Incident,
    IncidentGauges,
    IncidentRecord,
    IncidentSink,
    WebhookChannel,
    feature_sources,
)
from prodguard.monitoring.alerting import retired
from prodguard.monitoring.baseline import Finding
from prodguard.monitoring.jobs import run_monitor
from prodguard.monitoring.monitor import WindowReport
from tests.unit.test_alerts import Receiver

pytestmark = pytest.mark.unit
T0 = datetime(2013, 9, 1, tzinfo=UTC)
# two feature views of two sources, as the feature store's versions() describes them
VIEWS = [
    SimpleNamespace(source="src_a", features=[(f"a{i}", "Float64") for i in range(9)]),
    SimpleNamespace(source="src_b", features=[("b0", "Int64"), ("b1", "String")]),
]
GROUPING = Grouping(["src_a", "src_b"], feature_sources(VIEWS))


class Heard:
    """An incident channel that remembers what it heard (and can be made to fail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, int]] = []
        self.down = False

    def incident(self, event: str, incident: Incident) -> None:
        if self.down:
            raise OSError("channel down")
        self.events.append((event, incident.cause_key, incident.severity, incident.members))


def drift(
    metric: str, version: int = 2, severity: str = "warning", hours: float = 0, kind: str = ""
) -> Alert:
    return Alert(
        type=kind or ("latency_alert" if metric.startswith("latency.") else "drift_alert"),
        severity=severity,  # type: ignore[arg-type]
        source="monitor",
        message=f"{metric} out of bounds",
        time=T0 + timedelta(hours=hours),
        metric=metric,
        value=1.0,
        model_version=version,
    )


def resolved(metric: str, version: int = 2, hours: float = 0) -> Alert:
    return Alert(
        "resolved",
        "info",
        "monitor",
        f"{metric}: back within bounds",
        T0 + timedelta(hours=hours),
        metric=metric,
        model_version=version,
    )


def quarantine(source: str = "src_a", hours: float = 0) -> Alert:
    return Alert(
        "quarantine",
        "critical",
        source,
        f"{source} batch 1 quarantined",
        T0 + timedelta(hours=hours),
        details={"batch_id": "1"},
    )


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
def sink(tmp_path: Path, heard: Heard) -> IncidentSink:
    return IncidentSink(
        FileGateState(tmp_path / "open_incidents.json"),
        FileIncidentRecord(tmp_path / "incidents.jsonl"),
        GROUPING,
        [heard],
        gap=timedelta(hours=24),
    )


def test_a_source_and_the_features_it_feeds_are_one_incident(sink: IncidentSink, heard: Heard):
    sink.send(drift("shift.a0"))
    for i in range(1, 9):  # the stale source moved all nine features, in both versions
        sink.send(drift(f"shift.a{i}", hours=0.1))
        sink.send(drift(f"psi.a{i}", version=1, hours=0.1))
    sink.send(quarantine(hours=1))  # ...and its next batch was quarantined
    (incident,) = sink.record.incidents()
    assert incident.cause_key == "source:src_a" and incident.state == "open"
    assert incident.members == 18 and incident.types == {"drift_alert": 17, "quarantine": 1}
    assert incident.versions == (1, 2) and len(incident.conditions) == 17
    assert (incident.first_seen, incident.last_seen) == (T0, T0 + timedelta(hours=1))
    assert incident.severity == "critical"  # the quarantine escalated it
    assert incident.cause == (
        "source 'src_a' (model v1, v2): quarantine; drift in 9 features: a0, a1, a2, a3 and 5 "
        "more (18 alerts)"
    )
    # one message when it opened, one when it escalated: not eighteen
    assert heard.events == [
        ("opened", "source:src_a", "warning", 1),
        ("escalated", "source:src_a", "critical", 18),
    ]


def test_causes_apart_are_incidents_apart(sink: IncidentSink, heard: Heard) -> None:
    for alert in (
        drift("score.mean", version=2),
        drift("kpi.cost", version=2, kind="kpi_alert"),
        drift("score.mean", version=3),
        drift("latency.total.p99", version=2),
        drift("latency.model.p99", version=2),
        drift("shift.b0", version=2),
        drift("shift.request_only", version=2),  # a feature no source feeds: the model's
        quarantine("src_b"),
        Alert("registry_unreachable", "warning", "serving", "cannot read the aliases", T0),
    ):
        sink.send(alert)
    found = {i.cause_key: i.members for i in sink.record.incidents()}
    assert found == {
        "model:v2": 3,
        "model:v3": 1,
        "latency:v2": 2,
        "source:src_b": 2,
        "service:serving:registry_unreachable": 1,
    }
    assert sorted(e[0] for e in heard.events) == ["escalated"] + ["opened"] * 5
    assert ("escalated", "source:src_b", "critical", 2) in heard.events  # drift, then quarantine


def test_resolves_once_when_its_conditions_cleared_and_it_was_quiet(
    sink: IncidentSink, heard: Heard
) -> None:
    sink.send(drift("shift.a0"))
    sink.send(drift("shift.a1"))
    sink.send(resolved("shift.a0", hours=5))
    sink.sweep(T0 + timedelta(hours=48))
    assert [e[0] for e in heard.events] == ["opened"]  # shift.a1 still holds
    sink.send(resolved("shift.a1", hours=49))
    sink.sweep(T0 + timedelta(hours=60))  # quiet for 11 hours only
    assert [e[0] for e in heard.events] == ["opened"]
    sink.sweep(T0 + timedelta(hours=73))
    sink.sweep(T0 + timedelta(hours=100))
    assert [e[0] for e in heard.events] == ["opened", "resolved"]
    (incident,) = sink.record.incidents()
    assert incident.state == "resolved" and incident.resolved_at == T0 + timedelta(hours=73)
    assert sink.open_incidents() == []
    sink.send(drift("shift.a0", hours=200))  # the cause again, later: a new incident
    assert [i.state for i in sink.record.incidents()] == ["resolved", "open"]


def test_a_flapping_condition_rejoins_its_incident(sink: IncidentSink, heard: Heard) -> None:
    sink.send(drift("shift.a0"))
    sink.send(resolved("shift.a0", hours=2))
    sink.send(drift("shift.a0", hours=10))  # back within the gap: the same incident
    sink.send(resolved("shift.a0", hours=12))
    sink.sweep(T0 + timedelta(hours=30))
    assert [e[0] for e in heard.events] == ["opened"]
    sink.sweep(T0 + timedelta(hours=36))
    assert [e[0] for e in heard.events] == ["opened", "resolved"]
    (incident,) = sink.record.incidents()
    assert incident.members == 2


def test_one_off_alerts_resolve_when_quiet(sink: IncidentSink, heard: Heard) -> None:
    sink.send(quarantine())
    sink.send(quarantine(hours=20))  # the next batch too: same incident
    sink.send(drift("score.mean", hours=30))  # another cause: time moves on, 10 h quiet
    assert [e[:2] for e in heard.events] == [
        ("opened", "source:src_a"),
        ("opened", "model:v2"),
    ]
    sink.sweep(T0 + timedelta(hours=44))
    assert heard.events[-1][:2] == ("resolved", "source:src_a")
    assert heard.events[-1][3] == 2


def test_an_alert_after_the_gap_opens_a_new_incident(sink: IncidentSink, heard: Heard) -> None:
    sink.send(quarantine())
    sink.send(quarantine(hours=48))  # no sweep ran between: the first is over all the same
    first, second = sink.record.incidents()
    assert (first.state, first.members, second.state, second.members) == ("resolved", 1, "open", 1)
    assert [e[0] for e in heard.events] == ["opened", "resolved", "opened"]


def test_an_undelivered_incident_message_is_sent_again(sink: IncidentSink, heard: Heard):
    heard.down = True
    with pytest.raises(StorageError, match="undelivered"):
        sink.send(drift("shift.a0"))
    assert sink.open_incidents()[0].announced is None  # grouped, but nobody heard yet
    heard.down = False
    sink.send(drift("shift.a1", hours=1))
    assert heard.events == [("opened", "source:src_a", "warning", 2)]


def test_the_gate_delivers_into_incidents(tmp_path: Path, sink: IncidentSink, heard: Heard):
    """The monitors' path: the de-duplicating gate sends through the Alerter, whose incident
    sink groups; Alerter.send is unchanged for its callers."""
    gate = AlertGate(FileGateState(tmp_path / "open_alerts.json"), Alerter([sink]))
    raised = [(f"shift.a{i}|v2", drift(f"shift.a{i}")) for i in range(9)]
    assert len(gate.update(raised, [])) == 9
    cleared = [(f"shift.a{i}|v2", resolved(f"shift.a{i}", hours=30)) for i in range(9)]
    assert len(gate.update([], cleared)) == 9
    gate.alerter.sweep(T0 + timedelta(hours=60))
    assert [e[0] for e in heard.events] == ["opened", "resolved"]


def test_a_version_no_longer_served_resolves_its_conditions_and_incident(
    tmp_path: Path, sink: IncidentSink, heard: Heard
) -> None:
    """v3 rolled back: the monitors never judge it again, so its open conditions resolve as
    'no longer served' and its incident closes after the gap; v2's stay open."""
    gate = AlertGate(FileGateState(tmp_path / "open_alerts.json"), Alerter([sink]))
    gate.update(
        [
            ("score.mean|v3", drift("score.mean", version=3, kind="prediction_alert")),
            ("kpi.cost|v3", drift("kpi.cost", version=3, kind="kpi_alert")),
            ("score.mean|v2", drift("score.mean", version=2, kind="prediction_alert")),
        ],
        [],
    )
    later = T0 + timedelta(hours=2)
    cleared = retired(gate.open_conditions(), {2, 4}, later)
    assert sorted(key for key, _ in cleared) == ["kpi.cost|v3", "score.mean|v3"]
    assert all("v3 is no longer served" in alert.message for _, alert in cleared)
    gate.update([], cleared)
    assert set(gate.open_conditions()) == {"score.mean|v2"}
    assert retired(gate.open_conditions(), {2}, later) == []
    gate.alerter.sweep(later + timedelta(hours=24))
    states = {i.cause_key: i.state for i in sink.record.incidents()}
    assert states == {"model:v3": "resolved", "model:v2": "open"}
    assert ("resolved", "model:v3") in [e[:2] for e in heard.events]


def test_feature_sources_are_read_when_first_needed_and_never_guessed() -> None:
    reads: list[int] = []

    def views() -> dict[str, str]:
        reads.append(1)
        return feature_sources(VIEWS)

    grouping = Grouping(["src_a"], views)
    assert grouping.cause_of(quarantine()).key == "source:src_a"
    assert reads == []  # a source's own alert needs no feature map
    assert grouping.cause_of(drift("psi.a3")).key == "source:src_a"
    assert grouping.cause_of(drift("psi.a4")).key == "source:src_a"
    assert reads == [1]

    def broken() -> dict[str, str]:
        raise OSError("feature store unreadable")

    # unknown sources: grouped by the model version rather than lost
    assert Grouping(["src_a"], broken).cause_of(drift("psi.a3")).key == "model:v2"


def test_incident_gauges_count_open_incidents(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    sink = IncidentSink(
        FileGateState(tmp_path / "open.json"),
        FileIncidentRecord(tmp_path / "incidents.jsonl"),
        GROUPING,
        gauges=IncidentGauges(registry),
    )
    sink.send(drift("shift.a0"))
    sink.send(quarantine("src_b"))
    sink.send(drift("latency.total.p99"))
    value = registry.get_sample_value
    assert value("prodguard_incidents_open", {"kind": "source", "severity": "warning"}) == 1
    assert value("prodguard_incidents_open", {"kind": "source", "severity": "critical"}) == 1
    assert value("prodguard_incidents_open", {"kind": "latency", "severity": "warning"}) == 1
    sink.sweep(T0 + timedelta(days=3))  # the quarantine's incident resolves
    assert value("prodguard_incidents_open", {"kind": "source", "severity": "critical"}) == 0
    assert value("prodguard_incidents_total", {"kind": "source", "event": "resolved"}) == 1


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def test_the_webhook_carries_incidents(tmp_path: Path, receiver: Receiver) -> None:
    sink = IncidentSink(
        FileGateState(tmp_path / "open.json"),
        FileIncidentRecord(tmp_path / "incidents.jsonl"),
        GROUPING,
        [WebhookChannel(WebhookSink(receiver.url))],
    )
    sink.send(quarantine())
    for i in range(9):
        sink.send(drift(f"shift.a{i}"))
    sink.sweep(T0 + timedelta(days=3))  # conditions still open: not resolved
    (body,) = receiver.bodies
    assert body["text"].startswith("[critical] incident opened: source 'src_a': quarantine")
    assert body["prodguard"]["event"] == "opened"
    assert body["prodguard"]["incident"]["cause_key"] == "source:src_a"
    assert body["blocks"][0]["text"]["text"] == body["text"]


# ---- the store's contract: every implementation runs it -------------------------------------


def incident_store_contract(state: Callable[[], GateState], record: IncidentRecord) -> None:
    """Open incidents shared by processes (each opens the state anew), every incident's latest
    state listed by first seen, and round trips of every field."""

    def process(channels: list[Heard]) -> IncidentSink:
        return IncidentSink(state(), record, GROUPING, list(channels), gap=timedelta(hours=24))

    heard = Heard()
    process([heard]).send(drift("shift.a0"))
    process([heard]).send(drift("shift.a1", severity="critical", hours=1))
    process([heard]).send(drift("score.mean", version=3, hours=2))
    assert heard.events == [
        ("opened", "source:src_a", "warning", 1),
        ("escalated", "source:src_a", "critical", 2),
        ("opened", "model:v3", "warning", 1),
    ]
    first, second = record.incidents()
    assert (first.cause_key, second.cause_key) == ("source:src_a", "model:v3")
    assert first == Incident.from_json(first.to_json())
    assert first.conditions == ("shift.a0|v2", "shift.a1|v2") and first.announced == "critical"
    assert first.last_seen == T0 + timedelta(hours=1) and first.types == {"drift_alert": 2}
    opened = {i.id for i in process([]).open_incidents()}
    assert opened == {first.id, second.id}
    for metric in ("shift.a0", "shift.a1"):
        process([heard]).send(resolved(metric, hours=3))
    process([heard]).sweep(T0 + timedelta(hours=30))
    assert heard.events[-1] == ("resolved", "source:src_a", "critical", 2)
    assert [i.state for i in record.incidents()] == ["resolved", "open"]
    assert [i.id for i in process([]).open_incidents()] == [second.id]


def test_file_store_contract(tmp_path: Path) -> None:
    incident_store_contract(
        lambda: FileGateState(tmp_path / "open_incidents.json"),
        FileIncidentRecord(tmp_path / "incidents.jsonl"),
    )


def test_a_data_incident_belongs_to_the_source_feeding_most_degraded_rows() -> None:
    """The guard's data-incident alert names its degraded features with their row counts."""
    incident = Alert(
        "pipeline_incident",
        "warning",
        "guard",
        "data incident: degraded features; model moves held",
        T0,
        metric="rate.degraded",
        model_version=2,
        details={"features": {"b0": 30, "a1": 400, "a2": 380, "request_only": 999}},
    )
    assert GROUPING.cause_of(incident).key == "source:src_a"
    listed = replace(incident, details={"features": ["b0", "b1", "a0"]})
    assert GROUPING.cause_of(listed).key == "source:src_b"
    unknown = replace(incident, details={"features": {"request_only": 5}})
    assert GROUPING.cause_of(unknown).key == "model:v2"


class _Windows:
    """The monitor's latest window as fixed reports (run_monitor's orchestration alone)."""

    def __init__(self, reports: list[WindowReport]) -> None:
        self.reports = reports

    def latest(self) -> list[WindowReport]:
        return self.reports

    def now(self) -> datetime:
        return T0 + timedelta(hours=3)


def test_a_version_still_in_the_window_is_judged_not_retired(tmp_path: Path) -> None:
    """v1 was replaced but its rows are still in the window: each pass judges it (its condition
    holds, alerted once), never retires it, so nothing flaps; v3, neither served nor in the
    window, resolves once."""
    gate = AlertGate(FileGateState(tmp_path / "open_alerts.json"), Alerter([]))
    gate.update([("score.mean|v3", drift("score.mean", version=3, kind="prediction_alert"))], [])
    window = (T0, T0 + timedelta(hours=3))
    reports = [
        WindowReport(
            *window, 1, 500, "critical", [Finding("score.mean", 0.9, "critical", 0.5, 0.6)]
        ),
        WindowReport(*window, 2, 500, "ok", [Finding("score.mean", 0.3, "ok", 0.5, 0.6)]),
    ]
    first = run_monitor(_Windows(reports), gate, served=lambda: {2})
    assert sorted((a.type, a.model_version) for a in first.sent) == [
        ("prediction_alert", 1),
        ("resolved", 3),
    ]
    again = run_monitor(_Windows(reports), gate, served=lambda: {2})
    assert again.sent == [] and set(gate.open_conditions()) == {"score.mean|v1"}
