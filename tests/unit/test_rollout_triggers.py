"""Rollback triggers: sequential tests on a version's paired (or staging) states, fired, clean
or inconclusive with their evidence; a data incident holds all but paired triggers."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from prodguard.config import KpiSettings, TriggerSettings
from prodguard.monitoring.aggregates import Slow
from prodguard.monitoring.baseline import Baseline, MetricBaseline, pair_spread, score_sample
from prodguard.monitoring.measures import class_scores, paired_slow
from prodguard.monitoring.monitor import PairedStates, degraded_rows
from prodguard.rollout.guard import GuardDecision
from prodguard.rollout.sequential import MeanState, RateState
from prodguard.rollout.triggers import describe, evaluate_triggers
from prodguard.tasks import Task, TaskSpec

pytestmark = pytest.mark.unit
TRIGGERS = TriggerSettings(
    prediction_shift_sd=3.0,
    kpi_worse_pct=5.0,
    error_rate=0.01,
    p99_latency_ms=100.0,
    min_requests=100,
)
N = 2000


def baseline(version: int, score: float) -> Baseline:
    return Baseline(
        model_version=version,
        start="s",
        end="e",
        window={"minutes": 60, "rows": None},
        metrics={
            "score.mean": MetricBaseline(score, 0.02, 20, 0.04),  # minimum shift 0.06
            "kpi.delay_cost": MetricBaseline(0.25, 0.01, 20, 0.02),  # minimum 0.0125
            "rate.failed": MetricBaseline(0.001, 0.001, 20, 0.002),
        },
        score_edges=[0.5],
        score_fractions=[0.5, 0.5],
        rows=1000,
        created="c",
    )


VERSION, REFERENCE = baseline(2, 0.30), baseline(1, 0.25)  # staging difference +0.05


def noise(mean: float, sd: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, N)


def states(paired: bool = True, **change: object) -> PairedStates:
    healthy = {
        "score": MeanState.of(noise(0.05, 0.05, 1)),  # paired: the staging difference
        "cost": MeanState.of(noise(0.0, 0.1, 2)),
        "errors": RateState(N, 0),
        "slow": RateState(N, 2),
        "degraded": RateState(N, 0),
    }
    return PairedStates(2, 1 if paired else None, N, **{**healthy, **change})  # type: ignore[arg-type]


def judge(found: PairedStates, own: Baseline | None = VERSION, other=REFERENCE) -> dict:
    results = evaluate_triggers(found, own, other, TRIGGERS, "delay_cost")
    return {r.name: r for r in results}


def test_a_healthy_version_is_clean_with_its_evidence() -> None:
    results = judge(states())
    assert {r.status for r in results.values()} == {"clean"}
    shift = results["prediction_shift"]
    assert abs(shift.value) < 0.01 and shift.threshold == pytest.approx(0.06)
    evidence = shift.evidence
    assert evidence["verdict"] == "clean" and evidence["n"] == N and evidence["alpha"] == 0.01
    assert evidence["low"] < evidence["estimate"] < evidence["high"] < 0.06
    assert (
        "v2 minus v1 on the same requests, net of their staging difference +0.05"
        in (evidence["compared"])
    )


@pytest.mark.parametrize(
    ("change", "trigger"),
    [
        ({"score": MeanState.of(noise(0.05 - 0.08, 0.05, 1))}, "prediction_shift"),
        ({"cost": MeanState.of(noise(0.03, 0.1, 2))}, "kpi"),
        ({"errors": RateState(N, 60)}, "error_rate"),
        ({"slow": RateState(N, 100)}, "latency_p99"),
    ],
)
def test_each_trigger_fires_alone(change: dict[str, object], trigger: str) -> None:
    results = judge(states(**change))
    assert [name for name, r in results.items() if r.status == "fired"] == [trigger]
    assert results[trigger].evidence["verdict"] == "fired"


def test_error_rate_and_latency_are_judged_against_the_reference_on_the_same_span() -> None:
    # the service fails 3 % and a loaded machine slows 10 % of requests over the budget: the
    # reference on the same span / the same requests suffers alike, so nothing fires...
    busy = states(
        errors=RateState(N, 60),
        slow=RateState(N, 200),
        failures=(RateState(N, 60), RateState(4 * N, 240)),
        slow_pairs=(RateState(N, 200), RateState(N, 190)),
    )
    calm = judge(busy)
    assert calm["error_rate"].status != "fired" and calm["latency_p99"].status != "fired"
    assert (
        "v2's failed requests minus v1's over the same span"
        in (calm["error_rate"].evidence["compared"])
    )
    assert "own model stage; 190 of 2000 for v1" in calm["latency_p99"].evidence["compared"]
    # ...while the version's own failures and slowness fire, at the bound they fire at
    worse = judge(
        states(
            failures=(RateState(N, 100), RateState(4 * N, 40)),
            slow_pairs=(RateState(N, 600), RateState(N, 190)),
        )
    )
    errors, latency = worse["error_rate"], worse["latency_p99"]
    assert errors.status == "fired" and errors.threshold == pytest.approx(0.005)
    assert errors.evidence["low"] > 0.005 and errors.value == pytest.approx(0.045)
    assert latency.status == "fired" and latency.threshold == pytest.approx(0.01)
    assert latency.evidence["low"] > 0.01 and latency.value == pytest.approx(0.205)
    # a gross regression is shown on a few timed pairs (exact test: no first look to wait for)
    few = judge(states(slow_pairs=(RateState(25, 25), RateState(25, 0))))["latency_p99"]
    assert few.status == "fired" and few.evidence["n"] == 25


def test_a_shadow_reference_leaves_the_error_rate_against_staging_saying_why() -> None:
    result = judge(states(errors=RateState(N, 60)))  # paired, but no failures of the reference
    assert result["error_rate"].status == "fired"
    assert "a shadow answers no caller" in result["error_rate"].evidence["compared"]
    # the firing bound (half the budget's distance from staging), not the clean bound
    assert result["error_rate"].threshold == pytest.approx(0.0045)


CLASSES = ("early", "on_time", "late")


def class_baseline(version: int, means: tuple[float, ...]) -> Baseline:
    metrics = {
        f"score.proba.{c}": MetricBaseline(m, 0.02, 20, 0.04)  # declared shift 0.06
        for c, m in zip(CLASSES, means, strict=True)
    }
    return replace(baseline(version, 0.0), metrics=metrics)


def class_states(paired: bool, shifts: dict[str, float], seed: int = 9) -> PairedStates:
    centre = {"early": 0.05, "on_time": -0.1, "late": 0.05}  # paired: the staging difference
    classes = {
        f"score.proba.{c}": MeanState.of(noise(centre[c] + shifts.get(c, 0.0), 0.05, seed + i))
        for i, c in enumerate(CLASSES)
    }
    return replace(states(paired), score=MeanState(), classes=classes)


def test_multiclass_shift_is_one_paired_sequential_test_per_class_alpha_split() -> None:
    own = class_baseline(2, (0.25, 0.5, 0.25))
    other = class_baseline(1, (0.2, 0.6, 0.2))  # staging differences +0.05, -0.1, +0.05
    healthy = judge(class_states(True, {}), own, other)["prediction_shift"]
    assert healthy.status == "clean" and healthy.evidence["alpha"] == pytest.approx(0.01 / 3)
    assert set(healthy.evidence["classes"]) == {f"score.proba.{c}" for c in CLASSES}
    # the late class drifts 0.08 from its staging difference, net of it: only it fires
    late = judge(class_states(True, {"late": 0.08}), own, other)["prediction_shift"]
    assert late.status == "fired" and late.evidence["metric"] == "score.proba.late"
    assert late.threshold == pytest.approx(0.06) and late.value == pytest.approx(0.08, abs=0.01)
    assert "one test per class at alpha 0.01 / 3" in late.evidence["compared"]
    verdicts = {m: e["verdict"] for m, e in late.evidence["classes"].items()}
    assert verdicts["score.proba.late"] == "fired" and verdicts["score.proba.early"] == "clean"
    # unpaired: the version's own class probabilities against its staging means
    alone = replace(
        class_states(False, {}),
        classes={
            f"score.proba.{c}": MeanState.of(noise(m, 0.05, 20))
            for c, m in zip(CLASSES, (0.25, 0.5, 0.25), strict=True)
        },
    )
    assert judge(alone, own, other)["prediction_shift"].status == "clean"
    assert judge(class_states(True, {}), None, other)["prediction_shift"].status == "inconclusive"


def test_class_scores_read_logged_probabilities_or_predicted_shares() -> None:
    spec = TaskSpec(Task.MULTICLASS, CLASSES)
    logged = pd.DataFrame(
        {
            "probability": [0.7, 0.6],
            "decision": [2, 0],
            "prediction": [
                {"class": "late", "probabilities": {"early": 0.1, "on_time": 0.2, "late": 0.7}},
                {"class": "early", "probabilities": {"early": 0.6, "on_time": 0.3, "late": 0.1}},
            ],
        }
    )
    found = class_scores(logged, spec)
    assert list(found["score.proba.late"]) == [0.7, 0.1]
    shares = class_scores(logged.assign(prediction=[None, None]), spec)
    assert list(shares["score.share.late"]) == [1.0, 0.0]
    assert class_scores(logged, TaskSpec(Task.BINARY)) == {}


def test_a_difference_short_of_deciding_is_inconclusive_with_what_is_needed() -> None:
    # 100 noisy differences 0.09 from the staging difference: the interval spans both the
    # declared shift (0.06, where it fires) and twice it (within which it is clean)
    few = MeanState.of(noise(0.05 + 0.09, 0.1, 3)[:100])
    result = judge(states(score=few))["prediction_shift"]
    assert result.status == "inconclusive" and result.evidence["more_needed"] > 0
    assert result.evidence["low"] < 0.06 and result.evidence["high"] > 0.12
    assert "more to decide at 0.12" in result.reason


def test_without_paired_rows_the_staging_baseline_is_the_reference() -> None:
    # the same scores are a world that moved when paired, a shift against staging when not
    moved = MeanState.of(noise(0.38, 0.05, 4))
    assert judge(states(score=MeanState.of(noise(0.05, 0.05, 4))))["prediction_shift"].status == (
        "clean"
    )
    alone = judge(states(paired=False, score=moved))["prediction_shift"]
    assert alone.status == "fired" and alone.value == pytest.approx(0.08, abs=0.01)
    assert "against its staging baseline (no paired reference rows)" in alone.evidence["compared"]


def test_too_little_traffic_is_inconclusive_never_clean() -> None:
    few = PairedStates(2, 1, 50, MeanState(), MeanState(), RateState(), RateState(), RateState())
    results = judge(few)
    assert {r.status for r in results.values()} == {"inconclusive"}
    assert results["kpi"].reason == "50 requests, 100 needed"


def test_missing_baseline_or_unlabelled_kpi_is_inconclusive() -> None:
    results = judge(states(paired=False), own=None, other=None)
    assert results["prediction_shift"].status == "inconclusive"
    assert results["kpi"].status == "inconclusive" and results["kpi"].reason == "no KPI baseline"
    assert results["error_rate"].status == "clean"
    unlabelled = judge(states(cost=MeanState()))["kpi"]
    assert unlabelled.status == "inconclusive" and "at least 100 before deciding" in (
        unlabelled.reason
    )


def test_a_data_incident_holds_all_but_paired_differences() -> None:
    now = datetime(2013, 4, 9, tzinfo=UTC)
    fired = judge(states(errors=RateState(N, 60), score=MeanState.of(noise(0.2, 0.05, 5))))
    triggers = list(fired.values())
    incident = "data incident: weather unavailable"
    paired = GuardDecision("none", now, 2, triggers, paired=True, incident=incident)
    held = {t.name: t.status for t in paired.held_by_incident().triggers}
    assert held["prediction_shift"] == "fired" and held["error_rate"] == "inconclusive"
    alone = GuardDecision("none", now, 2, triggers, paired=False, incident=incident)
    assert alone.held_by_incident().fired == []
    assert "held: data incident" in alone.held_by_incident().triggers[0].reason
    calm = GuardDecision("none", now, 2, triggers, paired=False)
    assert calm.held_by_incident() is calm


def test_degraded_rows_name_their_features() -> None:
    frame = pd.DataFrame({"flags": [["temp:unavailable", "dewp:stale"], [], ["temp:stale"]]})
    rate, features = degraded_rows(frame)
    assert (rate.n, rate.events) == (3, 2) and features == {"temp": 2, "dewp": 1}


def test_paired_latency_counts_the_shared_stages_for_both_and_each_its_model_stage() -> None:
    answered = {"checks_ms": 5.0, "features_ms": 60.0, "batch_rows": 1}
    pairs = pd.DataFrame(
        {
            "latencies_ms": [
                {**answered, "model_ms": 50.0},  # 115 ms against 65 + 45 = 110: both slow
                {**answered, "model_ms": 10.0},  # 75 ms against 65 + 40 = 105: only the reference
                {"model_ms": 80.0, "batch_rows": 1},  # a shadow version: 145 against 67: only it
                {**answered, "model_ms": 1.0, "batch_rows": 8},  # a batch call: not timed alone
            ],
            "latencies_ms_ref": [
                {"model_ms": 45.0, "batch_rows": 1},
                {"model_ms": 40.0, "batch_rows": 1},
                {**answered, "model_ms": 2.0},
                {"model_ms": 1.0, "batch_rows": 8},
            ],
        }
    )
    assert paired_slow(pairs, 100.0) == Slow(3, 2, 2)
    assert paired_slow(pairs.iloc[3:], 100.0) is None


def test_triggers_read_as_a_reviewable_list() -> None:
    lines = describe(TRIGGERS, KpiSettings(name="delay_cost", outcome="delayed"))
    assert lines[0].startswith("sequential tests, alpha 0.01 per trigger")
    assert any("shown beyond 3 baseline sd" in line for line in lines)
    assert any("by more than 5% of the baseline KPI" in line for line in lines)
    assert any(line.startswith("data incident") for line in lines)


def test_drill_gate_needs_a_passed_recent_drill() -> None:
    import json
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from prodguard.errors import PromotionRefused
    from prodguard.registry.lineage import DRILL as DRILL_TAG
    from prodguard.rollout.policy import drill_gate

    now = datetime(2026, 11, 29, tzinfo=UTC)

    class Tags:
        def __init__(self, **drill: object) -> None:
            self.tags = {DRILL_TAG: json.dumps(drill)} if drill else {}

        def version(self, version: int) -> SimpleNamespace:
            return SimpleNamespace(tags=self.tags)

    fresh = (now - timedelta(hours=2)).isoformat()
    drill_gate(Tags(passed=True, at=fresh), 4, 168, now)
    with pytest.raises(PromotionRefused, match="v4 has no rollback drill"):
        drill_gate(Tags(), 4, 168, now)
    with pytest.raises(PromotionRefused, match=r"last drill failed \(latency p99"):
        drill_gate(Tags(passed=False, at=fresh, reason="latency p99 300 ms"), 4, 168, now)
    old = (now - timedelta(hours=200)).isoformat()
    with pytest.raises(PromotionRefused, match="drill is 200 h old"):
        drill_gate(Tags(passed=True, at=old), 4, 168, now)


def test_row_costs_are_the_terms_of_the_kpi() -> None:
    from prodguard.config import KpiSettings
    from prodguard.monitoring.measures import BINARY, row_costs

    kpi = KpiSettings(name="delay_cost", outcome="delayed", cost_missed=1.0, cost_false_alert=0.25)
    frame = pd.DataFrame(
        {
            "outcome": [{"delayed": 1}, None, {"delayed": 0}, {"delayed": 1}],
            "probability": [0.2, 0.5, 0.9, 0.8],
            "decision": [0, 1, 1, 1],
        }
    )
    costs = row_costs(frame, kpi, BINARY, None)  # missed, unlabelled, false alert, caught
    assert np.isnan(costs[1]) and list(costs[[0, 2, 3]]) == [1.0, 0.25, 0.0]


def sampled(base: Baseline, scores: np.ndarray, keys: list[str] | None = None) -> Baseline:
    keys = keys if keys is not None else [f"r{i}" for i in range(len(scores))]
    sample_keys, sample = score_sample(keys, {"score.mean": scores})
    return replace(base, sample_keys=sample_keys, score_sample=sample)


def test_a_baseline_samples_the_same_staging_requests_in_every_version() -> None:
    keys = [f"20130401-{i}" for i in range(5000)]
    rng = np.random.default_rng(7)
    mine, _ = score_sample(keys, {"score.mean": rng.random(5000)}, size=300)
    # another version's replay of the same requests, logged in another order, with extras
    shuffled = [keys[i] for i in rng.permutation(5000)] + ["other-1", "other-2"]
    theirs, sample = score_sample(shuffled, {"score.mean": rng.random(5002)}, size=300)
    assert len(mine) == 300 and set(mine) <= set(keys)
    assert len(set(mine) & set(theirs)) >= 299  # the extras may displace one key at most
    assert len(sample["score.mean"]) == 300
    # a metric missing on a sampled request is left out, the others kept
    holes = np.where(np.arange(5000) % 2 == 0, np.nan, 0.5)
    _, partial = score_sample(keys, {"score.mean": rng.random(5000), "score.proba.a": holes})
    assert set(partial) == {"score.mean"}


def test_pair_spread_measures_two_versions_disagreement_on_shared_requests() -> None:
    rng = np.random.default_rng(8)
    scores = rng.random(400)
    noisy = scores + rng.normal(0.02, 0.1, 400)
    spread = pair_spread(sampled(VERSION, noisy), sampled(REFERENCE, scores), "score.mean")
    assert spread is not None and spread.n == 400
    assert spread.mean == pytest.approx(0.02, abs=0.015) and spread.sd == pytest.approx(0.1, 0.1)
    # baselined on other requests (another period): nothing to compare
    elsewhere = sampled(REFERENCE, scores, [f"x{i}" for i in range(400)])
    assert pair_spread(sampled(VERSION, noisy), elsewhere, "score.mean") is None
    assert pair_spread(VERSION, REFERENCE, "score.mean") is None  # no sample (older baselines)
    # the sample survives the registry's JSON
    stored = Baseline.from_json(sampled(VERSION, noisy).to_json())
    assert stored.sample_keys[:3] == sampled(VERSION, noisy).sample_keys[:3]
    older = {k: v for k, v in VERSION.to_json().items() if k not in ("sample_keys", "score_sample")}
    assert Baseline.from_json(older).score_sample == {}


def test_a_version_that_scored_staging_like_its_reference_is_judged_at_a_finer_shift() -> None:
    rng = np.random.default_rng(9)
    scores = rng.random(400)
    alike = sampled(VERSION, scores + 0.05), sampled(REFERENCE, scores)  # staging diff +0.05
    # a +0.03 shift beyond the staging difference, under the 3 sd (0.06) declared shift
    shifted = states(score=MeanState.of(noise(0.05 + 0.03, 0.002, 10)))
    fine = judge(shifted, *alike)["prediction_shift"]
    assert fine.status == "fired" and fine.threshold == pytest.approx(0.005)  # the score floor
    assert "differences on 400 staging requests both scored" in fine.evidence["compared"]
    unshifted = states(score=MeanState.of(noise(0.05, 0.002, 11)))
    assert judge(unshifted, *alike)["prediction_shift"].status == "clean"
    # versions that disagreed in staging (sd 0.1 per request) keep the 3 sd declared shift
    apart = sampled(VERSION, scores + rng.normal(0.05, 0.1, 400)), sampled(REFERENCE, scores)
    coarse = judge(shifted, *apart)["prediction_shift"]
    assert coarse.status == "clean" and coarse.threshold == pytest.approx(0.06)
    assert "staging requests" not in coarse.evidence["compared"]
    # a declared prediction_shift_min is the user's: kept as it is
    declared = TRIGGERS.model_copy(update={"prediction_shift_min": 0.05})
    kept = evaluate_triggers(shifted, *alike, declared, "delay_cost")[0]
    assert kept.threshold == pytest.approx(0.05) and kept.status == "clean"
    # unpaired (no reference rows): judged against staging as before
    alone = judge(states(paired=False, score=MeanState.of(noise(0.33, 0.002, 12))), *alike)
    assert alone["prediction_shift"].threshold == pytest.approx(0.06)
