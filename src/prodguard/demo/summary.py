"""The end of the demo: an HTML page with plots (inline SVG, no scripts, nothing fetched) and a
terminal summary of what happened and where everything is."""

from __future__ import annotations

import html
import io
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from prodguard import app, wiring
from prodguard.config import Settings
from prodguard.demo.runner import DemoRun
from prodguard.rollout.guard import GUARD_ACTOR
from prodguard.serving.prediction_log import ANSWERS

MARKERS = {  # event type -> (colour, marker) on the timeline
    "promotion": ("tab:green", "^"),
    "rollback": ("tab:red", "v"),
    "traffic": ("tab:olive", ">"),
    "quarantine": ("tab:purple", "s"),
    "schema_change": ("tab:purple", "D"),
    "drift_alert": ("tab:orange", "o"),
    "trigger": ("tab:red", "x"),
}


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; set here, never at import time
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    _figure().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: inline in HTML


def findings_frame(reports: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (window, version, metric) of the monitor runs."""
    rows = [
        {
            "end": pd.Timestamp(r["end"]),
            "version": r["model_version"],
            "metric": f["metric"],
            "value": f["value"],
            "status": f["status"],
        }
        for r in reports
        for f in r["findings"]
        if f.get("value") is not None
    ]
    return pd.DataFrame(rows, columns=["end", "version", "metric", "value", "status"])


def _gapped(frame: pd.DataFrame) -> pd.DataFrame:
    """Break lines across days that were not served (NaN rows at gaps)."""
    frame = frame.sort_values("end")
    gaps = frame["end"].diff() > pd.Timedelta(days=1)
    if not gaps.any():
        return frame
    breaks = frame[gaps].assign(value=float("nan"))
    breaks["end"] = breaks["end"] - pd.Timedelta(hours=12)
    return pd.concat([frame, breaks]).sort_values("end")


def _lines(
    found: pd.DataFrame,
    metrics: dict[str, str],
    title: str,
    ylabel: str,
    bands: tuple[float, ...] = (),
) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for metric, label in metrics.items():
        series = found[found["metric"] == metric]
        for version, part in series.groupby("version"):
            points = _gapped(part)
            ax.plot(points["end"], points["value"], ".-", label=f"{label} v{version}", lw=1)
    for band in bands:
        ax.axhline(band, color="grey", ls="--", lw=0.8)
    if bands:
        ax.set_yscale("symlog", linthresh=min(bands))  # the bands stay visible beside large values
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ax.has_data():
        ax.legend(fontsize=7, ncol=4)
    else:
        ax.text(0.5, 0.5, "no judged windows", ha="center", transform=ax.transAxes)
    fig.autofmt_xdate()
    return _svg(fig)


def _psi_plot(found: pd.DataFrame, warning: float, critical: float) -> str:
    psi = found[found["metric"].str.startswith("psi.")]
    top = psi.groupby("metric")["value"].max().sort_values(ascending=False).head(6).index
    return _lines(
        psi,
        {m: m[4:] for m in top},
        "PSI per feature vs training (6 most drifted)",
        "PSI",
        (warning, critical),
    )


def _score_plot(log: pd.DataFrame, model: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for version, part in log.groupby("version"):
        ax.hist(
            part["probability"],
            bins=40,
            range=(0, 1),
            histtype="step",
            density=True,
            label=f"v{version} ({len(part):,} answers)",
        )
    ax.set_title(f"{model}: predicted probability per model version (answers served)")
    ax.set_xlabel("probability")
    ax.legend(fontsize=8)
    return _svg(fig)


def _timeline(events: list[dict[str, Any]]) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(9, 2.8))
    kinds = [k for k in MARKERS if any(e["type"] == k for e in events)]
    for row, kind in enumerate(kinds):
        times = [pd.Timestamp(e["time"]) for e in events if e["type"] == kind]
        colour, marker = MARKERS[kind]
        ax.scatter(times, [row] * len(times), color=colour, marker=marker, s=40)
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_title("Timeline: promotions, traffic moves, alerts, rollbacks (simulated time)")
    fig.autofmt_xdate()
    return _svg(fig)


def write_summary(run: DemoRun) -> Path:
    settings = run.settings
    found = findings_frame(run.monitor_reports)
    log = wiring.prediction_log(settings)
    try:
        served = log.window(pd.Timestamp("1970-01-01", tz="UTC"), run.now, role=ANSWERS)
    finally:
        log.close()
    psi = settings.monitoring.psi
    kpi = f"kpi.{settings.monitoring.kpi.name}"
    model = settings.model.name if settings.model else settings.project.name
    plots = [
        ("Drift", _psi_plot(found, psi.warning, psi.critical)),
        ("Predictions", _score_plot(served, model)),
        (
            "Business KPI",
            _lines(
                found,
                {kpi: settings.monitoring.kpi.name},
                "KPI per day (matured feedback; lower is better)",
                "cost",
            ),
        ),
        (
            "Latency",
            _lines(
                found,
                {f"latency.total.{q}": q for q in ("p50", "p95", "p99")},
                "End-to-end latency of single requests",
                "ms",
            ),
        ),
        ("Timeline", _timeline(run.events.events)),
    ]
    page = run.output / "summary.html"
    tables = [
        ("Incidents (alerts grouped by cause)", _incidents_table(settings)),
        ("The guard's decisions and their evidence", _decisions_table(settings)),
    ]
    page.write_text(_page(run, plots, tables), encoding="utf-8")
    return page


def _table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<td><b>{esc(h)}</b></td>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _incidents_table(settings: Settings) -> str:
    rows = [
        [
            i["first_seen"][:16],
            (i["last_seen"] or "")[:16],
            i["severity"],
            i["state"],
            str(i["members"]),
            i["cause"],
        ]
        for i in app.incidents(settings)
    ]
    return _table(["first seen", "last seen", "severity", "state", "alerts", "cause"], rows)


def _decisions_table(settings: Settings) -> str:
    """Every alias or traffic move the guard made, with the tests that decided it."""
    rows = []
    for record in wiring.registry_operations(settings).history():
        if record.actor != GUARD_ACTOR:
            continue
        triggers = (record.evidence or {}).get("triggers", [])
        decided = [t for t in triggers if t.get("status") == "fired"] or triggers
        evidence = "; ".join(f"{t['name']}: {t.get('reason', '')}" for t in decided)
        rows.append([record.time.isoformat()[:16], record.action, record.reason, evidence])
    return _table(["time", "action", "reason", "evidence"], rows)


def _page(run: DemoRun, plots: list[tuple[str, str]], tables: list[tuple[str, str]]) -> str:
    esc = html.escape
    counts = Counter(e["type"] for e in run.events.events)
    reports = "".join(
        f'<li><a href="{esc(os.path.relpath(r["path"], run.output))}">{esc(r["title"])}</a>'
        f" — drifted: {esc(', '.join(r['drifted']) or 'none')}</li>"
        for r in run.reports
    )
    rows = "".join(
        f"<tr><td>{esc(e['time'][:16])}</td><td>{esc(e['type'])}</td>"
        f"<td>{'' if e['model_version'] is None else 'v' + str(e['model_version'])}</td>"
        f"<td>{esc(_text(e))}</td></tr>"
        for e in run.events.events
    )
    figures = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in run.figures.items()
    )
    sections = "".join(f"<h2>{esc(title)}</h2>{svg}" for title, svg in plots + tables)
    badges = " ".join(f"<span class=b>{esc(k)}: {v}</span>" for k, v in sorted(counts.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>prodguard demo summary</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td{{border-bottom:1px solid #ddd;padding:3px 6px;
vertical-align:top;font-size:12px}}.b{{background:#eef;border-radius:4px;padding:2px 6px;
margin:2px;display:inline-block}}svg{{max-width:100%;height:auto}}</style></head><body>
<h1>prodguard demo — {esc(run.settings.project.name)}</h1>
<p>Played {esc(_period(run))} on simulated time in {run.figures.get("seconds", "?")} s.
Events: {badges}</p>
<p>Evidently reports (<a href="{
        esc(os.path.relpath(run.settings.paths.reports_dir / "index.html", run.output))
    }">index</a>):</p><ul>{reports}</ul>
{sections}
<h2>Figures</h2><table>{figures}</table>
<h2>Events</h2><table><tr><td><b>time</b></td><td><b>type</b></td><td><b>model</b></td>
<td><b>details</b></td></tr>{rows}</table>
<p>Machine-readable: <a href="events.json">events.json</a>.
Registry: <code>{
        esc(app.mlflow_ui_command(wiring.registry_operations(run.settings).registry.config))
    }</code></p>
</body></html>
"""


def _text(event: dict[str, Any]) -> str:
    details = event["details"]
    return str(details.get("message") or details.get("reason") or "")[:240]


def _period(run: DemoRun) -> str:
    if not run.traffic:
        return "no traffic"
    first: datetime = run.traffic[0].start
    last: datetime = run.traffic[-1].end
    return f"{first:%Y-%m-%d} .. {last:%Y-%m-%d}"


def print_summary(run: DemoRun, page: Path) -> None:
    console = run.console
    console.rule("[bold]7. What happened")
    table = Table("event", "count", "first (simulated)", title="events")
    for kind, count in Counter(e["type"] for e in run.events.events).most_common():
        first = next(e for e in run.events.events if e["type"] == kind)
        table.add_row(kind, str(count), first["time"][:16])
    console.print(table)
    served = Table(
        "period",
        "answered",
        "by version",
        "degraded",
        "refused",
        "failed",
        "outcomes",
        "seconds",
        title="traffic through the HTTP endpoint",
    )
    for t in run.traffic:
        served.add_row(
            f"{t.start:%m-%d}..{t.end:%m-%d}",
            f"{t.answered:,}",
            " ".join(f"v{v}:{n:,}" for v, n in sorted(t.by_version.items())),
            f"{t.degraded:,}",
            f"{t.rejected:,}",
            f"{t.failed:,}",
            f"{t.feedback:,}",
            f"{t.seconds:.1f}",
        )
    console.print(served)
    paths = run.settings.paths
    console.print(f"summary page   {page}", soft_wrap=True)
    console.print(f"events         {run.output / 'events.json'}", soft_wrap=True)
    console.print(f"reports        {paths.reports_dir / 'index.html'}", soft_wrap=True)
    console.print(f"prediction log {paths.prediction_log}", soft_wrap=True)
    console.print(f"alerts         {paths.alerts_file}", soft_wrap=True)
    config = wiring.registry_operations(run.settings).registry.config
    console.print(f"MLflow UI:     {app.mlflow_ui_command(config)}", soft_wrap=True)
    console.print(f"done in {run.figures.get('seconds')} s (simulated clock in {run.clock.path})")
