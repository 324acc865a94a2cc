import numpy as np
import pytest

from prodguard.monitoring import psi

pytestmark = pytest.mark.unit


def test_identical_distributions_have_zero_psi() -> None:
    values = np.random.default_rng(0).normal(size=10_000)
    bins = psi.NumericBins.from_reference(values, bins=10)
    assert psi.psi_from_counts(bins.counts(values), bins.counts(values)) == pytest.approx(0)
    assert len(bins.edges) == 9


def test_psi_grows_with_shift_and_windows_merge_by_adding_counts() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=20_000)
    bins = psi.NumericBins.from_reference(reference)
    small = psi.psi_from_counts(bins.counts(reference), bins.counts(rng.normal(0.1, 1, 5000)))
    large = psi.psi_from_counts(bins.counts(reference), bins.counts(rng.normal(1.0, 1, 5000)))
    assert 0 < small < 0.1 < 0.25 < large
    first, second = rng.normal(size=3000), rng.normal(size=4000)
    merged = bins.counts(first) + bins.counts(second)
    assert np.array_equal(merged, bins.counts(np.concatenate([first, second])))


def test_bins_ignore_nulls_and_put_unseen_categories_in_their_own_bin() -> None:
    numeric = psi.NumericBins(np.array([0.0, 1.0]))
    assert numeric.counts(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan])).tolist() == [2, 2, 1]
    categorical = psi.CategoricalBins.from_reference(["a", "b", None, "a"])
    assert categorical.categories == ("a", "b")
    assert categorical.counts(["a", "c", None, float("nan"), "b"]).tolist() == [1, 1, 1]


def test_empty_bin_floor() -> None:
    reference = np.array([0.5, 0.5, 0.0])
    current = np.array([0.4, 0.4, 0.2])
    expected = (0.5 - 0.4) * np.log(0.5 / 0.4) * 2 + (1e-4 - 0.2) * np.log(1e-4 / 0.2)
    assert psi.psi_from_fractions(reference, current) == pytest.approx(expected)


def test_psi_matrix_and_errors() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(5000, 3))
    current = reference + np.array([0.0, 0.5, 2.0])
    values = psi.psi_matrix(reference, current)
    assert values[0] == pytest.approx(0) and values[0] < values[1] < values[2]
    with pytest.raises(ValueError, match="same number of columns"):
        psi.psi_matrix(reference, current[:, :2])
    with pytest.raises(ValueError, match="at least one counted value"):
        psi.psi_from_counts(np.array([0, 0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="no non-null values"):
        psi.NumericBins.from_reference(np.array([np.nan]))
