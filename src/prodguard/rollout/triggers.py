"""Rollback triggers: explicit before deployment (config), evaluated on a version's live traffic.

Each trigger is ``fired``, ``clean`` or ``inconclusive`` (too little data, no baseline, KPI not
matured). The guard rolls back when any trigger fires; promotion after baking needs all clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prodguard.config import KpiSettings, TriggerSettings
from prodguard.monitoring.baseline import Baseline, Finding

TriggerStatus = Literal["clean", "fired", "inconclusive"]


@dataclass(frozen=True)
class TriggerResult:
    name: str
    status: TriggerStatus
    value: float | None
    threshold: float
    reason: str = ""

    def summary(self) -> str:
        if self.value is None:
            return f"{self.name}: {self.status} ({self.reason})"
        return f"{self.name}: {self.value:.4g} vs {self.threshold:.4g} ({self.status})"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe(triggers: TriggerSettings, kpi: KpiSettings) -> list[str]:
    """The triggers in words (printed by `prodguard status`, reviewable before deployment)."""
    lines = [
        f"prediction shift: |mean score - baseline| > {triggers.prediction_shift_sd:g} baseline sd",
        f"business KPI {kpi.name}: worse than baseline by > {triggers.kpi_worse_pct:g}% "
        f"(matured feedback, at least {kpi.min_labelled} labelled)",
        f"error rate (5xx) > {triggers.error_rate:g}",
        f"p99 latency of the request path > {triggers.p99_latency_ms:g} ms",
    ]
    if triggers.critical_psi_features:
        lines.append(f"critical PSI on {', '.join(triggers.critical_psi_features)}")
    lines.append(f"judged on at least {triggers.min_requests} requests of the version")
    return lines


def evaluate_triggers(
    findings: Sequence[Finding],
    rows: int,
    baseline: Baseline | None,
    triggers: TriggerSettings,
    kpi_name: str,
) -> list[TriggerResult]:
    by_metric = {f.metric: f for f in findings}
    if rows < triggers.min_requests:
        reason = f"{rows} requests, {triggers.min_requests} needed"
        names = ["prediction_shift", "kpi", "error_rate", "latency_p99"]
        names += [f"psi:{f}" for f in triggers.critical_psi_features]
        return [TriggerResult(n, "inconclusive", None, 0.0, reason) for n in names]
    results = [
        _shift(by_metric.get("score.shift_sd"), triggers.prediction_shift_sd),
        _kpi(by_metric.get(f"kpi.{kpi_name}"), baseline, kpi_name, triggers.kpi_worse_pct),
        _above("error_rate", by_metric.get("rate.failed"), triggers.error_rate),
        _above("latency_p99", by_metric.get("latency.total.p99"), triggers.p99_latency_ms),
    ]
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


def net_shift(shift: TriggerResult, reference_shift: float, reference: str) -> TriggerResult:
    """A prediction shift minus a reference model's shift on the same traffic (each in its own
    baseline's sd): what the model moved beyond what the world moved."""
    if shift.value is None:
        return shift
    net = shift.value - reference_shift
    return TriggerResult(
        shift.name,
        "fired" if abs(net) > shift.threshold else "clean",
        net,
        shift.threshold,
        f"{shift.value:+.2f} sd net of {reference_shift:+.2f} sd of {reference} answers on the "
        "same traffic",
    )


def _shift(finding: Finding | None, limit: float) -> TriggerResult:
    if finding is None or finding.value is None:
        return TriggerResult("prediction_shift", "inconclusive", None, limit, "no staging baseline")
    fired = abs(finding.value) > limit
    return TriggerResult("prediction_shift", "fired" if fired else "clean", finding.value, limit)


def _kpi(
    finding: Finding | None, baseline: Baseline | None, name: str, worse_pct: float
) -> TriggerResult:
    known = baseline.metrics.get(f"kpi.{name}") if baseline is not None else None
    if known is None or known.mean <= 0:
        return TriggerResult("kpi", "inconclusive", None, worse_pct, "no KPI baseline")
    if finding is None or finding.value is None:
        reason = finding.reason if finding is not None else "not measured"
        return TriggerResult("kpi", "inconclusive", None, worse_pct, reason)
    worse = (finding.value - known.mean) / known.mean * 100  # a cost: higher is worse
    return TriggerResult("kpi", "fired" if worse > worse_pct else "clean", worse, worse_pct)


def _above(name: str, finding: Finding | None, budget: float) -> TriggerResult:
    if finding is None or finding.value is None:
        reason = finding.reason if finding is not None else "not measured"
        return TriggerResult(name, "inconclusive", None, budget, reason)
    fired = finding.value > budget
    return TriggerResult(name, "fired" if fired else "clean", finding.value, budget)
