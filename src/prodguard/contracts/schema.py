"""Schema fingerprints: a stable hash of (column, logical type) per source, and their diff.

Logical types ignore representation details that carry no meaning (int64 vs float64 — an
integer column with a gap becomes float in CSV —, object vs string): a change of logical type
(number, bool, datetime, string), a missing, added or renamed column is a schema change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd
from pandas.api import types as ptypes


@dataclass(frozen=True)
class Schema:
    columns: tuple[tuple[str, str], ...]

    @property
    def fingerprint(self) -> str:
        payload = json.dumps(sorted(self.columns), separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, str]:
        return dict(self.columns)

    @classmethod
    def from_dict(cls, mapping: dict[str, str]) -> Schema:
        return cls(columns=tuple(mapping.items()))


@dataclass(frozen=True)
class SchemaDiff:
    removed: tuple[str, ...]
    added: tuple[str, ...]
    retyped: tuple[tuple[str, str, str], ...]
    renamed: tuple[tuple[str, str], ...]

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added or self.retyped or self.renamed)

    @property
    def breaking(self) -> bool:
        """True when a recorded column is missing or changed type (the store cannot take it)."""
        return bool(self.removed or self.retyped or self.renamed)

    def describe(self) -> str:
        parts = [f"renamed {old} -> {new}" for old, new in self.renamed]
        parts += [f"removed {c}" for c in self.removed]
        parts += [f"added {c}" for c in self.added]
        parts += [f"{c} changed type {old} -> {new}" for c, old, new in self.retyped]
        return "; ".join(parts) if parts else "no change"


def logical_type(dtype: object) -> str:
    if ptypes.is_bool_dtype(dtype):
        return "bool"
    if ptypes.is_numeric_dtype(dtype):
        return "number"
    if ptypes.is_datetime64_any_dtype(dtype):
        return "datetime"
    if ptypes.is_string_dtype(dtype) or ptypes.is_object_dtype(dtype):
        return "string"
    return str(dtype)


def schema_of(frame: pd.DataFrame) -> Schema:
    return Schema(columns=tuple((str(c), logical_type(t)) for c, t in frame.dtypes.items()))


def diff(recorded: Schema, current: Schema) -> SchemaDiff:
    """Columns are matched by name; a removed and an added column of the same type, at the same
    position, are reported as a rename."""
    old, new = recorded.as_dict(), current.as_dict()
    removed = [c for c in old if c not in new]
    added = [c for c in new if c not in old]
    retyped = tuple((c, old[c], new[c]) for c in old if c in new and old[c] != new[c])
    old_positions = {c: i for i, (c, _) in enumerate(recorded.columns)}
    new_positions = {c: i for i, (c, _) in enumerate(current.columns)}
    renamed = []
    for gone in list(removed):
        match = next(
            (a for a in added if new[a] == old[gone] and new_positions[a] == old_positions[gone]),
            None,
        )
        if match is not None:
            renamed.append((gone, match))
            removed.remove(gone)
            added.remove(match)
    return SchemaDiff(
        removed=tuple(removed), added=tuple(added), retyped=retyped, renamed=tuple(renamed)
    )
