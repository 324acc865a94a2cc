"""The request path in-process, on a real trained model, Feast store and prediction log."""

import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from prodguard import app, wiring
from prodguard.config import load_settings
from prodguard.errors import (
    DuplicateRequest,
    FeedbackConflict,
    RequestRejected,
    UnknownRequest,
)
from prodguard.serving.engine import RequestIdReused
from prodguard.serving.models import ServingState
from tests.conftest import FLIGHT_REQUEST, copy_project

pytestmark = pytest.mark.integration

REQUEST = FLIGHT_REQUEST


def _serving(root: Path, tmp_path: Path):
    settings = load_settings(
        root / "prodguard.yaml",
        environ={"PRODGUARD_PATHS__DATA_DIR": str(root / ".prodguard")},
    )
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"shadow_sample": 1.0})}
    )
    built = wiring.build_serving(settings)
    # a private prediction log per test
    from prodguard.serving.prediction_log import SqlitePredictionLog

    built.log = SqlitePredictionLog(tmp_path / "predictions.db")
    built.predictor.answers.log = built.log
    built.follower.refresh()
    built.predictor.warm_up(REQUEST)
    return built


@pytest.fixture
def serving(served_project, tmp_path):
    """Reads the shared served project; tests that move aliases use ``own_serving``."""
    built = _serving(served_project, tmp_path)
    yield built
    built.predictor.close()


@pytest.fixture
def own_serving(served_project, tmp_path):
    """A private copy of the served project: aliases and tags may change freely."""
    from prodguard import wiring as wired

    root = copy_project(served_project, tmp_path / "project")
    settings = load_settings(root / "prodguard.yaml", environ={})
    wired.feature_store(settings).materialize(until=pd.Timestamp("2013-05-01", tz="UTC"))
    built = _serving(root, tmp_path)
    yield built
    built.predictor.close()


def ask(serving, request_id=None, **changes):
    model = serving.request_model(**{**REQUEST, **changes, "request_id": request_id})
    return serving.predictor.predict([model.to_row()], [model.request_id])[0]


def test_serves_champion_with_standby_warm_and_logs_durably(serving) -> None:
    assert serving.follower.state.describe() == {"champion": 2, "standby": 1}
    assert serving.ready()
    answer = ask(serving, "req-1")
    assert answer.version == 2 and answer.model == "flight-delay"
    assert 0 < answer.probability < 1 and answer.decision == (answer.probability >= 0.5)
    assert answer.flags == []
    logged = serving.log.get("req-1")
    assert logged.probability == answer.probability and logged.role == "champion"
    assert logged.features["temp"] is not None and logged.request["origin"] == "EWR"
    assert set(logged.latencies_ms) == {"checks_ms", "features_ms", "model_ms", "batch_rows"}
    assert logged.latencies_ms["batch_rows"] == 1
    serving.predictor.drain()
    shadow = serving.log.get("req-1", role="shadow")
    assert shadow.version == 1 and shadow.features == logged.features


def test_same_request_id_is_replayed_not_predicted_twice(serving) -> None:
    first = ask(serving, "req-2")
    again = ask(serving, "req-2")
    assert again.replayed and again.probability == first.probability
    with pytest.raises(DuplicateRequest):
        serving.log.write([serving.log.get("req-2")])
    with pytest.raises(RequestIdReused):  # the same id for another request: refused
        ask(serving, "req-2", distance=100.0)
    assert serving.log.get("req-2").request["distance"] == REQUEST["distance"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"origin": "BOS"}, "origin"),
        ({"carrier": "ua"}, "carrier"),
        ({"dest": "xyz"}, "dest"),
        ({"distance": 9000.0}, "distance"),
    ],
)
def test_invalid_fields_are_rejected_and_not_logged(serving, changes, field) -> None:
    with pytest.raises(RequestRejected) as caught:
        ask(serving, "bad-1", **changes)
    assert field in {f for f, _ in caught.value.problems}
    assert str(next(iter(changes.values()))) not in str(caught.value)  # no payload echo
    assert serving.log.get("bad-1") is None
    # counted for the monitors' rejection rate, with the version that refused it
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert serving.log.errors(*everything) == {"rejected": 1, "failed": 0}


