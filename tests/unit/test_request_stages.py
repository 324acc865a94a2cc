"""Each stage of the request path alone, on a small model and a real SQLite prediction log."""

import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard.clock import FixedClock
from prodguard.contracts.row_checks import RowContract
from prodguard.contracts.suites import Suite
from prodguard.errors import ModelFailed, RequestRejected
from prodguard.features.request_columns import RequestColumns, columns_of_rows
from prodguard.rollout.policy import TrafficPolicy
from prodguard.serving.engine import (
    SHADOW_BACKLOG,
    AnswerLog,
    FeatureLookup,
    ModelScoring,
    Prediction,
    Predictor,
    RequestChecks,
    RequestIdReused,
    Scored,
    Shadow,
    StoreFeature,
)
from prodguard.serving.models import LoadedModel, ServingState
from prodguard.serving.prediction_log import SqlitePredictionLog

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
COLUMNS = ("site", "size", "temp")


class Linear:
    """A model whose probability is ``temp / 100`` (clipped): answers are known in advance."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        p = np.clip(frame["temp"].to_numpy("float64") / 100, 0, 1)
        return np.column_stack([1 - p, p])


def model(version: int, shift: float = 0.0) -> LoadedModel:
    class Shifted(Linear):
        def predict_proba(self, frame):
            return super().predict_proba(frame.assign(temp=frame["temp"] + shift))

    return LoadedModel(
        version,
        Shifted(),
        COLUMNS,
        frozenset({"site"}),
        {"temp": 50.0, "site": "A", "size": 1.0},
        {"site": frozenset({"A", "B"})},
    )


def contract(*expectations: dict) -> RowContract:
    return RowContract.from_suites([Suite("s", Path("s.json"), tuple(expectations), "d")])


def predictor(
    log: SqlitePredictionLog,
    state: ServingState,
    derive_columns: RequestColumns | None = None,
    shadow_sample: float = 0.0,
    **checks,
) -> Predictor:
    answers = AnswerLog(log, "m")
    scoring = ModelScoring(0.5)
    return Predictor(
        state=lambda: state,
        checks=RequestChecks(contract(SIZE_POSITIVE), **checks),
        features=lookup(Store({"A": 80.0, "Zed": 20.0}), critical=["temp"]),
        derive=lambda frame: frame[["site", "size"]],
        scoring=scoring,
        answers=answers,
        shadow=Shadow(scoring, answers, shadow_sample),
        clock=FixedClock(NOW),
        derive_columns=derive_columns,
    )


SIZE_POSITIVE = {
    "type": "expect_column_values_to_be_between",
    "kwargs": {"column": "size", "min_value": 0},
}
TEMP_RANGE = {
    "type": "expect_column_values_to_be_between",
    "kwargs": {"column": "temp", "min_value": -50, "max_value": 150},
}
TEMP = StoreFeature("temp", "weather", 3600.0, ("site",), contract(TEMP_RANGE))


class Store:
    """An online store holding ``temp`` per site, observed ``age`` seconds before NOW."""

    def __init__(self, values: dict[str, float], age: float = 60.0) -> None:
        self.values, self.age, self.calls = values, age, 0

    def online_records(self, entity_rows):
        self.calls += 1
        stamp = NOW.timestamp() - self.age
        return [
            {"temp": self.values[e["site"]], "temp__ts": stamp}
            if e["site"] in self.values
            else {"temp": None, "temp__ts": None}
            for e in entity_rows
        ]


class Down:
    def online_records(self, entity_rows):
        raise ConnectionError("unreachable")


def row(site: str = "A", size: float = 2.0) -> dict:
    return {"site": site, "size": size, "event_timestamp": NOW.isoformat()}


def lookup(store, **options) -> FeatureLookup:
    return FeatureLookup(store, [TEMP], ["site"], 0.5, clock=FixedClock(NOW), **options)


# ---- checks ---------------------------------------------------------------------------------


def test_checks_name_fields_without_values() -> None:
    checks = RequestChecks(contract(SIZE_POSITIVE))
    assert checks.inspect(row(), model(1)) == ([], [])
    problems, _ = checks.inspect(row(size=-3.0), model(1))
    assert problems == [("size", "expect_column_values_to_be_between(size)")]
    assert "-3" not in str(problems)
    with pytest.raises(RequestRejected) as caught:
        checks.check([row(), row(size=-1.0)], model(1))
    assert caught.value.problems[0][0] == "rows[1].size"


def test_an_unseen_category_degrades_unless_critical() -> None:
    assert RequestChecks(contract()).inspect(row(site="Zed"), model(1)) == ([], ["site:unseen"])
    assert RequestChecks(contract()).check([row(), row("Zed")], model(1)) == [[], ["site:unseen"]]
    problems, flags = RequestChecks(contract(), critical=["site"]).inspect(row("Zed"), model(1))
    assert problems == [("site", "not one of the 2 values the model knows")] and flags == []


# ---- features -------------------------------------------------------------------------------


def test_lookup_returns_values_and_degrades_with_reasons() -> None:
    stage = lookup(Store({"A": 70.0, "B": 999.0}))
    rows = [row("A"), row("B"), row("C")]
    fetched, unavailable = stage.fetch(rows)
    found = stage.assemble(rows, fetched, unavailable, model(1))
    assert [f.values["temp"] for f in found] == [70.0, 50.0, 50.0]  # invalid, missing: median
    assert [f.flags for f in found] == [[], ["temp:invalid"], ["temp:missing"]]
    stale = lookup(Store({"A": 70.0}, age=7200.0))
    assert stale.assemble([row()], *stale.fetch([row()]), model(1))[0].flags == ["temp:stale"]
    future = lookup(Store({"A": 70.0}, age=-60.0))
    assert future.assemble([row()], *future.fetch([row()]), model(1))[0].flags == ["temp:future"]


def test_lookup_falls_back_to_last_good_and_refuses_critical() -> None:
    store = Store({"A": 70.0})
    stage = lookup(store, fallback_overrides={"temp": "last_good"})
    stage.assemble([row()], *stage.fetch([row()]), model(1))  # remembers A's 70
    store.values = {}
    assert stage.assemble([row()], *stage.fetch([row()]), model(1))[0].values == {"temp": 70.0}
    critical = lookup(Store({}), critical=["temp"])
    found = critical.assemble([row()], *critical.fetch([row()]), model(1))[0]
    assert (
        found.problems == [("temp", "missing and marked critical")] and "temp" not in found.values
    )


def test_lookup_treats_a_failed_or_hung_store_as_unavailable() -> None:
    assert lookup(Down()).fetch([row()]) == (None, "unavailable")
    release = threading.Event()

    class Hung:
        def online_records(self, entity_rows):
            release.wait(10)
            return []

    stage = FeatureLookup(Hung(), [TEMP], ["site"], 0.01, clock=FixedClock(NOW))
    try:
        assert [stage.fetch([row()])[1] for _ in range(6)] == ["unavailable"] * 6
        found = stage.assemble([row()], None, "unavailable", model(1))[0]
        assert found.flags == ["temp:unavailable"] and found.values == {"temp": 50.0}
    finally:
        release.set()
        stage.close()


# ---- model ----------------------------------------------------------------------------------


def test_scoring_applies_the_threshold_and_routes_a_sticky_canary() -> None:
    scoring = ModelScoring(0.6, sticky_fields=["site"])
    frame = model(1).frame([{"site": "A", "size": 1, "temp": 70}, {"site": "B", "temp": 40}])
    assert scoring.score(model(1), frame) == [Scored(0.7, True), Scored(0.4, False)]
    canary = TrafficPolicy(mode="canary", version=2, steps=(50.0,))
    state = ServingState(champion=model(1), rollout=model(2), policy=canary)
    rows = [row(site) for site in "AB" * 20]
    routes = scoring.route(state, rows, [str(i) for i in range(len(rows))])
    sides = {rows[i]["site"]: m.version for m, chosen in routes for i in chosen}
    assert len(sides) == 2  # each site always on one side
    assert scoring.route(ServingState(champion=model(1)), rows, ["x"] * 40)[0][1] == list(range(40))


# ---- log and shadow ---------------------------------------------------------------------------


def test_answer_log_replays_the_same_payload_and_refuses_another(tmp_path: Path) -> None:
    answers = AnswerLog(SqlitePredictionLog(tmp_path / "p.db"), "m")
    scored = Scored(0.2, False)
    answers.write(
        [
            answers.record("r1", NOW, model(3), "champion", scored, {}, ["x:y"], {}, digest="d1"),
            answers.record("old", NOW, model(3), "champion", scored, {}, [], {}),  # no digest
        ]
    )
    replayed, new, reused, old = answers.replayed(["r1", "r2", "r1", "old"], ["d1", "d", "d2", "d"])
    assert new is None and replayed.replayed and replayed.version == 3
    assert (replayed.probability, replayed.flags) == (0.2, ["x:y"])
    assert isinstance(reused, RequestIdReused) and reused.problems[0][0] == "request_id"
    assert old.replayed  # logged before payloads had digests: replayed as before


def test_shadow_scores_the_standby_off_the_response_path(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "p.db")
    answers = AnswerLog(log, "m")
    shadow = Shadow(ModelScoring(0.5), answers, sample=1.0)
    state = ServingState(champion=model(1), standby=model(2, shift=10.0))
    inputs = [{"site": "A", "size": 1.0, "temp": 30.0}]
    record = answers.record("r1", NOW, model(1), "champion", Scored(0.3, False), inputs[0], [], {})
    answers.write([record])
    shadow.after(state, columns_of_rows(inputs), [record])
    shadow.drain()
    logged = log.get("r1", role="shadow")
    assert logged.version == 2 and logged.probability == pytest.approx(0.4)
    shadow.after(ServingState(champion=model(1)), columns_of_rows(inputs), [record])  # no standby
    shadow.close()


@pytest.mark.parametrize("shed", [True, False])
def test_a_full_shadow_backlog_sheds_work_unless_told_to_wait(tmp_path: Path, shed: bool) -> None:
    """Serving sheds shadow work when the backlog is full (callers never wait for it); a
    replay waits for a slot instead, so its shadow rows are complete whatever the load."""
    import time

    log = SqlitePredictionLog(tmp_path / "p.db")
    answers = AnswerLog(log, "m")
    inputs = [{"site": "A", "size": 1.0, "temp": 30.0}]
    calls = SHADOW_BACKLOG + 40
    records = [
        answers.record(f"r{i}", NOW, model(1), "champion", Scored(0.3, False), inputs[0], [], {})
        for i in range(calls)
    ]
    answers.write(records)
    write = answers.write

    def slow_write(found: list) -> None:  # fault: a slow disk under the shadow's writes
        time.sleep(0.002)
        write(found)

    answers.write = slow_write  # type: ignore[method-assign]
    shadow = Shadow(ModelScoring(0.5), answers, sample=1.0, shed=shed)
    state = ServingState(champion=model(1), standby=model(2, shift=10.0))
    for record in records:
        shadow.after(state, columns_of_rows(inputs), [record])
    shadow.drain()
    shadow.close()
    scored = sum(log.get(r.request_id, role="shadow") is not None for r in records)
    assert scored == calls if not shed else SHADOW_BACKLOG <= scored < calls


def test_shadow_scores_the_sampled_rows_at_their_places_in_the_batchs_columns(
    tmp_path: Path,
) -> None:
    """The batch's input columns hold every row answered; the records given (rows logged by
    this call) are at ``places`` in them: the shadow scores each record's own inputs."""
    log = SqlitePredictionLog(tmp_path / "p.db")
    answers = AnswerLog(log, "m")
    shadow = Shadow(ModelScoring(0.5), answers, sample=1.0)
    state = ServingState(champion=model(1), standby=model(2, shift=10.0))
    inputs = [{"site": "A", "size": 1.0, "temp": t} for t in (10.0, 20.0, 30.0)]
    records = [
        answers.record(f"r{i}", NOW, model(1), "champion", Scored(0.3, False), inputs[i], [], {})
        for i in (0, 2)
    ]
    answers.write(records)
    shadow.after(state, columns_of_rows(inputs), records, [0, 2])
    shadow.drain()
    assert log.get("r0", role="shadow").probability == pytest.approx(0.2)
    assert log.get("r2", role="shadow").probability == pytest.approx(0.4)
    shadow.close()


