"""Rich renderings shared by the CLI and the demo."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from prodguard.ingestion.pipeline import BatchResult
from prodguard.monitoring.baseline import Finding
from prodguard.monitoring.monitor import WindowReport


def ingest_table(batches: list[BatchResult], title: str = "ingest") -> Table:
    """One row per source: batches, rows written, quarantined batches, new rows, validation."""
    table = Table(title=title)
    for column in ("source", "batches", "rows written", "quarantined", "new rows", "validation"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name in dict.fromkeys(b.source for b in batches):
        mine = [b for b in batches if b.source == name]
        table.add_row(
            name,
            str(len(mine)),
            str(sum(b.rows for b in mine if b.status == "written")),
            str(sum(1 for b in mine if b.status == "quarantined")),
            str(sum(b.rows_added for b in mine)),
            f"{sum(b.validation_seconds for b in mine) * 1000:.0f} ms",
        )
    return table


def views_table(views: list[dict[str, Any]], online_rows: dict[str, int], title: str) -> Table:
    table = Table(title=title)
    for column in ("feature view", "version", "features", "ttl", "online entities"):
        table.add_column(column)
    for view in views:
        table.add_row(
            view["name"],
            f"v{view['version']}",
            str(view["features"]),
            f"{view['ttl_seconds'] / 3600:g} h",
            str(online_rows.get(view["name"], "-")),
        )
    return table


STATUS_STYLE = {
    "ok": "green",
    "warning": "yellow",
    "critical": "bold red",
    "insufficient_data": "dim",
    "inconclusive": "magenta",
    "no_baseline": "dim",
}


def monitor_table(reports: list[WindowReport], title: str = "monitor", limit: int = 4) -> Table:
    """One row per window and model version: status, and the worst findings first."""
    order = ["critical", "warning", "inconclusive", "insufficient_data", "no_baseline", "ok"]
    table = Table(title=title)
    for column in ("window", "version", "rows", "status", "findings"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for report in reports:
        notable = sorted(
            (f for f in report.findings if f.status not in ("ok", "no_baseline")),
            key=lambda f: order.index(f.status),
        )
        shown = [_finding_text(f) for f in notable[:limit]]
        if len(notable) > limit:
            shown.append(f"... {len(notable) - limit} more")
        if report.reason:
            shown.insert(0, report.reason)
        style = STATUS_STYLE.get(report.status, "")
        table.add_row(
            f"{report.start:%Y-%m-%d %H:%M} .. {report.end:%Y-%m-%d %H:%M}",
            "-" if report.model_version is None else f"v{report.model_version}",
            str(report.rows),
            f"[{style}]{report.status}[/]" if style else report.status,
            escape("\n".join(shown)) or "all within bounds",
        )
    return table


def _finding_text(finding: Finding) -> str:
    if finding.value is None:
        return f"{finding.metric}: {finding.reason}"
    bound = finding.critical if finding.status == "critical" else finding.warning
    limit = f" > {bound:.3g}" if bound is not None and finding.alerting else ""
    return f"{finding.metric} = {finding.value:.3g}{limit} ({finding.status})"
