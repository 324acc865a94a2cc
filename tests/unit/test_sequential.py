"""The sequential tests' guarantees, measured by simulation with fixed seeds.

Each simulation runs 2,000 sequences checked after every batch of 10 observations for 200
batches (2,000 observations each), vectorised. Tolerance for an error rate bounded by alpha:
alpha + 3 standard errors of a 2,000-sequence estimate (0.01 + 0.0067); the exact tests must
stay within alpha itself.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prodguard.rollout.sequential import (
    MeanState,
    MeanTest,
    RateDifferenceTest,
    RateState,
    RateTest,
    verdicts,
)

pytestmark = pytest.mark.unit
SEQUENCES, BATCHES, BATCH = 2000, 200, 10
ALPHA = 0.01
TOLERANCE = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SEQUENCES)
# paired cost differences per labelled outcome: mostly equal, sometimes one version is right
COSTS = np.array([-1.0, -0.25, 0.0, 0.25, 1.0])
COST_P = np.array([0.05, 0.1, 0.7, 0.1, 0.05])


def normal_sums(rng: np.random.Generator, mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch sum and sum of squares of N(mean, 1) observations."""
    total = rng.normal(mean * BATCH, math.sqrt(BATCH), (SEQUENCES, BATCHES))
    within = rng.chisquare(BATCH - 1, (SEQUENCES, BATCHES))  # sum of (x - batch mean)^2
    return total, within + total**2 / BATCH


def cost_sums(rng: np.random.Generator, shift: float) -> tuple[np.ndarray, np.ndarray]:
    left = np.full((SEQUENCES, BATCHES), BATCH)
    total, squares, mass = np.zeros(left.shape), np.zeros(left.shape), 1.0
    for value, p in zip(COSTS + shift, COST_P, strict=True):  # multinomial by binomials
        count = rng.binomial(left, min(p / mass, 1.0))
        total += count * value
        squares += count * value * value
        left, mass = left - count, mass - p
    return total, squares


