"""Per-request checks compiled from the same expectation suites as ingestion.

Only row-level expectations can be decided on one row; they are compiled into plain Python
predicates that cost microseconds (Great Expectations costs ~20 ms per call). Their verdict on
a row equals Great Expectations' verdict on a one-row batch holding that row:

- ``expect_column_values_to_not_be_null``: None/NaN/NaT fail (``mostly`` cannot rescue one row).
- ``expect_column_values_to_be_between``: nulls pass; ``min_value``/``max_value`` inclusive
  unless ``strict_min``/``strict_max``; a missing bound is open.
- ``expect_column_values_to_be_in_set`` / ``..._not_be_in_set``: nulls pass; membership by
  equality (1 == 1.0).
- ``expect_column_values_to_match_regex`` / ``..._not_match_regex``: nulls pass; ``re.search``
  on the value's string form.

Aggregate expectations (means, maxima, uniqueness, row counts, column sets) describe batches and
are not compiled. A column absent from the row is not checked here: the request schema decides
which fields must be present.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prodguard.contracts.suites import Suite
from prodguard.errors import ContractError

Predicate = Callable[[Any], bool]
T = TypeVar("T")


def is_null(value: Any) -> bool:
    if value is None:
        return True
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return False
    if isinstance(value, float):
        return math.isnan(value)
    try:  # pandas NA/NaT, numpy NaN
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (str, bytes)) else False
    except (TypeError, ValueError):
        return False


_EXACT_KEYS = (str, int, bool, type(None))


def value_key(value: Any) -> tuple[type, Any] | None:
    """A key under which equal values always get the same verdict (of these checks, of a
    category lookup by ``str``), or None when the value is not memoised: its type with it for
    str, int, bool, None and floats (0.0 and -0.0 apart: their strings differ)."""
    kind = type(value)
    if kind in _EXACT_KEYS:
        return (kind, value)
    if kind is float:
        return (kind, value) if value else (kind, repr(value))
    return None


def judged_per_value(
    rows: Sequence[Mapping[str, Any]], column: str, judge: Callable[[Any], T]
) -> Iterator[tuple[int, T]]:
    """``(index, judge(value))`` of each row holding ``column``; a batch's distinct values
    (``value_key``) are judged once."""
    verdicts = _judged_column(rows, column, judge)
    if verdicts is not None:
        yield from enumerate(verdicts)
        return
    judged: dict[tuple[type, Any], T] = {}
    for index, row in enumerate(rows):
        if column not in row:
            continue
        value = row[column]
        key = value_key(value)
        if key is None:
            yield index, judge(value)
            continue
        if key not in judged:
            judged[key] = judge(value)
        yield index, judged[key]


def _judged_column(
    rows: Sequence[Mapping[str, Any]], column: str, judge: Callable[[Any], T]
) -> list[T] | None:
    """Each row's verdict when every row holds ``column`` and its values are of one kind of
    ``value_key`` (str, int, bool or float, None allowed; no float zero, whose signs it keeps
    apart): the distinct values judged once, found by the value itself. None otherwise."""
    try:
        values = [row[column] for row in rows]
    except (KeyError, TypeError):
        return None
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if len(kinds) > 1 or not kinds <= _ONE_KIND:
        return None
    distinct: dict[Any, Any] = dict.fromkeys(values)
    if kinds == {float} and 0.0 in distinct:
        return None
    for value in distinct:
        distinct[value] = judge(value)
    return list(map(distinct.__getitem__, values))


_ONE_KIND = frozenset({str, int, bool, float})


def _between(kwargs: dict[str, Any]) -> Predicate:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    strict_low, strict_high = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))

    def check(value: Any) -> bool:
        if is_null(value):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                return False
        if low is not None and (value <= low if strict_low else value < low):
            return False
        return not (high is not None and (value >= high if strict_high else value > high))

    return check


def _in_set(kwargs: dict[str, Any], negate: bool = False) -> Predicate:
    members = frozenset(kwargs.get("value_set") or [])  # JSON scalars: hashable

    def check(value: Any) -> bool:
        if is_null(value):
            return True
        try:
            found = value in members
        except TypeError:  # an unhashable value is in no set of scalars
            found = False
        return found != negate

    return check


def _regex(kwargs: dict[str, Any], negate: bool = False) -> Predicate:
    pattern = re.compile(kwargs["regex"])

    def check(value: Any) -> bool:
        if is_null(value):
            return True
        return (pattern.search(str(value)) is not None) != negate

    return check


def _not_null(_: dict[str, Any]) -> Predicate:
    return lambda value: not is_null(value)


COMPILERS: dict[str, Callable[[dict[str, Any]], Predicate]] = {
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_not_be_in_set": lambda kw: _in_set(kw, negate=True),
    "expect_column_values_to_match_regex": _regex,
    "expect_column_values_to_not_match_regex": lambda kw: _regex(kw, negate=True),
}


@dataclass(frozen=True)
class RowCheck:
    suite: str
    index: int  # position of the expectation in its suite
    type: str
    column: str
    predicate: Predicate
    tolerant: bool = False  # ``mostly`` < 1: the suite tolerates some rows breaking it

    def describe(self) -> str:
        return f"{self.type}({self.column})"


@dataclass(frozen=True)
class Violation:
    column: str
    expectation: str


class RowContract:
    """The row-level expectations of some suites, grouped by column."""

    def __init__(self, checks: Iterable[RowCheck]) -> None:
        self.checks = tuple(checks)
        self._by_column: dict[str, tuple[RowCheck, ...]] = {}
        for check in self.checks:
            self._by_column[check.column] = (*self._by_column.get(check.column, ()), check)
        self._nullable = {
            column: not any(
                c.type == "expect_column_values_to_not_be_null" and not c.tolerant for c in checks
            )
            for column, checks in self._by_column.items()
        }

    @classmethod
    def from_suites(cls, suites: Iterable[Suite]) -> RowContract:
        checks = []
        for suite in suites:
            for index, spec in enumerate(suite.expectations):
                compile_ = COMPILERS.get(spec["type"])
                if compile_ is None:
                    continue
                kwargs = spec["kwargs"]
                if "column" not in kwargs:
                    raise ContractError(
                        f"suite {suite.name}: expectations[{index}] '{spec['type']}' has no column"
                    )
                try:
                    predicate = compile_(kwargs)
                except (KeyError, TypeError, re.error) as exc:
                    raise ContractError(
                        f"suite {suite.name}: expectations[{index}] cannot be compiled for "
                        f"requests ({type(exc).__name__})"
                    ) from None
                tolerant = float(kwargs.get("mostly", 1.0)) < 1.0
                checks.append(
                    RowCheck(suite.name, index, spec["type"], kwargs["column"], predicate, tolerant)
                )
        return cls(checks)

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(self._by_column)

    def nullable(self, column: str) -> bool:
        """No strict (``mostly`` = 1) not-null expectation on the column."""
        return self._nullable.get(column, True)

    def check_value(self, column: str, value: Any) -> list[str]:
        """Expectations the value of one column breaks (empty when it is valid)."""
        return [c.describe() for c in self._by_column.get(column, ()) if not c.predicate(value)]

    def breaks(self, column: str, value: Any) -> bool:
        """Whether the value of one column breaks an expectation (``check_value`` not empty)."""
        return any(not c.predicate(value) for c in self._by_column.get(column, ()))

    def violations_of(
        self, rows: Sequence[Mapping[str, Any]], nullable_when_tolerant: bool = False
    ) -> list[list[Violation]]:
        """``violations`` of each row, in the same order; a batch's distinct values of a column
        are judged once (``value_key``)."""
        found: list[list[Violation]] = [[] for _ in rows]
        for column, checks in self._by_column.items():

            def broken(
                value: Any, column: str = column, checks: tuple[RowCheck, ...] = checks
            ) -> list[Violation]:
                return [
                    Violation(column, c.describe())
                    for c in checks
                    if not c.predicate(value)
                    and not (nullable_when_tolerant and c.tolerant and is_null(value))
                ]

            for index, violations in judged_per_value(rows, column, broken):
                found[index].extend(violations)
        return found

    def violations(
        self, row: Mapping[str, Any], nullable_when_tolerant: bool = False
    ) -> list[Violation]:
        """Broken expectations of the row's columns. With ``nullable_when_tolerant``, a null is
        accepted where the suite's not-null expectation has ``mostly`` < 1 (the suite tolerates
        nulls there; a request is one row and cannot be judged by a batch's share)."""
        found: list[Any] = []
        for column, checks in self._by_column.items():
            if column not in row:
                continue
            value = row[column]
            found.extend(
                Violation(column, c.describe())
                for c in checks
                if not c.predicate(value)
                and not (nullable_when_tolerant and c.tolerant and is_null(value))
            )
        return found