def test_shadow_scores_every_row_of_a_burst_after_the_versions_change(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "p.db")
    answers = AnswerLog(log, "m")
    shadow = Shadow(ModelScoring(0.5), answers, sample=0.0001, burst=3)
    inputs = [{"site": "A", "size": 1.0, "temp": 30.0}]

    def serve(state: ServingState, request_id: str) -> bool:
        champion = state.champion
        assert champion is not None
        scored = Scored(0.3, False)
        record = answers.record(request_id, NOW, champion, "champion", scored, inputs[0], [], {})
        answers.write([record])
        shadow.after(state, columns_of_rows(inputs), [record])
        shadow.drain()
        return log.get(request_id, role="shadow") is not None

    first = ServingState(champion=model(1), standby=model(2))
    assert [serve(first, f"a{i}") for i in range(5)] == [True, True, True, False, False]
    swapped = ServingState(champion=model(2), standby=model(1))  # a rollback: a new burst
    assert [serve(swapped, f"b{i}") for i in range(4)] == [True, True, True, False]
    shadow.close()


def test_a_canary_burst_counts_the_rows_the_reference_scores_and_restarts_each_step(
    tmp_path: Path,
) -> None:
    log = SqlitePredictionLog(tmp_path / "p.db")
    answers = AnswerLog(log, "m")
    shadow = Shadow(ModelScoring(0.5), answers, sample=0.0001, burst=2)
    inputs = [{"site": "A", "size": 1.0, "temp": 30.0}]
    champion, canary = model(1), model(2)
    policy = TrafficPolicy(mode="canary", version=2, steps=(5.0, 100.0), step_started="t0")

    def serve(policy: TrafficPolicy, request_id: str, answered_by: LoadedModel) -> bool:
        state = ServingState(champion=champion, rollout=canary, policy=policy)
        role = "canary" if answered_by is canary else "champion"
        scored = Scored(0.3, False)
        record = answers.record(request_id, NOW, answered_by, role, scored, inputs[0], [], {})
        answers.write([record])
        shadow.after(state, columns_of_rows(inputs), [record])
        shadow.drain()
        return log.get(request_id, role="shadow") is not None

    # the champion's own answers are not rows it scores: they do not use up the burst
    assert [serve(policy, f"c{i}", champion) for i in range(5)] == [False] * 5
    assert [serve(policy, f"k{i}", canary) for i in range(3)] == [True, True, False]
    step = replace(policy, step=1, step_started="t1")  # a new canary step: a new burst
    assert [serve(step, f"s{i}", canary) for i in range(3)] == [True, True, False]
    timed = log.get("k0", role="shadow")
    assert timed.latencies_ms["batch_rows"] == 1 and timed.latencies_ms["model_ms"] >= 0
    shadow.close()


