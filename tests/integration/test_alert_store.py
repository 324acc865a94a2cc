"""Alerts on PostgreSQL: the durable record, the gate state shared by monitors and the
incidents alerts are grouped into."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from prodguard.alert_store import PostgresAlerts
from prodguard.alerts import Alert, Alerter, AlertGate
from prodguard.errors import StorageError
from prodguard.incidents import IncidentSink
from tests.conftest import utc
from tests.unit.test_alerts import drift
from tests.unit.test_incidents import GROUPING, Heard, incident_store_contract
from tests.unit.test_incidents import drift as incident_drift

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
T0 = utc("2013-06-01")


def test_alerts_are_recorded_and_read_back_in_order(pg_database) -> None:
    store = PostgresAlerts(pg_database("alerts"))
    store.send(drift())
    store.send(drift("critical", T0 + timedelta(hours=1)))
    records = PostgresAlerts(store._url).read()  # another process
    assert [r["severity"] for r in records] == ["warning", "critical"]
    assert records[0] == drift().to_json()


def test_two_monitors_racing_alert_once(pg_database) -> None:
    """Two monitor processes (or replicas) judging the same window at the same moment share
    the gate row: the condition alerts once, then escalates once, then resolves once."""
    url = pg_database("alerts")
    record = PostgresAlerts(url)
    barrier = threading.Barrier(4)
    sent: list[Alert] = []

    def monitor(alert: Alert) -> None:
        gate = AlertGate(PostgresAlerts(url).gate("monitor"), Alerter([PostgresAlerts(url)]))
        barrier.wait()
        sent.extend(gate.update([("shift.temp|v2", alert)], [], through=alert.time))

    for alert in (drift(), drift("critical", T0 + timedelta(days=1))):
        threads = [threading.Thread(target=monitor, args=(alert,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [a.severity for a in sent] == ["warning", "critical"]
    assert [r["severity"] for r in record.read()] == ["warning", "critical"]
    gate = AlertGate(record.gate("monitor"), Alerter([record]))
    assert gate.open_conditions()["shift.temp|v2"]["repeats"] == 3
    assert gate.judged_through() == T0 + timedelta(days=1)
    resolved = drift("info", T0 + timedelta(days=2))
    assert gate.update([], [("shift.temp|v2", resolved)]) == [resolved]
    assert gate.update([], [("shift.temp|v2", resolved)]) == []
    assert gate.open_conditions() == {}


def test_unreachable_store_is_a_clear_error_without_the_password() -> None:
    store = PostgresAlerts("postgresql+psycopg://prodguard:s3cret@127.0.0.1:1/x")
    with pytest.raises(StorageError) as error:
        store.send(drift())
    assert "alert store" in str(error.value) and "s3cret" not in str(error.value)


def test_incident_store_contract(pg_database) -> None:
    """The PostgreSQL incident store keeps the contract the file store keeps
    (tests/unit/test_incidents.py), each process with a connection of its own."""
    url = pg_database("incidents")
    incident_store_contract(
        lambda: PostgresAlerts(url).gate("incidents"), PostgresAlerts(url).incident_record()
    )


def test_racing_monitors_open_one_incident(pg_database) -> None:
    """Four processes send drift alerts of one source at the same moment: one incident opens
    (one message), with every alert a member."""
    url = pg_database("incidents")
    heard = Heard()
    barrier = threading.Barrier(4)

    def monitor(i: int) -> None:
        store = PostgresAlerts(url)
        sink = IncidentSink(store.gate("incidents"), store.incident_record(), GROUPING, [heard])
        barrier.wait()
        sink.send(incident_drift(f"shift.a{i}"))

    threads = [threading.Thread(target=monitor, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (incident,) = PostgresAlerts(url).incident_record().incidents()
    assert incident.members == 4 and len(incident.conditions) == 4
    assert [e[0] for e in heard.events] == ["opened"]
