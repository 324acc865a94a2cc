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


def test_a_running_rollout_names_its_mode_version_step_and_start() -> None:
    canary = TrafficPolicy(
        mode="canary",
        version=3,
        steps=(5.0, 25.0, 100.0),
        step=1,
        step_started="2013-04-08T06:00:00.123456+00:00",
    )
    assert canary.running() == (
        "a canary rollout of v3 is running (step 2 of 3: 25% of traffic, since 2013-04-08T06:00:00)"
    )
    shadow = TrafficPolicy(mode="shadow", version=4)
    assert shadow.running() == "a shadow rollout of v4 is running (start time unknown)"
