"""The ``prodguard`` command line: thin commands over :mod:`prodguard.app`."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, overload

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from prodguard import app as use_cases
from prodguard.bench.benchmark import run_bench
from prodguard.bench.render import goals_table, latency_table, stage_table
from prodguard.config import Settings, load_settings
from prodguard.demo.play import run_demo
from prodguard.errors import InputError, ProdguardError, first_line
from prodguard.ingestion.pipeline import BatchResult
from prodguard.monitoring.baseline import thresholds
from prodguard.monitoring.jobs import drift_report, record_baseline, watch
from prodguard.registry.audit import AuditRecord, move_line
from prodguard.registry.operations import default_actor
from prodguard.render import ingest_table, monitor_table, views_table
from prodguard.rollout.drill import run_drill
from prodguard.rollout.guard import GuardDecision
from prodguard.rollout.jobs import abort_rollout, guard_loop, start_rollout
from prodguard.telemetry import disable_telemetry
from prodguard.timewindows import both_or_neither, ordered, parse_time

QUARANTINED_EXIT = 3
DRILL_FAILED_EXIT = 6  # docs/cli.md: exit codes

cli = typer.Typer(
    name="prodguard",
    help="Keeps a machine learning model honest in production.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class _State:
    config: Path | None = None


@cli.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="prodguard.yaml to use (default: ./prodguard.yaml or $PRODGUARD_CONFIG).",
        ),
    ] = None,
) -> None:
    _State.config = config


def _settings() -> Settings:
    return load_settings(_State.config)


def _time(value: str | None, name: str) -> datetime | None:
    return None if value is None else parse_time(value, name)


@overload
def _window(
    start: str, end: str, *, optional: Literal[False] = False
) -> tuple[datetime, datetime]: ...


@overload
def _window(
    start: str | None, end: str | None, *, optional: bool = False
) -> tuple[datetime | None, datetime | None]: ...


def _window(
    start: str | None, end: str | None, *, optional: bool = False
) -> tuple[datetime | None, datetime | None]:
    """--start/--end parsed and checked (both or neither when ``optional``; end after start)."""
    if optional:
        both_or_neither(start, end)
    first, last = _time(start, "--start"), _time(end, "--end")
    ordered(first, last)
    return first, last


def _positive(every: float | None) -> None:
    if every is not None and every <= 0:
        raise InputError("--every must be a positive number of seconds")


def _print_json(document: Any) -> None:
    out.print_json(json.dumps(document, default=str))


def _batch_line(result: BatchResult) -> None:
    window = f"{result.start[:10]}..{result.end[:10]}" if result.start and result.end else "file"
    if result.status == "written":
        text = (
            f"[green]written[/] {result.source:<14} {window:<22} {result.rows:>7} rows "
            f"(+{result.rows_added} new, {result.rows_replaced} replaced) "
            f"validated in {result.validation_seconds * 1000:.0f} ms"
        )
    elif result.status == "quarantined":
        text = (
            f"[red]quarantined[/] {result.source:<10} {window:<22} {result.rows:>7} rows: "
            f"{'; '.join(result.failures[:3]) or result.schema_change}"
        )
    else:
        return  # empty batches are counted in the summary table
    err.print(text, highlight=False)


@cli.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the new project.")],
    data: Annotated[
        list[Path], typer.Option(help="A data file (csv/parquet); the first holds the labels.")
    ],
    timestamp: Annotated[str, typer.Option(help="The time column of every data file.")],
    entity: Annotated[str, typer.Option(help="The column identifying an entity (join key).")],
    label: Annotated[str, typer.Option(help="The outcome column of the first data file.")],
    task: Annotated[str, typer.Option(help="binary | multiclass | regression.")] = "binary",
    name: Annotated[str | None, typer.Option(help="Project name (default: the folder's).")] = None,
) -> None:
    """Draft a new project from your data files: a loader, expectation suites profiled from the
    data, a Feast feature repo, a request model and prodguard.yaml. Never overwrites."""
    from prodguard.scaffold.init import init_project

    result = init_project(folder, data, timestamp, entity, label, task, name)
    for path, lines in result.files.items():
        out.print(f"  wrote {path} ({lines} lines)", highlight=False)
    out.print(
        f"next: review the drafts, then in {result.root}: prodguard ingest --start ... --end ..."
        " && prodguard materialize --until ... (docs/guard-your-own-model.md)",
        highlight=False,
        soft_wrap=True,
    )


@cli.command()
def ingest(
    start: Annotated[str | None, typer.Option(help="Window start (ISO date/time, UTC).")] = None,
    end: Annotated[str | None, typer.Option(help="Window end, exclusive.")] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only these sources (repeatable).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Ingest one batch file (.parquet/.csv) for --source."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate raw batches and write the good ones to the offline store.

    Each batch is checked against its source's recorded schema and expectation suite. A failing
    batch is quarantined (with its validation result) and an alert is raised; it never reaches
    the store. Exit code 3 means some batches were quarantined.
    """
    settings = _settings()
    first, last = _window(start, end)
    report = use_cases.ingest(
        settings,
        start=first,
        end=last,
        sources=source,
        batch_file=file,
        on_batch=None if as_json else _batch_line,
    )
    if as_json:
        _print_json(
            {
                "batches": [b.to_json() for b in report.batches],
                "rows_written": report.written,
                "quarantined": len(report.quarantined),
                "seconds": report.seconds,
                "validation_seconds": report.validation_seconds,
            }
        )
    else:
        table = ingest_table(report.batches)
        out.print(table)
        out.print(
            f"{len(report.batches)} batches in {report.seconds:.1f} s "
            f"(validation {report.validation_seconds:.1f} s)"
        )
    if report.quarantined:
        raise typer.Exit(QUARANTINED_EXIT)


