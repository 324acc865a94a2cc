"""The flights project's request features: local departure hour and weekday (DST included)."""

import math

import pandas as pd
import pytest

from prodguard.features.request_columns import derive_columns, first_difference
from prodguard.features.request_frame import request_frame
from prodguard_flights.features import (
    REQUEST_FEATURES,
    FlightRequest,
    request_features,
    request_features_columns,
)

pytestmark = pytest.mark.unit


def test_local_hour_and_weekday_across_daylight_saving_time() -> None:
    frame = pd.DataFrame(
        {
            "carrier": ["UA", "B6", "AA"],
            "origin": ["EWR", "JFK", "LGA"],
            "dest": ["IAH", "BOS", "ORD"],
            "distance": [1400, 187.0, "733"],
            "event_timestamp": [
                pd.Timestamp("2013-01-01T05:30:00Z"),  # 00:30 EST, Tuesday
                pd.Timestamp("2013-07-04T03:59:00Z"),  # 23:59 EDT on Wednesday
                "2013-03-10T07:00:00Z",  # 03:00 EDT, the Sunday clocks moved forward
            ],
        },
        index=[7, 8, 9],
    )
    features = request_features(frame)
    assert list(features.columns) == REQUEST_FEATURES and list(features.index) == [7, 8, 9]
    assert features["dep_hour"].tolist() == [0.0, 23.0, 3.0]
    assert features["day_of_week"].tolist() == [1.0, 2.0, 6.0]
    assert features["distance"].tolist() == [1400.0, 187.0, 733.0]
    assert features.dtypes["dep_hour"] == "float64" and features["carrier"].tolist()[0] == "UA"


def test_the_columns_form_gives_the_frame_forms_values_on_the_flights(flights_loader) -> None:
    flights = flights_loader.table("flights")
    sample = flights.iloc[::20].reset_index(drop=True)  # 16.8k of the year's rows, all columns
    assert len(sample) > 16_000
    assert first_difference(request_features, request_features_columns, sample) is None
    # as the serving path calls it: requests' rows, in the frame the frame form is given
    landed = flights[flights["tailnum"].notna()].iloc[::2000].to_dict("records")
    served = [FlightRequest.from_row(row).to_row() for row in landed]
    frame = request_frame(served)
    assert first_difference(request_features, request_features_columns, frame) is None
    derived, count = derive_columns(request_features_columns, served)
    assert count == len(served) and derived == request_features(frame).to_dict("list")


def test_the_columns_form_agrees_on_odd_and_missing_values() -> None:
    frame = pd.DataFrame(
        {
            "carrier": ["UA", None, "AA", 9],
            "origin": ["EWR", "JFK", math.nan, "LGA"],
            "dest": ["IAH", "BOS", "ORD", "ORD"],
            "distance": [1400, None, "733", 187.5],
            "event_timestamp": [
                pd.Timestamp("2013-11-03T05:30:00Z"),  # 01:30 EDT, the hour repeated in the fall
                None,
                "2013-03-10T07:00:00Z",  # 03:00 EDT, the Sunday clocks moved forward
                pd.Timestamp("2013-11-03T06:30:00Z"),  # 01:30 EST
            ],
        }
    )
    assert request_features(frame)["dep_hour"].tolist()[2:] == [3.0, 1.0]
    assert first_difference(request_features, request_features_columns, frame) is None
