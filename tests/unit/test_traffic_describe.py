import pytest

from prodguard.rollout.policy import TrafficPolicy

pytestmark = pytest.mark.unit


def test_blue_green_says_standby_warm_only_with_a_standby() -> None:
    policy = TrafficPolicy()
    assert policy.describe().endswith("standby warm")
    assert policy.describe(standby=False) == (
        "blue/green: all traffic to the champion, no standby to roll back to"
    )


def test_a_rollout_is_described_the_same_with_or_without_a_standby() -> None:
    canary = TrafficPolicy(mode="canary", version=3, steps=(5.0, 100.0))
    assert (
        canary.describe(standby=False)
        == canary.describe()
        == ("canary: v3 answers 5% (step 1: 5% -> 100%)")
    )
