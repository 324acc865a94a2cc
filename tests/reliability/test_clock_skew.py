"""Processes whose clocks disagree by seconds. Each process reads its own simulated clock
(``clock.file``, the seam every process has): the test moves one true time and writes it to each
file with that process's offset, so every run sees the same instants (deterministic).

What is measured: a replica ahead of another stamps its rows seconds later, a process ahead of
the one that recorded an alias move or a canary step sees that move seconds older. Ages across
processes are differences of two clocks, so they are exact only up to the skew between them:
- windows count every row once (a row has one time; windows are contiguous and half-open);
- the 72 h standby rule and the bake of a canary step hold to within the skew: a process whose
  clock runs ahead by s seconds sees a standby (or a step) s seconds older than it is, so it may
  drop the standby (or end the step) at most s seconds early — never earlier. A process behind
  waits s seconds longer. The tests pin both bounds.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from prodguard.clock import FileClock
from prodguard.config import load_settings
from prodguard.errors import PromotionRefused
from tests.conftest import DAILY_WINDOWS, copy_project, utc

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
SKEW = timedelta(seconds=5)  # process B runs 5 s ahead of process A


class Clocks:
    """One true time, written to each process's clock file with its offset."""

    def __init__(self, folder: Path, offsets: dict[str, timedelta]) -> None:
        self.files = {name: folder / f"clock-{name}.txt" for name in offsets}
        self.offsets = offsets

    def set(self, true_time: datetime) -> None:
        for name, path in self.files.items():
            FileClock(path).set(true_time + self.offsets[name])

    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**(extra or {}), "PRODGUARD_CLOCK__FILE": str(self.files[name])}


@pytest.fixture
def root(drilled: Path, tmp_path: Path) -> Path:
    """v2 champion, v1 standby, v3 registered (no alias)."""
    from prodguard import wiring

    root = copy_project(drilled, tmp_path / "project")
    settings = load_settings(root / "prodguard.yaml", environ=DAILY_WINDOWS)
    wiring.feature_store(settings).materialize(until=utc("2013-05-01"))
    return root


def operations_for(root: Path, clocks: Clocks, name: str, extra: dict[str, str] | None = None):
    from prodguard import wiring

    settings = load_settings(root / "prodguard.yaml", environ=clocks.env(name, extra))
    return settings, wiring.registry_operations(settings)


def test_windows_count_every_row_once_across_skewed_replicas(root: Path, tmp_path) -> None:
    from prodguard import wiring
    from prodguard.monitoring.replay import request_rows
    from prodguard.monitoring.windows import WindowSpec, tile
    from prodguard.serving.prediction_log import ANSWERS, SqlitePredictionLog

    clocks = Clocks(tmp_path, {"a": timedelta(0), "b": SKEW + SKEW})  # 10 s apart
    start = utc("2013-04-08T06:00")
    clocks.set(start)
    replicas = {}
    for name in ("a", "b"):
        settings = load_settings(root / "prodguard.yaml", environ=clocks.env(name, DAILY_WINDOWS))
        replicas[name] = wiring.build_serving(settings)
        replicas[name].follower.refresh()
    serving = replicas["a"]
    rows = request_rows(serving.settings, start, start + timedelta(hours=6))
    requests = [serving.request_model.from_row(r).to_row() for r in rows.to_dict("records")]
    requests = [r for r in requests if not serving.predictor.refuses(r)][:240]
    true_times: dict[str, datetime] = {}
    for i, request in enumerate(requests):  # every 7 s of true time, alternating replicas
        now = start + timedelta(seconds=7 * i)
        clocks.set(now)
        name = "ab"[i % 2]
        request_id = f"{name}-{i}"
        replicas[name].predictor.predict([request], [request_id])
        true_times[request_id] = now
    for replica in replicas.values():
        replica.predictor.close()
    end = start + timedelta(seconds=7 * len(requests) + 60)

    log = SqlitePredictionLog(serving.settings.paths.prediction_log, "NORMAL")
    try:
        frame = log.window(start, end, role=ANSWERS)
    finally:
        log.close()
    spec = WindowSpec(minutes=5)  # tumbling 5-minute windows over the whole stretch
    windows = tile(spec, frame.sort_values("time"), start, end + timedelta(minutes=5))
    counted = Counter(rid for w in windows for rid in w.frame["request_id"])
    assert counted == Counter(list(true_times)), "a row counted twice or not at all"
    # the skew moved some of B's rows into the next window than their true time: still once
    moved = sum(
        1
        for w in windows
        for rid in w.frame["request_id"]
        if not (w.start <= true_times[rid] < w.end)
    )
    assert moved > 0, "no row crossed a window boundary: the skew was not exercised"
    print(
        f"\n[clock skew: windows] {len(requests)} rows from two replicas 10 s apart, "
        f"{len(windows)} 5-min windows: each row counted once; {moved} rows of the replica "
        f"ahead fell in the window after their true time"
    )


