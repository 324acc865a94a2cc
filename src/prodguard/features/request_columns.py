"""The optional columns form of the project's request features, and its check.

``model.request_features`` takes a frame of source-shaped request rows and returns a frame of
model features; on the serving path a call is one row, where pandas costs far more than the
work. ``model.request_features_columns`` may name the same function on columns: a dict
``column -> list of values`` (one value per row) in, the same out. Only the serving path uses
it; training, backfills and replays keep the frame form. Before it is used it must give what
the frame form gives on real rows (:func:`check_request_columns`): the same columns and, for
each, equal values (numbers equal whatever their type, every missing value equal to any other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from prodguard.contracts.row_checks import is_null
from prodguard.errors import ConfigError

RequestColumns = Callable[[dict[str, list[Any]]], Mapping[str, Sequence[Any]]]
SAMPLE_ROWS = 2000  # rows of the source the two forms are compared on
SETTING = "model.request_features_columns"


def columns_of_rows(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The rows as columns: every key of any row (first seen first), None where a row lacks it."""
    if len(rows) == 1:
        return {key: [value] for key, value in rows[0].items()}
    keys = dict.fromkeys(key for row in rows for key in row)
    return {key: [row.get(key) for row in rows] for key in keys}


def derive_columns(
    derive: RequestColumns, rows: Sequence[dict[str, Any]]
) -> tuple[dict[str, list[Any]], int]:
    """The request features of ``rows`` by the columns form, as lists (arrays are listed), and
    the number of rows they give (``len(rows)`` when there are no request features)."""
    derived = {name: _listed(values) for name, values in derive(columns_of_rows(rows)).items()}
    count = min((len(values) for values in derived.values()), default=len(rows))
    return derived, count


def first_difference(
    frame_form: Callable[[pd.DataFrame], pd.DataFrame],
    columns_form: RequestColumns,
    frame: pd.DataFrame,
) -> str | None:
    """What first differs between the two forms on ``frame`` (source-shaped rows), or None."""
    expected = frame_form(frame)
    try:
        got = columns_form({str(c): frame[c].tolist() for c in frame.columns})
    except Exception as exc:  # noqa: BLE001 - the project's code: any failure is a difference
        return f"it raises {type(exc).__name__}: {exc}"
    if not isinstance(got, Mapping):
        return f"it returns a {type(got).__name__}, not a dict of column -> list of values"
    missing = [str(c) for c in expected.columns if c not in got]
    if missing:
        return f"column '{missing[0]}' is missing"
    extra = [str(c) for c in got if c not in expected.columns]
    if extra:
        return f"column '{extra[0]}' is not given by model.request_features"
    for column in expected.columns:
        values = _listed(got[column])
        wanted = expected[column].tolist()
        if len(values) != len(wanted):
            return f"column '{column}' has {len(values)} values for {len(wanted)} rows"
        for row, (want, value) in enumerate(zip(wanted, values, strict=True)):
            if not _same(want, value):
                return (
                    f"column '{column}' differs (row {row}: {value!r} where "
                    f"model.request_features gives {want!r})"
                )
    return None


def check_request_columns(
    frame_form: Callable[[pd.DataFrame], pd.DataFrame],
    columns_form: RequestColumns,
    rows: pd.DataFrame,
) -> None:
    """ConfigError (one line naming the first differing column) unless the two forms agree on
    up to ``SAMPLE_ROWS`` rows of ``rows`` spread evenly over them."""
    if len(rows) > SAMPLE_ROWS:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, SAMPLE_ROWS).astype(int)]
    rows = rows.reset_index(drop=True)
    problem = first_difference(frame_form, columns_form, rows)
    if problem:
        raise ConfigError(
            f"{SETTING} does not give what model.request_features gives on {len(rows)} rows of "
            f"the source: {problem}; make the two forms agree or remove {SETTING}"
        )


def _listed(values: Sequence[Any]) -> list[Any]:
    """A column's values as a list (an array's as Python values), a list as it is."""
    if type(values) is list:
        return values
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _same(want: Any, value: Any) -> bool:
    """Equal values whatever their type (5 == 5.0); any missing value equals any other."""
    want_null, value_null = is_null(want), is_null(value)
    if want_null or value_null:
        return want_null and value_null
    try:
        return bool(want == value)
    except (TypeError, ValueError):
        return False
