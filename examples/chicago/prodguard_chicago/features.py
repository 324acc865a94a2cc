"""What a caller knows at request time (a station and a service day) and the features derived
from it. The feature store adds the day's weather, the network's entries 14 days earlier and the
day's games. ``event_timestamp`` of a request row is the service day's local midnight, in UTC."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar
from pydantic import BaseModel, ConfigDict, Field

from prodguard_chicago.loader import CITY, LOCAL_TZ, STATION

EARLIEST, LATEST = date(2000, 1, 1), date(2100, 1, 1)
_HOLIDAYS = USFederalHolidayCalendar().holidays(EARLIEST, LATEST)
_HOLIDAY_DAYS = frozenset(day.date() for day in _HOLIDAYS)
_LOCAL = ZoneInfo(LOCAL_TZ)


def request_features(frame: pd.DataFrame) -> pd.DataFrame:
    """day_of_week, month and US federal holiday of each row's local service day."""
    local = pd.DatetimeIndex(pd.to_datetime(frame["event_timestamp"], utc=True)).tz_convert(
        LOCAL_TZ
    )
    days = local.tz_localize(None).normalize()
    return pd.DataFrame(
        {
            "day_of_week": local.dayofweek.to_numpy(dtype="float64"),
            "month": local.month.to_numpy(dtype="float64"),
            "holiday": days.isin(_HOLIDAYS).astype("float64"),
        },
        index=frame.index,
    )


def request_features_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """``request_features`` on columns (``model.request_features_columns``): what the serving
    path calls, without pandas; prodguard checks it gives the same values on the source."""
    local = [_local(value) for value in columns["event_timestamp"]]
    return {
        "day_of_week": [math.nan if at is None else float(at.weekday()) for at in local],
        "month": [math.nan if at is None else float(at.month) for at in local],
        "holiday": [float(at is not None and at.date() in _HOLIDAY_DAYS) for at in local],
    }


def _local(value: Any) -> datetime | None:
    """A time as ``pd.to_datetime(..., utc=True)`` reads it (naive = UTC), in the local zone."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    stamp = value if isinstance(value, datetime) else pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(_LOCAL)


class RidershipRequest(BaseModel):
    """Entries expected at a station on a service day."""

    model_config = ConfigDict(extra="forbid")

    station: str = Field(default=STATION, pattern=f"^{STATION}$", examples=[STATION])
    service_date: date = Field(ge=EARLIEST, lt=LATEST, examples=["2015-03-02"])
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RidershipRequest:
        """The request a caller would have sent for a row of the ridership source (replays)."""
        local = pd.Timestamp(row["event_timestamp"]).tz_convert(LOCAL_TZ)
        return cls(station=row["station"], service_date=local.date())

    def to_row(self) -> dict[str, Any]:
        """The request as a ridership row: the service day's local midnight, in UTC."""
        midnight = pd.Timestamp(self.service_date).tz_localize(LOCAL_TZ).tz_convert("UTC")
        return {"station": self.station, "city": CITY, "event_timestamp": midnight}
