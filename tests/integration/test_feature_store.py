"""The Feast adapter on a real Feast store (SQLite online, DuckDB over parquet offline)."""

import pandas as pd
import pytest

from prodguard.alerts import Alerter
from prodguard.config import load_settings
from prodguard.errors import FeatureStoreError
from prodguard.features.feast_adapter import FeastStore
from prodguard.ingestion.pipeline import Ingestor
from tests.conftest import utc

pytestmark = pytest.mark.integration

WEATHER = ["temp", "dewp", "humid", "wind_speed", "pressure"]


@pytest.fixture(scope="module")
def store(ingested) -> FeastStore:
    return FeastStore(load_settings(ingested / "prodguard.yaml", environ={}))


def latest(frame: pd.DataFrame, key: str, value: str, at) -> pd.Series:
    rows = frame[(frame[key] == value) & (frame["event_timestamp"] <= at)]
    return rows.sort_values("event_timestamp").iloc[-1]


def test_apply_records_versions_of_the_feature_service(store) -> None:
    versions = {v.name: v for v in store.versions()}
    assert set(versions) == {"weather_hourly", "plane_specs", "carrier_ontime_daily"}
    assert all(v.version == 0 for v in versions.values())
    assert versions["weather_hourly"].ttl_seconds == 3 * 3600
    assert ("temp", "Float64") in versions["weather_hourly"].features
    assert "plane_specs:seats" in store.feature_refs()
    assert store.apply() == store.versions()  # re-applying an unchanged repo is a no-op


def test_changed_view_gets_a_new_version(settings, flights_loader) -> None:
    Ingestor(settings, Alerter([]), flights_loader).ingest_window(
        utc("2013-01-01"), utc("2013-01-02")
    )
    FeastStore(settings).apply()
    definitions = settings.paths.feature_repo / "definitions.py"
    definitions.write_text(
        definitions.read_text().replace(
            '        Field(name="visib", dtype=Float64, description="Visibility, miles"),\n', ""
        )
    )
    fresh = FeastStore(settings)
    versions = {v.name: v.version for v in fresh.apply()}
    assert versions == {"weather_hourly": 1, "plane_specs": 0, "carrier_ontime_daily": 0}
    assert "weather_hourly:visib" not in fresh.feature_refs()


def test_online_lookup_returns_latest_values_as_time_advances(settings, flights_loader) -> None:
    Ingestor(settings, Alerter([]), flights_loader).ingest_window(
        utc("2013-03-01"), utc("2013-04-01"), sources=["weather", "planes", "carrier_stats"]
    )
    store = FeastStore(settings)
    weather = flights_loader.table("weather")
    stats = flights_loader.table("carrier_stats")
    entity = {"origin": "JFK", "carrier": "B6", "tailnum": "N579JB"}
    for until in (utc("2013-03-15T12:30"), utc("2013-03-20T07:10")):
        result = store.materialize(until=until)
        assert result.online_rows["weather_hourly"] == 3
        row = store.online_features([entity]).iloc[0]
        expected = latest(weather, "origin", "JFK", until - pd.Timedelta(microseconds=1))
        for column in WEATHER:
            assert row[column] == pytest.approx(expected[column], nan_ok=True)
        expected_stats = latest(stats, "carrier", "B6", until)
        assert row["ontime_rate_7d"] == pytest.approx(expected_stats["ontime_rate_7d"])
        assert (
            row["seats"]
            == flights_loader.table("planes").set_index("tailnum").loc["N579JB", "seats"]
        )


def test_materializing_back_in_time_is_refused(store) -> None:
    with pytest.raises(FeatureStoreError, match="--until may not be earlier"):
        store.materialize(until=utc("2013-04-01"))


def test_unknown_entity_gets_nulls(store) -> None:
    row = store.online_features([{"origin": "XXX", "carrier": "ZZ", "tailnum": "N0"}]).iloc[0]
    assert pd.isna(row["temp"]) and pd.isna(row["seats"]) and pd.isna(row["ontime_rate_7d"])


def test_historical_retrieval_keeps_every_row_and_is_point_in_time(store, flights_loader):
    flights = flights_loader.load("flights", utc("2013-01-01"), utc("2013-05-01"))
    entity = flights[["flight_id", "event_timestamp", "origin", "carrier", "tailnum"]]
    frame = store.historical_features(entity)
    assert len(frame) == len(entity)
    assert set(frame["flight_id"]) == set(entity["flight_id"])
    weather = flights_loader.table("weather")
    stats = flights_loader.table("carrier_stats")
    for _, row in frame.sample(25, random_state=7).iterrows():
        expected = latest(weather, "origin", row["origin"], row["event_timestamp"])
        if row["event_timestamp"] - expected["event_timestamp"] <= pd.Timedelta(hours=3):
            assert row["temp"] == pytest.approx(expected["temp"])
        else:
            assert pd.isna(row["temp"])  # older than the view's TTL
        snapshot = latest(stats, "carrier", row["carrier"], row["event_timestamp"])
        assert row["flights_landed_7d"] == snapshot["flights_landed_7d"]
        assert snapshot["event_timestamp"] <= row["event_timestamp"]


class _ShortJob:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def to_df(self) -> pd.DataFrame:
        return self.frame.iloc[:-3]


def test_dropped_entity_rows_fail_loudly(store, flights_loader, monkeypatch) -> None:
    entity = flights_loader.load("flights", utc("2013-02-01"), utc("2013-02-02"))[
        ["flight_id", "event_timestamp", "origin", "carrier", "tailnum"]
    ]
    monkeypatch.setattr(
        store._store, "get_historical_features", lambda entity_df, features: _ShortJob(entity_df)
    )
    with pytest.raises(
        FeatureStoreError,
        match=f"returned {len(entity) - 3} rows for {len(entity)} entity rows \\(3 dropped\\)",
    ):
        store.historical_features(entity)


def test_entity_frame_needs_timestamps(store) -> None:
    with pytest.raises(FeatureStoreError, match="needs an 'event_timestamp' column"):
        store.historical_features(pd.DataFrame({"origin": ["JFK"]}))


def test_materialize_before_ingest_says_what_to_do(settings) -> None:
    with pytest.raises(FeatureStoreError, match="run `prodguard ingest` first"):
        FeastStore(settings).materialize(until=utc("2013-05-01"))


def test_bad_store_config(settings) -> None:
    settings.feature_store.config.write_text("project: [\n")
    with pytest.raises(FeatureStoreError, match="is not valid YAML"):
        FeastStore(settings)
    settings.feature_store.config.write_text("project: p\nregistry: ${NOPE_NOT_SET}/r.db\n")
    with pytest.raises(
        FeatureStoreError, match=r"unset environment variable\(s\) \['NOPE_NOT_SET'\]"
    ):
        FeastStore(settings)
