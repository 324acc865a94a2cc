"""The benchmark's figures as rich tables (the CLI prints them; ``--json`` prints the report)."""

from __future__ import annotations

from rich.table import Table

from prodguard.bench.benchmark import BenchReport, ServiceRun

STAGES = ("features", "checks", "model", "log", "http", "total")


def _runs(report: BenchReport) -> list[tuple[str, ServiceRun]]:
    runs = [("guarded", report.guarded), ("bare", report.bare)]
    return runs + ([("floor", report.floor)] if report.floor is not None else [])


def latency_table(report: BenchReport) -> Table:
    table = Table(title="end-to-end latency at the client (ms) and throughput")
    for column in ("service", "concurrency", "p50", "p95", "p99", "req/s", "errors"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for name, run in _runs(report):
        for level in run.levels:
            table.add_row(
                name,
                str(level.concurrency),
                f"{level.latency.p50:.2f}",
                f"{level.latency.p95:.2f}",
                f"{level.latency.p99:.2f}",
                f"{level.throughput:.1f}",
                str(level.errors),
            )
    if report.batch is not None:
        latency, server = report.batch.latency, report.batch.server
        table.add_row(
            f"guarded /predict_batch {report.batch.rows} rows (server p50/p99: "
            f"{server.p50:.1f}/{server.p99:.1f})",
            "1",
            f"{latency.p50:.2f}",
            f"{latency.p95:.2f}",
            f"{latency.p99:.2f}",
            "",
            "",
        )
    return table


def stage_table(report: BenchReport) -> Table:
    table = Table(title="stages, server side (ms; http = client latency - server total)")
    table.add_column("service")
    table.add_column("concurrency", justify="right")
    for stage in STAGES:
        table.add_column(f"{stage} p50/p99", justify="right")
    for name, run in _runs(report):
        for level in run.levels:
            cells = [
                f"{level.stages[s].p50:.2f}/{level.stages[s].p99:.2f}" if s in level.stages else ""
                for s in STAGES
            ]
            table.add_row(name, str(level.concurrency), *cells)
    return table


def goals_table(report: BenchReport) -> Table:
    table = Table(title="goals (ratios: guarded / bare, or / floor; by: value vs goal, > 1 missed)")
    for column in ("measure", "value", "goal", "met", "by"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for goal in report.goals():
        shown = goal.to_json()
        verdict = "[green]yes[/]" if goal.met else "[red]no[/]"
        table.add_row(goal.name, f"{goal.value:g}", shown["goal"], verdict, f"{goal.by:g}x")
    # a missed ratio in its parts (server stages, HTTP layer, the floor's request)
    table.caption = "\n".join(sorted({g.where for g in report.goals() if g.where and not g.met}))
    return table
