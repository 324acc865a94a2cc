"""The guard: judges the champion's live traffic against its rollback triggers and, when one
fires, moves ``champion`` back to the standby (audited, with the trigger and its evidence) and
alerts. Every replica follows the aliases within its poll interval.

Safe to run twice: the rollback states the aliases it read, so of two guards one moves and the
other finds them moved (``moved_elsewhere``), never a double move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from prodguard.alerts import Alert, Alerter
from prodguard.clock import Clock
from prodguard.config import Settings
from prodguard.errors import ConcurrentUpdateError
from prodguard.monitoring.baseline import Finding
from prodguard.monitoring.monitor import Monitor, WindowReport
from prodguard.registry.operations import AliasState, RegistryOperations
from prodguard.rollout.triggers import TriggerResult, evaluate_triggers

GUARD_ACTOR = "prodguard-guard"
Action = Literal["none", "hold", "rolled_back", "no_standby", "moved_elsewhere", "no_champion"]


@dataclass(frozen=True)
class GuardDecision:
    action: Action
    time: datetime
    version: int | None
    triggers: list[TriggerResult] = field(default_factory=list)
    window: str = ""
    rows: int = 0
    reason: str = ""
    audit_id: int | None = None

    @property
    def fired(self) -> list[TriggerResult]:
        return [t for t in self.triggers if t.status == "fired"]

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "time": self.time.isoformat(),
            "version": self.version,
            "window": self.window,
            "rows": self.rows,
            "reason": self.reason,
            "audit_id": self.audit_id,
            "triggers": [t.to_json() for t in self.triggers],
        }


class Guard:
    def __init__(
        self,
        operations: RegistryOperations,
        monitor: Monitor,
        settings: Settings,
        alerter: Alerter,
        clock: Clock,
        actor: str = GUARD_ACTOR,
    ) -> None:
        self._operations = operations
        self._monitor = monitor
        self._settings = settings
        self._alerter = alerter
        self._clock = clock
        self._actor = actor

    def check(self) -> GuardDecision:
        now = self._clock.now()
        state = self._operations.state()
        champion = state.champion
        if champion is None:
            return GuardDecision("no_champion", now, None, reason="no champion is set")
        report = self._judge(champion, now)
        baseline = self._monitor.reference(champion).baseline
        triggers = evaluate_triggers(
            report.findings,
            report.rows,
            baseline,
            self._settings.rollout.triggers,
            self._settings.monitoring.kpi.name,
        )
        decision = GuardDecision(
            "none", now, champion, triggers, report.window, report.rows, report.reason
        )
        fired = decision.fired
        if not fired:
            held = any(t.status == "inconclusive" for t in triggers)
            return _replace(decision, action="hold" if held else "none")
        summary = "; ".join(t.summary() for t in fired)
        if state.standby is None:
            self._alert(champion, f"rollback trigger fired but no standby: {summary}", decision)
            return _replace(decision, action="no_standby", reason="no standby to roll back to")
        return self._roll_back(state, decision, summary)

    def _judge(self, version: int, now: datetime) -> WindowReport:
        """The version's traffic since it became champion (at most ``guard_minutes`` back); its
        KPI from the part old enough for feedback to have matured."""
        rollout = self._settings.rollout
        earliest = now - timedelta(minutes=rollout.guard_minutes)
        since = self._operations.live_since(version)
        # unknown, or later than now (another host's clock): the whole guard window
        start = since if since is not None and earliest < since <= now else earliest
        minimum = rollout.triggers.min_requests
        report = self._monitor.judge(start, now, version, matured=False, min_rows=minimum)
        maturity = timedelta(hours=self._settings.monitoring.kpi.maturity_hours)
        kpi = f"kpi.{self._settings.monitoring.kpi.name}"
        if maturity.total_seconds() > 0 and now - maturity > start:
            matured = self._monitor.judge(start, now - maturity, version, True, 1).findings
            found = next((f for f in matured if f.metric == kpi), None)
            if found is not None:
                report = _with_finding(report, found)
        elif maturity.total_seconds() == 0:
            report = self._monitor.judge(start, now, version, matured=True, min_rows=minimum)
        return report

    def _roll_back(self, state: AliasState, decision: GuardDecision, summary: str) -> GuardDecision:
        evidence = {
            "triggers": [t.to_json() for t in decision.triggers],
            "window": decision.window,
            "rows": decision.rows,
        }
        try:
            record = self._operations.rollback(
                self._actor, f"rollback trigger fired: {summary}", evidence, expected=state
            )
        except ConcurrentUpdateError as exc:
            return _replace(decision, action="moved_elsewhere", reason=str(exc))
        self._alert(
            decision.version,
            f"rolled back v{decision.version} -> v{state.standby}: {summary}",
            decision,
            kind="rollback",
        )
        return _replace(decision, action="rolled_back", reason=summary, audit_id=record.id)

    def _alert(
        self, version: int | None, message: str, decision: GuardDecision, kind: str = "trigger"
    ) -> None:
        first = decision.fired[0] if decision.fired else None
        self._alerter.send(
            Alert(
                type=kind,
                severity="critical",
                source="guard",
                message=message,
                time=decision.time,
                metric=first.name if first else None,
                value=first.value if first else None,
                threshold=first.threshold if first else None,
                model_version=version,
                window=decision.window,
                details={"triggers": [t.to_json() for t in decision.fired]},
            )
        )


def _replace(decision: GuardDecision, **changes: Any) -> GuardDecision:
    return GuardDecision(**{**decision.__dict__, **changes})


def _with_finding(report: WindowReport, finding: Finding) -> WindowReport:
    findings = [finding if f.metric == finding.metric else f for f in report.findings]
    return WindowReport(
        report.start,
        report.end,
        report.model_version,
        report.rows,
        report.status,
        findings,
        report.reason,
        report.sampled_every,
    )
