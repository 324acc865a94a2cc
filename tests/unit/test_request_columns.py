"""The optional columns form of the request features: its check against the frame form (on
made-up pairs here; the example projects' own forms on their real data in
test_request_features, test_chicago_request and test_scaffold) and its loading for serving."""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from prodguard.config import load_settings
from prodguard.errors import ConfigError
from prodguard.features.request_columns import (
    SAMPLE_ROWS,
    check_request_columns,
    columns_of_rows,
    derive_columns,
    first_difference,
)
from prodguard.ingestion.offline import OfflineStore
from prodguard.training.dataset import load_request_columns
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

ROWS = pd.DataFrame(
    {
        "site": ["A", "B", None],
        "size": [1, 2, 3],
        "temp": [20.5, math.nan, 7.0],
    }
)


def frame_form(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "site": frame["site"].to_numpy(),
            "size": frame["size"].astype("float64").to_numpy(),
            "warm": (frame["temp"] > 10).astype("float64").where(frame["temp"].notna()),
        }
    )


def columns_form(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Equal to ``frame_form`` with other types: ints for floats, None for NaN, an array."""
    return {
        "site": columns["site"],
        "size": np.array(columns["size"], dtype="int64"),
        "warm": [None if t is None or math.isnan(t) else int(t > 10) for t in columns["temp"]],
    }


def shifted_sizes(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Differs from ``frame_form`` in one column, on one row only."""
    out = columns_form(columns)
    out["size"] = [s + (s == 3) for s in columns["size"]]
    return out


def test_equal_values_of_other_types_and_missing_values_agree() -> None:
    assert first_difference(frame_form, columns_form, ROWS) is None


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        (shifted_sizes, "column 'size' differs (row 2: 4 where model.request_features gives 3.0)"),
        (lambda c: {k: v for k, v in columns_form(c).items() if k != "warm"}, "'warm' is missing"),
        (lambda c: {**columns_form(c), "more": [1, 2, 3]}, "column 'more' is not given by"),
        (lambda c: {**columns_form(c), "warm": [0, 1]}, "column 'warm' has 2 values for 3 rows"),
        (lambda c: {**columns_form(c), "site": ["A", "B", "C"]}, "row 2: 'C' where"),
        (lambda c: [1, 2], "it returns a list, not a dict"),
        (lambda c: c["nowhere"], "it raises KeyError: 'nowhere'"),
    ],
)
def test_the_first_difference_is_named(form, problem: str) -> None:
    assert problem in (first_difference(frame_form, form, ROWS) or "")


def test_a_difference_refuses_in_one_line_naming_the_column() -> None:
    with pytest.raises(ConfigError) as caught:
        check_request_columns(frame_form, shifted_sizes, ROWS)
    message = str(caught.value)
    assert "\n" not in message and "column 'size' differs" in message
    assert message.startswith("model.request_features_columns does not give what")
    assert (
        "on 3 rows of the source" in message and "remove model.request_features_columns" in message
    )


def test_the_check_reads_a_sample_spread_over_the_rows() -> None:
    many = pd.concat([ROWS.iloc[:2]] * SAMPLE_ROWS + [ROWS.iloc[2:]], ignore_index=True)
    with pytest.raises(ConfigError, match=f"on {SAMPLE_ROWS} rows.*row {SAMPLE_ROWS - 1}: 4"):
        check_request_columns(frame_form, shifted_sizes, many)  # the last row is in the sample


def test_rows_become_columns_and_arrays_lists() -> None:
    rows = [{"site": "A", "size": 1}, {"size": 2, "temp": 3.0}]
    assert columns_of_rows(rows) == {"site": ["A", None], "size": [1, 2], "temp": [None, 3.0]}
    assert columns_of_rows(rows[:1]) == {"site": ["A"], "size": [1]}
    derived, count = derive_columns(columns_form, rows)
    assert count == 2 and derived["size"] == [1, 2] and type(derived["size"]) is list
    assert derive_columns(lambda c: {}, rows) == ({}, 2)


def utc_hours(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The flights example's columns form with a realistic mistake: hours in UTC."""
    from prodguard_flights.features import request_features_columns

    out = request_features_columns(columns)
    out["dep_hour"] = [float(pd.Timestamp(t).hour) for t in columns["event_timestamp"]]
    return out


def flights_settings(tmp_path: Path, columns: str | None):
    settings = load_settings(ROOT / "prodguard.yaml", environ={})
    assert settings.model is not None
    return settings.model_copy(
        update={
            "paths": settings.paths.model_copy(update={"data_dir": tmp_path}),
            "model": settings.model.model_copy(update={"request_features_columns": columns}),
        }
    )


def test_serving_loads_the_columns_form_once_checked_on_the_ingested_rows(
    tmp_path: Path, flights_loader, caplog: pytest.LogCaptureFixture
) -> None:
    from prodguard_flights.features import request_features_columns

    settings = flights_settings(tmp_path, "prodguard_flights.features:request_features_columns")
    assert load_request_columns(settings) is None  # nothing ingested: the frame form serves
    assert "no ingested 'flights' rows to check it" in caplog.text
    assert load_request_columns(flights_settings(tmp_path, None)) is None  # not set
    source = flights_loader.table("flights").iloc[::40].reset_index(drop=True)
    path = OfflineStore(settings.paths.offline_dir).path("flights")
    path.parent.mkdir(parents=True)
    source.to_parquet(path)
    assert load_request_columns(settings) is request_features_columns
    wrong = flights_settings(tmp_path, "tests.unit.test_request_columns:utc_hours")
    with pytest.raises(ConfigError, match=r"on \d+ rows of the source: column 'dep_hour' differs"):
        load_request_columns(wrong)
