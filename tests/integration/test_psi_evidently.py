"""prodguard's PSI agrees with Evidently's PSI stat test when both use the same bins."""

import numpy as np
import pandas as pd
import pytest

from prodguard.monitoring import psi

pytestmark = pytest.mark.integration


def evidently_psi(reference: pd.Series, current: pd.Series, numeric: bool) -> float:
    from evidently.legacy.calculations.stattests.psi import _psi
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Numerical if numeric else ColumnType.Categorical
    return float(_psi(reference, current, kind, threshold=0.1)[0])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_numeric_psi_matches_evidently_with_its_bins(seed: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    reference = pd.Series(rng.normal(size=5000))
    current = pd.Series(rng.normal(loc=shift, scale=1 + shift / 2, size=3000))
    # Evidently's bins: Sturges edges over both samples
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    bins = psi.EdgeBins(edges)
    ours = psi.psi_from_counts(bins.counts(reference.to_numpy()), bins.counts(current.to_numpy()))
    assert ours == pytest.approx(evidently_psi(reference, current, numeric=True), abs=1e-9)


def test_empty_bins_follow_the_same_floor_rule() -> None:
    reference = pd.Series(np.r_[np.linspace(0, 1, 4000), np.linspace(5, 6, 10)])
    current = pd.Series(np.linspace(0, 1, 3000))  # nothing in the far bins
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    bins = psi.EdgeBins(edges)
    ours = psi.psi_from_counts(bins.counts(reference.to_numpy()), bins.counts(current.to_numpy()))
    assert ours == pytest.approx(evidently_psi(reference, current, numeric=True), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_categorical_psi_matches_when_categories_are_the_same(seed: int) -> None:
    rng = np.random.default_rng(seed)
    categories = ["AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN"]
    reference = pd.Series(rng.choice(categories, size=4000, p=np.full(8, 1 / 8)))
    current = pd.Series(rng.choice(categories, size=2500, p=[0.3] + [0.1] * 7))
    bins = psi.CategoricalBins.from_reference(reference)
    ref_counts, cur_counts = bins.counts(list(reference)), bins.counts(list(current))
    assert ref_counts[-1] == cur_counts[-1] == 0  # no unseen category: the same bins
    ours = psi.psi_from_counts(ref_counts[:-1], cur_counts[:-1])
    assert ours == pytest.approx(evidently_psi(reference, current, numeric=False), abs=1e-9)
