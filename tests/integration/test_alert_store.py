"""Alerts on PostgreSQL: the durable record and the gate state shared by monitors."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from prodguard.alert_store import PostgresAlerts
from prodguard.alerts import Alert, Alerter, AlertGate
from prodguard.errors import StorageError
from tests.conftest import utc
from tests.unit.test_alerts import drift

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