def simulate(test: MeanTest, sums: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Every sequence's verdicts after each batch; the batch of the first fire/clean (or
    BATCHES if never)."""
    n = np.broadcast_to(np.arange(1, BATCHES + 1) * BATCH, (SEQUENCES, BATCHES))
    found = test.verdicts(n, np.cumsum(sums[0], axis=1), np.cumsum(sums[1], axis=1))
    return first_decisions(found)


def first_decisions(found: np.ndarray) -> dict[str, np.ndarray]:
    result = {}
    for verdict in ("fired", "clean"):
        hit = found == verdict
        result[verdict] = np.where(hit.any(axis=1), hit.argmax(axis=1), BATCHES)
    return result


def observations_for(first: np.ndarray, share: float) -> float:
    """Observations by which ``share`` of the sequences decided."""
    return (np.quantile(first, share, method="higher") + 1) * BATCH


@pytest.mark.parametrize("side", ["greater", "two-sided"])
@pytest.mark.parametrize("kind", ["normal", "costs"])
def test_type_one_error_of_the_mean_test_checked_after_every_batch(side: str, kind: str) -> None:
    """As good as the reference (mean 0): fires in at most alpha (+ tolerance) of sequences,
    however often it is checked; normal observations and discrete paired cost differences."""
    if kind == "normal":
        test, sums = MeanTest(0.3, side=side), normal_sums(np.random.default_rng(1), 0.0)
    else:
        test, sums = MeanTest(0.05, side=side), cost_sums(np.random.default_rng(2), 0.0)
    fired = (simulate(test, sums)["fired"] < BATCHES).mean()
    assert fired <= TOLERANCE, (side, kind, fired)


def test_power_at_the_minimum_effect_and_clean_under_the_null() -> None:
    """At the minimum effect (0.3 sd) 95 % of sequences fire within 400 observations (and at
    most alpha are ever called clean); under the null 95 % are clean within 400."""
    test = MeanTest(0.3, side="greater")
    worse = simulate(test, normal_sums(np.random.default_rng(3), 0.3))
    assert observations_for(worse["fired"], 0.95) <= 400
    assert (worse["clean"] < BATCHES).mean() <= TOLERANCE
    assert (worse["fired"] < worse["clean"]).mean() >= 0.99
    good = simulate(test, normal_sums(np.random.default_rng(4), 0.0))
    assert observations_for(good["clean"], 0.95) <= 400


def test_power_on_paired_costs_at_five_percent() -> None:
    """Cost differences (sd 0.34) with a minimum effect of 0.05: 95 % fire within 1,300."""
    test = MeanTest(0.05, side="greater")
    worse = simulate(test, cost_sums(np.random.default_rng(5), 0.05))
    assert observations_for(worse["fired"], 0.95) <= 1300
    assert (worse["clean"] < BATCHES).mean() <= TOLERANCE


def test_exact_scale_on_bounded_values_stays_within_alpha() -> None:
    """A known sub-Gaussian scale ((high - low) / 2 for values in [-1, 1]): exact, so within
    alpha without tolerance, from the first observation on."""
    test = MeanTest(0.3, side="two-sided", scale=1.0)
    assert test.min_n == 1
    fired = (simulate(test, cost_sums(np.random.default_rng(6), 0.0))["fired"] < BATCHES).mean()
    assert fired <= ALPHA


def test_type_one_error_and_power_of_the_rate_test() -> None:
    """Error rate at its reference (1 %): fires in at most alpha of sequences of 20,000
    requests checked every 100; at 2 % (minimum effect +1 point) 95 % fire within 10,000."""
    test = RateTest(0.01, 0.01)
    n = np.broadcast_to(np.arange(1, BATCHES + 1) * 100, (SEQUENCES, BATCHES))
    rng = np.random.default_rng(7)
    for rate, expect in ((0.01, "null"), (0.02, "worse")):
        events = np.cumsum(rng.binomial(100, rate, (SEQUENCES, BATCHES)), axis=1)
        first = first_decisions(test.verdicts(n, events))
        if expect == "null":
            assert (first["fired"] < BATCHES).mean() <= ALPHA
        else:
            assert (np.quantile(first["fired"], 0.95, method="higher") + 1) * 100 <= 10_000
            assert (first["clean"] < BATCHES).mean() <= ALPHA


def test_type_one_error_and_power_of_the_rate_difference_test() -> None:
    """Two streams of requests over the same span (the version's and its reference's), checked
    after every 500 of each: at equal rates (1 %) against a null of +0.5 point it fires in at
    most alpha of 200 sequences (exact: no tolerance); a version failing 4 % against 1 %
    fires in 95 % of them within 10,000 requests, and is never shown clean."""
    test = RateDifferenceTest(0.01, null_effect=0.005, typical=0.01)
    looks, step, sequences = 20, 500, 200
    rng = np.random.default_rng(8)
    memo: dict[tuple[int, int, int, int], str] = {}

    def verdict(n: int, mine: int, theirs: int) -> str:
        key = (n, mine, n, theirs)
        if key not in memo:
            memo[key] = test.decide(RateState(n, mine), RateState(n, theirs)).verdict
        return memo[key]

    for rate, expect in ((0.01, "null"), (0.04, "worse")):
        mine = np.cumsum(rng.binomial(step, rate, (sequences, looks)), axis=1)
        theirs = np.cumsum(rng.binomial(step, 0.01, (sequences, looks)), axis=1)
        found = np.array(
            [
                [verdict((j + 1) * step, mine[i, j], theirs[i, j]) for j in range(looks)]
                for i in range(sequences)
            ]
        )
        fired = (found == "fired").any(axis=1)
        if expect == "null":
            assert fired.mean() <= ALPHA
        else:
            first = np.where(found == "fired", np.arange(looks), looks).min(axis=1)
            assert (np.quantile(first, 0.95, method="higher") + 1) * step <= 10_000
            assert not (found == "clean").any()


def test_rate_difference_evidence_and_unknown_reference() -> None:
    test = RateDifferenceTest(0.02, null_effect=0.01)
    decision = test.decide(RateState(5000, 400), RateState(5000, 50))
    assert decision.verdict == "fired" and decision.estimate == pytest.approx(0.07)
    assert 0.01 < decision.low < 0.07 < decision.high and decision.n == 5000
    calm = test.decide(RateState(20_000, 20), RateState(20_000, 20))
    assert calm.verdict == "clean" and calm.high < 0.02
    unknown = test.decide(RateState(1000, 3), RateState())
    assert unknown.verdict == "continue" and "no requests of the reference" in unknown.reason
    short = test.decide(RateState(100, 1), RateState(100, 1))
    assert short.verdict == "continue" and short.more_needed > 0


def test_state_is_additive_and_serialisable() -> None:
    values = np.random.default_rng(8).normal(0.1, 1, 1001)
    whole = MeanState.of(values)
    halves = MeanState.of(values[:400]) + MeanState.of(values[400:])
    assert halves.n == whole.n == 1001
    assert halves.total == pytest.approx(whole.total) and halves.mean == pytest.approx(0.1, abs=0.1)
    assert halves.squares == pytest.approx(whole.squares)
    assert halves.sd == pytest.approx(float(np.std(values, ddof=1)))
    assert MeanState.from_json(json.loads(json.dumps(whole.to_json()))) == whole
    test = MeanTest(0.3)
    assert test.decide(halves).to_json() == pytest.approx(test.decide(whole).to_json())
    rates = RateState.of([True, False, False]) + RateState(7, 1)
    assert rates == RateState(10, 2) and RateState.from_json(rates.to_json()) == rates
    assert MeanState.of([1.0, float("nan"), 3.0]) == MeanState(2, 4.0, 10.0)


def test_decision_carries_its_evidence() -> None:
    test = MeanTest(0.3, side="two-sided")
    early = test.decide(MeanState.of(np.random.default_rng(9).normal(0, 1, 20)))
    assert early.verdict == "continue" and early.n == 20 and early.alpha == ALPHA
    assert "at least 100" in early.reason and early.more_needed >= 80
    assert math.isinf(early.low) and early.to_json()["low"] is None
    later = MeanState.of(np.random.default_rng(9).normal(0, 1, 150))
    undecided = test.decide(later)
    assert undecided.verdict == "continue" and undecided.low < 0 < undecided.high
    # the estimate of the remaining need is honest: after that many more, the interval decides
    more = MeanState.of(np.random.default_rng(10).normal(0, 1, undecided.more_needed + 50))
    assert test.decide(later + more).verdict == "clean"
    shifted = test.decide(MeanState.of(np.random.default_rng(11).normal(-0.6, 1, 400)))
    assert shifted.verdict == "fired" and shifted.high < 0 and shifted.more_needed is None
    assert "fired: effect -0." in shifted.summary()
    empty = test.decide(MeanState())
    assert empty.verdict == "continue" and empty.n == 0 and math.isnan(empty.estimate)


def test_null_effect_tolerates_small_differences_and_lower_is_worse() -> None:
    """A canary that differs by 1 sd when 1 sd is tolerated is not fired, however long it
    runs; ``less`` mirrors the direction."""
    values = np.random.default_rng(12).normal(1.0, 1.0, 100_000)
    state = MeanState.of(values)
    assert MeanTest(3.0, null_effect=1.5, side="two-sided").decide(state).verdict == "clean"
    assert MeanTest(3.0, side="greater").decide(state).verdict == "clean"  # below what matters
    assert MeanTest(0.5, side="greater").decide(state).verdict == "fired"
    assert MeanTest(0.5, side="less").decide(state).verdict == "clean"
    assert MeanTest(0.5, side="less").decide(MeanState.of(-values)).verdict == "fired"


def test_rate_interval_and_evidence() -> None:
    test = RateTest(0.01, 0.01)
    few = test.decide(RateState(300, 2))
    assert few.verdict == "continue" and few.more_needed > 0
    assert few.low < few.estimate < few.high
    assert test.decide(RateState(5000, 100)).verdict == "fired"
    assert test.decide(RateState(20_000, 150)).verdict == "clean"
    low, high = test.interval(RateState(5000, 100))
    assert low < 0.02 < high


def test_vectorised_verdicts_match_the_rules() -> None:
    low = np.array([0.1, -0.1, -0.1, -2.0])
    high = np.array([0.5, 0.2, 0.4, -1.0])
    found = verdicts(low, high, "greater", 0.0, 0.3)
    assert found.tolist() == ["fired", "clean", "continue", "clean"]
    assert verdicts(low, high, "two-sided", 0.0, 0.3).tolist()[3] == "fired"


def test_configuration_mistakes_are_refused() -> None:
    for bad in (
        dict(min_effect=0.3, alpha=0.0),
        dict(min_effect=0.1, null_effect=0.2),
        dict(min_effect=0.3, scale=-1.0),
    ):
        with pytest.raises(ValueError):
            MeanTest(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateTest(0.995, 0.01)


def test_fired_first_reads_an_interval_beyond_the_null_but_within_the_minimum_as_fired() -> None:
    low, high = [0.07, -0.01, 0.05], [0.09, 0.01, 0.2]
    assert list(verdicts(low, high, "two-sided", 0.06, 0.12)) == ["clean", "clean", "continue"]
    assert list(verdicts(low, high, "two-sided", 0.06, 0.12, fired_first=True)) == [
        "fired",
        "clean",
        "continue",
    ]


def test_clustered_state_is_additive_and_reads_the_clusters_spread() -> None:
    rng = np.random.default_rng(30)
    # independent observations cut into hours: the clustered sd is about the plain one
    hours = [MeanState.of(rng.normal(0, 1, 20)) for _ in range(200)]
    plain = MeanState.of_clusters(hours)
    assert plain.n == 4000 and plain.clusters == 200
    assert plain.clustered_sd == pytest.approx(plain.sd, rel=0.15)
    # merging clustered halves equals clustering the whole (the sums are additive)
    halves = MeanState.of_clusters(hours[:90]) + MeanState.of_clusters(hours[90:])
    assert halves.clustered_sd == pytest.approx(plain.clustered_sd)
    assert MeanState.from_json(json.loads(json.dumps(halves.to_json()))) == halves
    assert MeanState.from_json({"n": 3, "total": 1.0, "squares": 1.0}).clusters == 0
    # each hour sharing a cause (an offset of sd 0.5): the spread of the mean grows with it
    shared = [MeanState.of(rng.normal(0, 1, 20) + rng.normal(0, 0.5)) for _ in range(200)]
    together = MeanState.of_clusters(shared)
    assert together.clustered_sd > 2 * together.sd  # sqrt(1 + 19 x 0.25 / 1.25) ~ 2.2 x
    assert together.test_squares > together.squares
    # the one spread a test reads (its interval and its needed size): the larger of the two
    assert together.test_sd == pytest.approx(together.clustered_sd)
    assert plain.test_sd == pytest.approx(max(plain.sd, plain.clustered_sd))
    test = MeanTest(0.3, side="greater", min_n=100)
    fixed = MeanTest(0.3, side="greater", scale=together.test_sd)
    assert test.needed(together) == fixed.needed(together) > 1000  # sized at the clustered sd
    assert math.isnan(MeanState.of_clusters(shared[:1]).clustered_sd)  # one cluster: unknown
    assert MeanState.of_clusters(shared[:1]).test_squares == shared[0].squares


def test_a_mean_test_on_clustered_observations_keeps_its_error_rate() -> None:
    """Observations that share an hourly cause (an offset of sd 0.5 over noise of sd 1, 10 per
    hour), checked every hour for 48 hours, true effect 0: read as independent the test fires
    far more often than alpha; clustered by hour it stays within the tolerance."""
    rng = np.random.default_rng(31)
    runs, hours, per_hour = 400, 48, 10
    test = MeanTest(0.3, side="greater", min_n=100)
    looks = []  # (n, total, squares as independent, squares as the test reads them)
    for _ in range(runs):
        merged = MeanState()
        for _ in range(hours):
            hour = MeanState.of(rng.normal(0, 1, per_hour) + rng.normal(0, 0.5))
            merged = merged + MeanState.of_clusters([hour])
            looks.append((merged.n, merged.total, merged.squares, merged.test_squares))
    n, total, plain, clustered = np.asarray(looks).reshape(runs, hours, 4).transpose(2, 0, 1)
    fired = {
        name: int((test.verdicts(n, total, squares) == "fired").any(axis=1).sum())
        for name, squares in (("independent", plain), ("clustered", clustered))
    }
    tolerance = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert fired["independent"] / runs > 2 * tolerance, fired  # the dependence matters here
    assert fired["clustered"] / runs <= tolerance, fired
    # decide reads the same squares as verdicts
    assert test.decide(merged).high == pytest.approx(test.bounds(*looks[-1][:2], looks[-1][3])[2])
