"""The flights project's request features: local departure hour and weekday (DST included)."""

import pandas as pd
import pytest

from prodguard_flights.features import REQUEST_FEATURES, request_features

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
