"""Replayed rows' request ids and fed-back outcomes, for any source keys and label type."""

import numpy as np
import pandas as pd
import pytest

from prodguard.config import load_settings
from prodguard.monitoring.replay import known_outcome, request_id
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_a_time_key_makes_one_id_per_day_and_a_plain_key_is_kept() -> None:
    daily = load_settings(ROOT / "examples" / "chicago" / "prodguard.yaml", environ={})
    rows = [
        {"station": "S", "event_timestamp": pd.Timestamp(f"2014-01-0{d} 06:00", tz="UTC")}
        for d in (1, 2)
    ]
    ids = [request_id(daily, row, "replay-") for row in rows]
    assert ids == ["replay-S-20140101T060000", "replay-S-20140102T060000"]
    flights = load_settings(ROOT / "prodguard.yaml", environ={})  # keys: [flight_id]
    assert request_id(flights, {"flight_id": 7, "event_timestamp": rows[0]}, "r-") == "r-7"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(np.float64(14.25), 14.25), (np.int64(1), 1), ("high", "high"), (True, True)],
)
def test_an_outcome_keeps_the_labels_type(value, expected) -> None:
    outcome = known_outcome(value)
    assert outcome == expected and type(outcome) is type(expected)


@pytest.mark.parametrize("value", [None, float("nan"), np.nan])
def test_no_outcome(value) -> None:
    assert known_outcome(value) is None
