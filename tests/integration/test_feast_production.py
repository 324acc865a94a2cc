"""The production Feast configuration (feature_repo/feature_store.production.yaml) on the real
servers of this machine: the SQL registry in PostgreSQL, the online store in Redis. Each test has
a database and a Feast project (the namespace of its Redis keys) of its own."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import redis

from prodguard.app import alerter_for
from prodguard.config import load_settings
from prodguard.errors import FeatureStoreError
from prodguard.features.feast_adapter import FeastStore
from prodguard.ingestion.offline import OfflineStore
from prodguard.ingestion.pipeline import Ingestor
from tests.conftest import make_project, utc

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

UNTIL = utc("2013-04-15")
PRODUCTION_YAML = "feature_repo/feature_store.production.yaml"
VIEWS = {"weather_hourly", "plane_specs", "carrier_ontime_daily"}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, flights_loader) -> Path:
    """Two weeks of April 2013 ingested; the embedded (SQLite) store materialized up to
    April 15 as the reference the production store is compared with."""
    root = make_project(tmp_path_factory.mktemp("feast_production") / "project")
    settings = load_settings(root / "prodguard.yaml", environ={})
    Ingestor(settings, alerter_for(settings), loader=flights_loader).ingest_window(
        utc("2013-04-01"), UNTIL
    )
    FeastStore(settings).materialize(until=UNTIL)
    return root


@pytest.fixture(scope="module")
def embedded(small: Path) -> FeastStore:
    return FeastStore(load_settings(small / "prodguard.yaml", environ={}))


@pytest.fixture
def production(small, pg_database, redis_namespace):
    """A factory of FeastStores on the production yaml (one per "replica"), all on the same
    database and project; the same data folder (offline parquet) as the embedded store.
    Keyword arguments replace variables of the environment the settings are loaded from."""
    variables = {
        "PRODGUARD_DATABASE_URL": pg_database("feast"),
        "PRODGUARD_REDIS": "127.0.0.1:6379",
        "PRODGUARD_FEAST_PROJECT": redis_namespace,
    }

    def replica(**changes: str | None) -> FeastStore:
        environ = {
            **variables,
            "PRODGUARD_FEATURE_STORE__CONFIG": str(small / PRODUCTION_YAML),
            **changes,
        }
        environ = {k: v for k, v in environ.items() if v is not None}
        return FeastStore(load_settings(small / "prodguard.yaml", environ=environ))

    replica.variables = variables
    return replica


def entity_rows(root: Path, count: int = 60) -> list[dict]:
    flights = OfflineStore(root / ".prodguard" / "offline").read("flights")
    keys = flights[["origin", "carrier", "tailnum"]].fillna("").drop_duplicates()
    return keys.sample(count, random_state=5).to_dict("records") + [
        {"origin": "XXX", "carrier": "ZZ", "tailnum": "N0"},  # no entity anywhere
        {"origin": "JFK", "carrier": "B6", "tailnum": "NOPLANE"},  # one view misses
    ]


def same(a, b) -> bool:
    def null(v):
        return v is None or (isinstance(v, float) and math.isnan(v))

    return (null(a) and null(b)) or a == b


def assert_same_records(ours: list[dict], theirs: list[dict]) -> int:
    compared = 0
    for mine, other in zip(ours, theirs, strict=True):
        for name, value in mine.items():
            assert same(value, other[name]), (name, value, other[name])
            compared += 1
    return compared


def pg_rows(url: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute(query, args).fetchall()


def test_production_store_equals_the_embedded_one_and_replicas_share_it(
    production, embedded, small
) -> None:
    first = production()
    result = first.materialize(until=UNTIL)
    assert {v.name for v in result.views} == VIEWS
    # the online rows are counted in Redis: the same entities as in the SQLite store
    assert result.online_rows == embedded.online_row_counts(embedded.versions())
    assert set(result.online_rows) == VIEWS and all(result.online_rows.values())
    assert first.versions() == embedded.versions()
    assert first.materialized_until() == UNTIL

    # online reads: the request path's direct Redis read = Feast's own = the SQLite store's
    rows = entity_rows(small)
    ours = first.online_records(rows)
    assert type(first._direct).__name__ == "_DirectReads"  # Redis is read directly
    assert assert_same_records(ours, embedded.online_records(rows)) > 60 * 30
    assert_same_records(ours, first.online_features(rows).to_dict("records"))
    assert ours[-2]["temp"] is None and ours[-2]["temp__ts"] == 0
    assert ours[-1]["seats"] is None and ours[-1]["temp"] is not None

    # point-in-time retrieval is the same offline store (DuckDB over the shared parquet files)
    entity_df = pd.DataFrame(rows[:20]).assign(event_timestamp=utc("2013-04-10 12:00"))
    theirs = embedded.historical_features(entity_df)
    mine = first.historical_features(entity_df)
    order = ["origin", "carrier", "tailnum"]
    pd.testing.assert_frame_equal(
        mine.sort_values(order).reset_index(drop=True)[sorted(mine.columns)],
        theirs.sort_values(order).reset_index(drop=True)[sorted(theirs.columns)],
    )

    # the registry lives in PostgreSQL, under this project
    url, project = production.variables["PRODGUARD_DATABASE_URL"], first.project
    views = pg_rows(
        url, "SELECT feature_view_name FROM feature_views WHERE project_id = %s", project
    )
    assert {v for (v,) in views} == VIEWS
    services = pg_rows(
        url, "SELECT feature_service_name FROM feature_services WHERE project_id = %s", project
    )
    assert [s for (s,) in services] == [first.settings.feature_store.feature_service]

    # a second replica: same registry, same online values, and sees the first one's pushes
    second = production()
    assert second.versions() == first.versions()
    assert second.materialized_until() == UNTIL
    assert second.online_records(rows) == ours
    weather = OfflineStore(small / ".prodguard" / "offline").read("weather")
    pushed = weather[weather["origin"] == "JFK"].tail(1).copy()
    pushed["event_timestamp"] = pd.Timestamp("2013-04-15 01:00", tz="UTC")
    pushed["temp"] = 123.5
    first.push("weather_hourly", pushed)
    jfk = {"origin": "JFK", "carrier": "B6", "tailnum": "N503JB"}
    seen = second.online_records([jfk])[0]
    assert seen["temp"] == 123.5
    assert seen["temp__ts"] == int(pd.Timestamp("2013-04-15 01:00", tz="UTC").timestamp())

    # every key Feast wrote ends with the project name (the tests' cleanup relies on it)
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(match=f"*{project}*".encode(), count=1000))
    assert len(keys) == sum(result.online_rows.values())
    assert all(key.endswith(project.encode()) for key in keys)
    client.close()


def test_unreachable_backends_fail_in_one_line_without_credentials(production) -> None:
    first = production()
    first.apply()  # the registry (PostgreSQL) works; Redis is not touched by an apply

    no_redis = production(PRODGUARD_REDIS="127.0.0.1:9,password=S3CRET-redis,socket_timeout=1")
    entity = [{"origin": "JFK", "carrier": "B6", "tailnum": "N1"}]
    with pytest.raises(FeatureStoreError, match="online lookup failed") as lookup:
        no_redis.online_records(entity)
    with pytest.raises(FeatureStoreError, match="feast materialize failed") as writing:
        no_redis.materialize(until=UNTIL)
    for error in (lookup, writing):
        assert "S3CRET" not in str(error.value) and "\n" not in str(error.value)

    no_pg = "postgresql+psycopg://prodguard:S3CRET-pg@127.0.0.1:9/feast"
    with pytest.raises(FeatureStoreError, match="reading the Feast registry failed") as registry:
        production(PRODGUARD_DATABASE_URL=no_pg).versions()
    assert "S3CRET" not in str(registry.value) and "\n" not in str(registry.value)

    with pytest.raises(FeatureStoreError, match="PRODGUARD_REDIS"):
        production(PRODGUARD_REDIS=None)
