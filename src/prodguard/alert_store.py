"""Alerts on PostgreSQL (production): the durable alert record every process appends to, the
de-duplication state monitors share, so that several monitors or replicas alert once, and the
incidents alerts are grouped into (their open document is a gate row, ``incidents``; every
incident's latest state is a row of ``incidents``).

The record is the database twin of ``alerts.jsonl``; the state is the twin of the locked state
file: one row per gate, locked with ``SELECT ... FOR UPDATE`` while a monitor judges and sends.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from prodguard.alerts import EMPTY_STATE, Alert
from prodguard.errors import StorageError, first_line, redact
from prodguard.incidents import Incident

_metadata = sa.MetaData()
_alerts = sa.Table(
    "alerts",
    _metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("time", sa.String(40), nullable=False, index=True),
    sa.Column("type", sa.String(80), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)
_gates = sa.Table(
    "alert_gate",
    _metadata,
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
)
_incidents = sa.Table(
    "incidents",
    _metadata,
    sa.Column("id", sa.String(300), primary_key=True),
    sa.Column("cause_key", sa.String(200), nullable=False, index=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("first_seen", sa.String(40), nullable=False, index=True),
    sa.Column("last_seen", sa.String(40), nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)


class PostgresAlerts:
    """An alert sink (``send``), its reader (``read``) and gate states (``gate``) in one
    database. Tables are created on first use; nothing connects before."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: sa.Engine | None = None

    def _ready(self) -> sa.Engine:
        if self._engine is None:
            engine = sa.create_engine(
                self._url, connect_args={"connect_timeout": 5}, pool_pre_ping=True
            )
            with self._errors("cannot be opened"), engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7460212)"))
                _metadata.create_all(conn)
            self._engine = engine
        return self._engine

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(
                f"alert store {redact(self._url)} {action}: "
                f"{redact(first_line(getattr(exc, 'orig', None) or exc))}"
            ) from None

    def send(self, alert: Alert) -> None:
        engine = self._ready()
        with self._errors("write failed"), engine.begin() as conn:
            conn.execute(
                _alerts.insert().values(
                    time=alert.time.isoformat(),
                    type=alert.type,
                    severity=alert.severity,
                    record=json.dumps(alert.to_json(), default=str, sort_keys=True),
                )
            )

    def read(self) -> list[dict[str, Any]]:
        """Every alert recorded, oldest first."""
        engine = self._ready()
        with self._errors("read failed"), engine.connect() as conn:
            rows = conn.execute(sa.select(_alerts.c.record).order_by(_alerts.c.id)).all()
        return [json.loads(row[0]) for row in rows]

    def gate(self, name: str) -> PostgresGateState:
        return PostgresGateState(self, name)

    def incident_record(self) -> PostgresIncidentRecord:
        return PostgresIncidentRecord(self)


class PostgresIncidentRecord:
    """Every incident's latest state, one row per incident (upserted on each change)."""

    def __init__(self, store: PostgresAlerts) -> None:
        self._store = store

    def put(self, incident: Incident) -> None:
        engine = self._store._ready()
        values = {
            "cause_key": incident.cause_key,
            "state": incident.state,
            "severity": incident.severity,
            "first_seen": incident.first_seen.isoformat(),
            "last_seen": incident.last_seen.isoformat(),
            "record": json.dumps(incident.to_json(), default=str, sort_keys=True),
        }
        statement = postgresql.insert(_incidents).values(id=incident.id, **values)
        with self._store._errors("write failed"), engine.begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))

    def incidents(self) -> list[Incident]:
        """Every incident, by first seen."""
        engine = self._store._ready()
        with self._store._errors("read failed"), engine.connect() as conn:
            rows = conn.execute(
                sa.select(_incidents.c.record).order_by(_incidents.c.first_seen, _incidents.c.id)
            ).all()
        return [Incident.from_json(json.loads(row[0])) for row in rows]


class PostgresGateState:
    """A gate's open conditions in one row of ``alert_gate``, locked while in use."""

    def __init__(self, store: PostgresAlerts, name: str) -> None:
        self._store = store
        self.name = name

    def read(self) -> dict[str, Any]:
        engine = self._store._ready()
        with self._store._errors("read failed"), engine.connect() as conn:
            row = conn.execute(
                sa.select(_gates.c.document).where(_gates.c.name == self.name)
            ).first()
        return json.loads(row[0]) if row else copy.deepcopy(EMPTY_STATE)

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        engine = self._store._ready()
        with self._store._errors("write failed"), engine.begin() as conn:
            conn.execute(
                postgresql.insert(_gates)
                .values(name=self.name, document=json.dumps(EMPTY_STATE))
                .on_conflict_do_nothing()
            )
            row = conn.execute(
                sa.select(_gates.c.document).where(_gates.c.name == self.name).with_for_update()
            ).one()
            document = json.loads(row[0])
            yield document
            conn.execute(
                _gates.update()
                .where(_gates.c.name == self.name)
                .values(document=json.dumps(document, sort_keys=True))
            )
