"""Rollback drill and latency gate, rehearsed in staging.

``run_drill`` takes a version (the one about to be promoted) through a rehearsal: on a staging
copy of the registry state it promotes a deliberately faulty copy of the version (scores shifted)
over it, replays the staging period through the real request path, runs the real guard after
every simulated hour, and checks that a trigger fires, the rollback happens and the version —
now the standby — answers again. It also measures the request path's latency with the real
online store. The result is recorded on the version (tag ``prodguard.drill``); promotion can be
made to require a passed drill younger than ``rollout.drill_max_age_hours`` with a p99 within
``rollout.triggers.p99_latency_ms``.

The staging copy (``StagingRegistry``) reads versions, models and artifacts from the real
registry but keeps aliases and tags of its own in memory, and its faulty version exists only
there: a drill never moves a production alias and registers nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from prodguard import wiring
from prodguard.alerts import Alerter, JsonlSink
from prodguard.clock import FixedClock
from prodguard.config import Settings
from prodguard.errors import InputError, RegistryError
from prodguard.features.feast_adapter import ViewVersion, feature_contract
from prodguard.features.ports import FeatureStore
from prodguard.monitoring.jobs import replay_predictor, resolve_version, version_reference
from prodguard.monitoring.monitor import Monitor
from prodguard.monitoring.replay import replay, request_rows
from prodguard.project import load_request_model
from prodguard.registry import lineage
from prodguard.registry.audit import AuditLog
from prodguard.registry.mlflow_adapter import ALIASES, ModelVersion
from prodguard.registry.operations import RegistryOperations
from prodguard.registry.ports import Classifier, ModelRegistry
from prodguard.rollout.faults import faulty_model, score_scale
from prodguard.rollout.guard import Guard
from prodguard.rollout.policy import read_targets
from prodguard.serving.fast_path import load_verified
from prodguard.serving.models import ModelFollower, ServingState
from prodguard.serving.prediction_log import ANSWERS, SqlitePredictionLog
from prodguard.tasks import spec_from_tags
from prodguard.timewindows import parse_time

FAULTY_OFFSET = 1_000_000  # the staging-only faulty copy of vN is numbered N + this
LATENCY_REQUESTS = 200


class StagingRegistry:
    """The real registry's versions, models and artifacts; aliases, tags and faulty versions of
    its own, in memory."""

    def __init__(self, registry: ModelRegistry, faulty: dict[int, tuple[int, float]]) -> None:
        self._registry = registry
        self._faulty = faulty  # faulty version -> (base version, score shift)
        self._aliases: dict[str, int | None] = dict.fromkeys(ALIASES)
        self._model_tags: dict[str, str] = {}
        self._version_tags: dict[int, dict[str, str]] = {}
        self.model_name = registry.model_name
        self.config = registry.config

    def aliases(self) -> dict[str, int | None]:
        return dict(self._aliases)

    def aliases_and_tag(self, key: str) -> tuple[dict[str, int | None], str | None]:
        return dict(self._aliases), self._model_tags.get(key)

    def model_tag(self, key: str) -> str | None:
        return self._model_tags.get(key)

    def set_model_tag(self, key: str, value: str) -> None:
        self._model_tags[key] = value

    def set_alias(self, alias: str, version: int) -> None:
        self._aliases[alias] = version

    def delete_alias(self, alias: str) -> None:
        self._aliases[alias] = None

    def version(self, version: int) -> ModelVersion:
        base, shift = self._faulty.get(version, (version, 0.0))
        found = self._registry.version(base)
        tags = {**found.tags, **self._version_tags.get(version, {})}
        if version in self._faulty:
            tags[lineage.FAULT] = f"v{base} with scores shifted by {shift:+g} (drill)"
        return replace(found, version=version, tags=tags)

    def versions(self) -> list[ModelVersion]:
        return self._registry.versions()

    def log_version(self, *args: Any, **kwargs: Any) -> int:
        raise RegistryError("a drill registers nothing (staging registry)")

    def log_json_artifact(self, version: int, name: str, document: Any) -> None:
        raise RegistryError("a drill records nothing in the registry (staging registry)")

    def set_version_tag(self, version: int, key: str, value: str) -> None:
        self._version_tags.setdefault(version, {})[key] = value

    def delete_version_tag(self, version: int, key: str) -> None:
        self._version_tags.get(version, {}).pop(key, None)

    def load_model(self, version: int) -> Classifier:
        base, shift = self._faulty.get(version, (version, 0.0))
        model = self._registry.load_model(base)
        if version not in self._faulty:
            return model
        try:
            scale = score_scale(self._registry.load_json_artifact(base, "baseline.json"))
        except RegistryError:  # no baseline yet
            scale = 1.0
        return faulty_model(model, spec_from_tags(self.version(base).tags), shift, scale)

    def load_json_artifact(self, version: int, name: str) -> Any:
        return self._registry.load_json_artifact(self._faulty.get(version, (version,))[0], name)


@dataclass(frozen=True)
class DrillResult:
    version: int
    passed: bool
    reason: str
    shift: float
    staging: str
    detect_minutes: float | None  # simulated time from promoting the fault to the rollback
    detect_requests: int | None  # faulty answers the guard judged when it fired
    recover_seconds: float | None  # wall time of the guard's check (judge, fire, move, audit)
    # plus the swap to the standby
    standby_answers: int  # requests answered by the restored version afterwards
    latency_p50_ms: float
    latency_p99_ms: float
    latency_requests: int
    at: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_drill(
    settings: Settings,
    version: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    shift: float = 0.4,
) -> DrillResult:
    """Rehearse a rollback for ``version`` (default: candidate, else champion) over the staging
    period (default: the version's baseline period), record the result on the version."""

    began = time.perf_counter()
    if not 0 < abs(shift) < 1:
        raise InputError(
            "--shift must be between -1 and 1 (a share of probability; for a regressor, "
            f"baseline standard deviations), not {shift:g}"
        )
    production = wiring.registry_operations(settings)
    version = resolve_version(production, version, ("candidate", "champion"))
    start, end = _period(production, version, start, end)
    store = wiring.feature_store(settings)
    views = store.versions()
    latency = _latency(settings, production.registry, version, store, views)

    faulty = version + FAULTY_OFFSET
    staging = StagingRegistry(production.registry, {faulty: (version, shift)})
    staging.set_alias("champion", version)
    folder = settings.paths.staging_dir
    log_path, audit_path = folder / f"drill-v{version}.db", folder / f"drill-v{version}.audit.db"
    for path in (log_path, audit_path):
        _remove(path)
    clock = FixedClock(start)
    alerts_path = folder / f"drill-v{version}.alerts.jsonl"
    operations, alerter, follower = staging_rig(staging, views, audit_path, alerts_path, clock)
    follower.refresh()
    operations.promote(
        "prodguard-drill", f"drill: v{version} shifted by {shift:+g}", version=faulty
    )
    follower.refresh()
    log = SqlitePredictionLog(log_path, "NORMAL")
    monitor = Monitor(log, lambda v: version_reference(staging, v), settings.monitoring, clock)
    guard = Guard(operations, monitor, settings, alerter, clock, actor="prodguard-drill")
    seen: dict[str, Any] = {}

    def after_hour(hour_clock: FixedClock) -> bool:
        now = hour_clock.now() + timedelta(hours=1)  # the hour's requests are all in
        clock.set(now)
        if "fired" not in seen:
            judging = time.perf_counter()
            decision = guard.check()[0]
            seen["last"] = decision.triggers
            if decision.action == "rolled_back":  # judged, fired, moved and audited
                follower.refresh()
                seen.update(
                    fired=now,
                    rows=decision.rows,
                    recover=time.perf_counter() - judging,
                    swapped=follower.state.champion is not None
                    and follower.state.champion.version == version,
                )
            return True
        answers = log.window(seen["fired"], now, role=ANSWERS)
        seen["standby"] = int((answers["version"] == version).sum())
        seen["faulty_after"] = int((answers["version"] == faulty).sum())
        return False  # one hour of traffic after the rollback is the proof

    try:
        replay(
            settings,
            lambda: follower.state,
            replay_predictor(settings, views, log),
            log,
            start,
            end,
            prefix="drill-",
            after_hour=after_hour,
        )
    finally:
        log.close()
    passed = bool(
        seen.get("swapped") and seen.get("standby", 0) > 0 and seen.get("faulty_after") == 0
    )
    budget = settings.rollout.triggers.p99_latency_ms
    reason = _verdict(seen, passed, latency["p99"], budget)
    result = DrillResult(
        version=version,
        passed=passed and latency["p99"] <= budget,
        reason=reason,
        shift=shift,
        staging=f"{start.isoformat()}/{end.isoformat()}",
        detect_minutes=(seen["fired"] - start).total_seconds() / 60 if "fired" in seen else None,
        detect_requests=seen.get("rows"),
        recover_seconds=seen.get("recover"),
        standby_answers=seen.get("standby", 0),
        latency_p50_ms=latency["p50"],
        latency_p99_ms=latency["p99"],
        latency_requests=int(latency["n"]),
        at=datetime.now(UTC).isoformat(),
        seconds=time.perf_counter() - began,
    )
    production.registry.set_version_tag(version, lineage.DRILL, json.dumps(result.to_json()))
    return result


def staging_rig(
    staging: ModelRegistry,
    views: list[ViewVersion],
    audit_path: Path,
    alerts_path: Path,
    clock: FixedClock,
) -> tuple[RegistryOperations, Alerter, ModelFollower]:
    """What a replay on a staging registry moves aliases with (operations audited in
    ``audit_path``), alerts through (``alerts_path``) and serves from (a follower polling the
    staging aliases on the simulated ``clock``): the drill's and the guard benchmark's."""
    operations = RegistryOperations(staging, AuditLog(f"sqlite:///{audit_path}"), clock=clock)
    alerter = Alerter([JsonlSink(alerts_path)])
    contract = feature_contract(views)
    follower = ModelFollower(
        targets=lambda: read_targets(staging),
        load=lambda v: load_verified(staging, contract, v),
        alerter=alerter,
        poll_seconds=3600,
        clock=clock,
    )
    return operations, alerter, follower


def _period(
    operations: RegistryOperations, version: int, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    if start is not None and end is not None:
        if end <= start:
            raise InputError("--end must be after --start")
        return start, end
    if start is not None or end is not None:
        raise InputError("give both --start and --end, or neither (the baseline's period)")
    recorded = operations.registry.version(version).tags.get(lineage.BASELINE)
    if not recorded:
        raise InputError(
            f"v{version} has no staging baseline: run `prodguard baseline` first (the drill "
            "needs it to judge the faulty copy), or give --start/--end"
        )
    return lineage.split_window(recorded)


def _latency(
    settings: Settings,
    registry: ModelRegistry,
    version: int,
    store: FeatureStore,
    views: list[ViewVersion],
) -> dict[str, float]:
    """p50/p99 of single requests on the real request path with the real online store."""

    state = ServingState(champion=load_verified(registry, feature_contract(views), version))
    path = settings.paths.staging_dir / f"latency-v{version}.db"
    _remove(path)
    log = SqlitePredictionLog(path, "NORMAL")
    predictor = wiring.build_predictor(
        settings, store, lambda: state, log, views=views, shadow_sample=0.0
    )
    assert settings.serving is not None
    request_model = load_request_model(settings)
    try:
        recorded = registry.version(version).tags.get(lineage.EVAL_WINDOW, "")
        first = parse_time(recorded.split("/")[0]) if recorded else None
        rows = request_rows(settings, first, first + timedelta(days=7)) if first else None
        if rows is None or rows.empty:
            raise InputError(f"v{version} has no evaluation window to take requests from")
        requests = [request_model.from_row(r).to_row() for r in rows.head(400).to_dict("records")]
        requests = [r for r in requests if not predictor.refuses(r)][:LATENCY_REQUESTS]
        predictor.warm_up(requests[0])
        timings = []
        for i, request in enumerate(requests):
            began = time.perf_counter()
            predictor.predict([request], [f"latency-{i}"])
            timings.append((time.perf_counter() - began) * 1000)
    finally:
        predictor.close()
        log.close()
    values = np.asarray(timings)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "n": float(len(values)),
    }


def _verdict(seen: dict[str, Any], passed: bool, p99: float, budget: float) -> str:
    if "fired" not in seen:
        return "no trigger fired on the faulty version during the staging period" + (
            inconclusive_note(seen.get("last", []))
        )
    if not passed:
        return "the rollback did not bring the standby back for every request"
    if p99 > budget:
        return f"latency p99 {p99:.1f} ms is above the budget of {budget:g} ms"
    return "trigger fired, rolled back, the standby answered; latency within budget"


def inconclusive_note(triggers: list[Any]) -> str:
    """Why nothing fired: the inconclusive triggers of the last judgement, and what to set."""
    waiting = [t for t in triggers if t.status == "inconclusive"]
    if not waiting:
        return ""
    reasons = sorted({t.reason for t in waiting})
    names = ", ".join(t.name for t in waiting)
    hint = ""
    if any("needed" in r for r in reasons):  # too few requests in the guard window
        hint = (
            "; with this traffic lower rollout.triggers.min_requests or raise "
            "rollout.guard_minutes (see `prodguard status`)"
        )
    return f": inconclusive at the last check: {names} ({'; '.join(reasons)}){hint}"


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
