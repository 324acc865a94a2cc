"""The batch request path (checks, degradation, model input and answers computed for a whole
batch at once) gives what the row-by-row path gave: each reference below is the previous
row-by-row code, kept here to compare with."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard.clock import FixedClock
from prodguard.contracts.row_checks import RowContract, is_null, value_key
from prodguard.contracts.suites import Suite
from prodguard.serving.engine import (
    FeatureLookup,
    LastGood,
    ModelScoring,
    RequestChecks,
    Scored,
    StoreFeature,
    _inputs,
    columns_of,
    records_of,
)
from prodguard.serving.models import LoadedModel
from prodguard.tasks import Task, TaskSpec
from prodguard_flights.features import request_features

pytestmark = pytest.mark.unit

NOW = datetime(2013, 5, 1, 12, tzinfo=UTC)


def contract(*expectations: dict) -> RowContract:
    return RowContract.from_suites([Suite("s", Path("s.json"), tuple(expectations), "d")])


def expectation(kind: str, column: str, **kwargs) -> dict:
    return {"type": f"expect_column_values_to_{kind}", "kwargs": {"column": column, **kwargs}}


RULES = contract(
    expectation("not_be_null", "carrier"),
    expectation("not_be_null", "tailnum", mostly=0.9),
    expectation("be_in_set", "carrier", value_set=["UA", "AA", "B6", 1]),
    expectation("match_regex", "carrier", regex="^[A-Z0-9]+$"),
    expectation("be_between", "distance", min_value=0, max_value=5000),
    expectation("be_between", "distance", min_value=0, max_value=5000),  # repeated rule
    expectation("not_match_regex", "dep", regex="^-"),
)
VALUES = {
    "carrier": ["UA", "ua", None, float("nan"), 1, 1.0, True, "AA", "UA", "Zed", pd.NA],
    "tailnum": ["N1", None, float("nan"), "N1"],
    "distance": [1400.0, 1400, -3.0, 9000, None, "12", "x", True, np.float64(3.0), float("nan")],
    "dep": [0.0, -0.0, 0, "-1", "1", None],
}


def request_rows(count: int = 60) -> list[dict]:
    rows = []
    for i in range(count):
        row = {
            column: values[(i * (k + 3)) % len(values)]
            for k, (column, values) in enumerate(VALUES.items())
        }
        if i % 7 == 0:
            del row["dep"]  # absent columns are not checked
        rows.append(row)
    return rows


def old_inspect(contract_: RowContract, critical: frozenset, row: dict, model: LoadedModel):
    problems = [
        (v.column, v.expectation) for v in contract_.violations(row, nullable_when_tolerant=True)
    ]
    flags = []
    for column, known in model.categories.items():
        value = row.get(column)
        if column in row and not is_null(value) and str(value) not in known:
            if column in critical:
                problems.append((column, f"not one of the {len(known)} values the model knows"))
            else:
                flags.append(f"{column}:unseen")
    return list(dict.fromkeys(problems)), flags


def model(categories: dict | None = None) -> LoadedModel:
    return LoadedModel(
        1,
        None,
        ("carrier", "distance", "temp", "seats"),
        frozenset({"carrier"}),
        {"carrier": "UA", "distance": 1.0, "temp": 50.0, "seats": 100.0},
        categories if categories is not None else {"carrier": frozenset({"UA", "AA", "1"})},
    )


def test_value_keys_keep_apart_what_a_check_tells_apart() -> None:
    keys = [value_key(v) for v in (1, 1.0, True, "1", None, 0.0, -0.0)]
    assert len(set(keys)) == len(keys)
    assert value_key(float("nan")) is not None and value_key(pd.NA) is None
    assert value_key(np.float64(1.0)) is None  # not memoised: judged each time


def one_kind_rows(count: int = 60) -> list[dict]:
    """Rows holding every column, each column of one kind (str, float, int, bool; None)."""
    columns = {
        "carrier": ["UA", "ua", None, "AA", "Zed", "1"],
        "tailnum": ["N1", None, "N2"],
        "distance": [1400.0, -3.0, 9000.0, None, float("nan"), 12.5],
        "dep": [0, -1, 3, None],
        "flag": [True, False, None],
    }
    return [
        {
            column: values[(i * (k + 3)) % len(values)]
            for k, (column, values) in enumerate(columns.items())
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("make", [request_rows, one_kind_rows])
def test_batch_violations_equal_row_by_row(make) -> None:
    rows = make()
    for tolerant in (False, True):
        assert RULES.violations_of(rows, nullable_when_tolerant=tolerant) == [
            RULES.violations(row, nullable_when_tolerant=tolerant) for row in rows
        ]


@pytest.mark.parametrize("make", [request_rows, one_kind_rows])
@pytest.mark.parametrize("critical", [frozenset(), frozenset({"carrier"})])
def test_batch_checks_equal_row_by_row(critical, make) -> None:
    rows = make()
    checks = RequestChecks(RULES, critical)
    assert checks.inspect_all(rows, model()) == [
        old_inspect(RULES, critical, row, model()) for row in rows
    ]
    assert checks.inspect_all([], model()) == []


TEMP = StoreFeature(
    "temp",
    "weather",
    3600.0,
    ("origin",),
    contract(expectation("be_between", "temp", min_value=-50, max_value=150)),
)
SEATS = StoreFeature(
    "seats",
    "planes",
    0.0,
    ("tailnum",),
    contract(expectation("not_be_null", "seats"), expectation("be_between", "seats", min_value=1)),
)


DEW = StoreFeature(  # temp's view: the same stamps and TTL (their verdicts are shared)
    "dew",
    "weather",
    3600.0,
    ("origin",),
    contract(expectation("be_between", "dew", min_value=-50, max_value=50)),
)
HOURLY = StoreFeature(  # the same stamps as temp's, another TTL
    "hourly",
    "weather",
    60.0,
    ("origin",),
    contract(expectation("not_be_null", "hourly")),
)


def old_assemble(
    stage: FeatureLookup, memory: LastGood, rows, fetched, unavailable, champion, now=NOW
):
    """The row-by-row ``FeatureLookup.assemble`` (with its own ``LastGood``)."""

    def problem(feature, value, record, as_of):
        stamp = record.get(f"{feature.name}__ts")
        if stamp is None or is_null(stamp) or stamp == 0:
            return "missing"
        age = as_of.timestamp() - float(stamp)
        if age < 0:
            return "future"
        if feature.ttl_seconds > 0 and age > feature.ttl_seconds:
            return "stale"
        broken = feature.checks.check_value(feature.name, value)
        if broken and not (is_null(value) and feature.checks.nullable(feature.name)):
            return "invalid"
        return None

    records = fetched if fetched is not None else [{}] * len(rows)
    assembled = []
    for index, row in enumerate(rows):
        as_of = min(now, pd.Timestamp(row["event_timestamp"]).to_pydatetime())
        values, flags, problems = {}, [], []
        for feature in stage._features:
            value = records[index].get(feature.name)
            reason = unavailable or problem(feature, value, records[index], as_of)
            key = "|".join(str(row.get(k)) for k in feature.join_keys)
            if reason is None:
                values[feature.name] = value
                memory.remember(feature.name, key, value)
                continue
            if feature.name in stage._critical:
                problems.append((feature.name, f"{reason} and marked critical"))
                continue
            fallback = champion.fallbacks.get(feature.name)
            if stage._fallback_overrides.get(feature.name, stage._fallback) == "last_good":
                remembered = memory.get(feature.name, key)
                fallback = remembered if remembered is not None else fallback
            values[feature.name] = fallback
            flags.append(f"{feature.name}:{reason}")
        assembled.append((values, flags, problems))
    return assembled


def store_records(count: int) -> tuple[list[dict], list[dict]]:
    """Rows asking at several times, and their store records: valid, missing (None, 0, NaN
    stamps), stale, future, invalid and null values."""
    stamps = [
        NOW.timestamp() - 60,
        None,
        0,
        float("nan"),
        NOW.timestamp() - 7200,
        NOW.timestamp() + 60,
        np.int64(NOW.timestamp() - 5),
    ]
    temps = [20.0, 999.0, None, float("nan"), 70, -0.0, "x"]
    seats = [100, 0, None, 149.0, float("nan")]
    rows, records = [], []
    for i in range(count):
        asked = NOW - timedelta(minutes=i % 3) if i % 4 else (NOW + timedelta(hours=1)).isoformat()
        rows.append(
            {
                "origin": ["EWR", "JFK", None][i % 3],
                "tailnum": f"N{i % 5}",
                "event_timestamp": asked,
            }
        )
        records.append(
            {
                "temp": temps[i % len(temps)],
                "temp__ts": stamps[i % len(stamps)],
                "seats": seats[i % len(seats)],
                "seats__ts": stamps[(i * 3 + 1) % len(stamps)],
                "dew": temps[(i + 1) % len(temps)],
                "dew__ts": stamps[i % len(stamps)],
                "hourly": temps[(i + 2) % len(temps)],
                "hourly__ts": stamps[i % len(stamps)],
            }
        )
    return rows, records


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fallback": "last_good"},
        {"fallback_overrides": {"temp": "last_good"}, "critical": ["seats"]},
    ],
)
@pytest.mark.parametrize("unavailable", [None, "unavailable"])
def test_batch_degradation_equals_row_by_row(options, unavailable) -> None:
    stage = FeatureLookup(
        None,
        [TEMP, SEATS, DEW, HOURLY],
        ["origin", "tailnum"],
        0.5,
        clock=FixedClock(NOW),
        **options,
    )
    memory = LastGood()
    champion = model()
    for count in (1, 40, 40):  # the second batch of 40 reads what the first remembered
        rows, records = store_records(count)
        fetched = None if unavailable else records
        new = stage.assemble(rows, fetched, unavailable, champion)
        old = old_assemble(stage, memory, rows, fetched, unavailable, champion)
        assert len(new) == len(old)
        for found, (values, flags, problems) in zip(new, old, strict=True):
            assert found.flags == flags and found.problems == problems
            assert list(found.values) == list(values)
            for name, value in values.items():
                assert found.values[name] is value or found.values[name] == value
    if "last_good" in (options.get("fallback"), *options.get("fallback_overrides", {}).values()):
        assert list(stage._last_good._values.items()) == list(memory._values.items())
    else:  # no feature reads the memory: nothing is remembered
        assert not stage._last_good._values
    stage.close()


def test_last_good_memory_keeps_the_same_order_and_capacity() -> None:
    one, many = LastGood(capacity=3), LastGood(capacity=3)
    entries = [
        ("a", "1", 1.0),
        ("b", "1", None),
        ("a", "2", 2.0),
        ("a", "1", 3.0),
        ("c", "9", float("nan")),
        ("d", "1", 4),
        ("e", "1", "x"),
    ]
    for entry in entries:
        one.remember(*entry)
    many.remember_many(entries)
    assert list(one._values.items()) == list(many._values.items())


def test_records_of_equal_iloc_to_dict() -> None:
    stamps = pd.to_datetime(["2013-05-01T10:00:00Z", "2013-05-01T11:30:00Z"], utc=True)
    frames = [
        request_features(
            pd.DataFrame(
                {
                    "carrier": ["UA", "B6"],
                    "origin": ["EWR", "JFK"],
                    "dest": ["IAH", None],
                    "distance": [1400, 1400.5],
                    "event_timestamp": stamps,
                }
            )
        ),
        pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}),  # int and float: a row is floats
        pd.DataFrame({"a": [1, 2], "b": [True, False]}),
        pd.DataFrame({"a": [True, False]}),
        pd.DataFrame({"n": pd.array([1, None], dtype="Int64"), "s": ["x", None]}),
        pd.DataFrame({"s": pd.array(["x", None], dtype="string"), "t": stamps}),
        pd.DataFrame({"c": pd.Categorical(["x", "y"]), "f": [np.nan, 1.0]}),
        pd.DataFrame({"a": [1, 2]}, index=[10, 3]),
        pd.DataFrame({"t": stamps.tz_localize(None), "d": pd.to_timedelta([1, 2], unit="s")}),
        pd.DataFrame({"t": stamps.tz_localize(None), "o": [np.float64(1.5), np.int64(2)]}),
        pd.DataFrame({"a": []}),
    ]
    for frame in frames:
        ours = records_of(frame)
        theirs = [frame.iloc[n].to_dict() for n in range(len(frame))]
        assert len(ours) == len(theirs)
        for mine, reference in zip(ours, theirs, strict=True):
            assert list(mine) == list(reference)
            for key in mine:
                assert type(mine[key]) is type(reference[key]), (key, frame.dtypes)
                assert (
                    mine[key] is reference[key]
                    or mine[key] == reference[key]
                    or (is_null(mine[key]) and is_null(reference[key]))
                )


def test_model_input_from_columns_equals_the_frame_of_rows() -> None:
    """The batch's model input built from columns (``_inputs``, ``LoadedModel.frame_of``)
    equals the frame of the rows ``{**request features, **store features}`` as before."""
    stage = FeatureLookup(None, [TEMP, SEATS], ["origin", "tailnum"], 0.5, clock=FixedClock(NOW))
    rows, records = store_records(30)
    store = stage.assemble_columns(rows, records, None, model())
    request = pd.DataFrame(
        {"carrier": ["UA", None, "1"] * 10, "distance": [1400, "12", None] * 10, "temp": 1.0}
    )
    places = [n for n in range(30) if not store.problems[n]][:20]
    columns, inputs = _inputs(columns_of(request), len(request), store, places)
    old = [{**request.iloc[n].to_dict(), **store.values(p)} for n, p in enumerate(places)]
    for mine, theirs in zip(inputs, old, strict=True):
        assert list(mine) == list(theirs)
        assert all(mine[k] is theirs[k] or mine[k] == theirs[k] for k in mine)
    pd.testing.assert_frame_equal(model().frame_of(columns, len(places)), model().frame(old))
    assert records_of(request) == [request.iloc[n].to_dict() for n in range(len(request))]
    with pytest.raises(IndexError):
        _inputs(columns_of(request.iloc[:5]), 5, store, places)
    stage.close()


class Fixed:
    """Class probabilities given in advance (binary or multiclass)."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.probabilities[: len(frame)]


