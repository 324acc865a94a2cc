"""The main job on embedded defaults (``make demo``): ingest, materialize, summarise.

It plays the window named in the ``demo`` section of prodguard.yaml and is re-runnable:
ingestion is idempotent and materialization incremental.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from prodguard import app
from prodguard.config import Settings
from prodguard.errors import ConfigError
from prodguard.timewindows import parse_time


def run_demo(settings: Settings, console: Console) -> None:
    if settings.demo is None:
        raise ConfigError("prodguard.yaml has no 'demo' section (start, end); add one")
    start = parse_time(settings.demo.start, "demo.start")
    end = parse_time(settings.demo.end, "demo.end")
    console.rule(f"ingest {start:%Y-%m-%d} .. {end:%Y-%m-%d}")
    with console.status("validating batches against their expectation suites..."):
        report = app.ingest(settings, start=start, end=end)
    table = Table(title="ingestion")
    for column in ("source", "batches", "rows written", "quarantined", "validation"):
        table.add_column(column)
    for name in dict.fromkeys(b.source for b in report.batches):
        mine = [b for b in report.batches if b.source == name]
        table.add_row(
            name,
            str(len(mine)),
            str(sum(b.rows for b in mine if b.status == "written")),
            str(sum(1 for b in mine if b.status == "quarantined")),
            f"{sum(b.validation_seconds for b in mine) * 1000:.0f} ms",
        )
    console.print(table)
    console.print(f"ingested in {report.seconds:.1f} s")

    console.rule(f"materialize up to {end:%Y-%m-%d}")
    with console.status("applying the feature repo and loading the online store..."):
        done = app.materialize(settings, until=end)
    views = Table(title="feature views")
    for column in ("view", "version", "features", "online entities"):
        views.add_column(column)
    for view in done.views:
        views.add_row(
            view["name"],
            f"v{view['version']}",
            str(view["features"]),
            str(done.online_rows.get(view["name"], "-")),
        )
    console.print(views)
    console.print(f"materialized in {done.seconds:.1f} s")
    console.rule("where things are")
    paths = settings.paths
    console.print(f"offline store  {paths.offline_dir}")
    console.print(f"quarantine     {paths.quarantine_dir}")
    console.print(f"alerts         {paths.alerts_file}")
    console.print("try: .venv/bin/prodguard lookup origin=JFK carrier=UA tailnum=N14228")
