"""The main job on embedded defaults (``make demo``): ingest, materialize, train, promote.

It plays the window named in the ``demo`` section of prodguard.yaml and is re-runnable:
ingestion is idempotent, materialization recomputes the latest values, and a model is trained
and promoted only while there is no champion.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from rich.console import Console

from prodguard import app
from prodguard.config import Settings
from prodguard.errors import ConfigError
from prodguard.render import ingest_table, views_table
from prodguard.timewindows import parse_time


def _train_and_promote(
    settings: Settings, console: Console, start: datetime, end: datetime
) -> None:
    """Train on all but the last month of the window, evaluate on it, promote to champion —
    once: a re-run finds the champion and only shows the status."""
    operations = app.registry_operations(settings, with_checks=True)
    if operations.state().champion is None:
        train_end = (pd.Timestamp(end) - pd.DateOffset(months=1)).to_pydatetime()
        console.rule(f"train {start:%Y-%m-%d} .. {train_end:%Y-%m-%d}, evaluate on the month after")
        with console.status("building the point-in-time training frame and fitting..."):
            result = app.train(settings, start, train_end, actor="make demo")
        console.print(
            f"v{result.version}: AUC {result.metrics['auc']:.3f}, log-loss "
            f"{result.metrics['log_loss']:.3f}, ECE {result.metrics['ece']:.3f} on "
            f"{result.rows_eval} held-out flights ({result.rows_train} training rows)"
        )
        operations.promote("make demo", "demo: first champion")
    status = app.status(settings)
    console.print(f"aliases: {status['aliases']}")
    console.print(f"MLflow UI: {status['mlflow_ui']}", soft_wrap=True)


def run_demo(settings: Settings, console: Console) -> None:
    if settings.demo is None:
        raise ConfigError("prodguard.yaml has no 'demo' section (start, end); add one")
    start = parse_time(settings.demo.start, "demo.start")
    end = parse_time(settings.demo.end, "demo.end")
    console.rule(f"ingest {start:%Y-%m-%d} .. {end:%Y-%m-%d}")
    with console.status("validating batches against their expectation suites..."):
        report = app.ingest(settings, start=start, end=end)
    table = ingest_table(report.batches, "ingestion")
    console.print(table)
    console.print(f"ingested in {report.seconds:.1f} s")

    console.rule(f"materialize up to {end:%Y-%m-%d}")
    with console.status("applying the feature repo and loading the online store..."):
        done = app.materialize(settings, until=end)
    views = views_table(done.views, done.online_rows, "feature views")
    console.print(views)
    console.print(f"materialized in {done.seconds:.1f} s")

    if settings.model is not None:
        _train_and_promote(settings, console, start, end)
    console.rule("where things are")
    paths = settings.paths
    console.print(f"offline store  {paths.offline_dir}")
    console.print(f"quarantine     {paths.quarantine_dir}")
    console.print(f"alerts         {paths.alerts_file}")
    console.print("try: .venv/bin/prodguard lookup origin=JFK carrier=UA tailnum=N14228")
