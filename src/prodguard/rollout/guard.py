"""The guard: judges the champion's live traffic against its rollback triggers and, when one
fires, moves ``champion`` back to the standby (audited, with the trigger and its evidence) and
alerts. Every replica follows the aliases within its poll interval. It also bakes a rollout in
progress (canary or shadow): a fired trigger aborts it, a clean step that baked long enough and
saw enough requests moves on (or promotes after the last one), anything inconclusive holds.

Each trigger is a sequential test (``prodguard.rollout.triggers``) on the version's requests
paired with a reference's answers to the same requests: the champion against the standby's
shadow scores, a canary against the champion (its answers beside the canary and its shadow
scores of the canary's rows). A change in the world moves every model's scores alike; only a
difference the reference does not share is the model's own. A test starts afresh when the
version or its reference changes.

A data incident (the last hour's answers — the last 50 in a quiet hour — with features the
store could not serve, shown by a rate test at ``alpha`` above the baseline's share plus
``degraded_margin``: a quarantined, stale or unavailable source) is not a model fault: model
moves hold (no rollback on an unpaired trigger, no canary step, no promotion) and a pipeline
incident is alerted naming the features. A paired difference shown beyond its whole minimum
effect still rolls back: both versions eat the same bad data, though not alike (degraded inputs
move two models apart by amounts staging never measured), hence the whole effect, not half.

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
from prodguard.monitoring.monitor import Monitor, PairedStates, WindowReport, replace_finding
from prodguard.registry.audit import AuditRecord
from prodguard.registry.operations import AliasState, RegistryOperations
from prodguard.rollout.policy import TrafficPolicy
from prodguard.rollout.sequential import RateTest
from prodguard.rollout.triggers import TriggerResult, evaluate_triggers
from prodguard.serving.prediction_log import ANSWERS, Roles

GUARD_ACTOR = "prodguard-guard"
INCIDENT_MINUTES = 60  # a data incident is judged on the last hour of answers...
INCIDENT_MIN_ROWS = 50  # ...or on the last 50 answers when the hour had fewer
MIN_INCIDENT_MARGIN = 0.01  # a baseline degraded on 97 % or more of its rows cannot show more
PAIRED_TRIGGERS = ("prediction_shift", "kpi")  # differences both versions' bad data cancels
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
    paired: bool = False  # the triggers compare the version with a reference on the same rows
    incident: str = ""  # a data incident holding model moves (its description)

    @property
    def fired(self) -> list[TriggerResult]:
        return [t for t in self.triggers if t.status == "fired"]

    def held_by_incident(self) -> GuardDecision:
        """During a data incident only a paired difference shown beyond its whole minimum
        effect may move a model (degraded inputs move two models apart by amounts staging
        never measured, so beyond half of it is not evidence of a fault): the other fired
        triggers are held (inconclusive, with the incident as reason)."""
        if not self.incident:
            return self
        triggers = [
            t
            if t.status != "fired" or (self.paired and _beyond_minimum(t))
            else replace(t, status="inconclusive", reason=f"held: {self.incident}; {t.reason}")
            for t in self.triggers
        ]
        return replace(self, triggers=triggers)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "time": self.time.isoformat(),
            "version": self.version,
            "window": self.window,
            "rows": self.rows,
            "reason": self.reason,
            "audit_id": self.audit_id,
            "paired": self.paired,
            "incident": self.incident,
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
        self._incident: frozenset[str] = frozenset()  # the open data incident's features

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
        if state.standby is not None:  # a new standby is a new reference: a new test
            since = self._operations.standby_since(state.standby)
            live = since if since is not None and live < since <= now else live
        incident = self._data_incident(champion, now)
        decision = self._evaluate(champion, live, now, ANSWERS, state.standby, ("shadow",))
        decision = replace(decision, incident=incident).held_by_incident()
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
        if incident and not fired:
            decision = replace(decision, action="hold", reason=f"model moves held: {incident}")
        decisions = [decision]
        if policy.active and decision.action != "rolled_back":  # nothing moved since the read
            decisions.append(self._bake(state, policy, now))
        return decisions

    def _evaluate(
        self,
        version: int,
        start: datetime,
        now: datetime,
        roles: Roles,
        reference: int | None,
        reference_roles: Roles,
    ) -> GuardDecision:
        """The version's triggers on ``[start, now)``, paired with ``reference``'s rows of the
        same requests when there are any."""
        triggers_settings = self._settings.rollout.triggers
        baseline = self._monitor.reference(version).baseline
        other = self._monitor.reference(reference).baseline if reference is not None else None
        states = self._states(version, reference, start, now, roles, reference_roles)
        findings = []
        window = f"{start.isoformat()}..{now.isoformat()}"
        if triggers_settings.critical_psi_features:
            report = self._judge(version, start, now, roles)
            findings, window = report.findings, report.window
        triggers = evaluate_triggers(
            states,
            baseline,
            other,
            triggers_settings,
            self._settings.monitoring.kpi.name,
            findings,
        )
        held = any(t.status == "inconclusive" for t in triggers)
        return GuardDecision(
            "hold" if held else "none",
            now,
            version,
            triggers,
            window,
            states.rows,
            "",
            paired=states.paired,
        )

    def _states(
        self,
        version: int,
        reference: int | None,
        start: datetime,
        now: datetime,
        roles: Roles,
        reference_roles: Roles,
    ) -> PairedStates:
        """The version's test states; its costs only from requests old enough for feedback to
        have matured."""
        budget = self._settings.rollout.triggers.p99_latency_ms
        recent = now - timedelta(minutes=self._settings.rollout.guard_minutes)
        states = self._monitor.paired(
            start, now, version, reference, roles, reference_roles, budget, recent=recent
        )
        maturity = timedelta(hours=self._settings.monitoring.kpi.maturity_hours)
        if maturity.total_seconds() == 0:
            return states
        if now - maturity <= start:
            return replace(states, cost=type(states.cost)())
        matured = self._monitor.paired(
            start, now - maturity, version, reference, roles, reference_roles, budget
        )
        if matured.paired != states.paired:  # compare like with like
            return replace(states, cost=type(states.cost)())
        return replace(states, cost=matured.cost)

    def _data_incident(self, version: int, now: datetime) -> str:
        """A description of the data incident under way ("" when none), alerted once as a
        pipeline incident when it opens."""
        degraded, features = self._monitor.degraded(
            now - timedelta(minutes=INCIDENT_MINUTES),
            now,
            INCIDENT_MIN_ROWS,
            oldest=now - timedelta(minutes=self._settings.rollout.guard_minutes),
        )
        baseline = self._monitor.reference(version).baseline
        known = baseline.metrics.get("rate.degraded") if baseline is not None else None
        usual = known.mean if known is not None else 0.0
        settings = self._settings.rollout.triggers
        margin = min(settings.degraded_margin, (1 - usual) / 3)
        if degraded.n < INCIDENT_MIN_ROWS // 2 or margin < MIN_INCIDENT_MARGIN:
            # too few requests, or (nearly) every request was degraded in staging too: the
            # baseline leaves no room to tell an incident from the usual
            self._incident = frozenset()
            return ""
        # shown above the usual share plus the margin, not merely seen above it in one hour
        test = RateTest(usual, 2 * margin, alpha=settings.alpha, null_effect=margin)
        if test.decide(degraded).verdict != "fired":
            self._incident = frozenset()
            return ""
        named = sorted(features, key=lambda f: (-features[f], f))
        description = (
            f"data incident: {degraded.rate:.0%} of the last {degraded.n} requests have "
            f"degraded features (baseline {usual:.0%}): {', '.join(named[:10])}"
            + (f" and {len(named) - 10} more" if len(named) > 10 else "")
        )
        if frozenset(named) != self._incident:
            self._incident = frozenset(named)
            self._alerter.send(
                Alert(
                    type="pipeline_incident",
                    severity="warning",
                    source="guard",
                    message=f"{description}; model moves held (not a model fault)",
                    time=now,
                    metric="rate.degraded",
                    value=degraded.rate,
                    threshold=usual + margin,
                    model_version=version,
                    details={"features": {f: features[f] for f in named}, "rows": degraded.n},
                )
            )
        return description

    def _live_start(self, version: int, now: datetime) -> datetime:
        """Since the version became champion: a sequential test's sample grows from the change
        (a sliding window would re-test overlapping samples, and at low traffic never gather
        enough); ``guard_minutes`` back when that time is unknown."""
        earliest = now - timedelta(minutes=self._settings.rollout.guard_minutes)
        since = self._operations.live_since(version)
        # unknown, or later than now (another host's clock): the guard window
        return since if since is not None and since <= now else earliest

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
        # the champion's answers beside the canary, and its shadow scores of canary rows
        reference_roles: Roles = ("champion", "shadow")
        decision = self._evaluate(version, started, now, roles, state.champion, reference_roles)
        incident = self._data_incident(state.champion or version, now)
        decision = replace(decision, incident=incident).held_by_incident()
        fired = decision.fired
        if fired:
            summary = "; ".join(t.summary() for t in fired)
            evidence = _evidence(decision)
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
        if incident:
            waiting.append(f"model moves held: {incident}")
        # a step passes when no trigger fired on enough requests: waiting for every test to be
        # shown clean would hold a canary for ~100k labels. A trigger not measured at all (no
        # baseline, no matured label yet) still holds it.
        waiting += [
            t.summary() for t in decision.triggers if t.status != "clean" and t.value is None
        ]
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
                f"baked through {policy.describe()}: no trigger fired",
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
        evidence = _evidence(decision)
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
                details=_evidence(decision),
            )
        )


def _beyond_minimum(trigger: TriggerResult) -> bool:
    """A paired trigger whose interval lies entirely beyond its minimum effect."""
    if trigger.name not in PAIRED_TRIGGERS:
        return False
    low, high = trigger.evidence.get("low"), trigger.evidence.get("high")
    minimum = trigger.evidence.get("min_effect")
    if low is None or high is None or minimum is None:
        return False
    return bool(low > minimum or high < -minimum)


def _evidence(decision: GuardDecision) -> dict[str, Any]:
    """What an audit record and an alert keep of a decision: every trigger with its test's
    evidence (effect, interval, n, alpha, observations still needed, what was compared)."""
    return {
        "triggers": [t.to_json() for t in decision.triggers],
        "window": decision.window,
        "rows": decision.rows,
        "paired": decision.paired,
        "incident": decision.incident,
    }
