"""How often the guard is wrong, on the flights replay of 2013 (prints a table; asserts nothing).

Seeded episodes, each replayed from the real flights data through the real request path
(``Predictor`` over the as-of feature store, durable log, shadow scoring at the configured
share), with the real ``Guard`` after every simulated hour and the real monitors once per
simulated day, on a staging copy of the registry state (the rollback drill's ``StagingRegistry``:
aliases in memory, faulty versions that exist only there). v2 (trained Jan-Mar) is champion with
v1 (Jan-Feb) as standby, both baselined on April 1-14, unless the episode says otherwise.

Benign (the guard should not move a model): seasonal drift (3 days somewhere in May-August), a
genuinely better canary (v2 over champion v1, 5 -> 25 -> 100 %), the weather source quarantined
(unavailable) or stale (frozen) for a day, a traffic-mix change (EWR's share doubles), a
low-traffic period (10 % of requests). Faulty (it should roll back, fast): the champion replaced
at the episode's start by v2 with scores shifted by +0.05/+0.1/+0.2/+0.4, inverted (1 - p), two
features swapped (dep_hour and temp), or 300 ms slower per call.

Run: .venv/bin/python benchmarks/guard_quality.py [--work DIR] [--quick] [--seed N]
The first run ingests Jan-Aug 2013, trains v1/v2 and records both baselines (several minutes);
a work folder is reused by later runs. ``--quick``: one episode per kind (13) instead of 50.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from replay_project import example_settings

WEATHER = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip")
WEATHER += ("pressure", "visib")
SWAPPED = ("dep_hour", "temp")
SLOW_SECONDS = 0.3
BASELINE = ("2013-04-01", "2013-04-15")
FAULTY = 1_000  # faulty versions are numbered from here (staging only)
CHAMPION, STANDBY = 2, 1  # v2 serves with v1 as standby; faults are copies of v2
# kind -> (class, episodes in the full run, days)
KINDS: dict[str, tuple[str, int, int]] = {
    "seasonal drift": ("benign", 8, 3),
    "better canary": ("benign", 4, 4),
    "weather quarantined 1 day": ("data", 3, 3),
    "weather stale 1 day": ("data", 3, 3),
    "traffic mix (EWR x2)": ("benign", 4, 3),
    "low traffic (10 %)": ("benign", 3, 3),
    "shift +0.05": ("fault", 4, 2),
    "shift +0.1": ("fault", 4, 2),
    "shift +0.2": ("fault", 4, 2),
    "shift +0.4": ("fault", 4, 2),
    "inverted": ("fault", 3, 2),
    "features swapped": ("fault", 3, 2),
    "latency +300 ms": ("fault", 3, 2),
}


# ---- faulty models (staging only) --------------------------------------------------------------


class Inverted:
    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_proba(self, frame: Any) -> np.ndarray:
        return self.model.predict_proba(frame)[:, ::-1]

    def predict(self, frame: Any) -> np.ndarray:
        return (self.predict_proba(frame)[:, 1] >= 0.5).astype("int64")


class Swapped(Inverted):
    def predict_proba(self, frame: Any) -> np.ndarray:
        swapped = frame.copy()
        a, b = SWAPPED
        swapped[a], swapped[b] = frame[b].to_numpy(), frame[a].to_numpy()
        return self.model.predict_proba(swapped)


class Slow(Inverted):
    def predict_proba(self, frame: Any) -> np.ndarray:
        time.sleep(SLOW_SECONDS)
        return self.model.predict_proba(frame)


def fault_model(kind: str, model: Any) -> Any:
    from prodguard.rollout.faults import ShiftedScores

    if kind.startswith("shift"):
        return ShiftedScores(model, float(kind.split()[1]))
    return {"inverted": Inverted, "features swapped": Swapped, "latency +300 ms": Slow}[kind](model)


def staging_registry(registry: Any, faults: dict[int, str], cache: dict[int, Any]) -> Any:
    """The drill's staging copy, with any fault kind and base models loaded once per run."""
    from prodguard.rollout.drill import StagingRegistry

    class BenchRegistry(StagingRegistry):
        def load_model(self, version: int) -> Any:
            base = CHAMPION if version in faults else version
            if base not in cache:
                cache[base] = registry.load_model(base)
            return fault_model(faults[version], cache[base]) if version in faults else cache[base]

    return BenchRegistry(registry, {v: (CHAMPION, 0.0) for v in faults})


