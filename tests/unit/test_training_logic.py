import numpy as np
import pandas as pd
import pytest

from prodguard.registry.operations import AliasState
from prodguard.serving.models import contract_difference
from prodguard.tasks import Task, TaskSpec
from prodguard.training.dataset import describe_columns
from prodguard.training.model import build_pipeline, evaluate, prepare
from prodguard.training.reference import fallbacks, reference_stats

pytestmark = pytest.mark.unit


def frame(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    colour = rng.choice(["red", "blue", "green"], size=n)
    label = ((x + (colour == "red") * 1.5 + rng.normal(scale=0.5, size=n)) > 0.7).astype(int)
    features = pd.DataFrame({"colour": colour, "x": x, "gappy": np.where(x > 1, np.nan, x)})
    return features, pd.Series(label)


def test_reference_stats_bins_and_fallbacks() -> None:
    values = pd.DataFrame({"v": np.arange(1, 101, dtype=float), "c": ["a"] * 70 + ["b"] * 30})
    values.loc[0, "v"] = np.nan
    stats = reference_stats(values)
    numeric = stats["v"]
    assert numeric["kind"] == "numeric" and numeric["null_rate"] == pytest.approx(0.01)
    assert numeric["median"] == pytest.approx(51.0)
    assert len(numeric["bin_fractions"]) == len(numeric["bin_edges"]) + 1
    assert sum(numeric["bin_fractions"]) == pytest.approx(1.0)
    assert max(numeric["bin_fractions"]) - min(numeric["bin_fractions"]) < 0.03  # deciles
    assert stats["c"] == {
        "kind": "categorical",
        "null_rate": 0.0,
        "mode": "a",
        "categories": {"a": 0.7, "b": 0.3},
    }
    assert fallbacks(stats) == {"v": 51.0, "c": "a"}


def test_rare_categories_are_kept() -> None:
    column = pd.DataFrame({"c": ["a"] * 9999 + ["rare"]})
    assert reference_stats(column)["c"]["categories"] == {"a": 0.9999, "rare": 0.0001}


def test_pipeline_learns_handles_unknown_categories_and_is_deterministic() -> None:
    features, label = frame()
    first = build_pipeline(features, seed=1).fit(prepare(features), label)
    second = build_pipeline(features, seed=1).fit(prepare(features), label)
    test, test_label = frame(seed=2)
    test.loc[:5, "colour"] = "purple"  # unseen at training time
    test.loc[6:9, "colour"] = None
    scores = first.predict_proba(prepare(test))[:, 1]
    assert np.array_equal(scores, second.predict_proba(prepare(test))[:, 1])
    metrics, calibration = evaluate(first, TaskSpec(Task.BINARY, (0, 1), 0.5), test, test_label)
    assert metrics["auc"] > 0.8
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["brier"] <= 0.25
    assert sum(b["count"] for b in calibration["bins"]) == len(test)


def test_input_contract_kinds() -> None:
    features, _ = frame()
    assert describe_columns(features) == [
        ["colour", "categorical"],
        ["x", "numeric"],
        ["gappy", "numeric"],
    ]


def test_contract_difference_names_each_change() -> None:
    recorded = [["w:temp", "Float64"], ["w:visib", "Float64"], ["p:seats", "Int64"]]
    current = [["w:temp", "Float64"], ["p:seats", "Float64"], ["c:rate", "Float64"]]
    assert contract_difference(recorded, recorded) == ""
    assert contract_difference(recorded, current) == (
        "missing c:rate; no longer served w:visib; p:seats is Float64, was Int64"
    )


def test_alias_state_round_trip() -> None:
    state = AliasState(champion=2, standby=1)
    assert AliasState.from_mapping(state.as_dict()) == state
    assert state.describe() == "champion=v2, standby=v1, candidate=unset"
