"""What a caller knows at request time, and the model features derived from it.

A request carries: carrier, flight, tailnum, origin, dest, scheduled departure (UTC), distance.
The feature store adds weather at the origin, plane specs and the carrier's recent on-time record.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

LOCAL_TZ = "America/New_York"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
REQUEST_FEATURES = ["carrier", "origin", "dest", "distance", "dep_hour", "day_of_week"]
_LOCAL = ZoneInfo(LOCAL_TZ)


def request_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Model features computed from request fields (``event_timestamp`` = scheduled departure).

    Built from arrays (one DatetimeIndex for the local time): on the request path a call is a
    one-row frame, where each pandas Series step costs tens of microseconds."""
    local = pd.DatetimeIndex(pd.to_datetime(frame["event_timestamp"], utc=True)).tz_convert(
        LOCAL_TZ
    )
    return pd.DataFrame(
        {
            "carrier": frame["carrier"].astype(str).to_numpy(),
            "origin": frame["origin"].astype(str).to_numpy(),
            "dest": frame["dest"].astype(str).to_numpy(),
            "distance": frame["distance"].astype("float64").to_numpy(),
            "dep_hour": local.hour.to_numpy(dtype="float64"),
            "day_of_week": local.dayofweek.to_numpy(dtype="float64"),
        },
        index=frame.index,
    )


def request_features_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """``request_features`` on columns (``model.request_features_columns``): what the serving
    path calls, without pandas; prodguard checks it gives the same values on the source."""
    local = [_local(value) for value in columns["event_timestamp"]]
    return {
        "carrier": [str(value) for value in columns["carrier"]],
        "origin": [str(value) for value in columns["origin"]],
        "dest": [str(value) for value in columns["dest"]],
        "distance": [math.nan if value is None else float(value) for value in columns["distance"]],
        "dep_hour": [math.nan if at is None else float(at.hour) for at in local],
        "day_of_week": [math.nan if at is None else float(at.weekday()) for at in local],
    }


def _local(value: Any) -> datetime | None:
    """A time as ``pd.to_datetime(..., utc=True)`` reads it (naive = UTC), in the local zone."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    stamp = value if isinstance(value, datetime) else pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(_LOCAL)


class FlightRequest(BaseModel):
    """What a caller knows before departure. Value rules (known airports, ranges) come from the
    expectation suites and are checked by the service; this model fixes shapes and types."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    carrier: str = Field(min_length=1, max_length=8, examples=["UA"])
    flight: int = Field(ge=1, le=99999, examples=[1545])
    tailnum: str | None = Field(default=None, min_length=1, max_length=12, examples=["N14228"])
    origin: str = Field(min_length=1, max_length=8, examples=["EWR"])
    dest: str = Field(min_length=1, max_length=8, examples=["IAH"])
    scheduled_departure: AwareDatetime = Field(examples=["2013-05-01T10:15:00Z"])
    distance: float = Field(allow_inf_nan=False, examples=[1400.0])
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )

    @field_validator("scheduled_departure")
    @classmethod
    def _plausible(cls, value: datetime) -> datetime:
        if not EARLIEST <= value < LATEST:
            raise ValueError("must be between 2000-01-01 and 2100-01-01 (UTC)")
        return value

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FlightRequest:
        """The request a caller would have sent for a row of the flights source (replays)."""
        return cls(
            carrier=row["carrier"],
            flight=row["flight"],
            tailnum=row.get("tailnum"),
            origin=row["origin"],
            dest=row["dest"],
            scheduled_departure=pd.Timestamp(row["event_timestamp"]).to_pydatetime(),
            distance=row["distance"],
        )

    def to_row(self) -> dict[str, Any]:
        """The request as a row of the flights source (``event_timestamp`` = departure)."""
        return {
            "carrier": self.carrier,
            "flight": self.flight,
            "tailnum": self.tailnum,
            "origin": self.origin,
            "dest": self.dest,
            "distance": self.distance,
            "event_timestamp": pd.Timestamp(self.scheduled_departure).tz_convert("UTC"),
        }
