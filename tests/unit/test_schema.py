import pandas as pd
import pytest

from prodguard.contracts.schema import Schema, diff, schema_of

pytestmark = pytest.mark.unit


def frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_fingerprint_ignores_int_float_and_order_of_listing() -> None:
    a = schema_of(frame(x=[1, 2], y=["a", "b"]))
    b = schema_of(frame(x=[1.0, None], y=["a", None]))
    assert a.fingerprint == b.fingerprint
    assert a.as_dict() == {"x": "number", "y": "string"}


def test_logical_types() -> None:
    schema = schema_of(
        frame(
            t=pd.to_datetime(["2013-01-01"], utc=True),
            b=[True],
            s=pd.Series(["x"], dtype="string"),
            n=pd.Series([1], dtype="Int64"),
        )
    )
    assert schema.as_dict() == {"t": "datetime", "b": "bool", "s": "string", "n": "number"}


def test_rename_detected_at_same_position_and_type() -> None:
    old = Schema.from_dict({"origin": "string", "temp": "number", "dewp": "number"})
    new = Schema.from_dict({"origin": "string", "temperature": "number", "dewp": "number"})
    change = diff(old, new)
    assert change.renamed == (("temp", "temperature"),)
    assert change.breaking and change.changed
    assert change.describe() == "renamed temp -> temperature"


def test_added_column_is_not_breaking() -> None:
    old = Schema.from_dict({"a": "number"})
    change = diff(old, Schema.from_dict({"a": "number", "b": "string"}))
    assert change.added == ("b",) and not change.breaking
    assert change.describe() == "added b"


def test_removed_and_retyped() -> None:
    old = Schema.from_dict({"a": "number", "b": "string", "c": "number"})
    change = diff(old, Schema.from_dict({"a": "string", "c": "number"}))
    assert change.removed == ("b",)
    assert change.retyped == (("a", "number", "string"),)
    assert change.describe() == "removed b; a changed type number -> string"


def test_same_schema_has_no_change() -> None:
    old = Schema.from_dict({"a": "number"})
    assert not diff(old, old).changed
    assert diff(old, old).describe() == "no change"