# ---- composed ---------------------------------------------------------------------------------


def test_predictor_composes_the_stages_and_times_each(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "p.db")
    stages: dict[str, float] = {}
    served = predictor(log, ServingState(champion=model(1)))
    answer = served.predict([row("A"), row("Zed")], ["a", "z"], stages)
    assert [(a.probability, a.decision, a.flags) for a in answer] == [
        (0.8, True, []),
        (0.2, False, ["site:unseen"]),  # scored: the model maps it to missing
    ]
    assert set(stages) == {"checks", "features", "model", "log", "total"}
    assert log.get("z").features == {"site": "Zed", "size": 2.0, "temp": 20.0}
    assert served.predict([row("A")], ["a"])[0].replayed
    assert served.refuses(row(size=-1.0)) and not served.refuses(row("Zed"))
    with pytest.raises(RequestRejected, match="rows.1..size"):
        served.predict([row(), row(size=-1.0)], ["n1", "n2"])
    assert log.get("n1") is None
    served.close()


def test_the_columns_form_answers_logs_and_shadows_as_the_frame_form(tmp_path: Path) -> None:
    """A predictor given the project's columns form (no frame on the request path) answers,
    logs and shadow-scores exactly as one given only the frame form."""
    state = ServingState(champion=model(1), standby=model(2, shift=10.0))
    rows = [row("A"), row("Zed", size=3.0), row(size=-1.0), row("A", size=5.0)]
    ids = ["a", "z", "bad", "a5"]
    logged = []
    for name, columns in (
        ("frame", None),
        ("columns", lambda c: {k: c[k] for k in ("site", "size")}),
    ):
        log = SqlitePredictionLog(tmp_path / f"{name}.db")
        served = predictor(log, state, derive_columns=columns, shadow_sample=1.0)
        answers = served.predict_each(rows, ids)
        one = served.predict([row("A", size=7.0)], ["single"])
        served.drain()
        logged.append(
            (
                [
                    (a.probability, a.decision, a.flags) if isinstance(a, Prediction) else str(a)
                    for a in answers
                ],
                one[0].probability,
                [
                    (r.features, r.flags, r.probability, r.version)
                    for i in [*ids, "single"]
                    for role in ("champion", "shadow")
                    if (r := log.get(i, role=role)) is not None
                ],
            )
        )
        served.close()
    assert logged[0] == logged[1]
    assert [version for *_, version in logged[1][2]] == [1, 2, 1, 2, 1, 2, 1, 2]


