"""``request_frame`` gives the frame ``pd.DataFrame(rows)`` gives: same columns, dtypes and
values (the boxed types included), for plain columns and for everything it leaves to pandas."""

import itertools
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from prodguard.features.request_frame import _typed, request_frame

pytestmark = pytest.mark.unit

SAMPLES = [
    "UA",
    "",
    "2013-05-01",
    None,
    1.5,
    float("nan"),
    float("inf"),
    0,
    -7,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    True,
    False,
    np.float64(2.5),
    np.int64(3),
    np.str_("x"),
    pd.NA,
    pd.Timestamp("2013-05-01 10:15", tz="UTC"),
    pd.Timestamp("2013-05-01 10:15", tz="America/New_York"),
    pd.Timestamp("2013-05-01 10:15"),
    pd.Timestamp("2013-05-01 10:15", tz="UTC").as_unit("s"),
    pd.Timestamp("2500-01-01", tz="UTC"),
    datetime(2013, 5, 1, 10, 15, tzinfo=UTC),
    datetime(2013, 5, 1, 10, 15, tzinfo=timezone(timedelta(hours=2))),
    datetime(2013, 5, 1, 10, 15),
    datetime(2500, 1, 1, tzinfo=UTC),
    pd.NaT,
    [1, 2],
    {"a": 1},
]


def same(mine: pd.DataFrame, theirs: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
    assert list(mine.columns) == list(theirs.columns)
    assert mine.index.equals(theirs.index) and type(mine.index) is type(theirs.index)
    for column in theirs.columns:
        assert mine[column].dtype == theirs[column].dtype, column
        for a, b in zip(mine[column].tolist(), theirs[column].tolist(), strict=True):
            assert type(a) is type(b), (column, a, b)


def test_every_pair_of_values_in_a_column_gives_pandas_frame() -> None:
    for first, second in itertools.product(SAMPLES, repeat=2):
        for rows in ([{"c": first}], [{"c": first}, {"c": second}]):
            same(request_frame(rows), pd.DataFrame(rows))


def test_plain_request_rows_skip_pandas_inference_and_give_the_same_frame() -> None:
    stamps = pd.date_range("2013-05-01", periods=50, freq="37min", tz="UTC")
    rows = [
        {
            "carrier": ["UA", "AA", "B6"][n % 3],
            "flight": 1000 + n,
            "tailnum": None if n % 4 == 0 else f"N{n}",
            "distance": 1400.0 + n,
            "night": n % 2 == 0,
            "event_timestamp": stamps[n],
        }
        for n in range(50)
    ]
    for count in (1, 2, 50):
        assert _typed(rows[:count]) is not None  # built from typed arrays, not by pandas
        same(request_frame(rows[:count]), pd.DataFrame(rows[:count]))


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{}],
        [{"a": 1}, {"b": 2}],  # pandas' union of keys, NaN where missing
        [{"a": 1, "b": 2}, {"b": 3, "a": 4}],  # same keys, another order
        [{1: "x"}],
        [{"a": 1}, {"a": 2.5}],
        [{"a": "x", "t": pd.Timestamp("2013-05-01", tz="UTC")}, {"a": "y", "t": None}],
    ],
)
def test_rows_left_to_pandas_give_its_frame(rows) -> None:
    same(request_frame(rows), pd.DataFrame(rows))