@pytest.mark.parametrize("classes", [(0, 1), ("a", "b", "c")])
def test_batch_scores_equal_each_entry(classes) -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(len(classes)), size=7)
    task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
    loaded = LoadedModel(
        1, Fixed(probabilities), ("x",), frozenset(), {"x": 0.0}, {}, spec=TaskSpec(task, classes)
    )
    frame = loaded.frame([{"x": float(i)} for i in range(7)])
    outputs = loaded.predict(frame, 0.4)
    expected = [Scored(*outputs.entry(j)) for j in range(len(outputs))]
    found = ModelScoring(0.4).score(loaded, frame)
    assert found == expected
    assert [type(s.probability) for s in found] == [float] * 7
    assert [type(s.decision) for s in found] == [int] * 7


ODD_VALUES = [
    1.0,
    -0.0,
    0.0,
    float("nan"),
    float("inf"),
    -float("inf"),
    1e300,
    5e-324,
    0.1,
    True,
    False,
    None,
    0,
    -1,
    2**70,
    'x\u00e9"\\%s\n',
    "",
    np.float64(1.5),
    np.int64(3),
    np.float32(0.1),
    datetime(2013, 1, 1, tzinfo=UTC),
    {"k": 1, "a": [1, None]},
    [1, "a"],
    (1, 2),
    pd.NA,
]