def test_a_reused_request_id_with_another_payload_is_refused(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "p.db")
    served = predictor(log, ServingState(champion=model(1)))
    first = served.predict([row("A")], ["id-1"])[0]
    assert served.predict([row("A")], ["id-1"])[0] == replace(first, replayed=True)
    with pytest.raises(RequestIdReused):
        served.predict([row("A", size=3.0)], ["id-1"])
    with pytest.raises(RequestIdReused):  # one reused id refuses a call answered as a whole
        served.predict([row("A"), row("A", size=3.0)], ["id-2", "id-1"])
    assert log.get("id-2") is None
    each = served.predict_each([row("A", size=3.0), row("A")], ["id-1", "id-1b"])
    assert isinstance(each[0], RequestIdReused) and each[1].version == 1
    assert served.predict_each([row("A")], ["id-1"])[0].replayed
    assert log.get("id-1").request["size"] == 2.0
    served.close()


def test_predict_each_answers_every_row_on_its_own(tmp_path: Path) -> None:
    log = SqlitePredictionLog(tmp_path / "p.db")
    served = predictor(log, ServingState(champion=model(1)), critical=["site"])
    rows = [row(), row(size=-1.0), row("Zed"), row("B"), row(), row()]
    answers = served.predict_each(rows, ["ok", "bad", "unseen", "nostore", "dup", "dup"])
    assert [type(a).__name__ for a in answers] == [
        "Prediction",
        "RequestRejected",
        "RequestRejected",
        "RequestRejected",  # temp is critical and the store has nothing for B
        "Prediction",
        "RequestRejected",
    ]
    assert [a.problems[0][0] for a in answers if isinstance(a, RequestRejected)] == [
        "size",
        "site",
        "temp",
        "request_id",
    ]
    assert log.get("ok") and log.get("dup") and not log.get("bad") and not log.get("nostore")
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert log.errors(*everything) == {"rejected": 4, "failed": 0}
    again = served.predict_each([row(), row(size=-1.0)], ["ok", "new"])
    assert again[0].replayed and isinstance(again[1], RequestRejected)
    served.close()


