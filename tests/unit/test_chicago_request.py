"""The Chicago example's request model and request features (examples/chicago)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from prodguard.config import load_settings
from prodguard.features.request_columns import derive_columns, first_difference
from prodguard.features.request_frame import request_frame
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def features():
    load_settings(ROOT / "examples" / "chicago" / "prodguard.yaml", environ={})  # importable
    from prodguard_chicago import features

    return features


@pytest.mark.parametrize("day", [date(2013, 3, 10), date(2013, 11, 3), date(2015, 7, 4)])
def test_a_request_is_the_service_days_local_midnight(features, day) -> None:
    request = features.RidershipRequest(service_date=day)
    row = request.to_row()
    assert row["city"] == "chicago"
    assert row["event_timestamp"].tz_convert("America/Chicago") == pd.Timestamp(
        day, tz="America/Chicago"
    )
    assert features.RidershipRequest.from_row(row) == request


def test_request_features_are_local_weekday_month_and_holiday(features) -> None:
    rows = pd.DataFrame(
        [
            features.RidershipRequest(service_date=d).to_row()
            for d in (date(2013, 7, 4), date(2013, 7, 5))
        ]
    )
    derived = features.request_features(rows)
    assert derived.to_dict("list") == {
        "day_of_week": [3.0, 4.0],
        "month": [7.0, 7.0],
        "holiday": [1.0, 0.0],
    }


def test_only_the_modelled_station_is_accepted(features) -> None:
    with pytest.raises(ValueError, match="station"):
        features.RidershipRequest(station="Austin", service_date=date(2013, 1, 2))


def test_a_project_folder_is_importable(tmp_path) -> None:
    """Modules beside prodguard.yaml are importable once the settings are loaded."""
    from prodguard.project import load_loader

    module = f"team_loader_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "class Loader:\n    def load(self, source, start, end):\n        return None\n"
    )
    text = (ROOT / "examples" / "chicago" / "prodguard.yaml").read_text()
    config = tmp_path / "prodguard.yaml"
    config.write_text(text.replace("prodguard_chicago.loader:ChicagoLoader", f"{module}:Loader"))
    assert type(load_loader(load_settings(config, environ={}))).__module__ == module


def test_the_columns_form_gives_the_frame_forms_values_on_the_ridership(features) -> None:
    from prodguard_chicago.loader import ChicagoLoader

    ridership = ChicagoLoader().table("ridership")
    assert len(ridership) > 1000 and ridership["event_timestamp"].notna().all()
    assert (
        first_difference(features.request_features, features.request_features_columns, ridership)
        is None
    )
    days = [date(2013, 3, 10), date(2013, 7, 4), date(2013, 11, 3), date(2014, 1, 20)]
    served = [features.RidershipRequest(service_date=day).to_row() for day in days]
    derived, count = derive_columns(features.request_features_columns, served)
    assert count == 4 and derived == features.request_features(request_frame(served)).to_dict(
        "list"
    )
    assert derived["holiday"] == [0.0, 1.0, 0.0, 1.0]  # Independence Day, MLK Day
    missing = pd.DataFrame({"event_timestamp": [None, "2015-12-25T06:00:00Z"]})
    assert (
        first_difference(features.request_features, features.request_features_columns, missing)
        is None
    )
