"""The append-only audit log of alias moves, and the lock that serialises them.

MLflow aliases are last-writer-wins. Every prodguard move runs inside :meth:`AuditLog.exclusive`,
a database transaction that first bumps the model's row in ``alias_lock`` (a write lock on
SQLite, a row lock on PostgreSQL), then re-reads the aliases, moves them and appends the audit
record before committing. Two moves can therefore never interleave, and a move whose expected
state is stale is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from prodguard.errors import RegistryUnavailable, first_line
from prodguard.registry.mlflow_adapter import ALIASES, registry_error

_metadata = sa.MetaData()
_lock = sa.Table(
    "alias_lock",
    _metadata,
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
)
_audit = sa.Table(
    "alias_audit",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.String(40), nullable=False),
    sa.Column("model", sa.String(255), nullable=False, index=True),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class AuditRecord:
    time: datetime
    model: str
    action: str
    actor: str
    from_state: dict[str, int | None]
    to_state: dict[str, int | None]
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["time"] = self.time.isoformat()
        return record


def move_line(record: AuditRecord) -> str:
    """One readable line of an alias move, e.g. ``promote: champion v1 -> v2, standby unset ->
    v1, candidate v2 -> unset (audit #12, by alice@host)``: only the aliases that moved."""

    def name(version: int | None) -> str:
        return "unset" if version is None else f"v{version}"

    moved = [
        f"{alias} {name(record.from_state.get(alias))} -> {name(record.to_state.get(alias))}"
        for alias in ALIASES
        if record.from_state.get(alias) != record.to_state.get(alias)
    ]
    return (
        f"{record.action}: {', '.join(moved) or 'aliases unchanged'} "
        f"(audit #{record.id}, by {record.actor})"
    )


class AuditLog:
    def __init__(self, uri: str) -> None:
        connect_args: dict[str, Any] = {}
        if uri.startswith("sqlite"):
            connect_args = {"timeout": 60}
        elif uri.startswith("postgresql"):
            connect_args = {"connect_timeout": 5}  # fail fast when the server is down
        try:
            self._engine = sa.create_engine(uri, connect_args=connect_args, future=True)
            try:
                _metadata.create_all(self._engine)
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                _metadata.create_all(self._engine)  # another process created them meanwhile
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryUnavailable(
                f"audit log store is not reachable: {first_line(exc)}"
            ) from None

    @contextmanager
    def exclusive(self, model: str) -> Iterator[sa.Connection]:
        """A transaction holding the model's alias lock; commits only if the block succeeds."""
        self._ensure_lock_row(model)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    _lock.update()
                    .where(_lock.c.model == model)
                    .values(generation=_lock.c.generation + 1)
                )
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise registry_error("audit log write", exc, "the audit database") from None

    def _ensure_lock_row(self, model: str) -> None:
        try:
            with self._engine.begin() as conn:
                exists = conn.execute(
                    sa.select(_lock.c.model).where(_lock.c.model == model)
                ).first()
                if exists is None:
                    conn.execute(_lock.insert().values(model=model, generation=0))
        except sa.exc.IntegrityError:
            pass  # another process created it first
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryUnavailable(
                f"audit log store is not reachable: {first_line(exc)}"
            ) from None

    def append(self, conn: sa.Connection, record: AuditRecord) -> int:
        result = conn.execute(
            _audit.insert().values(
                time=record.time.isoformat(),
                model=record.model,
                action=record.action,
                actor=record.actor,
                from_state=json.dumps(record.from_state, sort_keys=True),
                to_state=json.dumps(record.to_state, sort_keys=True),
                reason=record.reason,
                evidence=json.dumps(record.evidence, sort_keys=True, default=str),
            )
        )
        key = result.inserted_primary_key
        assert key is not None  # a single-row insert returns its primary key
        return int(key[0])

    def last(self, conn: sa.Connection, model: str) -> AuditRecord | None:
        """The newest record of ``model``, read in the caller's transaction."""
        row = (
            conn.execute(
                _audit.select().where(_audit.c.model == model).order_by(_audit.c.id.desc()).limit(1)
            )
            .mappings()
            .first()
        )
        return None if row is None else _to_record(row)

    def records(self, model: str, limit: int | None = None) -> list[AuditRecord]:
        query = _audit.select().where(_audit.c.model == model).order_by(_audit.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except sa.exc.SQLAlchemyError as exc:
            raise registry_error("audit log read", exc, "the audit database") from None
        return [_to_record(row) for row in reversed(rows)]


def _to_record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        time=datetime.fromisoformat(row["time"]),
        model=row["model"],
        action=row["action"],
        actor=row["actor"],
        from_state=json.loads(row["from_state"]),
        to_state=json.loads(row["to_state"]),
        reason=row["reason"],
        evidence=json.loads(row["evidence"]),
    )