# ---- data incidents and traffic changes ----------------------------------------------------


class SwitchableClock:
    """The as-of store's clock: the episode's clock, or frozen while a source is stale."""

    def __init__(self) -> None:
        self.clock: Any = None
        self.frozen: datetime | None = None

    def now(self) -> datetime:
        return self.frozen if self.frozen is not None else self.clock.now()


class WeatherIncident:
    """Weather features unavailable (quarantined: no row) or stale (the last values before the
    incident, with their old timestamps) during ``[start, end)``."""

    def __init__(self, store: Any, stale: Any, clock: Any, start: datetime, end: datetime, how):
        self.store, self.stale, self.clock = store, stale, clock
        self.start, self.end, self.how = start, end, how

    def online_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = self.store.online_records(rows)
        if not self.start <= self.clock.now() < self.end:
            return records
        if self.how == "stale":
            self.stale.frozen = self.start
            try:
                old = self.stale_store.online_records(rows)
            finally:
                self.stale.frozen = None
            for record, before in zip(records, old, strict=True):
                for name in WEATHER:
                    record[name], record[f"{name}__ts"] = before[name], before[f"{name}__ts"]
            return records
        for record in records:
            for name in WEATHER:
                record[name], record[f"{name}__ts"] = None, 0.0
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@dataclass
class Episode:
    kind: str
    index: int
    start: datetime
    days: int

    @property
    def klass(self) -> str:
        return KINDS[self.kind][0]

    @property
    def name(self) -> str:
        slug = "".join(c if c.isalnum() else "_" for c in self.kind).strip("_")
        return f"{slug}-{self.index}-{self.start:%m%d}"


@dataclass
class Outcome:
    episode: Episode
    rollbacks: int = 0
    during_incident: int = 0  # of them, decided while the guard's window held incident requests
    aborted: int = 0
    promoted: int = 0
    alerts: int = 0
    incidents: int = 0  # the alerts grouped by cause, as `prodguard incidents` does
    detected_requests: int | None = None
    detected_minutes: float | None = None
    fired: list[str] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0