def encoded_columns() -> list[list]:
    """Columns of one kind each (repeated or distinct values, with None), and mixed ones."""
    repeated = [[v, None, v, v] for v in ODD_VALUES]
    return [
        *[column * 3 for column in repeated],
        [0.0, -0.0, 0.0, 1.5],
        [1.5, 2.5, 1.5, float("nan"), float("nan")],
        [1, 1.0, True, 1, 1],
        ["a", "b", "a", "a", "a"],
        [float(n) / 7 for n in range(5)],
        ODD_VALUES[:5],
    ]


def test_rows_encoded_by_column_equal_the_encoder_row_by_row() -> None:
    import json

    from prodguard.serving.engine import _DIGEST_JSON, payload_digests
    from prodguard.serving.prediction_log import _COLUMNWISE_ROWS, _dumps, encode_rows

    for column in encoded_columns():
        column = column * (_COLUMNWISE_ROWS // len(column) + 1)  # column-wise: enough rows
        rows = [{"b": value, "a%s": 1, "é": "x", "z": value} for value in column]
        assert encode_rows(rows) == [_dumps(row) for row in rows]
        assert encode_rows(rows, _DIGEST_JSON) == [_DIGEST_JSON.encode(row) for row in rows]
    # rows of different keys, non-str keys, no keys: row by row
    for rows in ([{"a": 1}, {"b": 2}] * 40, [{1: "a"}, {1: "b"}] * 40, [{}] * 80, [], [{"a": 1}]):
        assert encode_rows(rows) == [_dumps(row) for row in rows]
    rows = [{"carrier": "UA", "dep": 1.5, "at": "2013-05-01T10:00:00+00:00"}] * 3
    digest = json.dumps(rows[0], sort_keys=True, default=str, allow_nan=True)
    import hashlib

    assert (
        payload_digests(rows) == [hashlib.blake2b(digest.encode(), digest_size=16).hexdigest()] * 3
    )
