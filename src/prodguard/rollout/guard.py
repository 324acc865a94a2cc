"""The guard: judges the champion's live traffic against its rollback triggers and, when one
fires, moves ``champion`` back to the standby (audited, with the trigger and its evidence) and
alerts. Every replica follows the aliases within its poll interval. It also bakes a rollout in
progress (canary or shadow): a fired trigger aborts it, a clean step that baked long enough and
saw enough requests moves on (or promotes after the last one), anything inconclusive holds.

The prediction shift is judged net of a reference model on the same traffic when one is
measured: the champion against the standby's shadow scores, a canary against the champion (its
answers beside the canary and its shadow scores of the canary's rows). A change
in the world moves every model's scores alike; only a shift the reference does not share is the
model's own (a world that changed is the monitors' drift alert, and a rollback would not help).

Safe to run twice: the rollback states the aliases it read, so of two guards one moves and the
other finds them moved (``moved_elsewhere``), never a double move.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from prodguard.alerts import Alert, Alerter
from prodguard.clock import Clock
from prodguard.config import Settings
from prodguard.errors import ConcurrentUpdateError, PromotionRefused
from prodguard.monitoring.monitor import Monitor, WindowReport, replace_finding
from prodguard.registry.audit import AuditRecord
from prodguard.registry.operations import AliasState, RegistryOperations
from prodguard.rollout.policy import TrafficPolicy
from prodguard.rollout.triggers import TriggerResult, evaluate_triggers, net_shift
from prodguard.serving.prediction_log import ANSWERS, Roles

GUARD_ACTOR = "prodguard-guard"
REFERENCE_MIN_ROWS = 50  # a reference's mean score over fewer answers is too noisy to net
Action = Literal[
    "none",
    "hold",
    "rolled_back",
    "no_standby",
    "moved_elsewhere",
    "no_champion",
    "aborted",
    "advanced",
    "promoted",
    "restarted",
    "ended",
]


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
        self._stranded: set[int] = set()  # champions alerted as fired without a standby

    def check(self) -> list[GuardDecision]:
        """Judge the champion (rolling back on a fired trigger), then a rollout in progress
        (abort, hold, next step or promotion)."""
        now = self._clock.now()
        # a move without an audit record (a guard killed mid-move, the MLflow UI) is recorded
        # before anything is judged, so the evidence below reads a true history
        self._operations.reconcile(self._actor)
        state, policy = self._operations.targets()  # one read for both
        champion = state.champion
        if champion is None:
            return [GuardDecision("no_champion", now, None, reason="no champion is set")]
        live = self._live_start(champion, now)
        decision = self._evaluate(champion, live, now, ANSWERS)
        if state.standby is not None:
            decision = self._net_shift(decision, state.standby, live, now, ("shadow",))
        fired = decision.fired
        if fired:
            summary = "; ".join(t.summary() for t in fired)
            if state.standby is None:
                if champion not in self._stranded:  # alert once per version, not every check
                    self._stranded.add(champion)
                    message = f"rollback trigger fired but no standby: {summary}"
                    self._alert(champion, message, decision)
                decision = replace(
                    decision, action="no_standby", reason="no standby to roll back to"
                )
            else:
                decision = self._roll_back(state, decision, summary)
        decisions = [decision]
        if policy.active and decision.action != "rolled_back":  # nothing moved since the read
            decisions.append(self._bake(state, policy, now))
        return decisions

    def _evaluate(
        self, version: int, start: datetime, now: datetime, roles: Roles
    ) -> GuardDecision:
        report = self._judge(version, start, now, roles)
        triggers = evaluate_triggers(
            report.findings,
            report.rows,
            self._monitor.reference(version).baseline,
            self._settings.rollout.triggers,
            self._settings.monitoring.kpi.name,
        )
        held = any(t.status == "inconclusive" for t in triggers)
        return GuardDecision(
            "hold" if held else "none",
            now,
            version,
            triggers,
            report.window,
            report.rows,
            report.reason,
        )

    def _net_shift(
        self,
        decision: GuardDecision,
        reference: int,
        start: datetime,
        now: datetime,
        roles: Roles,
    ) -> GuardDecision:
        """The prediction shift minus the reference's own shift over the same window (each
        against its own staging baseline); unchanged when the reference is not measured."""
        shift = next((t for t in decision.triggers if t.name == "prediction_shift"), None)
        if shift is None or shift.value is None or reference == decision.version:
            return decision
        if self._monitor.reference(reference).baseline is None:
            return decision
        report = self._monitor.judge(start, now, reference, True, REFERENCE_MIN_ROWS, roles)
        found = report.finding("score.shift_sd")
        if found is None or found.value is None:
            return decision
        labels = "/".join((roles,) if isinstance(roles, str) else roles or ())
        netted = net_shift(shift, found.value, f"v{reference} ({report.rows} {labels})")
        triggers = [netted if t is shift else t for t in decision.triggers]
        return replace(decision, triggers=triggers)

    def _live_start(self, version: int, now: datetime) -> datetime:
        """Since the version became champion, at most ``guard_minutes`` back."""
        earliest = now - timedelta(minutes=self._settings.rollout.guard_minutes)
        since = self._operations.live_since(version)
        # unknown, or later than now (another host's clock): the whole guard window
        return since if since is not None and earliest < since <= now else earliest

    def _judge(self, version: int, start: datetime, now: datetime, roles: Roles) -> WindowReport:
        """The version's traffic in ``[start, now)``; its KPI from the part old enough for
        feedback to have matured."""
        minimum = self._settings.rollout.triggers.min_requests
        maturity = timedelta(hours=self._settings.monitoring.kpi.maturity_hours)
        report = self._monitor.judge(
            start, now, version, maturity.total_seconds() == 0, minimum, roles
        )
        kpi = f"kpi.{self._settings.monitoring.kpi.name}"
        if maturity.total_seconds() > 0 and now - maturity > start:
            matured = self._monitor.judge(start, now - maturity, version, True, 1, roles).findings
            found = next((f for f in matured if f.metric == kpi), None)
            if found is not None:
                report = replace_finding(report, found)
        return report

    # ---- baking a rollout ------------------------------------------------------------------

    def _bake(self, state: AliasState, policy: TrafficPolicy, now: datetime) -> GuardDecision:
        """pass -> next step or promote; fail -> abort (out of traffic, alert); inconclusive or
        still baking -> hold. A new candidate restarts the analysis."""
        version = policy.version
        assert version is not None
        if version == state.champion:
            self._set_traffic(TrafficPolicy(), policy, f"v{version} is champion: rollout ended")
            return GuardDecision("ended", now, version, reason="the rollout version is champion")
        if state.candidate is not None and state.candidate != version:
            restarted = replace(
                policy, version=state.candidate, step=0, step_started=now.isoformat()
            )
            self._set_traffic(
                restarted, policy, f"new candidate v{state.candidate}: analysis restarted"
            )
            return GuardDecision("restarted", now, state.candidate, reason=restarted.describe())
        started = policy.started() or now
        roles: Roles = ("shadow",) if policy.mode == "shadow" else ("canary",)
        decision = self._evaluate(version, started, now, roles)
        if state.champion is not None and policy.mode == "canary":
            # the champion's answers beside the canary, and its shadow scores of canary rows
            reference_roles: Roles = ("champion", "shadow")
            decision = self._net_shift(decision, state.champion, started, now, reference_roles)
        fired = decision.fired
        if fired:
            summary = "; ".join(t.summary() for t in fired)
            evidence = {"triggers": [t.to_json() for t in decision.triggers], "rows": decision.rows}
            record = self._set_traffic(
                TrafficPolicy(), policy, f"rollout of v{version} aborted: {summary}", evidence
            )
            self._alert(
                version, f"rollout of v{version} aborted: {summary}", decision, "rollout_aborted"
            )
            return replace(decision, action="aborted", reason=summary, audit_id=record.id)
        rollout = self._settings.rollout
        waiting = []
        if now - started < timedelta(minutes=rollout.bake_minutes):
            left = timedelta(minutes=rollout.bake_minutes) - (now - started)
            waiting.append(f"baking {left.total_seconds() / 60:.0f} min more")
        if decision.rows < rollout.bake_min_requests:
            waiting.append(f"{decision.rows} of {rollout.bake_min_requests} requests")
        waiting += [t.summary() for t in decision.triggers if t.status == "inconclusive"]
        if waiting:
            return replace(decision, action="hold", reason="; ".join(waiting))
        if not policy.last_step:
            advanced = replace(policy, step=policy.step + 1, step_started=now.isoformat())
            record = self._set_traffic(
                advanced, policy, f"step {policy.step + 1} passed: {advanced.describe()}"
            )
            return replace(
                decision, action="advanced", reason=advanced.describe(), audit_id=record.id
            )
        try:
            record = self._operations.promote(
                self._actor,
                f"baked through {policy.describe()}: all triggers clean",
                version=version,
                expected=state,
            )
        except (PromotionRefused, ConcurrentUpdateError) as exc:
            return replace(decision, action="hold", reason=f"promotion refused: {exc}")
        self._set_traffic(TrafficPolicy(), policy, f"v{version} promoted after baking")
        return replace(decision, action="promoted", reason=policy.describe(), audit_id=record.id)

    def _set_traffic(
        self,
        policy: TrafficPolicy,
        expected: TrafficPolicy,
        reason: str,
        evidence: dict[str, Any] | None = None,
    ) -> AuditRecord:
        return self._operations.set_traffic(policy, self._actor, reason, evidence, expected)

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
            return replace(decision, action="moved_elsewhere", reason=str(exc))
        self._alert(
            decision.version,
            f"rolled back v{decision.version} -> v{state.standby}: {summary}",
            decision,
            kind="rollback",
        )
        return replace(decision, action="rolled_back", reason=summary, audit_id=record.id)

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