def episodes(quick: bool, seed: int) -> list[Episode]:
    """Start days drawn (seeded) from May 1 - Aug 24, distinct within a kind; in rounds (the
    first episode of every kind, then the second...), so that a run cut short covers every
    kind."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2013-05-01", "2013-08-24", freq="D", tz="UTC")
    found = []
    for kind, (_, count, length) in KINDS.items():
        picks = rng.choice(len(days), size=1 if quick else count, replace=False)
        for i, pick in enumerate(sorted(picks)):
            found.append(Episode(kind, i, days[pick].to_pydatetime(), length))
    return sorted(found, key=lambda e: e.index)  # stable: kinds in order within a round


# ---- one episode -------------------------------------------------------------------------------


def run_episode(context: dict[str, Any], episode: Episode) -> Outcome:
    from prodguard import wiring
    from prodguard.alerts import AlertGate, FileGateState
    from prodguard.clock import FixedClock
    from prodguard.incidents import FileIncidentRecord, Grouping, IncidentSink, feature_sources
    from prodguard.monitoring.jobs import run_monitor, version_reference
    from prodguard.monitoring.monitor import Monitor
    from prodguard.monitoring.replay import replay
    from prodguard.rollout.drill import staging_rig
    from prodguard.rollout.guard import Guard
    from prodguard.serving.prediction_log import ANSWERS, SqlitePredictionLog

    began = time.perf_counter()
    settings, work = context["settings"], context["work"] / "episodes" / episode.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    faulty = FAULTY if episode.klass == "fault" else None
    staging = staging_registry(
        context["registry"], {faulty: episode.kind} if faulty else {}, context["models"]
    )
    clock = FixedClock(episode.start)
    alerts_path = work / "alerts.jsonl"
    operations, alerter, follower = staging_rig(
        staging, context["views"], work / "audit.db", alerts_path, clock
    )
    if episode.kind == "better canary":
        staging.set_alias("champion", STANDBY)
        operations.start_rollout("canary", "bench", (5.0, 25.0, 100.0), version=CHAMPION)
    elif faulty is not None:  # as the drill: the fault promoted over v2, v2 standby
        staging.set_alias("champion", CHAMPION)
        operations.promote("bench", f"fault: {episode.kind}", version=faulty)
    else:
        staging.set_alias("champion", STANDBY)
        operations.promote("bench", "episode", version=CHAMPION)
    follower.refresh()
    # alerts grouped into incidents as `prodguard incidents` groups them (same grouping, gap)
    incidents = IncidentSink(
        FileGateState(work / "open_incidents.json"),
        FileIncidentRecord(work / "incidents.jsonl"),
        Grouping(settings.sources, lambda: feature_sources(context["views"])),
        gap=timedelta(hours=settings.alerts.incident_gap_hours),
    )
    alerter.sinks.append(incidents)
    log = SqlitePredictionLog(work / "log.db", "NORMAL")
    monitor = Monitor(log, lambda v: version_reference(staging, v), settings.monitoring, clock)
    guard = Guard(operations, monitor, settings, alerter, clock, actor="bench")
    gate = AlertGate(FileGateState(work / "open_alerts.json"), alerter)
    outcome = Outcome(episode)
    end = episode.start + timedelta(days=episode.days)
    incident = (episode.start + timedelta(hours=6), episode.start + timedelta(hours=30))
    window = timedelta(minutes=settings.rollout.guard_minutes)  # the guard's look back

    def after_hour(hour_clock: FixedClock) -> bool:
        now = hour_clock.now() + timedelta(hours=1)
        clock.set(now)
        for decision in guard.check():
            with (work / "decisions.jsonl").open("a") as out:  # every decision, for review
                out.write(json.dumps(decision.to_json(), default=str) + "\n")
            if decision.action == "rolled_back":
                outcome.rollbacks += 1
                if episode.klass == "data" and incident[0] <= now <= incident[1] + window:
                    outcome.during_incident += 1
                outcome.fired += [t.name for t in decision.fired]
                if faulty is not None and outcome.detected_minutes is None:
                    answers = log.window(episode.start, now, role=ANSWERS)
                    outcome.detected_requests = int((answers["version"] == faulty).sum())
                    outcome.detected_minutes = (now - episode.start).total_seconds() / 60
            elif decision.action == "aborted":
                outcome.aborted += 1
                outcome.fired += [t.name for t in decision.fired]
            elif decision.action == "promoted":
                outcome.promoted += 1
        follower.refresh()
        if now.hour == 0:  # the monitors, once a simulated day
            run_monitor(monitor, gate)
            alerter.sweep(now)
        # a fault rolled back: the episode has told what it can
        return faulty is None or outcome.detected_minutes is None

    def predictor_for(state: Callable[[], Any], replay_clock: Any) -> Any:
        context["as_of_clock"].clock = replay_clock
        store: Any = context["as_of"]
        if episode.kind.startswith("weather"):
            how = "stale" if "stale" in episode.kind else "quarantined"
            store = WeatherIncident(store, context["as_of_clock"], replay_clock, *incident, how)
            store.stale_store = context["as_of"]
        return wiring.build_predictor(
            settings,
            store,
            state,
            log,
            views=context["views"],
            clock=replay_clock,
            shadow_sample=settings.serving.shadow_sample,
        )

    keep = context["keep"].get(episode.kind)
    try:
        result = replay(
            settings,
            lambda: follower.state,
            predictor_for,
            log,
            episode.start,
            end,
            prefix=f"{episode.name}-",
            keep=keep,
            after_hour=after_hour,
        )
        outcome.requests = result.predicted
    finally:
        log.close()
    if alerts_path.exists():
        sent = [json.loads(line) for line in alerts_path.read_text().splitlines() if line]
        outcome.alerts = sum(1 for a in sent if a.get("severity") != "info")
    outcome.incidents = sum(1 for i in incidents.record.incidents() if i.severity != "info")
    outcome.seconds = time.perf_counter() - began
    return outcome


# ---- set-up and report -----------------------------------------------------------------------


def prepare(work: Path) -> dict[str, Any]:
    from prodguard import app, wiring
    from prodguard.features.as_of import AsOfFeatures
    from prodguard.ingestion.offline import OfflineStore
    from prodguard.monitoring.jobs import record_baseline
    from prodguard.registry.lineage import BASELINE as BASELINE_TAG
    from prodguard.timewindows import parse_time as t

    settings = example_settings(work)
    registry = wiring.registry_operations(settings).registry
    began = time.perf_counter()
    if len(registry.versions()) < 2:
        app.ingest(settings, t("2013-01-01"), t("2013-09-01"))
        app.materialize(settings, until=t("2013-09-01"))
        app.train(settings, t("2013-01-01"), t("2013-03-01"), actor="bench")
        app.train(settings, t("2013-01-01"), t("2013-04-01"), actor="bench")
    for version in (CHAMPION, STANDBY):
        if BASELINE_TAG not in registry.version(version).tags:
            record_baseline(settings, t(BASELINE[0]), t(BASELINE[1]), version=version)
    print(f"set-up (ingest, train v1/v2, baselines): {time.perf_counter() - began:.0f} s")
    views = wiring.feature_store(settings).versions()
    switch = SwitchableClock()
    timestamps = {name: s.timestamp for name, s in settings.sources.items()}
    as_of = AsOfFeatures(OfflineStore(settings.paths.offline_dir), views, switch, timestamps)
    flights = OfflineStore(settings.paths.offline_dir).read("flights")
    ids = flights[["flight_id", "origin"]].astype(str)
    ewr = set(ids.loc[ids["origin"] == "EWR", "flight_id"])

    def id_of(request: str) -> str:
        return request.rsplit("-", 1)[-1]

    from prodguard.monitoring.replay import single

    keep = {
        # EWR's share doubles: every EWR flight, half of the others
        "traffic mix (EWR x2)": lambda r: id_of(r) in ewr or single(id_of(r), 0.5),
        "low traffic (10 %)": lambda r: single(id_of(r), 0.1),
    }
    return {
        "settings": settings,
        "registry": registry,
        "views": views,
        "as_of": as_of,
        "as_of_clock": switch,
        "keep": keep,
        "models": {},
        "work": work,
    }


def report(outcomes: list[Outcome], seconds: float) -> None:
    rows = []
    for kind, (klass, _, _) in KINDS.items():
        found = [o for o in outcomes if o.episode.kind == kind]
        if not found:
            continue
        row: dict[str, Any] = {"kind": kind, "class": klass, "episodes": len(found)}
        row["requests/ep"] = round(statistics.mean(o.requests for o in found))
        if klass == "fault":
            hits = [o for o in found if o.detected_minutes is not None]
            row["detected"] = f"{len(hits)}/{len(found)}"
            if hits:
                requests = [o.detected_requests for o in hits]
                minutes = [o.detected_minutes for o in hits]
                row["delay req p50/p90"] = (
                    f"{np.median(requests):.0f}/{np.percentile(requests, 90):.0f}"
                )
                row["delay min p50/p90"] = (
                    f"{np.median(minutes):.0f}/{np.percentile(minutes, 90):.0f}"
                )
        else:
            row["false rollbacks"] = sum(o.rollbacks for o in found)
            row["aborted good canaries"] = sum(o.aborted for o in found)
            row["promoted"] = sum(o.promoted for o in found)
            days = sum(o.episode.days for o in found)
            row["alerts/week"] = round(sum(o.alerts for o in found) / days * 7, 1)
            row["incidents/week"] = round(sum(o.incidents for o in found) / days * 7, 1)
        triggers = sorted({name for o in found for name in o.fired})
        row["triggers fired"] = ",".join(triggers) or "-"
        rows.append(row)
    table = pd.DataFrame(rows).fillna("")
    print(table.to_string(index=False))
    benign = [o for o in outcomes if o.episode.klass in ("benign", "data")]
    wrong = sum(1 for o in benign if o.rollbacks or o.aborted)
    data = [o for o in outcomes if o.episode.klass == "data"]
    days = sum(o.episode.days for o in benign)
    print(
        f"\nbenign episodes with a false rollback or aborted good canary: {wrong}/{len(benign)}"
        f" ({wrong / max(len(benign), 1):.0%}); model rollbacks during data incidents (the "
        f"incident and the guard's window after it): {sum(o.during_incident for o in data)} "
        f"(in data episodes at all: {sum(o.rollbacks for o in data)}); incidents per benign week: "
        f"{sum(o.incidents for o in benign) / max(days, 1) * 7:.1f} (from "
        f"{sum(o.alerts for o in benign) / max(days, 1) * 7:.1f} alerts)"
    )
    big = [
        o
        for o in outcomes
        if o.episode.kind in ("shift +0.1", "shift +0.2", "shift +0.4", "inverted")
        or o.episode.kind == "features swapped"
    ]
    caught = [o for o in big if o.detected_requests is not None]
    median = np.median([o.detected_requests for o in caught]) if caught else float("nan")
    print(
        f"faults with shift >= 0.1, inverted or swapped caught: {len(caught)}/{len(big)}; "
        f"median detection {median:.0f} requests of the faulty version"
    )
    print(f"{len(outcomes)} episodes in {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--json", type=Path, default=None, help="also write the outcomes here")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no episode after this many minutes; report the episodes run",
    )
    parser.add_argument(
        "--kinds", default="", help="comma-separated kinds to run (default: every kind)"
    )
    args = parser.parse_args()
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    unknown = kinds - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose among {sorted(KINDS)}")

    from prodguard.telemetry import disable_telemetry

    disable_telemetry()
    work = args.work or Path(tempfile.mkdtemp(prefix="prodguard-guard-quality-"))
    context = prepare(work)
    began = time.perf_counter()
    outcomes = []
    for episode in episodes(args.quick, args.seed):
        if kinds and episode.kind not in kinds:
            continue
        if args.max_minutes is not None and time.perf_counter() - began > args.max_minutes * 60:
            print(f"  time budget of {args.max_minutes:g} min spent: episodes left out")
            break
        outcome = run_episode(context, episode)
        outcomes.append(outcome)
        print(
            f"  {episode.name:28s} {outcome.requests:5d} req  rollbacks {outcome.rollbacks} "
            f"aborted {outcome.aborted} promoted {outcome.promoted} alerts {outcome.alerts} "
            f"incidents {outcome.incidents} "
            f"detected {outcome.detected_requests} req / {outcome.detected_minutes} min "
            f"{','.join(outcome.fired)}  ({outcome.seconds:.0f} s)",
            flush=True,
        )
    print()
    report(outcomes, time.perf_counter() - began)
    if args.json is not None:
        args.json.write_text(
            json.dumps([{**o.__dict__, "episode": o.episode.name} for o in outcomes], default=str)
        )
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
