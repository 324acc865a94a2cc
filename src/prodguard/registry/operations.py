"""Alias operations: the only way prodguard moves ``candidate``, ``champion`` and ``standby``.

Each operation states the alias values it expects (by default, what it read when it started),
takes the audit log's lock, re-reads the aliases from MLflow and refuses with
:class:`ConcurrentUpdateError` if they moved; otherwise it moves them and appends one audit
record in the same transaction. If MLflow fails halfway, the aliases already moved are put back.

**Reconciliation.** A move is two systems (MLflow's aliases, then the audit row): a process
killed between the two leaves the aliases moved and no record (the database drops its lock with
the connection); a move made in the MLflow UI leaves no record either. Both are legitimate states
of the registry, so they are recorded, never undone: every serving replica when its poll first
sees the aliases change (:class:`ObservedTargets`), every operation (under the lock, before its
own move), the guard at every check and ``prodguard status`` compare the aliases with the last
record's ``to_state`` and, when they differ, append one ``reconcile`` record (actor
``prodguard-reconcile``, ``evidence.seen_by`` the observer). The lock makes the first observer
record it and the others find nothing to do. The audit log stays a chain whose last
``to_state`` is what MLflow says.

**A champion moved outside prodguard** (the MLflow UI moves only ``champion``) is completed as
``promote`` would: the previous champion becomes the standby (kept ``rollout.standby_hours`` like
any standby), and a candidate on the new champion is cleared; the record says so. A standby the
outside move changed itself is left as it is. Exception: a ``rollback`` tags the champion it
demotes *before* moving the aliases, so a champion carrying a demotion newer than the last record
is a rollback killed mid-move, completed as a rollback (no standby). A move onto a version that
was rolled back (tagged with its demotion reason) raises a ``demoted_champion`` alert naming it;
``promote`` refuses such a version unless overridden (audited).

**Kill safety.** Aliases move in the order ``champion``, ``standby``, ``candidate``, and
``champion`` only ever receives a version that passed the promotion check (load, digest, score)
or the standby (the previous, served champion). A kill between any two MLflow calls therefore
leaves ``champion`` on a loadable version: the new one, or still the old one.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from prodguard.alerts import Alert, Alerter
from prodguard.clock import Clock, SystemClock
from prodguard.errors import (
    ConcurrentUpdateError,
    InputError,
    ProdguardError,
    PromotionRefused,
    RegistryError,
)
from prodguard.registry import lineage
from prodguard.registry.audit import AuditLog, AuditRecord
from prodguard.registry.mlflow_adapter import ALIASES
from prodguard.registry.ports import ModelRegistry
from prodguard.rollout.policy import Mode, TrafficPolicy, read_targets

_log = logging.getLogger("prodguard.registry")

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
        alerter: Alerter | None = None,
    ) -> None:
        """``standby_hours``: a promotion that would drop a standby younger than this is
        refused (unless overridden, which is audited). ``alerter``: where a champion moved
        outside prodguard onto a demoted version is reported."""
        self.registry = registry
        self.audit = audit
        self.clock = clock or SystemClock()
        self.promotion_check = promotion_check
        self.standby_hours = standby_hours
        self.alerter = alerter

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

    def reconcile(self, seen_by: str = "prodguard") -> AuditRecord | None:
        """Record an unaudited alias move (see the module docstring); None when the aliases are
        what the last record says. ``seen_by``: who noticed it (kept in the record)."""
        with self.audit.exclusive(self.model) as tx:
            record = self._reconcile(tx, self.state(), seen_by)
        self._announce(record)
        return record

    def _reconcile(self, tx: Any, current: AliasState, seen_by: str) -> AuditRecord | None:
        """Append the ``reconcile`` record (completing a champion moved outside prodguard: see
        the module docstring); the caller holds the lock and calls :meth:`_announce` after it."""
        last = self.audit.last(tx, self.model)
        recorded = AliasState.from_mapping(last.to_state) if last is not None else AliasState()
        if recorded == current:
            return None
        target, done = self._complete(recorded, current, last.time if last is not None else None)
        self._apply(current, target)
        try:
            record = AuditRecord(
                time=self.clock.now(),
                model=self.model,
                action="reconcile",
                actor=RECONCILE_ACTOR,
                from_state=recorded.as_dict(),
                to_state=target.as_dict(),
                reason=RECONCILE_REASON + (f"; {done['summary']}" if done else ""),
                evidence={
                    "last_audit_id": last.id if last is not None else None,
                    "seen_by": seen_by,
                    "observed": current.as_dict(),
                    **done,
                },
            )
            return replace(record, id=self.audit.append(tx, record))
        except BaseException:
            self._apply(target, current)
            raise

    def _complete(
        self, recorded: AliasState, current: AliasState, last_time: datetime | None
    ) -> tuple[AliasState, dict[str, Any]]:
        """The aliases that complete a champion moved outside prodguard, and what was done."""
        new, previous = current.champion, recorded.champion
        if new is None or new == previous:
            return current, {}
        done: dict[str, Any] = {"outside_move": {"from": previous, "to": new}}
        demotion = _demotion(self.registry.version(new).tags)
        if demotion is not None:
            done["demoted_reason"], done["demoted_at"] = demotion
        candidate = None if current.candidate == new else current.candidate
        standby = current.standby
        moved = f"champion moved from v{previous} to v{new} without a record"
        if previous is not None and current.standby == recorded.standby:
            if self._rolled_back(previous, last_time):
                standby = None if current.standby == new else current.standby
                text = f"{moved}: the interrupted rollback of v{previous}, completed (no standby)"
            else:
                standby = previous
                text = (
                    f"{moved} (a move made outside prodguard: the MLflow UI, another client or "
                    f"an interrupted promote): v{previous} kept as standby"
                )
                if recorded.standby not in (None, new):
                    done["dropped_standby"] = recorded.standby
        else:
            text = f"{moved} (outside prodguard): the standby left as found"
        if demotion is not None:
            text += f"; v{new} had been rolled back: {demotion[0]}"
        done["summary"] = text.replace("vNone", "unset")
        return AliasState(new, standby, candidate), done

    def _rolled_back(self, version: int, since: datetime | None) -> bool:
        """``version`` was demoted after ``since`` (a rollback killed before its record)."""
        demotion = _demotion(self.registry.version(version).tags)
        if demotion is None or since is None:
            return False
        try:
            return datetime.fromisoformat(demotion[1]) >= since
        except (TypeError, ValueError):  # unreadable or naive time: not this rollback
            return False

    def _announce(self, record: AuditRecord | None) -> None:
        """Alert on a reconciled move onto a demoted version (after the record is committed)."""
        if record is None or self.alerter is None or "demoted_reason" not in record.evidence:
            return
        version = record.to_state.get("champion")
        reason = record.evidence["demoted_reason"]
        try:
            self.alerter.send(
                Alert(
                    type="demoted_champion",
                    severity="critical",
                    source="registry",
                    message=(
                        f"champion moved outside prodguard onto v{version}, which was rolled "
                        f"back at {record.evidence['demoted_at'] or 'an unknown time'} "
                        f"because: {reason}; roll back (`prodguard rollback --reason ...`) or "
                        "promote it with `prodguard promote --override-demoted REASON`"
                    ),
                    time=record.time,
                    model_version=version,
                    details={"audit_id": record.id, "demoted_reason": reason},
                )
            )
        except ProdguardError as exc:  # the move is recorded; the alert is best effort
            _log.error("could not alert on demoted champion v%s: %s", version, exc)

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
        override_demoted: str | None = None,
    ) -> AuditRecord:
        """champion -> standby, candidate (or ``version``) -> champion. A version that was
        rolled back (tagged with its demotion reason) needs ``override_demoted`` (audited)."""
        start = expected or self.state()
        override = self._check_retention(start, override_retention)
        target = version if version is not None else start.candidate
        if target is None:
            raise PromotionRefused(
                "no candidate to promote; train or register one, or pass --version N"
            )
        tags = self.registry.version(target).tags
        demotion = _demotion(tags)
        if start.champion == target:
            raise PromotionRefused(f"v{target} is already the champion")
        if self.promotion_check is not None:
            self.promotion_check(target)
        if demotion is not None:
            if not override_demoted:
                raise PromotionRefused(
                    f"v{target} was rolled back ({demotion[1] or 'time unknown'}): {demotion[0]}; "
                    "pass --override-demoted REASON (audited) to promote it anyway"
                )
            override |= {"demoted_override": override_demoted, "demoted_reason": demotion[0]}

        def plan(current: AliasState) -> AliasState:
            candidate = None if current.candidate == target else current.candidate
            return AliasState(champion=target, standby=current.champion, candidate=candidate)

        evidence: dict[str, Any] = {"version": target, **override}
        if start.champion is not None:
            champion = self.registry.version(start.champion).tags
            compared = lineage.compare_headlines(tags, champion)
            if compared is not None:
                evidence["eval"] = compared
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

        def tag_demoted(current: AliasState, _: AliasState) -> Callable[[], None]:
            """Tag the demoted champion before the aliases move (a rollback killed mid-move is
            then recognised: module docstring); returns what puts the old tags back."""
            version = current.champion
            if version is None:
                return lambda: None
            old = self.registry.version(version).tags
            self.registry.set_version_tag(version, lineage.DEMOTED_REASON, reason)
            self.registry.set_version_tag(version, lineage.DEMOTED_AT, self.clock.now().isoformat())

            def undo() -> None:
                for key in (lineage.DEMOTED_REASON, lineage.DEMOTED_AT):
                    if key in old:
                        self.registry.set_version_tag(version, key, old[key])
                    else:
                        self.registry.delete_version_tag(version, key)

            return undo

        return self._move(
            "rollback", plan, actor, reason, evidence or {}, start, before=tag_demoted
        )

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
        reconciled: AuditRecord | None = None
        try:
            with self.audit.exclusive(self.model) as tx:
                current = self.traffic()
                reconciled = self._reconcile(tx, self.state(), actor)  # kept even if refused
                aliases = _after(reconciled, self.state()).as_dict()
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
        self._announce(reconciled)
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
        """Put ``version`` (default: the candidate) in canary or shadow traffic; refused while
        a rollout runs (it would be replaced silently). A policy whose version has become the
        champion meanwhile (promoted by hand before the guard ended it) is over, not running."""
        running = self.traffic()
        state = self.state()
        if running.active and running.version != state.champion:
            raise PromotionRefused(
                f"{running.running()}; nothing changed — end it first with `prodguard rollout "
                "abort --reason ...`, then start the new one"
            )
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
        return self.set_traffic(policy, actor, f"{mode} rollout of v{target}", expected=running)

    # ---- the one place aliases move ------------------------------------------------------

    def _move(
        self,
        action: str,
        plan: Callable[[AliasState], AliasState],
        actor: str,
        reason: str,
        evidence: dict[str, Any],
        expected: AliasState | None,
        before: Callable[[AliasState, AliasState], Callable[[], None]] | None = None,
    ) -> AuditRecord:
        """Move the aliases and append the audit record as one unit: if anything fails before
        the audit transaction commits (the insert, the commit itself), the aliases are put back
        (and what ``before`` did, by the callable it returned) and the error is raised."""
        moved: tuple[AliasState, AliasState] | None = None
        undo: Callable[[], None] | None = None
        refusal: ConcurrentUpdateError | None = None
        reconciled: AuditRecord | None = None
        try:
            with self.audit.exclusive(self.model) as tx:
                current = self.state()
                observed = current
                reconciled = self._reconcile(tx, current, actor)  # kept even if refused
                current = _after(reconciled, current)  # an outside move, completed
                if expected is not None and expected not in (observed, current):
                    refusal = ConcurrentUpdateError(
                        f"aliases moved since they were read (expected {expected.describe()}; "
                        f"found {current.describe()}); nothing changed — check "
                        "`prodguard status` and retry"
                    )
                else:
                    target = plan(current)
                    if before is not None:
                        undo = before(current, target)
                    self._apply(current, target)
                    moved = (current, target)
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
        except BaseException as exc:
            if moved is not None:
                self._apply(moved[1], moved[0])
            if undo is not None and isinstance(exc, Exception):  # an interrupt is like a kill
                try:
                    undo()
                except ProdguardError as problem:  # the original error is the one to report
                    _log.error("could not restore the demotion tags: %s", problem)
            raise
        self._announce(reconciled)
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


def _after(reconciled: AuditRecord | None, current: AliasState) -> AliasState:
    """The aliases once ``reconciled`` (if any) completed an outside move."""
    return AliasState.from_mapping(reconciled.to_state) if reconciled is not None else current


def _demotion(tags: dict[str, str]) -> tuple[str, str] | None:
    """(reason, time) of a version's last rollback, or None if it was never rolled back."""
    if lineage.DEMOTED_REASON not in tags:
        return None
    return tags[lineage.DEMOTED_REASON], tags.get(lineage.DEMOTED_AT, "")


class ObservedTargets:
    """What a serving replica polls: the aliases and the traffic policy, with an alias move
    that has no audit record reconciled (recorded, completed) the first time this replica sees
    the aliases change — so a champion moved in the MLflow UI is recorded when the first
    replica notices it. If the audit store cannot be reached, the aliases are served as read
    and the reconciliation is retried at the next poll."""

    def __init__(self, operations: RegistryOperations, seen_by: str) -> None:
        self._operations = operations
        self._seen_by = seen_by
        self._seen: dict[str, int | None] | None = None

    def __call__(self) -> tuple[dict[str, int | None], TrafficPolicy]:
        aliases, policy = read_targets(self._operations.registry)
        if aliases == self._seen:
            return aliases, policy
        try:
            if self._operations.reconcile(self._seen_by) is not None:
                aliases, policy = read_targets(self._operations.registry)
        except ProdguardError as exc:
            _log.warning("alias move not recorded yet (retried at the next poll): %s", exc)
            return aliases, policy
        self._seen = aliases
        return aliases, policy
