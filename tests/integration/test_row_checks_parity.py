"""Per-request checks agree with Great Expectations on every row of a generated corpus."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard.contracts.gx_adapter import GxValidator
from prodguard.contracts.row_checks import COMPILERS, RowContract
from prodguard.contracts.suites import Suite, read_suite

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROW_TYPES = frozenset(COMPILERS)


def numeric_variants(kwargs: dict) -> list[float]:
    values = [math.nan, math.inf, -math.inf, 0.0, -1e12, 1e12]
    for bound in (kwargs.get("min_value"), kwargs.get("max_value")):
        if bound is None:
            continue
        step = max(abs(bound) * 1e-9, 1e-6)
        values += [bound, bound - step, bound + step, bound - 1, bound + 1]
    return values


def text_variants(kwargs: dict, sample: str) -> list:
    values = [None, "", " ", sample, sample.lower(), sample.upper(), f"{sample} ", f"x{sample}"]
    values += list(kwargs.get("value_set") or [])
    values += ["ZZZ", "zz", "N12345", "N1234567", "1", "A"]
    return values


def corpus(suite: Suite, real: pd.DataFrame) -> pd.DataFrame:
    """Real rows, then one row per (column, variant): every bound, its neighbours, nulls, infs,
    every set member and non-members, case and whitespace variants of valid strings."""
    base = real.sample(min(len(real), 25), random_state=3).reset_index(drop=True)
    rows = [base]
    template = base.iloc[[0]]
    for spec in suite.expectations:
        if spec["type"] not in ROW_TYPES:
            continue
        column = spec["kwargs"]["column"]
        numeric = pd.api.types.is_numeric_dtype(real[column])
        if pd.api.types.is_datetime64_any_dtype(real[column]):
            variants = [None]
        elif numeric:
            variants = numeric_variants(spec["kwargs"])
            variants += [float(v) for v in spec["kwargs"].get("value_set") or []]
        else:
            variants = text_variants(spec["kwargs"], str(template[column].iloc[0]))
        for value in variants:
            row = template.copy()
            row[column] = value
            rows.append(row)
    frame = pd.concat(rows, ignore_index=True)
    for column in frame.columns:
        if pd.api.types.is_numeric_dtype(real[column]):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


@pytest.mark.parametrize("source", ["weather", "planes", "carrier_stats", "flights"])
def test_row_verdicts_equal_great_expectations(source: str, flights_loader) -> None:
    suite = read_suite(ROOT / "expectations" / f"{source}.json")
    frame = corpus(suite, flights_loader.table(source))
    rejected_by_gx = GxValidator().unexpected_rows(frame, suite, ROW_TYPES)
    contract = RowContract.from_suites([suite])
    assert {(c.suite, c.index) for c in contract.checks} == {
        (suite.name, i) for i in rejected_by_gx
    }
    disagreements = []
    records = frame.to_dict("records")
    for check in contract.checks:
        ours = {i for i, row in enumerate(records) if not check.predicate(row[check.column])}
        theirs = rejected_by_gx[check.index]
        if ours != theirs:
            sample = sorted(ours ^ theirs)[:3]
            disagreements.append((check.describe(), [records[i][check.column] for i in sample]))
    assert not disagreements, disagreements
    assert len(frame) > 100
    # the corpus exercises both verdicts for every compiled expectation
    for check in contract.checks:
        assert 0 < len(rejected_by_gx[check.index]) < len(frame), check.describe()


def test_row_contract_reports_violations_per_column() -> None:
    suites = [read_suite(ROOT / "expectations" / f"{n}.json") for n in ("weather", "flights")]
    contract = RowContract.from_suites(suites)
    row = {"origin": "JFK", "temp": 55.0, "carrier": "ua", "distance": np.nan, "humid": 101.0}
    found = {(v.column, v.expectation) for v in contract.violations(row)}
    assert found == {
        ("carrier", "expect_column_values_to_match_regex(carrier)"),
        ("distance", "expect_column_values_to_not_be_null(distance)"),
        ("humid", "expect_column_values_to_be_between(humid)"),
    }
    assert contract.check_value("temp", 500.0) == ["expect_column_values_to_be_between(temp)"]
    assert contract.check_value("temp", None) == ["expect_column_values_to_not_be_null(temp)"]
    assert contract.violations({"origin": "EWR", "temp": 40.0}) == []


def test_tolerated_nulls_pass_requests_but_strict_ones_do_not() -> None:
    flights = RowContract.from_suites([read_suite(ROOT / "expectations" / "flights.json")])
    row = {"tailnum": None, "carrier": None}
    strict = {v.column for v in flights.violations(row)}
    assert strict == {"tailnum", "carrier"}  # Great Expectations' verdict on one row
    lenient = {v.column for v in flights.violations(row, nullable_when_tolerant=True)}
    assert lenient == {"carrier"}  # tailnum: not-null with mostly=0.95
    assert flights.nullable("tailnum") and not flights.nullable("carrier")
