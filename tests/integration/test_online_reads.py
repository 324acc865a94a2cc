"""Direct reads of Feast's online store (the request path's lookups; SQLite embedded, Redis in
production) against Feast's own ``get_online_features``: same values and timestamps, same
degradation (missing, stale)."""

import math
import shutil
import subprocess
import sys

import pytest
from redis import Redis

from prodguard import wiring
from prodguard.config import load_settings
from prodguard.errors import FeatureStoreError
from prodguard.features.feast_adapter import FeastStore
from prodguard.ingestion.offline import OfflineStore
from prodguard.serving.prediction_log import SqlitePredictionLog
from prodguard_flights.features import FlightRequest
from tests.conftest import FLIGHT_REQUEST, make_project, utc

pytestmark = pytest.mark.integration


class FeastPath:
    """The same store read through Feast's get_online_features only."""

    def __init__(self, store: FeastStore) -> None:
        self.store = store

    def online_records(self, entity_rows):
        return self.store.online_features(entity_rows).to_dict("records")


def same(a, b) -> bool:
    def null(v):
        return v is None or (isinstance(v, float) and math.isnan(v))

    return (null(a) and null(b)) or a == b


@pytest.fixture(scope="module")
def store(ingested) -> FeastStore:
    return FeastStore(load_settings(ingested / "prodguard.yaml", environ={}))


def entities(ingested, count: int = 150) -> list[dict]:
    flights = OfflineStore(ingested / ".prodguard" / "offline").read("flights")
    keys = flights[["origin", "carrier", "tailnum"]].fillna("").drop_duplicates()
    rows = keys.sample(count, random_state=11).to_dict("records")
    return rows + [
        {"origin": "XXX", "carrier": "ZZ", "tailnum": "N0"},  # no entity anywhere
        {"origin": "JFK", "carrier": "B6", "tailnum": "NOPLANE"},  # one view misses
        {"origin": "EWR", "carrier": "UA", "tailnum": ""},  # no tail number
    ]


def test_direct_reads_equal_feasts_own_row_by_row(store, ingested) -> None:
    rows = entities(ingested)
    assert store._direct_reader() is not False  # the embedded store is read directly
    batched = store.online_records(rows)
    theirs = store.online_features(rows).to_dict("records")
    compared = 0
    for row, ours, feast in zip(rows, batched, theirs, strict=True):
        assert store.online_records([row]) == [ours]  # one by one as in a batch
        for name, value in ours.items():
            assert same(value, feast[name]), (row, name, value, feast[name])
            compared += 1
    names = {n for r in theirs for n in r} - {"origin", "carrier", "tailnum"}
    names -= {f"{k}__ts" for k in ("origin", "carrier", "tailnum")}
    assert set(batched[0]) == names  # every feature and its timestamp, nothing else
    missing = batched[len(rows) - 3]
    assert missing["temp"] is None and missing["temp__ts"] == 0
    assert batched[len(rows) - 2]["seats"] is None and batched[len(rows) - 2]["temp"] is not None
    assert compared > 150 * 30
    # the scalars decoded by these reads were kept (keyed by their stored bytes) and read back
    # by the one-by-one reads; a reader that kept none reads the same records
    assert store._direct._scalars
    fresh = FeastStore(load_settings(ingested / "prodguard.yaml", environ={})).online_records(rows)
    for kept, anew in zip(batched, fresh, strict=True):
        assert kept.keys() == anew.keys()
        assert all(same(kept[name], anew[name]) for name in kept), (kept, anew)


@pytest.fixture
def predictors(served_project, tmp_path):
    """Two request paths over the same champion and store: direct reads, Feast's reads."""
    yield from build_predictors(served_project, tmp_path, {})


def build_predictors(served_project, tmp_path, environ):
    """(predictor, log) of the direct reads and of Feast's reads, over the champion of
    ``served_project`` and the feature store its settings name (``environ`` overrides)."""
    settings = load_settings(
        served_project / "prodguard.yaml",
        environ={"PRODGUARD_PATHS__DATA_DIR": str(served_project / ".prodguard"), **environ},
    )
    store = wiring.feature_store(settings)
    if environ:  # a store of its own: load it as the served project's store is
        store.materialize(until=utc("2013-05-01"))
    built = wiring.build_serving(settings)
    built.follower.refresh()
    made = []
    for name, source in (("direct", store), ("feast", FeastPath(store))):
        log = SqlitePredictionLog(tmp_path / f"{name}.db")
        made.append(
            (
                wiring.build_predictor(
                    settings, source, lambda: built.follower.state, log, shadow_sample=0.0
                ),
                log,
            )
        )
    yield made
    for predictor, _ in made:
        predictor.close()
    built.predictor.close()


