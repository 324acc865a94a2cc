"""Population Stability Index: fast, vectorised, incremental.

Bins are fitted on a reference sample:

- numeric: interior edges at reference quantiles (de-duplicated), giving ``len(edges) + 1`` bins
  ``(-inf, e1], (e1, e2], ..., (ek, +inf)``; or any explicit edges (e.g. Evidently's);
- categorical: one bin per reference category plus one ``unseen`` bin for anything else.

PSI = sum over bins of (r - c) * ln(r / c), with r and c the reference and current fractions.
**Empty bins** would make the logarithm infinite: an empty bin's fraction is replaced, per side,
by ``min(non-empty fractions) / 1e6`` when that minimum is at most 1e-4, else by 1e-4 — the same
rule as Evidently's PSI stat test, so that with the same bins both agree (to 1e-6 and better).
Nulls are not counted in either distribution (watch null rates separately).

Counts are plain integer arrays, so windows can be merged by adding counts and PSI computed from
them (``psi_from_counts``) without revisiting rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EMPTY_BIN_FLOOR = 1e-4
COMPARE_EDGES = 64


@dataclass(frozen=True)
class NumericBins:
    edges: np.ndarray  # interior edges, ascending

    @classmethod
    def from_reference(cls, values: np.ndarray, bins: int = 10) -> NumericBins:
        present = np.asarray(values, dtype="float64")
        present = present[~np.isnan(present)]
        if present.size == 0:
            raise ValueError("reference has no non-null values")
        if bins < 2:
            raise ValueError("bins must be at least 2")
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        return cls(np.unique(np.quantile(present, quantiles)))

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Rows per bin, nulls excluded. With few edges, one vectorised comparison per edge on
        contiguous data beats a binary search per value by an order of magnitude."""
        column = np.ascontiguousarray(values, dtype="float64")
        present = column.size - int(np.count_nonzero(np.isnan(column)))
        if len(self.edges) > COMPARE_EDGES:
            index = np.searchsorted(self.edges, column[~np.isnan(column)], side="left")
            return np.bincount(index, minlength=len(self.edges) + 1)
        at_most = [int(np.count_nonzero(column <= edge)) for edge in self.edges]
        return np.diff(np.array([0, *at_most, present], dtype="int64"))


@dataclass(frozen=True)
class EdgeBins:
    """Explicit outer and inner edges, numpy.histogram semantics (last bin closed); values
    outside the outer edges are not counted — as Evidently does."""

    edges: np.ndarray

    def counts(self, values: np.ndarray) -> np.ndarray:
        present = np.asarray(values, dtype="float64")
        present = present[~np.isnan(present)]
        return np.histogram(present, self.edges)[0]


@dataclass(frozen=True)
class CategoricalBins:
    categories: tuple[str, ...]

    @classmethod
    def from_reference(cls, values: Sequence[object]) -> CategoricalBins:
        seen = sorted({str(v) for v in values if v is not None and v == v})
        return cls(tuple(seen))

    def counts(self, values: Sequence[object]) -> np.ndarray:
        """One count per category, then the unseen bin."""
        index = {c: i for i, c in enumerate(self.categories)}
        unseen = len(self.categories)
        positions = [index.get(str(v), unseen) for v in values if v is not None and v == v]
        return np.bincount(np.asarray(positions, dtype="int64"), minlength=unseen + 1)


def _floor_empty(fractions: np.ndarray) -> np.ndarray:
    filled = fractions.astype("float64").copy()
    nonzero = filled[filled > 0]
    if nonzero.size == 0:
        return filled
    smallest = nonzero.min()
    filled[filled == 0] = smallest / 1e6 if smallest <= EMPTY_BIN_FLOOR else EMPTY_BIN_FLOOR
    return filled


def psi_from_fractions(reference: np.ndarray, current: np.ndarray) -> float:
    reference, current = _floor_empty(reference), _floor_empty(current)
    return float(np.sum((reference - current) * np.log(reference / current)))


def psi_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two count vectors over the same bins (counts of merged windows add up)."""
    reference_total, current_total = reference.sum(), current.sum()
    if reference_total == 0 or current_total == 0:
        raise ValueError("PSI needs at least one counted value on each side")
    return psi_from_fractions(reference / reference_total, current / current_total)


def psi_matrix(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> np.ndarray:
    """PSI of every column of two numeric matrices (rows x features), quantile bins fitted on
    the reference: one vectorised pass per column."""
    reference = np.asarray(reference, dtype="float64")
    current = np.asarray(current, dtype="float64")
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError("reference and current must be 2-D with the same number of columns")
    reference, current = np.ascontiguousarray(reference.T), np.ascontiguousarray(current.T)
    values = np.empty(reference.shape[0])
    for column in range(reference.shape[0]):
        fitted = NumericBins.from_reference(reference[column], bins)
        values[column] = psi_from_counts(
            fitted.counts(reference[column]), fitted.counts(current[column])
        )
    return values