def test_standby_rule_holds_to_within_the_skew(root: Path, tmp_path) -> None:
    """A promotes v3 at T (v2 becomes standby, recorded at A's time). B, 5 s ahead, tries to
    promote v1, which would drop the standby v2."""
    clocks = Clocks(tmp_path, {"a": timedelta(0), "b": SKEW, "behind": -SKEW})
    t = utc("2030-01-01")  # after every setup promotion of the fixture, which used real time
    clocks.set(t)
    _, a = operations_for(root, clocks, "a")
    a.promote("tests", "v3 live", version=3, override_retention="test setup")
    assert a.state().standby == 2
    keep = timedelta(hours=a.standby_hours)
    _, b = operations_for(root, clocks, "b")
    _, behind = operations_for(root, clocks, "behind")

    refused_until = None
    for early in (timedelta(hours=1), SKEW + timedelta(seconds=1)):
        clocks.set(t + keep - early)  # true age: 72 h - early, B sees 72 h - early + 5 s
        with pytest.raises(PromotionRefused, match="standby v2"):
            b.promote("tests", "too early", version=1)
        refused_until = early
    # the process behind waits 5 s past 72 h of true time
    clocks.set(t + keep + SKEW - timedelta(seconds=1))
    with pytest.raises(PromotionRefused, match="standby v2"):
        behind.promote("tests", "too early", version=1)
    assert a.state().as_dict() == {"champion": 3, "standby": 2, "candidate": None}

    # true age 72 h - 4 s: B's clock says 72 h + 1 s, so it drops the standby 4 s early
    dropped_early = SKEW - timedelta(seconds=1)
    clocks.set(t + keep - dropped_early)
    record = b.promote("tests", "after 72 h by B's clock", version=1)
    assert record.to_state == {"champion": 1, "standby": 3, "candidate": None}
    assert record.time == t + keep - dropped_early + SKEW  # stamped with B's clock
    assert dropped_early < SKEW  # never earlier than the skew
    print(
        f"\n[clock skew: 72 h standby] process 5 s ahead: refused at true age 72 h - "
        f"{refused_until.total_seconds():.0f} s, allowed at 72 h - "
        f"{dropped_early.total_seconds():.0f} s (its clock: 72 h + 1 s); process 5 s behind "
        "refused until 72 h + 5 s"
    )


BAKE = {
    **DAILY_WINDOWS,
    "PRODGUARD_ROLLOUT__BAKE_MINUTES": "360",
    "PRODGUARD_ROLLOUT__BAKE_MIN_REQUESTS": "50",
    "PRODGUARD_ROLLOUT__TRIGGERS__MIN_REQUESTS": "50",
    "PRODGUARD_MONITORING__KPI__MATURITY_HOURS": "0",
    # the subject is the bake's time gate: a morning's scores against the staging baseline
    # must not fire a trigger (test_rollout covers the triggers)
    "PRODGUARD_ROLLOUT__TRIGGERS__PREDICTION_SHIFT_SD": "50",
    "PRODGUARD_ROLLOUT__TRIGGERS__KPI_WORSE_PCT": "1000",
    "PRODGUARD_ROLLOUT__TRIGGERS__P99_LATENCY_MS": "100000",
    "PRODGUARD_ROLLOUT__TRIGGERS__ERROR_RATE": "1",
}


def test_canary_bake_is_not_shortened_beyond_the_skew(root: Path, tmp_path) -> None:
    """An operator's process 5 s behind the guard starts a canary (its step stamped 5 s early);
    the guard, reading its own clock, sees the step 5 s older than it is."""
    from prodguard.monitoring.jobs import replay_version
    from prodguard.rollout.faults import register_faulty
    from prodguard.rollout.jobs import build_guard
    from prodguard.serving.prediction_log import SqlitePredictionLog
    from prodguard.training.trainer import pip_requirements

    clocks = Clocks(tmp_path, {"operator": -SKEW, "guard": timedelta(0)})
    t = utc("2013-04-08T06:00")
    clocks.set(t)
    settings, operator = operations_for(root, clocks, "operator", BAKE)
    healthy = register_faulty(operator, 2, 0.0, "tests", pip_requirements())  # a copy of v2
    operator.start_rollout("canary", "tests", (50.0, 100.0), version=healthy)
    assert operator.traffic().started() == t - SKEW
    log = SqlitePredictionLog(settings.paths.prediction_log, "NORMAL")
    replay_version(
        settings, operator.registry, 2, t, t + timedelta(hours=6), log,
        rollout=operator.traffic(), single_share=0.15,
    )  # fmt: skip
    log.close()
    guard_settings = load_settings(root / "prodguard.yaml", environ=clocks.env("guard", BAKE))
    guard = build_guard(guard_settings)
    bake = timedelta(minutes=guard_settings.rollout.bake_minutes)

    clocks.set(t + bake - SKEW - timedelta(seconds=1))  # the guard sees 6 h - 1 s
    held = guard.check()[1]
    assert held.action == "hold" and "baking" in held.reason, held
    assert operator.traffic().step == 0

    early = SKEW - timedelta(seconds=1)
    clocks.set(t + bake - early)  # true 6 h - 4 s: the guard sees 6 h + 1 s
    decided = guard.check()[1]
    assert "baking" not in (decided.reason or ""), decided  # the time gate passed 4 s early
    print(
        f"\n[clock skew: bake] step started by a process 5 s behind the guard: held at true "
        f"6 h - {(SKEW + timedelta(seconds=1)).total_seconds():.0f} s, time gate passed at "
        f"6 h - {early.total_seconds():.0f} s ({decided.action}: {decided.reason})"
    )
