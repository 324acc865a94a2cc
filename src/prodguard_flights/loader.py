"""``FlightsLoader``: the example project's SourceLoader (named in prodguard.yaml)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pandas as pd

from prodguard.errors import InputError
from prodguard_flights import raw, tables

_BUILDERS: dict[str, tuple[tuple[str, ...], Callable[..., pd.DataFrame]]] = {
    "weather": (("weather",), tables.weather_table),
    "planes": (("planes",), tables.planes_table),
    "carrier_stats": (("flights", "airports"), tables.carrier_stats_table),
    "flights": (("flights",), tables.flights_table),
}
STATIC_SOURCES = frozenset({"planes"})


class FlightsLoader:
    """Builds each source table once from the package files, then slices it by time."""

    def __init__(self, files: dict[str, Path] | None = None) -> None:
        self._files = files or {}
        self._raw: dict[str, pd.DataFrame] = {}
        self._tables: dict[str, pd.DataFrame] = {}

    def raw(self, table: str) -> pd.DataFrame:
        if table not in self._raw:
            self._raw[table] = raw.read_table(table, self._files.get(table))
        return self._raw[table]

    def table(self, source: str) -> pd.DataFrame:
        if source not in _BUILDERS:
            raise InputError(
                f"the flights project has no source '{source}'; it has {sorted(_BUILDERS)}"
            )
        if source not in self._tables:
            inputs, build = _BUILDERS[source]
            self._tables[source] = build(*(self.raw(name) for name in inputs))
        return self._tables[source]

    def load(self, source: str, start: datetime, end: datetime) -> pd.DataFrame:
        frame = self.table(source)
        if source in STATIC_SOURCES:
            return frame.copy()
        stamps = frame["event_timestamp"]
        return frame[(stamps >= start) & (stamps < end)].reset_index(drop=True)

    def status_counts(self, start: datetime, end: datetime) -> dict[str, int]:
        """How many flights in the window landed, were cancelled or diverted."""
        flights = self.load("flights", start, end)
        return {str(k): int(v) for k, v in flights["status"].value_counts().items()}
