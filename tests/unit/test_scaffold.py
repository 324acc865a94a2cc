"""What `prodguard init` drafts from a profile of the data."""

import importlib.util
import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from prodguard.contracts.suites import read_suite
from prodguard.features.request_columns import first_difference
from prodguard.scaffold import drafts
from prodguard.scaffold.profile import profile, profile_column

pytestmark = pytest.mark.unit


def test_ranges_get_margins_and_stay_non_negative() -> None:
    column = profile_column(pd.Series([0, 10, 20], name="riders"))
    assert column.kind == "integer" and column.margin_range() == (0.0, 22.0)
    temp = profile_column(pd.Series([-5.0, 15.0, None], name="temp"))
    assert temp.margin_range() == (-7.0, 17.0) and temp.null_rate == pytest.approx(1 / 3)
    many = profile_column(pd.Series([f"s{i}" for i in range(80)], name="station"))
    assert many.kind == "categorical" and many.categories is None


def test_ttl_is_three_median_gaps_at_least_a_day() -> None:
    stamps = pd.to_datetime(["2020-01-01", "2020-01-03", "2020-01-05"], utc=True)
    frame = pd.DataFrame({"s": ["a", "a", "a"], "t": stamps})
    assert drafts.entity_ttl(frame, "s", "t") == timedelta(days=6)
    hourly = frame.assign(t=pd.date_range("2020-01-01", periods=3, freq="h", tz="UTC"))
    assert drafts.entity_ttl(hourly, "s", "t") == timedelta(days=1)


def test_the_drafted_suite_is_a_valid_suite(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "day": pd.date_range("2020-01-01", periods=4, tz="UTC"),
            "station": ["a", "b", "a", "b"],
            "weather": ["rain", "sun", None, "sun"],
            "rides": [10.0, 12.0, 9.0, None],
        }
    )
    source = drafts.Source("rides", tmp_path / "rides.csv", "day", profile(frame), timedelta(1), 4)
    plan = drafts.Plan("p", "p_project", "regression", "station", "rides", [source])
    document = drafts.suite(source, plan)
    path = tmp_path / "rides.json"
    path.write_text(json.dumps(document))
    expectations = read_suite(path).expectations
    assert expectations[0]["kwargs"]["column_set"] == [
        "event_timestamp",
        "station",
        "weather",
        "rides",
    ]
    weather = [e for e in expectations if e["kwargs"].get("column") == "weather"]
    assert {e["type"] for e in weather} == {
        "expect_column_values_to_not_be_null",  # mostly 0.7: a quarter missing
        "expect_column_values_to_be_in_set",
    }
    assert [c.name for c in plan.store_columns(source)] == ["weather"]


def test_the_drafts_suggested_columns_form_gives_the_frame_forms_values(
    tmp_path: Path, flights_loader
) -> None:
    frame = pd.DataFrame(
        {
            "day": pd.date_range("2020-01-01", periods=4, tz="UTC"),
            "station": ["a", "b", "a", "b"],
            "rides": [10.0, 12.0, 9.0, None],
        }
    )
    source = drafts.Source("rides", tmp_path / "rides.csv", "day", profile(frame), timedelta(1), 4)
    plan = drafts.Plan("p", "p_project", "regression", "station", "rides", [source])
    lines = drafts.features(plan).splitlines()
    start = lines.index(
        "# def request_features_columns(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:"
    )
    end = lines.index("", start)
    assert all(line.startswith("#") for line in lines[start:end])
    lines[start:end] = [line.removeprefix("#").removeprefix(" ") for line in lines[start:end]]
    path = tmp_path / "drafted_features.py"
    path.write_text("\n".join(lines) + "\n")
    spec = importlib.util.spec_from_file_location("drafted_features", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stamps = flights_loader.table("flights")["event_timestamp"].iloc[::50]
    rows = pd.DataFrame(
        {"event_timestamp": [*stamps, None, "2020-03-08T07:30:00", "2020-06-01T12:00:00+02:00"]}
    )
    assert len(rows) > 6000
    assert first_difference(module.request_features, module.request_features_columns, rows) is None


def test_the_sizes_are_drafted_for_the_labelled_rows_rate(tmp_path: Path) -> None:
    frame = pd.DataFrame({"day": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True)})
    source = drafts.Source("rides", tmp_path / "rides.csv", "day", profile(frame), timedelta(1), 2)

    def drafted(per_day: float | None) -> dict:
        plan = drafts.Plan("p", "p_project", "regression", "station", "rides", [source], per_day)
        return drafts.settings(plan)

    few = drafted(1.0)  # a request a day: every count at its fewest, periods to hold them
    assert few["rollout"]["triggers"] == {"min_requests": 20}
    assert few["rollout"]["guard_minutes"] == 28800
    assert few["monitoring"]["window"] == {"min_rows": 20, "minutes": 28800}
    assert few["monitoring"]["kpi"]["min_labelled"] == 20  # a window's labels fit in its rows
    for plenty in (None, 1e6):  # no rate known, or the defaults fit: nothing but the KPI
        document = drafted(plenty)
        assert "rollout" not in document and set(document["monitoring"]) == {"kpi"}
        assert document["monitoring"]["kpi"]["min_labelled"] == 50
