"""Rich renderings shared by the CLI and the demo."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def ingest_table(batches: list[Any], title: str = "ingest") -> Table:
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