DEGRADATIONS = [
    ({}, None),  # fresh values
    ({"scheduled_departure": "2013-05-01T05:00:00Z"}, "temp:stale"),  # weather TTL is 3 h
    ({"scheduled_departure": "2013-06-15T12:00:00Z"}, "ontime_rate_7d:stale"),
    ({"tailnum": None}, "seats:missing"),  # no plane given
    ({"tailnum": "N0NE"}, "seats:missing"),  # a plane the store does not know
    ({"scheduled_departure": "2013-04-30T12:00:00Z"}, "temp:future"),  # observed after
]


def answers_of(predictors, changes, tag: str) -> list[tuple]:
    """(flags, probability, logged features) of one request through each predictor."""
    answers = []
    for i, (predictor, log) in enumerate(predictors):
        row = FlightRequest(**{**FLIGHT_REQUEST, **changes}).to_row()
        answer = predictor.predict([row], [f"{tag}-{i}"])[0]
        answers.append((answer.flags, answer.probability, log.get(f"{tag}-{i}").features))
    return answers


@pytest.mark.parametrize(("changes", "reason"), DEGRADATIONS)
def test_direct_reads_degrade_exactly_like_feasts(predictors, changes, reason) -> None:
    answers = answers_of(predictors, changes, "parity")
    assert answers[0] == answers[1]
    assert (reason in answers[0][0]) if reason else answers[0][0] == []


@pytest.mark.postgres
@pytest.mark.redis
def test_redis_reads_degrade_exactly_like_sqlite_reads(
    served_project, predictors, tmp_path, pg_database, redis_namespace
) -> None:
    """The production store (PostgreSQL registry, Redis online store) loaded from the same
    offline data: its direct reads and Feast's own give the same answers, flags and logged
    features as the embedded store's, case by case."""
    config = served_project / "feature_repo" / "feature_store.production.yaml"
    environ = {
        "PRODGUARD_FEATURE_STORE__CONFIG": str(config),
        "PRODGUARD_DATABASE_URL": pg_database("reads"),
        "PRODGUARD_REDIS": "127.0.0.1:6379",
        "PRODGUARD_FEAST_PROJECT": redis_namespace,
    }
    made = build_predictors(served_project, tmp_path / "redis", environ)
    on_redis = next(made)
    try:
        for n, (changes, reason) in enumerate(DEGRADATIONS):
            embedded = answers_of(predictors[:1], changes, f"sqlite{n}")
            redis = answers_of(on_redis, changes, f"redis{n}")
            assert redis[0] == redis[1] == embedded[0], changes
            assert (reason in redis[0][0]) if reason else redis[0][0] == []
    finally:
        next(made, None)
    client = Redis(host="127.0.0.1", port=6379)
    assert any(client.scan_iter(match=f"*{redis_namespace}".encode(), count=1000))
    client.close()


def test_unreachable_redis_fails_the_direct_lookup(ingested, tmp_path) -> None:
    root = make_project(tmp_path / "project")
    shutil.copytree(ingested / ".prodguard" / "offline", root / ".prodguard" / "offline")
    config = root / "feature_repo" / "feature_store.yaml"
    text = config.read_text()
    start = text.index("online_store:")
    end = text.index("offline_store:")
    config.write_text(
        text[:start]
        + "online_store:\n  type: redis\n"
        + "  connection_string: 127.0.0.1:9,socket_timeout=0.2,retry=null\n"
        + text[end:]
    )
    store = FeastStore(load_settings(root / "prodguard.yaml", environ={}))
    store.apply()
    with pytest.raises(FeatureStoreError, match="online lookup"):
        store.online_records([{"origin": "JFK", "carrier": "B6", "tailnum": "N1"}])
    assert type(store._direct).__name__ == "_DirectReads"  # Redis' own read, no SQLite file
    assert not (root / ".prodguard" / "feast" / "online_store.db").exists()


UNCHECKED = """
import time
import typeguard
from prodguard.features import feast_adapter
checked = typeguard.typechecked
began = time.perf_counter()
feast_adapter._import_feast_unchecked()
took = time.perf_counter() - began
import feast.feature_view
assert typeguard.typechecked is checked  # left as it was
assert "TypeCheckMemo" not in feast.feature_view.FeatureView.__init__.__code__.co_names
print(round(took, 2))
"""


def test_serving_imports_feast_without_run_time_type_checks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", UNCHECKED], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