@cli.command()
def materialize(
    until: Annotated[str, typer.Option(help="Load feature values up to this time (UTC).")],
    start: Annotated[
        str | None, typer.Option(help="Reload from this time instead of incrementally.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Apply the Feast feature repo and load the online store up to --until."""
    first, last = _time(start, "--start"), parse_time(until, "--until")
    ordered(first, last, "--start", "--until")
    report = use_cases.materialize(_settings(), until=last, start=first)
    if as_json:
        _print_json(
            {
                "views": report.views,
                "online_rows": report.online_rows,
                "until": report.until,
                "start": report.start,
                "seconds": report.seconds,
            }
        )
        return
    table = views_table(
        report.views, report.online_rows, f"materialized up to {report.until:%Y-%m-%d %H:%M} UTC"
    )
    out.print(table)
    out.print(f"done in {report.seconds:.1f} s")


@cli.command()
def lookup(
    keys: Annotated[list[str], typer.Argument(help="Entity keys as KEY=VALUE, e.g. origin=JFK.")],
) -> None:
    """Read the online feature values of one entity row (as the service will)."""
    entity = {}
    for item in keys:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"entity key '{item[:40]}' must look like KEY=VALUE, e.g. origin=JFK")
        entity[key] = value
    _print_json(use_cases.lookup(_settings(), entity))


@cli.command()
def alerts(
    kind: Annotated[str | None, typer.Option("--type", help="Only alerts of this type.")] = None,
) -> None:
    """List the alerts raised so far (oldest first), one JSON object per line."""
    for record in use_cases.alerts(_settings(), kind):
        print(json.dumps(record, sort_keys=True))


@cli.command()
def incidents(
    open_only: Annotated[bool, typer.Option("--open", help="Only incidents still open.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List incidents: alerts grouped by cause (a data source and the features it feeds, a model
    version, a version's latency), with severity, first/last seen, members and the cause."""
    found = use_cases.incidents(_settings(), open_only)
    if as_json:
        for record in found:
            print(json.dumps(record, sort_keys=True))
        return
    table = Table(title="incidents")
    for column in ("state", "severity", "first seen", "last seen", "alerts", "cause"):
        table.add_column(column)
    for record in found:
        table.add_row(
            record["state"],
            record["severity"],
            record["first_seen"][:19],
            record["last_seen"][:19],
            str(record["members"]),
            escape(record["cause"]),
        )
    out.print(table)


@cli.command()
def quarantine() -> None:
    """List quarantined batches with the reason each was held back."""
    settings = _settings()
    table = Table(title=f"quarantine ({settings.paths.quarantine_dir})")
    for column in ("source", "batch", "rows", "quarantined at", "reasons"):
        table.add_column(column)
    for record in use_cases.quarantined(settings):
        table.add_row(
            record["source"],
            record["batch_id"],
            str(record["rows"]),
            record["quarantined_at"][:19],
            escape("; ".join(record["reasons"])),
        )
    out.print(table)


@cli.command()
def train(
    start: Annotated[str, typer.Option(help="Training window start (ISO date, UTC).")],
    end: Annotated[str, typer.Option(help="Training window end, exclusive.")],
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train on a window, evaluate on the following days, register the model as `candidate`.

    Features come point-in-time from the Feast feature service; the version carries its lineage
    (windows, row counts, dataset digest, feature view versions, suite digests, code version,
    metrics, reference statistics).
    """

    first, last = _window(start, end)
    assert first is not None and last is not None
    result = use_cases.train(_settings(), first, last, actor or default_actor())
    if as_json:
        _print_json(
            {
                "version": result.version,
                "metrics": result.metrics,
                "rows_train": result.rows_train,
                "rows_eval": result.rows_eval,
                "seconds_train": result.seconds_train,
                "seconds_register": result.seconds_register,
                "scoring": result.scoring,
            }
        )
        return
    table = Table(title=f"registered v{result.version} as candidate")
    table.add_column("metric (held-out days)")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    out.print(table)
    out.print(
        f"{result.rows_train} training rows, {result.rows_eval} evaluation rows; "
        f"trained in {result.seconds_train:.1f} s, registered in "
        f"{result.seconds_register:.1f} s"
    )
    out.print(f"scored by: {escape(result.scoring)}", highlight=False, soft_wrap=True)


@cli.command()
def adopt(
    model_uri: Annotated[
        str, typer.Option(help="The model: models:/NAME/VERSION or runs:/RUN_ID/PATH.")
    ],
    train_start: Annotated[str, typer.Option(help="Start of the window it was trained on.")],
    train_end: Annotated[str, typer.Option(help="End of that window, exclusive.")],
    eval_start: Annotated[str, typer.Option(help="Start of the held-out evaluation window.")],
    eval_end: Annotated[str, typer.Option(help="End of the held-out window, exclusive.")],
    task: Annotated[
        str | None, typer.Option(help="binary | multiclass | regression (default: model.task).")
    ] = None,
    train_frame: Annotated[
        Path | None,
        typer.Option(
            help="The training rows (parquet/csv: input columns + label) instead of "
            "rebuilding them point-in-time from the feature store."
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="A classifier pyfunc returning an array: its class labels in column order (a,b,c)."
        ),
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Adopt a model trained outside prodguard and logged to MLflow: check its signature and
    task against the project, derive its reference statistics from its training window,
    evaluate it on a held-out window, record its lineage and make it the `candidate`."""
    from prodguard.adoption import adopt_model
    from prodguard.registry.adoption import AdoptWindows
    from prodguard.registry.operations import default_actor

    first, last = parse_time(train_start, "--train-start"), parse_time(train_end, "--train-end")
    ordered(first, last, "--train-start", "--train-end")
    held_first, held_last = (
        parse_time(eval_start, "--eval-start"),
        parse_time(eval_end, "--eval-end"),
    )
    ordered(held_first, held_last, "--eval-start", "--eval-end")
    windows = AdoptWindows(first, last, held_first, held_last, train_frame)
    result = adopt_model(_settings(), model_uri, task, windows, actor or default_actor(), classes)
    if as_json:
        _print_json(result.__dict__)
        return
    how = "registered as" if result.registered else "adopted"
    table = Table(title=f"{how} v{result.version} ({result.task}), now the candidate")
    table.add_column("metric (held-out window)")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    out.print(table)
    out.print(
        f"{result.rows_train} training rows, {result.rows_eval} evaluation rows; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    )
    out.print(f"scored by: {escape(result.scoring)}", highlight=False, soft_wrap=True)


def _record_line(record: AuditRecord) -> None:
    out.print(escape(move_line(record)), highlight=False, soft_wrap=True)
    compared = record.evidence.get("eval")
    if compared:
        verdict = "better" if compared["better"] else "[yellow]not better[/]"
        window = "" if compared["same_window"] else " (each on its own evaluation window)"
        out.print(
            f"held-out {compared['metric']}: v{record.evidence['version']} "
            f"{compared['candidate']:.4g} vs the previous champion's {compared['champion']:.4g}, "
            f"{verdict}{window}; the guard now compares them on live traffic",
            soft_wrap=True,
        )


def _headline(found: dict[str, Any] | None) -> str:
    return f"{found['metric']} {found['value']:.4g}" if found else ""


@cli.command()
def register(
    version: Annotated[int, typer.Option(help="Registered version to make the candidate.", min=1)],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "registered",
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
) -> None:
    """Point the `candidate` alias at an existing version (audited)."""

    operations = use_cases.registry_operations(_settings())
    _record_line(operations.set_candidate(version, actor or default_actor(), reason))


@cli.command()
def promote(
    version: Annotated[
        int | None, typer.Option(help="Promote this version instead of the candidate.", min=1)
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "promoted",
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
    override_standby_retention: Annotated[
        str | None,
        typer.Option(
            help="Drop a standby younger than rollout.standby_hours anyway; give the reason "
            "(kept in the audit record)."
        ),
    ] = None,
    override_demoted: Annotated[
        str | None,
        typer.Option(
            help="Promote a version that was rolled back (it carries its demotion reason) "
            "anyway; give the reason (kept in the audit record)."
        ),
    ] = None,
) -> None:
    """Champion becomes standby; the candidate (or --version) becomes champion.

    Refused when the version's input contract differs from the feature service or it does not
    load, and when it would drop a standby younger than rollout.standby_hours (72 h by default;
    the time left is given). If someone else moves the aliases meanwhile, nothing changes and
    the exit code is 4. A version that was rolled back needs --override-demoted REASON.
    """

    if override_standby_retention is not None and not override_standby_retention.strip():
        raise InputError("--override-standby-retention needs the reason (kept in the audit record)")
    if override_demoted is not None and not override_demoted.strip():
        raise InputError("--override-demoted needs the reason (kept in the audit record)")
    operations = use_cases.registry_operations(_settings(), with_checks=True)
    _record_line(
        operations.promote(
            actor or default_actor(),
            reason,
            version=version,
            override_retention=override_standby_retention,
            override_demoted=override_demoted,
        )
    )


@cli.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log and on the version).")],
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
) -> None:
    """The standby becomes champion again; the demoted version is tagged with the reason."""

    if not reason.strip():
        raise InputError("--reason must say why (kept in the audit log and on the version)")
    operations = use_cases.registry_operations(_settings())
    _record_line(operations.rollback(actor or default_actor(), reason))


@cli.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Which version each alias points at (with lineage and baseline), the traffic policy, the
    standby's age, the rollback triggers, how to open the MLflow UI, and where each store is."""
    document = use_cases.status(_settings())
    if as_json:
        _print_json(document)
        return
    table = Table(title=f"model {document['model']}")
    columns = (
        "alias",
        "version",
        "trained on",
        "rows",
        "held-out",
        "feature views",
        "baseline",
        "code",
    )
    for column in columns:
        table.add_column(column)
    for alias, summary in document["lineage"].items():
        if summary is None:
            table.add_row(alias, "-", *[""] * (len(columns) - 2))
            continue
        views = " ".join(f"v{v}" for v in (summary["feature_views"] or {}).values())
        table.add_row(
            alias,
            f"v{summary['version']}",
            (summary["train_window"] or "").replace("T00:00:00+00:00", ""),
            summary["rows_train"] or "",
            _headline(summary["headline"]),
            views,
            (summary["baseline"] or "-").replace("T00:00:00+00:00", ""),
            (summary["code_version"] or "")[:12],
        )
    out.print(table)
    for alias, summary in document["lineage"].items():
        if summary is not None and alias in ("champion", "standby"):
            line = f"{alias} v{summary['version']} scored by: {summary['scoring']}"
            out.print(escape(line), highlight=False, soft_wrap=True)
    if document["standby_since"]:
        out.print(
            f"standby since {document['standby_since'][:19]} (kept at least "
            f"{document['standby_hours']:g} h after a promotion)",
            highlight=False,
        )
    out.print(f"traffic: {document['traffic']['describe']}", highlight=False)
    out.print("rollback triggers (prodguard guard):", highlight=False)
    for line in document["triggers"]:
        out.print(f"  - {escape(line)}", highlight=False)
    incident = document["data_incident"]
    if incident:
        out.print(
            f"[yellow]last data incident[/] ({incident['time'][:19]}): "
            f"{escape(incident['message'])}",
            soft_wrap=True,
        )
    fit = document["traffic_fit"]
    if fit["problems"]:
        out.print(
            f"[yellow]sizes that do not fit the traffic[/] (~{fit['requests_per_day']:.3g} "
            "requests/day over the last 7 days):"
        )
        for line in fit["problems"]:
            out.print(f"  - {escape(line)}", highlight=False, soft_wrap=True)
    out.print(
        f"{len(document['versions'])} version(s) registered. MLflow UI: {document['mlflow_ui']}",
        highlight=False,
        soft_wrap=True,
    )
    where = ", ".join(f"{kind} {place}" for kind, place in document["stores"].items())
    out.print(f"environment {document['environment']}: {escape(where)}", soft_wrap=True)


@cli.command()
def audit(
    limit: Annotated[int, typer.Option(help="Show the last N records.", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """The append-only record of every alias move: time, actor, from, to, reason, evidence."""
    records = use_cases.registry_operations(_settings()).history(limit)
    if as_json:
        _print_json([r.to_json() for r in records])
        return
    table = Table(title="alias moves")
    for column in ("#", "time", "action", "actor", "from", "to", "reason"):
        table.add_column(column)

    def fmt(state: dict) -> str:
        return " ".join(f"{k[:4]}=v{v}" for k, v in state.items() if v is not None) or "-"

    for r in records:
        table.add_row(
            str(r.id),
            r.time.isoformat()[:19],
            r.action,
            r.actor,
            fmt(r.from_state),
            fmt(r.to_state),
            r.reason,
        )
    out.print(table)


@cli.command()
def baseline(
    start: Annotated[str, typer.Option(help="Staging period start (ISO date, UTC).")],
    end: Annotated[str, typer.Option(help="Staging period end, exclusive.")],
    version: Annotated[
        int | None, typer.Option(help="Model version (default: candidate, else champion).", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the baseline as JSON.")] = False,
) -> None:
    """Take a staging baseline: replay a period through the serving path and record each metric's
    mean and spread across monitoring windows with the model version.

    The period's ingested rows become requests hour by hour (checks, feature lookups as of each
    hour, model, log) and their known outcomes feedback; the staging log is kept under
    <data_dir>/staging. Alerts then fire at 1.5x (warning) and 2x (critical) the spread.
    """

    first, last = _window(start, end)
    result = record_baseline(_settings(), first, last, version)
    b = result.baseline
    if as_json:
        _print_json({**b.to_json(), "replay": result.replay.__dict__, "log": str(result.log_path)})
        return
    table = Table(title=f"baseline of v{b.model_version}: {b.details['windows']} windows")
    for column in ("metric", "mean", "sd", "warning above", "critical above"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    monitoring = _settings().monitoring
    for name, m in sorted(b.metrics.items()):
        bounds = thresholds(name, m, monitoring.psi, monitoring.spread)
        assert bounds is not None  # a metric with a baseline always has thresholds
        warning, critical = bounds
        table.add_row(name, f"{m.mean:.4g}", f"{m.sd:.4g}", f"{warning:.4g}", f"{critical:.4g}")
    out.print(table)
    r = result.replay
    out.print(
        f"replayed {r.requests} requests ({r.predicted} predicted, {r.rejected} rejected, "
        f"{r.feedback} outcomes) in {r.seconds:.1f} s; staging log {result.log_path}",
        highlight=False,
        soft_wrap=True,
    )


@cli.command()
def monitor(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (default).")] = False,
    every: Annotated[
        float | None, typer.Option(help="Run every N seconds until interrupted.")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Judge every closed window from here (with --end).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="End of that range, exclusive.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus gauges on this port (with --every).")
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(help="Address the gauges listen on (0.0.0.0 for a scraper on another host)."),
    ] = "127.0.0.1",
    as_json: Annotated[bool, typer.Option("--json", help="Print each pass as JSON.")] = False,
) -> None:
    """Run the monitors over the prediction log: feature PSI against the training reference;
    score distribution, business KPI (matured feedback only), latency, degradation and error
    rates against the staging baseline.

    Without --start/--end it judges the window ending now. Alerts are de-duplicated: a condition
    alerts when it opens or escalates and once more when it clears.
    """

    if once and every is not None:
        raise InputError("give --once or --every, not both")
    first, last = _window(start, end, optional=True)

    def show(run: Any) -> None:
        if as_json:
            _print_json(
                {
                    "reports": [r.to_json() for r in run.reports],
                    "alerts_sent": [a.to_json() for a in run.sent],
                    "seconds": run.seconds,
                }
            )
            return
        out.print(monitor_table(run.reports, title=f"monitor ({run.seconds:.1f} s)"))
        for alert in run.sent:
            out.print(escape(alert.summary()), highlight=False, soft_wrap=True)

    watch(
        _settings(),
        show,
        every=every,
        start=first,
        end=last,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


aggregates_cli = typer.Typer(
    help="Window aggregates: the per-bucket summaries monitors read instead of raw rows "
    "(monitoring.aggregates).",
    no_args_is_help=True,
)
cli.add_typer(aggregates_cli, name="aggregates")


@aggregates_cli.command("rebuild")
def aggregates_rebuild(
    start: Annotated[str, typer.Option(help="First instant (ISO 8601; widened to its bucket).")],
    end: Annotated[str, typer.Option(help="End instant, excluded (widened to its bucket).")],
) -> None:
    """Summarise [start, end) from the raw prediction log into the aggregate store.

    For a log written before aggregates were on, or the part a crashed replica had not
    flushed: the range's buckets are replaced and count as covered. Rebuild past ranges only
    (a replica still writing buckets of the range would add to them).
    """

    first, last = _window(start, end)
    rebuilt = use_cases.rebuild_aggregates(_settings(), first, last)
    out.print(
        f"rebuilt {rebuilt.summaries} summaries of {rebuilt.rows} predictions in "
        f"{rebuilt.start.isoformat()}..{rebuilt.end.isoformat()} ({rebuilt.seconds:.1f} s)",
        highlight=False,
    )


rollout_cli = typer.Typer(
    help="Canary and shadow rollouts of the candidate (baked and promoted by `prodguard guard`).",
    no_args_is_help=True,
)
cli.add_typer(rollout_cli, name="rollout")


@rollout_cli.command("start")
def rollout_start(
    mode: Annotated[str, typer.Option(help="canary (a share of traffic) or shadow (mirrored).")],
    steps: Annotated[
        str | None,
        typer.Option(
            help="Canary shares in percent, e.g. 5,25,100 (default: rollout.canary_steps)."
        ),
    ] = None,
    version: Annotated[
        int | None, typer.Option(help="Version to roll out (default: candidate).", min=1)
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
) -> None:
    """Put the candidate into canary or shadow traffic; every replica follows within its poll.

    Canary: the candidate answers the first step's share of requests (sticky per request key),
    its answers logged as role `canary`. Shadow: it scores every request off the response path,
    logged as `shadow`, never returned. The guard bakes each step (rollout.bake_minutes and
    bake_min_requests, all triggers clean) before the next, and promotes after the last.
    """

    if mode == "shadow" and steps is not None:
        raise InputError("--steps applies to canary rollouts only; drop it for shadow")
    record = start_rollout(_settings(), mode, actor or default_actor(), steps, version)
    out.print(f"{record.reason} (audit #{record.id})", highlight=False)


@rollout_cli.command("abort")
def rollout_abort(
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    actor: Annotated[str | None, typer.Option(help="Who is acting (default user@host).")] = None,
) -> None:
    """Take the rollout version out of traffic: all traffic to the champion again."""

    record = abort_rollout(_settings(), actor or default_actor(), reason)
    out.print(f"rollout aborted (audit #{record.id})", highlight=False)


log_cli = typer.Typer(
    help="The prediction log: retention (storage.log_retention_days).", no_args_is_help=True
)
cli.add_typer(log_cli, name="log")


@log_cli.command("prune")
def log_prune(
    export: Annotated[
        Path | None,
        typer.Option(
            help="Export each day to DIR/predictions-<day>-<first row>.parquet (with its "
            "feedback; read back with serving.log_retention.read_export) before dropping it."
        ),
    ] = None,
) -> None:
    """Drop the predictions older than storage.log_retention_days, with their feedback, the
    old request errors and the window aggregates of those days: whole daily partitions on
    PostgreSQL, rows on SQLite.

    Never what monitors still read: the cutoff is the earlier of now - retention and now -
    (monitoring.window.minutes + monitoring.kpi.maturity_hours), whole days (UTC). With
    --export, a day is dropped only after its file is on disk (fsynced); run it daily (cron).
    """

    result = use_cases.prune_log(_settings(), export)
    out.print(
        f"{result.dropped} predictions and {result.errors_dropped} request errors older than "
        f"{result.before} dropped"
        + (
            f", with {result.aggregates_dropped} window summaries"
            if result.aggregates_dropped
            else ""
        )
        + (f"; {len(result.exported)} files exported to {export}" if export else ""),
        highlight=False,
    )


@cli.command()
def guard(
    once: Annotated[bool, typer.Option("--once", help="One check, then exit (default).")] = False,
    every: Annotated[
        float | None, typer.Option(help="Check every N seconds until interrupted.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each decision as JSON.")] = False,
) -> None:
    """Judge the champion's live traffic against the rollback triggers (rollout.triggers) and,
    when one fires, roll back to the standby: audited with the trigger and its evidence, alerted,
    followed by every replica within its poll interval. Also bakes a rollout in progress: abort
    on a fired trigger, hold while inconclusive or baking, next step or promotion when clean.

    Safe to run twice: of two guards, one moves the aliases and the other sees them moved.
    """

    if once and every is not None:
        raise InputError("give --once or --every, not both")
    _positive(every)

    def show(decisions: list[GuardDecision]) -> None:
        if as_json:
            _print_json([d.to_json() for d in decisions])
            return
        for decision in decisions:
            table = Table(
                title=f"guard: v{decision.version} {decision.action} ({decision.rows} requests)"
            )
            for column in ("trigger", "status", "value", "threshold", "note"):
                table.add_column(column)
            for t in decision.triggers:
                value = "-" if t.value is None else f"{t.value:.4g}"
                table.add_row(t.name, t.status, value, f"{t.threshold:.4g}", escape(t.reason))
            out.print(table)
            if decision.reason:
                out.print(escape(decision.reason), highlight=False, soft_wrap=True)

    guard_loop(_settings(), show, every=every)


@cli.command()
def drill(
    version: Annotated[
        int | None,
        typer.Option(help="Version to rehearse (default: candidate, else champion).", min=1),
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Staging period start (default: the baseline's).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Staging period end, exclusive.")] = None,
    shift: Annotated[float, typer.Option(help="Score shift of the faulty copy.")] = 0.4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Rehearse a rollback in staging: promote a faulty copy of the version (scores shifted) over
    it, replay the staging period through the request path with the guard running, check the
    trigger fires and the version answers again; measure the request path's latency.

    Production aliases never move; the result (time to detect, time to recover, p50/p99) is
    recorded on the version. With rollout.require_drill, promotion needs a passed drill.
    """

    first, last = _window(start, end, optional=True)
    if shift == 0:
        raise InputError("--shift must not be 0: the faulty copy has to score differently")
    result = run_drill(_settings(), version, first, last, shift)
    if as_json:
        _print_json(result.to_json())
    else:
        verdict = "[green]passed[/]" if result.passed else "[bold red]failed[/]"
        out.print(f"drill of v{result.version}: {verdict} — {escape(result.reason)}")
        if result.detect_minutes is not None:
            out.print(
                f"detected after {result.detect_minutes:.0f} simulated minutes "
                f"({result.detect_requests} faulty answers judged); standby serving "
                f"{(result.recover_seconds or 0) * 1000:.0f} ms after the trigger; "
                f"{result.standby_answers} answers from it in the next hour",
                highlight=False,
            )
        out.print(
            f"latency (real online store, {result.latency_requests:.0f} requests): "
            f"p50 {result.latency_p50_ms:.1f} ms, p99 {result.latency_p99_ms:.1f} ms",
            highlight=False,
        )
    if not result.passed:
        raise typer.Exit(DRILL_FAILED_EXIT)


@cli.command()
def report(
    start: Annotated[str, typer.Option(help="Served window start (ISO date, UTC).")],
    end: Annotated[str, typer.Option(help="Served window end, exclusive.")],
    version: Annotated[
        int | None, typer.Option(help="Model version (default: champion).", min=1)
    ] = None,
) -> None:
    """Write an Evidently drift report (PSI per feature and on the predictions) of a served window
    against the version's training window, and update the reports index page.

    Large windows are sampled (monitoring.reports_max_rows per side); the report states it.
    """

    settings = _settings()
    first, last = _window(start, end)
    assert first is not None and last is not None
    entry = drift_report(settings, first, last, version)
    out.print(
        f"{len(entry.drifted)} of {entry.columns} columns drifted "
        f"({', '.join(entry.drifted) or 'none'}); reference {entry.reference_rows} of "
        f"{entry.reference_total} rows, current {entry.current_rows} of {entry.current_total}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"report: {settings.paths.reports_dir / entry.file}", highlight=False, soft_wrap=True)
    out.print(
        f"index:  {settings.paths.reports_dir / 'index.html'}", highlight=False, soft_wrap=True
    )


@cli.command()
def bench(
    requests: Annotated[int, typer.Option(help="Requests per concurrency level.", min=1)] = 500,
    concurrency: Annotated[
        str, typer.Option(help="Concurrency levels, comma-separated.")
    ] = "1,4,16",
    warmup: Annotated[int, typer.Option(help="Warm-up requests per service.", min=0)] = 100,
    workers: Annotated[
        int | None,
        typer.Option(
            help="BentoML worker processes of each service (default serving.workers).",
            min=1,
            max=64,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure end-to-end latency (p50/p95/p99), throughput and every stage of the guarded
    service against a bare BentoML endpoint scoring the same champion on the same features and
    against the framework floor (an endpoint that answers a constant); print the ratios
    guarded/bare and guarded/floor and the goals. Needs a champion (e.g. after `make demo`).

    The three services are started here on free loopback ports, with the same BentoML settings
    and workers, and stopped afterwards; bench traffic goes to a prediction log of its own. The
    other benchmarks are in benchmarks/.
    """

    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        raise InputError("--concurrency takes integers, e.g. 1,4,16") from None
    if not levels or min(levels) < 1:
        raise InputError("--concurrency takes positive integers, e.g. 1,4,16")
    report = run_bench(
        _settings(),
        requests,
        levels,
        warmup,
        progress=lambda line: err.print(line),
        workers=workers,
    )
    if as_json:
        _print_json(report.to_json())
        return

    for table in (latency_table(report), stage_table(report), goals_table(report)):
        out.print(table)
    out.print(
        f"guarded cold start {report.guarded.cold_start_s:.1f} s, bare "
        f"{report.bare.cold_start_s:.1f} s; setup {report.setup}",
        highlight=False,
    )


@cli.command()
def serve(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Start the BentoML prediction service (POST /predict, /predict_batch, /feedback).

    It serves the `champion` with the `standby` warm, follows the MLflow aliases every
    serving.poll_seconds, and exposes /metrics, /healthz, /readyz and the OpenAPI at /docs.json.
    """
    command, env = use_cases.serve_command(_settings(), host, port)
    os.execvpe(command[0], command, env)


@cli.command()
def demo(
    short: Annotated[
        bool, typer.Option(help="Play every chapter on fewer simulated days (about 2.5 min).")
    ] = False,
) -> None:
    """Play the project's demo story (make demo): a year of traffic on simulated time through
    the real service, registry, monitors and guard, from a clean data folder.

    It writes <data_dir>/demo/events.json (every event), summary.html (plots, timeline, links
    to the Evidently reports) and keeps every store to explore afterwards.
    """

    run_demo(_settings(), out, short=short)


def main() -> None:
    disable_telemetry()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # tools' own deprecations
    try:
        code = cli(standalone_mode=False, prog_name="prodguard")
    except ProdguardError as exc:
        err.print(Text.assemble(("error: ", "red"), str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # typer's own click: usage errors, as one line
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "prodguard"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(
            Text.assemble(("error: ", "red"), message, f" (see '{command} --help')"),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(getattr(exc, "exit_code", 2))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if os.environ.get("PRODGUARD_DEBUG"):
            raise
        err.print(
            Text.assemble(
                ("error: ", "red"),
                f"unexpected {type(exc).__name__}: {first_line(exc, 200)} (a bug: rerun with "
                "PRODGUARD_DEBUG=1 for the traceback and report it)",
            ),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