class Broken(Linear):
    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        raise ValueError(f"cannot score {frame['temp'].tolist()}")  # values in the message


def test_a_failing_canary_model_is_charged_with_its_own_failure(tmp_path: Path) -> None:
    """A model that raises fails the request with a ModelFailed naming its version (never the
    request's values), counted as `failed` for that version: in a canary, the canary's error
    rate, not the champion's."""
    log = SqlitePredictionLog(tmp_path / "p.db")
    broken = replace(model(2), pipeline=Broken())
    canary = TrafficPolicy(mode="canary", version=2, steps=(50.0,))
    serving = predictor(log, ServingState(champion=model(1), rollout=broken, policy=canary))
    outcomes: dict[int, int] = {}
    for i in range(40):
        try:
            answer = serving.predict([row("A")], [f"r{i}"])[0]
            outcomes[answer.version] = outcomes.get(answer.version, 0) + 1
        except ModelFailed as exc:
            assert exc.version == 2 and "v2" in str(exc) and "80" not in str(exc)
            outcomes[-2] = outcomes.get(-2, 0) + 1
    assert outcomes.get(1, 0) > 0 and outcomes.get(-2, 0) > 0 and 2 not in outcomes
    start, end = NOW.replace(hour=0), NOW.replace(hour=23)
    assert log.errors(start, end, 2)["failed"] == outcomes[-2]
    assert log.errors(start, end, 1).get("failed", 0) == 0
