"""Rollback triggers: explicit before deployment (config), evaluated on a version's live traffic
as anytime-valid sequential tests (``prodguard.rollout.sequential``), so the guard may look
every hour without inflating its error rate.

Each trigger is ``fired``, ``clean`` or ``inconclusive`` (the test's ``continue``: too little
data, no baseline, KPI not labelled yet) and carries its evidence (effect, interval, n, alpha,
observations still needed, and what it was compared with). The guard rolls back when any
trigger fires; promotion after baking needs all clean.

- prediction shift: two-sided test of the version's scores minus its reference's on the same
  requests, net of their staging difference; without paired rows, its own scores minus its
  staging mean;
- KPI: one-sided test of the version's cost minus its reference's on the same labelled
  requests; without paired rows, its own costs minus the staging KPI;
- error rate: when the version and its reference both answered callers over the span (a
  canary and the champion beside it), the difference of their failure rates (exact two-rate
  test, minimum effect ``error_rate``); otherwise (a shadow reference answers no caller, so its
  failures are not logged) a rate test of the last span against the staging rate;
- latency: on the paired single-row requests, the share slower than ``p99_latency_ms`` of the
  version minus the reference's (exact two-rate test), the shared stages (checks, features)
  counted for both and each its own model stage (shadow rows carry their scoring time);
  without paired timings, a rate test of the last span against 1 % of requests slower.

The prediction shift, the KPI and the paired latency fire when the paired difference is shown
beyond the declared effect (3 baseline sd; 5 % of the baseline KPI; 1 % more requests over the
budget), and are clean when shown within twice it; the error-rate tests fire when shown above
half their budget (the paired one: half of ``error_rate`` more failures than the reference), and
are clean when shown within it. Each result's ``threshold`` is the bound it fires at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from prodguard.config import KpiSettings, TriggerSettings
from prodguard.monitoring.baseline import Baseline, Finding, pair_spread
from prodguard.monitoring.monitor import PairedStates
from prodguard.rollout.sequential import (
    Decision,
    MeanState,
    MeanTest,
    RateDifferenceTest,
    RateTest,
)

TriggerStatus = Literal["clean", "fired", "inconclusive"]
LATENCY_SHARE = 0.01  # p99 <= budget  <=>  at most 1 % of requests slower than the budget
MAX_RATE = 0.999  # the highest budget a rate test can judge (rates live in [0, 1))
NULL_SHARE = 0.5  # the error-rate test fires beyond this share of its minimum effect
CLEAN_FACTOR = 2.0  # shift and KPI: fired beyond the declared effect, clean within twice it
PAIR_SPREAD_FACTOR = 1.5  # the declared shift between versions: at most this x their disagreement
MIN_FIRST_LOOK = 30  # the range of a mean test's first look (see first_look)
MAX_FIRST_LOOK = 100


@dataclass(frozen=True)
class TriggerResult:
    name: str
    status: TriggerStatus
    value: float | None
    threshold: float
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.value is None:
            return f"{self.name}: {self.status} ({self.reason})"
        return f"{self.name}: {self.reason or f'{self.value:.4g} vs {self.threshold:.4g}'}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe(triggers: TriggerSettings, kpi: KpiSettings) -> list[str]:
    """The triggers in words (printed by `prodguard status`, reviewable before deployment)."""
    shift = (
        f"{triggers.prediction_shift_min:g} in score"
        if triggers.prediction_shift_min is not None
        else f"{triggers.prediction_shift_sd:g} baseline sd"
    )
    lines = [
        f"sequential tests, alpha {triggers.alpha:g} per trigger (error bound however often the "
        "guard looks); a version is compared with its reference on the same requests (standby "
        "shadow rows, or the champion beside a canary), else with its staging baseline",
        f"prediction shift: |mean score difference - staging difference| shown beyond {shift}",
        f"business KPI {kpi.name}: shown worse than the reference by more than "
        f"{triggers.kpi_worse_pct:g}% of the baseline KPI (labelled requests served healthy)",
        f"error rate (5xx): shown {triggers.error_rate * NULL_SHARE:g} above the reference's "
        f"on the same span (else above staging), budget {triggers.error_rate:g}",
        f"latency: shown {LATENCY_SHARE:.0%} more requests slower than "
        f"{triggers.p99_latency_ms:g} ms than the reference on the same requests (else more than "
        f"{LATENCY_SHARE:.0%} of requests slower: p99 over the budget)",
        f"data incident (degraded requests > baseline + {triggers.degraded_margin:g}): model "
        "moves hold, a pipeline incident is alerted; only a paired difference beyond its whole "
        "minimum effect may still fire",
    ]
    if triggers.critical_psi_features:
        lines.append(f"critical PSI on {', '.join(triggers.critical_psi_features)}")
    lines.append(f"judged on at least {triggers.min_requests} requests of the version")
    return lines


def evaluate_triggers(
    states: PairedStates,
    baseline: Baseline | None,
    reference_baseline: Baseline | None,
    triggers: TriggerSettings,
    kpi_name: str,
    findings: Sequence[Finding] = (),
) -> list[TriggerResult]:
    """The triggers of one version from its test states (``findings``: the window's PSI
    findings, for ``critical_psi_features``)."""
    if states.rows < triggers.min_requests:
        reason = f"{states.rows} requests, {triggers.min_requests} needed"
        names = ["prediction_shift", "kpi", "error_rate", "latency_p99"]
        names += [f"psi:{f}" for f in triggers.critical_psi_features]
        return [TriggerResult(n, "inconclusive", None, 0.0, reason) for n in names]
    results = [
        _shift(states, baseline, reference_baseline, triggers),
        _kpi(states, baseline, triggers, kpi_name),
        _errors(states, baseline, triggers),
        _latency(states, triggers),
    ]
    return results + _psi(findings, triggers)


def first_look(triggers: TriggerSettings) -> int:
    """The fewest observations a mean test decides on: ``min_requests`` within [30, 100]. Its
    interval is asymptotic, so earlier looks cost error rate (measured: 1 % at 100, up to 2 %
    at 30 on skewed costs); a low-traffic project that lowers ``min_requests`` trades that for
    decisions within its traffic."""
    return max(MIN_FIRST_LOOK, min(triggers.min_requests, MAX_FIRST_LOOK))


def _compared(states: PairedStates, what: str) -> str:
    if states.paired:
        return f"v{states.version} minus v{states.reference} on the same requests{what}"
    return f"v{states.version} against its staging baseline (no paired reference rows)"


def _result(
    name: str, decision: Decision, compared: str, threshold: float | None = None
) -> TriggerResult:
    """``threshold``: the effect the trigger is read against (default its minimum effect)."""
    status: TriggerStatus = "inconclusive" if decision.verdict == "continue" else decision.verdict
    evidence = {**decision.to_json(), "compared": compared}
    # below a test's first look (its reason says so) the effect is not measured yet
    value = decision.estimate if decision.n and not decision.reason else None
    reason = decision.summary() + (f" ({decision.reason})" if decision.reason else "")
    bound = decision.min_effect if threshold is None else threshold
    return TriggerResult(name, status, value, bound, reason, evidence)


def _shifted(state: MeanState, offset: float) -> MeanState:
    """The state of the values minus ``offset``."""
    return MeanState(
        state.n,
        state.total - state.n * offset,
        state.squares - 2 * offset * state.total + state.n * offset * offset,
    )


def _mean(baseline: Baseline | None, metric: str) -> tuple[float, float] | None:
    known = baseline.metrics.get(metric) if baseline is not None else None
    return (known.mean, known.sd) if known is not None else None


def _shift(
    states: PairedStates,
    baseline: Baseline | None,
    reference_baseline: Baseline | None,
    triggers: TriggerSettings,
) -> TriggerResult:
    own = _mean(baseline, "score.mean")
    if own is None and states.classes:
        return _class_shift(states, baseline, reference_baseline, triggers)
    if own is None or baseline is None:
        if triggers.prediction_shift_min is None or not states.paired:
            threshold = triggers.prediction_shift_min or 0.0
            reason = "no staging baseline of the score"
            return TriggerResult("prediction_shift", "inconclusive", None, threshold, reason)
        declared, note = triggers.prediction_shift_min, ""
    else:
        declared, note = _declared(states, "score.mean", baseline, reference_baseline, triggers)
    decision, compared = _shift_decision(
        states,
        states.score,
        "score.mean",
        own,
        reference_baseline,
        declared,
        triggers.alpha,
        triggers,
    )
    return _result("prediction_shift", decision, compared + note, threshold=declared)


def _declared(
    states: PairedStates,
    metric: str,
    baseline: Baseline,
    reference_baseline: Baseline | None,
    triggers: TriggerSettings,
) -> tuple[float, str]:
    """The shift a version's ``metric`` is judged at, and a note when a pair bound set it.

    ``prediction_shift_min`` when declared; else ``prediction_shift_sd`` x the baseline's sd
    (floored: a staging period whose windows all had the same mean is no reason to leave the
    shift unmeasured), but, against a reference whose baseline sampled the same staging
    requests, at most ``PAIR_SPREAD_FACTOR`` x the sd of their per-request differences there
    (never below the metric's floor). Two versions that scored those requests alike cannot
    drift apart with the traffic mix further than their disagreement allows (for a mix moved by
    a chi-square divergence D from staging, the paired mean moves at most sqrt(D) x that sd),
    so a version that agreed with its reference in staging is judged at a finer shift."""
    if triggers.prediction_shift_min is not None:
        return triggers.prediction_shift_min, ""
    known = baseline.metrics[metric]
    declared = triggers.prediction_shift_sd * known.floored_sd(metric)
    spread = (
        pair_spread(baseline, reference_baseline, metric)
        if states.paired and reference_baseline is not None
        else None
    )
    if spread is None:
        return declared, ""
    bound = max(PAIR_SPREAD_FACTOR * spread.sd, known.floor(metric))
    if bound >= declared:
        return declared, ""
    return bound, (
        f"; declared shift {bound:.4g} (< {triggers.prediction_shift_sd:g} sd = {declared:.4g}): "
        f"{PAIR_SPREAD_FACTOR:g} x the sd of the two versions' differences on {spread.n} "
        "staging requests both scored"
    )


def _shift_decision(
    states: PairedStates,
    state: MeanState,
    metric: str,
    own: tuple[float, float] | None,
    reference_baseline: Baseline | None,
    declared: float,
    alpha: float,
    triggers: TriggerSettings,
) -> tuple[Decision, str]:
    """One score metric's shift test: paired, net of the two versions' staging difference;
    unpaired, against the version's staging mean."""
    # Two sound models' paired difference moves with the season by up to about the declared
    # shift (measured: 0.096 against 3 sd = 0.108 on the example replay), so the declared
    # shift is the null: the trigger fires when the difference is shown beyond it.
    test = MeanTest(
        declared * CLEAN_FACTOR,
        alpha=alpha,
        null_effect=declared,
        side="two-sided",
        min_n=first_look(triggers),
        fired_first=True,  # shown beyond the declared shift fires, even if within twice it
    )
    if states.paired:
        other = _mean(reference_baseline, metric)
        staging = own[0] - other[0] if own is not None and other is not None else 0.0
        note = "" if own is not None and other is not None else "; staging difference unknown"
        compared = _compared(states, f", net of their staging difference {staging:+.4g}{note}")
        return test.decide(_shifted(state, staging)), compared
    assert own is not None  # the caller judges an unpaired version only with its baseline
    return test.decide(_shifted(state, own[0])), _compared(states, "")


def _class_shift(
    states: PairedStates,
    baseline: Baseline | None,
    reference_baseline: Baseline | None,
    triggers: TriggerSettings,
) -> TriggerResult:
    """A multi-class version's shift: one two-sided test per class score (its probability, or
    its share of predictions when no probabilities were logged), each at ``alpha / classes``
    (Bonferroni: the chance that any class fires for a version as good as its reference stays
    within ``alpha``, however often the guard looks). Fired when any class fires, clean when
    every class is clean; the result shows the class that decided (or the most shifted)."""
    known = {m: _mean(baseline, m) for m in states.classes}
    metrics = [m for m, k in known.items() if k is not None]
    if baseline is None or not metrics:
        return TriggerResult(
            "prediction_shift", "inconclusive", None, 0.0, "no staging baseline of the classes"
        )
    alpha = triggers.alpha / len(metrics)
    decided = []
    for metric in metrics:
        own = known[metric]
        assert own is not None
        declared, note = _declared(states, metric, baseline, reference_baseline, triggers)
        decision, compared = _shift_decision(
            states,
            states.classes[metric],
            metric,
            own,
            reference_baseline,
            declared,
            alpha,
            triggers,
        )
        decided.append((metric, decision, declared, compared + note))

    def strength(item: tuple[str, Decision, float, str]) -> float:
        estimate = item[1].estimate
        return abs(estimate) / item[2] if estimate == estimate else 0.0

    verdicts = [d.verdict for _, d, _, _ in decided]
    wanted = "fired" if "fired" in verdicts else "continue" if "continue" in verdicts else "clean"
    metric, decision, declared, compared = max(
        (item for item in decided if item[1].verdict == wanted), key=strength
    )
    result = _result(
        "prediction_shift",
        decision,
        f"{metric}: {compared} (one test per class at alpha {triggers.alpha:g} / {len(metrics)})",
        threshold=declared,
    )
    per_class = {m: {**d.to_json(), "declared": x} for m, d, x, _ in decided}
    return replace(
        result,
        reason=f"{metric} {result.reason}",
        evidence={**result.evidence, "metric": metric, "classes": per_class},
    )


def _kpi(
    states: PairedStates, baseline: Baseline | None, triggers: TriggerSettings, name: str
) -> TriggerResult:
    known = _mean(baseline, f"kpi.{name}")
    if known is None or known[0] <= 0:
        return TriggerResult("kpi", "inconclusive", None, 0.0, "no KPI baseline")
    declared = triggers.kpi_worse_pct / 100 * known[0]
    # two sound models' cost per labelled request differs by a few percent from week to week
    # (measured: -0.03..+0.03 on a KPI of 0.2): the declared worsening is the null, so the
    # trigger fires when the version is shown worse than the reference by more than it
    test = MeanTest(
        declared * CLEAN_FACTOR,
        alpha=triggers.alpha,
        null_effect=declared,
        min_n=first_look(triggers),
        fired_first=True,
    )
    state = states.cost if states.paired else _shifted(states.cost, known[0])
    compared = _compared(states, " (cost per labelled request, inputs served healthy)")
    return _result("kpi", test.decide(state), compared, threshold=declared)


def _errors(
    states: PairedStates, baseline: Baseline | None, triggers: TriggerSettings
) -> TriggerResult:
    known = _mean(baseline, "rate.failed")
    budget = min(triggers.error_rate, MAX_RATE)  # a budget of 1 would leave no rate above it
    if states.failures is not None:
        # both answered callers over the same span: a failing service fails both alike, only
        # the difference is the version's own
        mine, theirs = states.failures
        paired = RateDifferenceTest(
            budget,
            alpha=triggers.alpha,
            null_effect=budget * NULL_SHARE,
            typical=min(max(known[0] if known is not None else 0.0, 1e-3), budget / 2),
        )
        compared = (
            f"v{states.version}'s failed requests minus v{states.reference}'s over the same span"
            f" ({theirs.events} of {theirs.n} for v{states.reference})"
        )
        decision = paired.decide(mine, theirs)
        return _result("error_rate", decision, compared, threshold=decision.null_effect)
    reference = min(known[0] if known is not None else 0.0, budget / 2)
    minimum = budget - reference
    test = RateTest(reference, minimum, alpha=triggers.alpha, null_effect=minimum * NULL_SHARE)
    why = (
        "a shadow answers no caller: its failures are not logged"
        if states.paired
        else "no paired reference rows"
    )
    compared = f"failed requests of the last span against the staging rate {reference:.4g} ({why})"
    decision = test.decide(states.errors)
    return _result("error_rate", decision, compared, threshold=decision.null_effect)


def _latency(states: PairedStates, triggers: TriggerSettings) -> TriggerResult:
    budget = f"{triggers.p99_latency_ms:g} ms"
    if states.slow_pairs is not None:
        # the same requests, each version's own model stage: a loaded machine or a slow
        # feature store slows both alike
        mine, theirs = states.slow_pairs
        paired = RateDifferenceTest(
            LATENCY_SHARE * CLEAN_FACTOR,
            alpha=triggers.alpha,
            null_effect=LATENCY_SHARE,
            typical=LATENCY_SHARE,
        )
        compared = _compared(
            states,
            f": share of requests slower than {budget} (shared stages, own model stage; "
            f"{theirs.events} of {theirs.n} for v{states.reference})",
        )
        decision = paired.decide(mine, theirs)
    else:
        alone = RateTest(LATENCY_SHARE, LATENCY_SHARE, alpha=triggers.alpha)
        compared = f"share of the last span's requests slower than {budget} against 1 %"
        decision = alone.decide(states.slow)
    return _result("latency_p99", decision, compared, threshold=decision.null_effect)


def _psi(findings: Sequence[Finding], triggers: TriggerSettings) -> list[TriggerResult]:
    by_metric = {f.metric: f for f in findings}
    results = []
    for feature in triggers.critical_psi_features:
        judged = [by_metric.get(f"{kind}.{feature}") for kind in ("psi", "shift")]
        known = [f for f in judged if f is not None and f.value is not None]
        name = f"psi:{feature}"
        if not known:
            results.append(TriggerResult(name, "inconclusive", None, 0.0, "not measured"))
            continue
        worst = max(known, key=lambda f: f.value or 0.0)
        fired = any(f.status == "critical" for f in known)
        results.append(
            TriggerResult(
                name,
                "fired" if fired else "clean",
                worst.value,
                worst.critical or 0.0,
                f"{worst.metric} is {worst.status}",
            )
        )
    return results
