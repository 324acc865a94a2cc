"""From monitor reports to alerts (through the de-duplicating gate) and Prometheus gauges."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from prodguard.alerts import Alert
from prodguard.monitoring.baseline import Finding
from prodguard.monitoring.monitor import WindowReport

ALERT_TYPES = {
    "psi": "drift_alert",
    "shift": "drift_alert",
    "score": "prediction_alert",
    "kpi": "kpi_alert",
    "latency": "latency_alert",
    "rate": "error_rate_alert",
}
# what the monitors send (their counters start at 0: see alerts.PrometheusSink)
MONITOR_ALERT_TYPES = (*sorted(set(ALERT_TYPES.values())), "monitor_alert", "monitor_inconclusive")
STATUS_CODES = {
    "ok": 0,
    "warning": 1,
    "critical": 2,
    "insufficient_data": -1,
    "inconclusive": -2,
    "no_baseline": -3,
}


def condition_key(metric: str, version: int | None) -> str:
    return f"{metric}|v{version}"


def alerts_of(
    reports: Sequence[WindowReport], now: datetime
) -> tuple[list[tuple[str, Alert]], list[tuple[str, Alert]]]:
    """(conditions raised, conditions seen clear) in report order."""
    raised: list[tuple[str, Alert]] = []
    cleared: list[tuple[str, Alert]] = []
    for report in reports:
        monitor_key = condition_key("monitor", report.model_version)
        if report.status == "inconclusive" and report.reason:
            raised.append((monitor_key, _inconclusive(report, now)))
            continue
        cleared.append((monitor_key, _resolved("monitor", report, now, "monitor runs again")))
        for finding in report.findings:
            key = condition_key(finding.metric, report.model_version)
            if finding.alerting:
                raised.append((key, _alert(finding, report, now)))
            elif finding.status == "ok":
                cleared.append((key, _resolved(finding.metric, report, now, "back within bounds")))
    return raised, cleared


def retired(
    open_conditions: Mapping[str, Any], served: Collection[int], now: datetime
) -> list[tuple[str, Alert]]:
    """Resolutions of the open conditions of versions no longer served (rolled back,
    replaced): the monitors judge only what serves, so nothing else would ever clear them,
    and their incidents would stay open."""
    cleared: list[tuple[str, Alert]] = []
    for key in open_conditions:
        metric, _, version = key.rpartition("|v")
        if not version.isdigit() or int(version) in served:
            continue
        cleared.append(
            (
                key,
                Alert(
                    type="resolved",
                    severity="info",
                    source="monitor",
                    message=f"{metric}: v{version} is no longer served",
                    time=now,
                    metric=metric,
                    model_version=int(version),
                ),
            )
        )
    return cleared


def _alert(finding: Finding, report: WindowReport, now: datetime) -> Alert:
    family = finding.metric.split(".", 1)[0]
    threshold = finding.critical if finding.status == "critical" else finding.warning
    baseline = (
        f"; staging baseline {finding.baseline_mean:.4g} ± {finding.baseline_sd:.4g}"
        if finding.baseline_mean is not None and finding.baseline_sd is not None
        else ""
    )
    return Alert(
        type=ALERT_TYPES.get(family, "monitor_alert"),
        severity=finding.status,  # type: ignore[arg-type]
        source="monitor",
        message=f"{finding.metric} out of bounds{baseline}",
        time=now,
        metric=finding.metric,
        value=finding.value,
        threshold=threshold,
        model_version=report.model_version,
        window=report.window,
        details={"rows": report.rows, "warning": finding.warning, "critical": finding.critical},
    )


def _inconclusive(report: WindowReport, now: datetime) -> Alert:
    return Alert(
        type="monitor_inconclusive",
        severity="warning",
        source="monitor",
        message=report.reason,
        time=now,
        model_version=report.model_version,
        window=report.window,
    )


def _resolved(metric: str, report: WindowReport, now: datetime, why: str) -> Alert:
    return Alert(
        type="resolved",
        severity="info",
        source="monitor",
        message=f"{metric}: {why}",
        time=now,
        metric=metric,
        model_version=report.model_version,
        window=report.window,
    )


class MonitorGauges:
    """The latest value and status of every monitored metric, per model version."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        labels = ["metric", "model_version"]
        self.value = Gauge(
            "prodguard_monitor_value", "Latest monitored value", labels, registry=registry
        )
        self.status = Gauge(
            "prodguard_monitor_status",
            "Latest status: 0 ok, 1 warning, 2 critical, -1 insufficient data, "
            "-2 inconclusive, -3 no baseline",
            labels,
            registry=registry,
        )
        self.threshold = Gauge(
            "prodguard_monitor_threshold",
            "Current warning/critical threshold of a metric",
            [*labels, "level"],
            registry=registry,
        )
        self.window = Gauge(
            "prodguard_monitor_window_status",
            "Status of the latest window (codes as prodguard_monitor_status)",
            ["model_version"],
            registry=registry,
        )
        self.rows = Gauge(
            "prodguard_monitor_window_rows",
            "Predictions in the latest window",
            ["model_version"],
            registry=registry,
        )
        self.last_run = Gauge(
            "prodguard_monitor_last_run_timestamp_seconds",
            "When the monitors last ran (Unix time)",
            registry=registry,
        )

    def publish(self, reports: Sequence[WindowReport], now: datetime) -> None:
        self.last_run.set(now.timestamp())
        for report in reports:
            version = str(report.model_version)
            self.window.labels(version).set(STATUS_CODES[report.status])
            self.rows.labels(version).set(report.rows)
            for f in report.findings:
                self.status.labels(f.metric, version).set(STATUS_CODES[f.status])
                if f.value is not None:
                    self.value.labels(f.metric, version).set(f.value)
                for level, bound in (("warning", f.warning), ("critical", f.critical)):
                    if bound is not None:
                        self.threshold.labels(f.metric, version, level).set(bound)
