"""Alias operations: the only way prodguard moves ``candidate``, ``champion`` and ``standby``.

Each operation states the alias values it expects (by default, what it read when it started),
takes the audit log's lock, re-reads the aliases from MLflow and refuses with
:class:`ConcurrentUpdateError` if they moved; otherwise it moves them and appends one audit
record in the same transaction. If MLflow fails halfway, the aliases already moved are put back.

**Reconciliation.** A move is two systems (MLflow's aliases, then the audit row): a process
killed between the two leaves the aliases moved and no record (the database drops its lock with
the connection); a move made in the MLflow UI leaves no record either. Both are legitimate states
of the registry, so they are recorded, never undone: every operation (under the lock, before its
own move), the guard at every check and ``prodguard status`` compare the aliases with the last
record's ``to_state`` and, when they differ, append one ``reconcile`` record (actor
``prodguard-reconcile``) from the recorded state to the observed one. The audit log stays a
chain whose last ``to_state`` is what MLflow says.

**Kill safety.** Aliases move in the order ``champion``, ``standby``, ``candidate``, and
``champion`` only ever receives a version that passed the promotion check (load, digest, score)
or the standby (the previous, served champion). A kill between any two MLflow calls therefore
leaves ``champion`` on a loadable version: the new one, or still the old one.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from prodguard.clock import Clock, SystemClock
from prodguard.errors import ConcurrentUpdateError, InputError, PromotionRefused, RegistryError
from prodguard.registry import lineage
from prodguard.registry.audit import AuditLog, AuditRecord
from prodguard.registry.mlflow_adapter import ALIASES
from prodguard.registry.ports import ModelRegistry
from prodguard.rollout.policy import Mode, TrafficPolicy, read_targets

RECONCILE_ACTOR = "prodguard-reconcile"
RECONCILE_REASON = (
    "aliases moved without an audit record (interrupted move or a move made in the MLflow UI)"
)
HISTORY_SCAN = 500  # audit records searched for when a version took an alias


@dataclass(frozen=True)
class AliasState:
    champion: int | None = None
    standby: int | None = None
    candidate: int | None = None

    @classmethod
    def from_mapping(cls, mapping: dict[str, int | None]) -> AliasState:
        return cls(**{alias: mapping.get(alias) for alias in ALIASES})

    def as_dict(self) -> dict[str, int | None]:
        return {alias: getattr(self, alias) for alias in ALIASES}

    def describe(self) -> str:
        return ", ".join(
            f"{alias}={'v' + str(value) if value is not None else 'unset'}"
            for alias, value in self.as_dict().items()
        )


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


PromotionCheck = Callable[[int], None]


class RegistryOperations:
    def __init__(
        self,
        registry: ModelRegistry,
        audit: AuditLog,
        clock: Clock | None = None,
        promotion_check: PromotionCheck | None = None,
        standby_hours: float | None = None,
    ) -> None:
        """``standby_hours``: a promotion that would drop a standby younger than this is
        refused (unless overridden, which is audited)."""
        self.registry = registry
        self.audit = audit
        self.clock = clock or SystemClock()
        self.promotion_check = promotion_check
        self.standby_hours = standby_hours

    @property
    def model(self) -> str:
        return self.registry.model_name

    def state(self) -> AliasState:
        return AliasState.from_mapping(self.registry.aliases())

    def history(self, limit: int | None = None) -> list[AuditRecord]:
        """The last ``limit`` records, oldest first."""
        return self.audit.records(self.model, limit)

    def live_since(self, version: int) -> datetime | None:
        """When ``version`` last became champion (from the audit log)."""
        return self._since("champion", version)

    def standby_since(self, version: int) -> datetime | None:
        return self._since("standby", version)

    def _since(self, alias: str, version: int) -> datetime | None:
        for record in reversed(self.history(HISTORY_SCAN)):  # newest first
            if record.to_state.get(alias) == version and record.from_state.get(alias) != version:
                return record.time
        return None

    def _check_retention(self, current: AliasState, override: str | None) -> dict[str, Any]:
        """Refuse to drop a standby younger than the retention period, unless overridden."""
        if self.standby_hours is None or current.standby is None:
            return {}
        since = self.standby_since(current.standby)
        if since is None:
            return {}
        age = self.clock.now() - since
        keep = timedelta(hours=self.standby_hours)
        if age >= keep:
            return {}
        if override:
            return {
                "standby_retention_override": override,
                "dropped_standby": current.standby,
                "standby_age_hours": round(age.total_seconds() / 3600, 2),
            }
        left = (keep - age).total_seconds() / 3600
        raise PromotionRefused(
            f"standby v{current.standby} has been standby for "
            f"{age.total_seconds() / 3600:.1f} h; it must stay {self.standby_hours:g} h "
            f"({left:.1f} h left). Wait, or pass --override-standby-retention REASON (audited)"
        )

    # ---- reconciliation ------------------------------------------------------------------

    def reconcile(self) -> AuditRecord | None:
        """Record an unaudited alias move (see the module docstring); None when the aliases are
        what the last record says."""
        with self.audit.exclusive(self.model) as tx:
            return self._reconcile(tx, self.state())

    def _reconcile(self, tx: Any, current: AliasState) -> AuditRecord | None:
        last = self.audit.last(tx, self.model)
        recorded = AliasState.from_mapping(last.to_state) if last is not None else AliasState()
        if recorded == current:
            return None
        record = AuditRecord(
            time=self.clock.now(),
            model=self.model,
            action="reconcile",
            actor=RECONCILE_ACTOR,
            from_state=recorded.as_dict(),
            to_state=current.as_dict(),
            reason=RECONCILE_REASON,
            evidence={"last_audit_id": last.id if last is not None else None},
        )
        return replace(record, id=self.audit.append(tx, record))

    # ---- operations ----------------------------------------------------------------------

    def set_candidate(
        self, version: int, actor: str, reason: str, expected: AliasState | None = None
    ) -> AuditRecord:
        self.registry.version(version)  # unknown version -> RegistryError

        def plan(current: AliasState) -> AliasState:
            if current.champion == version:
                raise PromotionRefused(f"v{version} is already the champion")
            return AliasState(current.champion, current.standby, version)

        return self._move("set_candidate", plan, actor, reason, {}, expected)

    def promote(
        self,
        actor: str,
        reason: str,
        version: int | None = None,
        expected: AliasState | None = None,
        override_retention: str | None = None,
    ) -> AuditRecord:
        """champion -> standby, candidate (or ``version``) -> champion."""
        start = expected or self.state()
        override = self._check_retention(start, override_retention)
        target = version if version is not None else start.candidate
        if target is None:
            raise PromotionRefused(
                "no candidate to promote; train or register one, or pass --version N"
            )
        self.registry.version(target)
        if start.champion == target:
            raise PromotionRefused(f"v{target} is already the champion")
        if self.promotion_check is not None:
            self.promotion_check(target)

        def plan(current: AliasState) -> AliasState:
            candidate = None if current.candidate == target else current.candidate
            return AliasState(champion=target, standby=current.champion, candidate=candidate)

        evidence = {"version": target, **override}
        return self._move("promote", plan, actor, reason, evidence, start)

    def rollback(
        self,
        actor: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
        expected: AliasState | None = None,
    ) -> AuditRecord:
        """standby -> champion; the demoted champion is tagged with the reason."""
        start = expected or self.state()
        if start.standby is None:
            raise PromotionRefused("no standby to roll back to; promote a version first")

        def plan(current: AliasState) -> AliasState:
            return AliasState(champion=current.standby, standby=None, candidate=current.candidate)

        def tag_demoted(current: AliasState, _: AliasState) -> None:
            if current.champion is not None:
                self.registry.set_version_tag(current.champion, lineage.DEMOTED_REASON, reason)
                self.registry.set_version_tag(
                    current.champion, lineage.DEMOTED_AT, self.clock.now().isoformat()
                )

        return self._move("rollback", plan, actor, reason, evidence or {}, start, after=tag_demoted)

    # ---- traffic policy (stored as a tag of the registered model) ------------------------

    def traffic(self) -> TrafficPolicy:
        return TrafficPolicy.from_json(self.registry.model_tag(lineage.TRAFFIC))

    def targets(self) -> tuple[AliasState, TrafficPolicy]:
        """The aliases and the traffic policy from one registry read."""
        aliases, policy = read_targets(self.registry)
        return AliasState.from_mapping(aliases), policy

    def set_traffic(
        self,
        policy: TrafficPolicy,
        actor: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
        expected: TrafficPolicy | None = None,
    ) -> AuditRecord:
        """Replace the traffic policy under the audit lock, with an audit record (action
        ``traffic``); refused with ConcurrentUpdateError if it changed since ``expected``."""
        written: TrafficPolicy | None = None
        refusal: ConcurrentUpdateError | None = None
        try:
            with self.audit.exclusive(self.model) as tx:
                current = self.traffic()
                aliases = self.state().as_dict()
                self._reconcile(tx, AliasState.from_mapping(aliases))  # committed even if refused
                if expected is not None and current != expected:
                    refusal = ConcurrentUpdateError(
                        f"the traffic policy changed since it was read (now: "
                        f"{current.describe()}); nothing changed — check `prodguard status`"
                    )
                else:
                    self.registry.set_model_tag(lineage.TRAFFIC, json.dumps(policy.to_json()))
                    written = current
                    record = AuditRecord(
                        time=self.clock.now(),
                        model=self.model,
                        action="traffic",
                        actor=actor,
                        from_state=aliases,
                        to_state=aliases,
                        reason=reason,
                        evidence={
                            "from": current.to_json(),
                            "to": policy.to_json(),
                            **(evidence or {}),
                        },
                    )
                    record_id = self.audit.append(tx, record)
        except BaseException:
            if written is not None:
                self.registry.set_model_tag(lineage.TRAFFIC, json.dumps(written.to_json()))
            raise
        if refusal is not None:
            raise refusal
        return replace(record, id=record_id)

    def start_rollout(
        self,
        mode: Mode,
        actor: str,
        steps: tuple[float, ...] = (),
        version: int | None = None,
    ) -> AuditRecord:
        """Put ``version`` (default: the candidate) in canary or shadow traffic."""
        state = self.state()
        target = version if version is not None else state.candidate
        if target is None:
            raise PromotionRefused("no candidate to roll out; train one or pass --version N")
        self.registry.version(target)
        if target == state.champion:
            raise PromotionRefused(f"v{target} is already the champion")
        if mode == "canary" and not steps:
            raise InputError("a canary needs steps, e.g. --steps 5,25,100")
        if self.promotion_check is not None:
            self.promotion_check(target)
        policy = TrafficPolicy(
            mode=mode,
            version=target,
            steps=steps if mode == "canary" else (),
            step=0,
            step_started=self.clock.now().isoformat(),
        )
        return self.set_traffic(policy, actor, f"{mode} rollout of v{target}")

    # ---- the one place aliases move ------------------------------------------------------

    def _move(
        self,
        action: str,
        plan: Callable[[AliasState], AliasState],
        actor: str,
        reason: str,
        evidence: dict[str, Any],
        expected: AliasState | None,
        after: Callable[[AliasState, AliasState], None] | None = None,
    ) -> AuditRecord:
        """Move the aliases and append the audit record as one unit: if anything fails before
        the audit transaction commits (tagging, the insert, the commit itself), the aliases are
        put back and the error is raised."""
        moved: tuple[AliasState, AliasState] | None = None
        refusal: ConcurrentUpdateError | None = None
        try:
            with self.audit.exclusive(self.model) as tx:
                current = self.state()
                self._reconcile(tx, current)  # committed even if this move is refused
                if expected is not None and current != expected:
                    refusal = ConcurrentUpdateError(
                        f"aliases moved since they were read (expected {expected.describe()}; "
                        f"found {current.describe()}); nothing changed — check "
                        "`prodguard status` and retry"
                    )
                else:
                    target = plan(current)
                    self._apply(current, target)
                    moved = (current, target)
                    if after is not None:
                        after(current, target)
                    record = AuditRecord(
                        time=self.clock.now(),
                        model=self.model,
                        action=action,
                        actor=actor,
                        from_state=current.as_dict(),
                        to_state=target.as_dict(),
                        reason=reason,
                        evidence=evidence,
                    )
                    record_id = self.audit.append(tx, record)
        except BaseException:
            if moved is not None:
                self._apply(moved[1], moved[0])
            raise
        if refusal is not None:
            raise refusal
        return replace(record, id=record_id)

    def _apply(self, current: AliasState, target: AliasState) -> None:
        """Move the aliases that differ, ``champion`` first (see Kill safety above); if one
        fails, those already moved are put back."""
        done: list[tuple[str, int | None]] = []
        try:
            for alias in ALIASES:
                before, after = getattr(current, alias), getattr(target, alias)
                if before == after:
                    continue
                if after is None:
                    self.registry.delete_alias(alias)
                else:
                    self.registry.set_alias(alias, after)
                done.append((alias, before))
        except RegistryError:
            for alias, before in reversed(done):
                if before is None:
                    self.registry.delete_alias(alias)
                else:
                    self.registry.set_alias(alias, before)
            raise
