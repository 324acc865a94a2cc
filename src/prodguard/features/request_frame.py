"""The frame of request rows the project's ``request_features`` is called with, built cheaply.

``pd.DataFrame(rows)`` (a list of dicts) infers every column's dtype from its objects, which
costs a few hundred microseconds on a one-row request. :func:`request_frame` gives the same
frame (columns, dtypes, values) from arrays typed in advance when every column is plain (all its
values of the one kind below) and leaves anything else to pandas:

- ``str`` (``None`` allowed) -> object; ``float`` (``None`` allowed, as NaN) -> float64;
  ``int`` within int64 -> int64; ``bool`` -> bool; all ``None`` -> object;
- ``datetime`` / ``pd.Timestamp`` -> datetime64[ns] (with the zone), as pandas converts them;
  out of range or mixed zones (pandas keeps objects) -> pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

_INT64 = (-(2**63), 2**63 - 1)
_NONE = type(None)
_STR_OR_NONE = frozenset({str, _NONE})
_FLOAT_OR_NONE = frozenset({float, _NONE})


def request_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """``pd.DataFrame(list(rows))``: the same frame, without pandas' inference for plain
    columns (module docstring)."""
    data = _typed(rows)
    if data is None:
        return pd.DataFrame(list(rows))
    return pd.DataFrame(data, copy=False)  # the arrays are its own


def _typed(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Each column's typed array, or None when a row or a column is not plain."""
    if not rows or type(rows[0]) is not dict or not rows[0]:
        return None
    keys = rows[0].keys()
    if any(type(row) is not dict or row.keys() != keys for row in rows):
        return None  # pandas' union of keys (missing values as NaN) and non-dict mappings
    data: dict[str, Any] = {}
    for key in keys:
        if type(key) is not str:
            return None
        values = [row[key] for row in rows]
        array = _array(values)
        if array is None:
            return None
        data[key] = array
    return data


def _array(values: list[Any]) -> Any:
    """The array pandas infers for ``values``, when they are plain; else None."""
    kinds = set(map(type, values))
    if kinds <= _STR_OR_NONE:
        return np.array(values, dtype=object)
    if kinds <= _FLOAT_OR_NONE:
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    if len(kinds) > 1:
        return None
    kind = next(iter(kinds))
    if kind is int:
        return (
            np.array(values, dtype="int64")
            if _INT64[0] <= min(values) and max(values) <= _INT64[1]
            else None
        )
    if kind is bool:
        return np.array(values, dtype=bool)
    if kind is pd.Timestamp or kind is datetime:
        try:
            return pd.DatetimeIndex(values).array
        except (ValueError, TypeError, OverflowError):  # out of range, mixed zones: objects
            return None
    return None
