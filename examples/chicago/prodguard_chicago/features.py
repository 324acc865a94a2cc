"""What a caller knows at request time (a station and a service day) and the features derived
from it. The feature store adds the day's weather, the network's entries 14 days earlier and the
day's games. ``event_timestamp`` of a request row is the service day's local midnight, in UTC."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar
from pydantic import BaseModel, ConfigDict, Field

from prodguard_chicago.loader import CITY, LOCAL_TZ, STATION

EARLIEST, LATEST = date(2000, 1, 1), date(2100, 1, 1)
_HOLIDAYS = USFederalHolidayCalendar().holidays(EARLIEST, LATEST)


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