def test_an_unseen_category_is_scored_as_missing_and_flagged(serving) -> None:
    known = ask(serving, "seen-1", tailnum=None)
    answer = ask(serving, "unseen-1", carrier="ZZ", tailnum=None)  # valid, never in training
    assert "carrier:unseen" in answer.flags and answer.degraded
    logged = serving.log.get("unseen-1")
    assert logged.flags == answer.flags and logged.request["carrier"] == "ZZ"
    assert 0 < answer.probability < 1 and answer.probability != known.probability
    serving.predictor.checks._critical = frozenset({"carrier"})  # refusing stays available
    with pytest.raises(RequestRejected) as caught:
        ask(serving, "unseen-2", carrier="ZZ")
    [(field, problem)] = caught.value.problems
    assert field == "carrier" and problem.endswith("values the model knows")
    assert serving.log.get("unseen-2") is None


def test_a_batch_answered_row_by_row(serving) -> None:
    rows = [
        serving.request_model(**{**REQUEST, **changes}).to_row()
        for changes in ({}, {"dest": "xyz"}, {"carrier": "ZZ"})
    ]
    answers = serving.predictor.predict_each(rows, ["row-0", "row-1", "row-2"])
    assert isinstance(answers[1], RequestRejected) and answers[1].problems[0][0] == "dest"
    assert "carrier:unseen" in answers[2].flags and answers[0].flags == []
    assert serving.log.get("row-0") and serving.log.get("row-2") and not serving.log.get("row-1")
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert serving.log.errors(*everything) == {"rejected": 1, "failed": 0}


def test_missing_tailnum_is_allowed_and_flagged(serving) -> None:
    answer = ask(serving, "no-tail", tailnum=None)
    assert {f.split(":")[1] for f in answer.flags} == {"missing"}
    assert "seats:missing" in answer.flags


def test_stale_features_fall_back_to_training_medians(serving) -> None:
    answer = ask(serving, "late-1", scheduled_departure="2013-06-15T12:00:00Z")
    assert "temp:stale" in answer.flags and "ontime_rate_7d:stale" in answer.flags
    assert "seats:stale" not in answer.flags  # plane specs have a ten-year TTL
    logged = serving.log.get("late-1")
    fallbacks = serving.follower.state.champion.fallbacks
    assert logged.features["temp"] == fallbacks["temp"]


class _DownStore:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def online_records(self, entity_rows):
        if self.delay:
            time.sleep(self.delay)
            return []
        raise ConnectionError("online store unreachable")


@pytest.mark.parametrize("store", [_DownStore(), _DownStore(delay=1.0)])
def test_store_outage_or_timeout_degrades_never_fails(serving, store) -> None:
    serving.predictor.features._store = store
    answer = ask(serving, f"outage-{store.delay}")
    assert answer.flags and all(f.endswith(":unavailable") for f in answer.flags)
    assert serving.log.get(f"outage-{store.delay}").flags == answer.flags


def test_critical_feature_rejects_instead_of_falling_back(serving) -> None:
    serving.predictor.features._critical = frozenset({"temp"})
    with pytest.raises(RequestRejected, match="temp: stale and marked critical"):
        ask(serving, "crit-1", scheduled_departure="2013-06-15T12:00:00Z")
    assert serving.log.get("crit-1") is None


