"""What a caller knows at request time, and the model features derived from it.

A request carries: carrier, flight, tailnum, origin, dest, scheduled departure (UTC), distance.
The feature store adds weather at the origin, plane specs and the carrier's recent on-time record.
"""

from __future__ import annotations

import pandas as pd

LOCAL_TZ = "America/New_York"
REQUEST_FEATURES = ["carrier", "origin", "dest", "distance", "dep_hour", "day_of_week"]


def request_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Model features computed from request fields (``event_timestamp`` = scheduled departure)."""
    local = pd.to_datetime(frame["event_timestamp"], utc=True).dt.tz_convert(LOCAL_TZ)
    return pd.DataFrame(
        {
            "carrier": frame["carrier"].astype(str),
            "origin": frame["origin"].astype(str),
            "dest": frame["dest"].astype(str),
            "distance": frame["distance"].astype("float64"),
            "dep_hour": local.dt.hour.astype("float64"),
            "day_of_week": local.dt.dayofweek.astype("float64"),
        },
        index=frame.index,
    )
