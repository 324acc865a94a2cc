"""The registry lineage contract: tag names and their parsing into a typed object."""

from __future__ import annotations

import json

import pytest

from prodguard.errors import PromotionRefused
from prodguard.registry import lineage
from prodguard.registry.lineage import Lineage

pytestmark = pytest.mark.unit

CONTRACT = [["x0", "numeric"], ["carrier", "categorical"]]


def registered(**extra: str) -> dict[str, str]:
    tags = lineage.registration_tags(
        {
            "store_features": json.dumps(CONTRACT),
            "input_contract": json.dumps(CONTRACT),
            "fallbacks": json.dumps({"x0": 1.5, "carrier": "AA"}),
            "feature_views": json.dumps({"flights": 2}),
            "train_window": "2013-01-01T00:00:00+00:00/2013-03-01T00:00:00+00:00",
            "reference_stats_digest": "abc",
        },
        {"auc": 0.71234567, "ece": 0.01},
    )
    return {**tags, **extra}


def test_registration_tags_are_prefixed_and_metrics_rounded() -> None:
    tags = registered()
    assert tags[lineage.TRAIN_WINDOW].startswith("2013-01-01")
    assert tags[lineage.EVAL_PREFIX + "auc"] == "0.712346"
    assert all(key.startswith(lineage.PREFIX) for key in tags)


def test_from_tags_parses_a_registered_version() -> None:
    found = Lineage.from_tags(registered(**{lineage.DRILL: json.dumps({"passed": True})}))
    assert found is not None
    assert found.store_features == (("x0", "numeric"), ("carrier", "categorical"))
    assert found.columns == ("x0", "carrier")
    assert found.categorical == frozenset({"carrier"})
    assert found.fallbacks == {"x0": 1.5, "carrier": "AA"}
    assert found.feature_views == {"flights": 2}
    assert found.metrics == {"auc": pytest.approx(0.712346), "ece": 0.01}
    assert found.reference_stats_digest == "abc"
    assert found.drill == {"passed": True}
    assert found.baseline is None and found.fault is None


def test_a_version_without_lineage_is_none() -> None:
    assert Lineage.from_tags({"mlflow.user": "someone"}) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (lineage.INPUT_CONTRACT, "{not json"),
        (lineage.INPUT_CONTRACT, json.dumps([["only-a-name"]])),
        (lineage.FALLBACKS, json.dumps([1, 2])),
        (lineage.EVAL_PREFIX + "auc", "high"),
    ],
)
def test_malformed_lineage_is_refused_naming_the_tag(key: str, value: str) -> None:
    with pytest.raises(PromotionRefused, match=key.replace(".", r"\.")):
        Lineage.from_tags(registered(**{key: value}))


def test_missing_required_tag_is_refused() -> None:
    tags = registered()
    del tags[lineage.FALLBACKS]
    with pytest.raises(PromotionRefused, match="no prodguard.fallbacks tag"):
        Lineage.from_tags(tags)


def test_copied_tags_keep_lineage_but_not_run_drill_or_demotion() -> None:
    tags = registered(
        **{
            lineage.RUN_ID: "r",
            lineage.DRILL: "{}",
            lineage.DEMOTED_REASON: "x",
            lineage.ARTIFACT_DIGEST: "d",
            "mlflow.source": "s",
        }
    )
    copied = lineage.copied_tags(tags)
    assert lineage.STORE_FEATURES in copied and lineage.BASELINE not in copied
    assert not set(copied) & (lineage.NOT_COPIED | {"mlflow.source"})


def test_summary_decodes_json_keys_and_splits_windows() -> None:
    found = lineage.summary(registered())
    assert found["feature_views"] == {"flights": 2}
    assert found["eval"]["auc"] == 0.712346 and found["baseline"] is None
    assert found["headline"] == {"metric": "auc", "value": 0.712346, "lower_is_better": False}
    start, end = lineage.split_window(found["train_window"])
    assert (start.month, end.month) == (1, 3)


def test_promotion_compares_the_tasks_headline_metric_in_its_direction() -> None:
    better = lineage.compare_headlines(
        registered(), registered(**{lineage.EVAL_PREFIX + "auc": "0.6"})
    )
    assert better is not None and better["metric"] == "auc" and better["better"]
    assert better["same_window"]

    def regression(rmse: str, window: str) -> dict[str, str]:
        return {
            lineage.TASK: "regression",
            lineage.EVAL_PREFIX + "rmse": rmse,
            lineage.EVAL_WINDOW: window,
        }

    lower = lineage.compare_headlines(regression("3.5", "a"), regression("4.0", "b"))
    assert lower == {
        "metric": "rmse",
        "candidate": 3.5,
        "champion": 4.0,
        "better": True,
        "same_window": False,
    }
    assert not lineage.compare_headlines(regression("4.5", "a"), regression("4.0", "a"))["better"]
    # another task, or no metric recorded: nothing to compare
    assert lineage.compare_headlines(regression("3.5", "a"), registered()) is None
    assert lineage.compare_headlines({}, registered()) is None