def test_feedback_is_idempotent_and_checked(serving) -> None:
    ask(serving, "fb-1")
    now = pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()
    assert serving.log.record_feedback("fb-1", {"arr_delay": 12.0}, now) == "recorded"
    assert serving.log.record_feedback("fb-1", {"arr_delay": 12.0}, now) == "duplicate"
    with pytest.raises(FeedbackConflict):
        serving.log.record_feedback("fb-1", {"arr_delay": 40.0}, now)
    with pytest.raises(UnknownRequest):
        serving.log.record_feedback("never-seen", {"arr_delay": 1.0}, now)
    window = serving.log.window(now.replace(year=2000), now.replace(year=2100))
    row = window[(window["request_id"] == "fb-1") & (window["role"] == "champion")].iloc[0]
    assert row["outcome"] == {"arr_delay": 12.0}


def test_follower_swaps_on_alias_move_and_refuses_broken_versions(own_serving):
    serving = own_serving
    settings = serving.settings
    operations = wiring.registry_operations(settings)
    operations.rollback("tests", "swap test")  # champion v1, no standby
    assert serving.follower.refresh()
    assert serving.follower.state.describe() == {"champion": 1, "standby": None}
    assert ask(serving, "after-swap").version == 1
    assert serving.ready()  # no standby alias: nothing more to load

    def broken(version):
        from prodguard.errors import PromotionRefused

        raise PromotionRefused(f"v{version} fails to load")

    serving.follower._load = broken
    # v2 was just rolled back: promoting it again is an explicit, audited override
    operations.promote("tests", "bad", version=2, override_demoted="swap test")
    assert not serving.follower.refresh() or serving.follower.state.champion.version == 1
    assert serving.follower.state.champion.version == 1  # kept serving
    alerts = app.alerts(settings, "model_refused")
    assert alerts and alerts[-1]["details"]["version"] == 2


def test_a_request_never_mixes_versions(serving) -> None:
    state = serving.follower.state
    seen = []
    serving.predictor.state = lambda: (seen.append(1), state)[1]
    ask(serving, "one-snapshot")
    assert seen == [1]
    assert isinstance(state, ServingState)


class _HungStore:
    """Holds every lookup until released; counts the lookups that reached it."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def online_records(self, entity_rows):
        with self._lock:
            self.calls += 1
        self.release.wait(30)
        return []


def test_a_hung_store_does_not_pile_up_requests(serving) -> None:
    from prodguard.serving.engine import LOOKUP_WORKERS

    store = _HungStore()
    lookup = serving.predictor.features
    lookup._store = store
    try:
        for index in range(LOOKUP_WORKERS + 4):
            answer = ask(serving, f"hung-{index}")
            assert answer.flags and all(f.endswith(":unavailable") for f in answer.flags)
    finally:
        store.release.set()
    lookup._lookups.shutdown(wait=True)  # every lookup submitted (a queued one too) has run
    # once every lookup worker is held by the hung store, later requests answer without it:
    # neither calling the store nor queueing behind it (a queued lookup would run on release)
    assert store.calls == LOOKUP_WORKERS


def test_values_observed_after_the_flight_are_not_used(serving) -> None:
    answer = ask(serving, "early-1", scheduled_departure="2013-04-30T20:15:00Z")
    assert "temp:future" in answer.flags  # the store holds weather up to 23:00
    assert "seats:future" not in answer.flags


def test_last_good_never_returns_null(serving) -> None:
    from prodguard.serving.engine import LastGood

    memory = LastGood(capacity=2)
    memory.remember("temp", "JFK", float("nan"))
    memory.remember("temp", "EWR", 50.0)
    assert memory.get("temp", "JFK") is None and memory.get("temp", "EWR") == 50.0


def test_per_feature_last_good_fallback(serving) -> None:
    # temp falls back to its last good value (memory is kept only while a feature reads it)
    serving.predictor.features._fallback_overrides = {"temp": "last_good"}
    ask(serving, "lg-1")  # remembers EWR's weather
    remembered = serving.log.get("lg-1").features["temp"]
    answer = ask(serving, "lg-2", scheduled_departure="2013-06-15T12:00:00Z")
    logged = serving.log.get("lg-2").features
    assert "temp:stale" in answer.flags and logged["temp"] == remembered
    assert logged["dewp"] == serving.follower.state.champion.fallbacks["dewp"]
