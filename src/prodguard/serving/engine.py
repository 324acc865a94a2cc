"""The request path: validate, fetch features (with a deadline), degrade gracefully, predict,
log durably, shadow-score — framework-free, so it is tested in-process and served by BentoML.

Degradation, per store feature and row:
- ``unavailable``: the online store failed or missed its deadline (every store feature);
- ``missing``: the store has no value for this entity;
- ``stale``: the value is older than its feature view's TTL at the request's time
  (Feast does not enforce TTL on online reads);
- ``invalid``: the value breaks a row-level expectation of the suites.
A degraded feature gets its fallback (training median/mode, or the last good value for the same
entity) and a flag ``feature:reason``; a degraded *critical* feature rejects the request (422).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from prodguard.clock import Clock, SystemClock
from prodguard.contracts.row_checks import RowContract, is_null
from prodguard.errors import (
    DuplicateRequest,
    InputError,
    ProdguardError,
    RequestRejected,
    ServiceNotReady,
)
from prodguard.rollout.policy import in_canary
from prodguard.serving.models import LoadedModel, ServingState
from prodguard.serving.prediction_log import ErrorKind, PredictionLog, PredictionRecord

_log = logging.getLogger("prodguard.serving")
LOOKUP_WORKERS = 4
SHADOW_BACKLOG = 64


class OnlineFeatures(Protocol):
    def online_records(self, entity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per entity row: every feature's value and ``<feature>__ts`` (Unix seconds of its
        event time; 0 or None when the store has no row for the entity)."""
        ...


class Metrics(Protocol):
    def observe(self, stage: str, seconds: float) -> None: ...

    def count(self, name: str, labels: dict[str, str], amount: int = 1) -> None: ...


class NoMetrics:
    def observe(self, stage: str, seconds: float) -> None:
        pass

    def count(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        pass


@dataclass(frozen=True)
class StoreFeature:
    name: str
    view: str
    ttl_seconds: float
    join_keys: tuple[str, ...]
    checks: RowContract  # the row-level expectations of the feature's source suite


@dataclass(frozen=True)
class Prediction:
    request_id: str
    probability: float  # the task's score (``prodguard.tasks``); binary: P(positive)
    decision: bool  # binary: probability >= threshold
    model: str
    version: int
    flags: list[str] = field(default_factory=list)
    replayed: bool = False
    prediction: dict[str, Any] | None = None  # multiclass/regression: ``Outputs.row``

    @property
    def degraded(self) -> bool:
        return bool(self.flags)


class LastGood:
    """Bounded memory of the last valid value per (feature, entity key)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._values: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, feature: str, key: str, value: Any) -> None:
        if is_null(value):
            return
        with self._lock:
            self._values[(feature, key)] = value
            self._values.move_to_end((feature, key))
            if len(self._values) > self._capacity:
                self._values.popitem(last=False)

    def get(self, feature: str, key: str) -> Any:
        with self._lock:
            return self._values.get((feature, key))


class Predictor:
    def __init__(
        self,
        *,
        model_name: str,
        state: Callable[[], ServingState],
        store: OnlineFeatures,
        store_features: Sequence[StoreFeature],
        entity_keys: Sequence[str],
        request_checks: RowContract,
        derive: Callable[[pd.DataFrame], pd.DataFrame],
        log: PredictionLog,
        threshold: float,
        feature_timeout_s: float,
        fallback: str = "median",
        fallback_overrides: dict[str, str] | None = None,
        critical: Sequence[str] = (),
        shadow_sample: float = 0.0,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        sticky_fields: Sequence[str] = (),
    ) -> None:
        """``sticky_fields``: request fields whose values pick a row's side in a canary (the
        same values always go the same way); none: the request id."""
        self.model_name = model_name
        self._state = state
        self._store = store
        self._features = tuple(store_features)
        self._entity_keys = tuple(entity_keys)
        self._checks = request_checks
        self._derive = derive
        self._log = log
        self._threshold = threshold
        self._timeout = feature_timeout_s
        self._fallback = fallback
        self._fallback_overrides = dict(fallback_overrides or {})
        self._critical = frozenset(critical)
        self._shadow_sample = shadow_sample
        self._sticky_fields = tuple(sticky_fields)
        self._clock = clock or SystemClock()
        self._metrics = metrics or NoMetrics()
        self._last_good = LastGood()
        self._lookups = ThreadPoolExecutor(
            max_workers=LOOKUP_WORKERS, thread_name_prefix="prodguard-lookup"
        )
        # lookups still running (a hung store): when all workers are stuck, answer at once
        self._lookup_slots = threading.BoundedSemaphore(LOOKUP_WORKERS)
        self._shadow = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodguard-shadow")
        self._shadow_slots = threading.BoundedSemaphore(SHADOW_BACKLOG)

    # ---- the request path ----------------------------------------------------------------

    def predict(
        self,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str | None],
        stages: dict[str, float] | None = None,
    ) -> list[Prediction]:
        """Answer ``rows`` (source-shaped request rows with ``event_timestamp``). A request that
        gets no prediction is counted in the log as rejected (caller's fault) or failed.
        ``stages``, when given, receives the seconds of each stage of an answered call
        (checks, features, model, log, total)."""
        state = self._state()  # one snapshot: a swap never mixes versions within a request
        try:
            return self._predict(rows, ids, state, stages)
        except ProdguardError as exc:
            kind: ErrorKind = "rejected" if isinstance(exc, InputError) else "failed"
            version = state.champion.version if state.champion else None
            try:
                self._log.record_error(self._clock.now(), kind, version)
            except ProdguardError as logged:
                _log.warning("request error not counted: %s", logged)
            raise

    def _predict(
        self,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str | None],
        state: ServingState,
        stages: dict[str, float] | None,
    ) -> list[Prediction]:
        began = time.perf_counter()
        champion = state.champion
        if champion is None:
            raise ServiceNotReady("no champion is loaded yet; promote a version or wait")
        request_ids = [i or uuid.uuid4().hex for i in ids]
        if len(set(request_ids)) != len(request_ids):
            raise RequestRejected(
                "request ids must be unique within a batch", [("request_id", "repeated in batch")]
            )
        replayed = self._replayed(request_ids)
        if replayed is not None:
            return replayed

        started = time.perf_counter()
        self._check_request(rows, champion)
        checks_s = time.perf_counter() - started

        started = time.perf_counter()
        fetched, unavailable = self._fetch(rows)
        lookup_s = time.perf_counter() - started

        started = time.perf_counter()
        store_values, flags = self._assemble(rows, fetched, unavailable, champion)
        request = self._derive(pd.DataFrame(list(rows)))
        inputs = [{**request.iloc[i].to_dict(), **store_values[i]} for i in range(len(rows))]
        checks_s += time.perf_counter() - started

        started = time.perf_counter()
        frame = champion.frame(inputs)
        answering = self._answering(state, rows, request_ids)
        answers: list[tuple[float, int, dict[str, Any] | None]] = [(0.0, 0, None)] * len(rows)
        for model, chosen in answering:
            part = (
                frame.iloc[chosen]
                if model is champion
                else model.frame([inputs[i] for i in chosen])
            )
            outputs = model.predict(part, self._threshold)
            for j, i in enumerate(chosen):
                answers[i] = outputs.entry(j)
        model_s = time.perf_counter() - started
        version_of = {i: model.version for model, chosen in answering for i in chosen}

        now = self._clock.now()
        latencies = {
            "checks_ms": checks_s * 1000,
            "features_ms": lookup_s * 1000,
            "model_ms": model_s * 1000,
            "batch_rows": len(rows),  # the stages timed the whole call
        }
        records = [
            PredictionRecord(
                request_id=request_ids[i],
                time=now,
                model=self.model_name,
                version=version_of[i],
                role="champion" if version_of[i] == champion.version else "canary",
                probability=answers[i][0],
                decision=answers[i][1],
                features=inputs[i],
                flags=flags[i],
                latencies_ms=latencies,
                request=_jsonable(rows[i]),
                prediction=answers[i][2],
            )
            for i in range(len(rows))
        ]
        started = time.perf_counter()
        try:
            self._log.write(records)
        except DuplicateRequest:  # the same ids answered concurrently: return that answer
            replayed = self._replayed(request_ids)
            if replayed is None:
                raise
            return replayed
        log_s = time.perf_counter() - started

        timed = {
            "checks": checks_s,
            "features": lookup_s,
            "model": model_s,
            "log": log_s,
            "total": time.perf_counter() - began,
        }
        for stage, seconds in timed.items():
            self._metrics.observe(stage, seconds)
        if stages is not None:
            stages.update(timed)
        for (version, role), count in Counter((r.version, r.role) for r in records).items():
            self._metrics.count("predictions", {"version": str(version), "role": role}, count)
        for row_flags in flags:
            for flag in row_flags:
                feature, _, reason = flag.partition(":")
                self._metrics.count("degradations", {"feature": feature, "reason": reason})
        if state.rollout is not None and state.policy.mode == "shadow":
            self._maybe_shadow(state.rollout, frame, records, share=1.0)
        elif state.rollout is not None and state.policy.mode == "canary":
            # the champion shadows a sample of the canary's rows: the guard's paired reference
            self._maybe_shadow(state.champion, frame, records, self._shadow_sample)
        else:
            self._maybe_shadow(state.standby, frame, records, self._shadow_sample)
        return [_prediction(r) for r in records]

    def warm_up(self, entity: dict[str, Any], timeout_s: float = 30.0) -> bool:
        """One lookup with a generous deadline, so the first request does not pay Feast's cold
        start (registry load, connections). False (and a warning) when the store is down."""
        future = self._lookups.submit(
            self._store.online_records, [{k: _key(entity.get(k)) for k in self._entity_keys}]
        )
        try:
            future.result(timeout=timeout_s)
            return True
        except Exception as exc:  # noqa: BLE001 - serving starts anyway, degraded
            _log.warning("online store warm-up failed (%s); serving with fallbacks", exc)
            return False

    def _replayed(self, request_ids: list[str]) -> list[Prediction] | None:
        """A retried request (same id) gets the logged answer, not a second prediction."""
        found = [self._log.answer(i) for i in request_ids]
        if all(r is None for r in found):
            return None
        if any(r is None for r in found):
            raise RequestRejected(
                "some request ids of this batch were already answered and some not; "
                "retry with the same batch or new ids",
                [("request_id", "partially replayed batch")],
            )
        return [_prediction(r, replayed=True) for r in found if r is not None]

    def refuses(self, row: dict[str, Any]) -> bool:
        """Would the request checks reject this row for the current champion?"""
        champion = self._state().champion
        if champion is None:
            return False
        try:
            self._check_request([row], champion)
        except RequestRejected:
            return True
        return False

    def _check_request(self, rows: Sequence[dict[str, Any]], champion: LoadedModel) -> None:
        problems: list[tuple[str, str]] = []
        for index, row in enumerate(rows):
            where = f"rows[{index}]." if len(rows) > 1 else ""
            for violation in self._checks.violations(row, nullable_when_tolerant=True):
                problems.append((where + violation.column, violation.expectation))
            for column, known in champion.categories.items():
                value = row.get(column)
                if column in row and not is_null(value) and str(value) not in known:
                    problems.append(
                        (where + column, f"not one of the {len(known)} values the model knows")
                    )
        if problems:
            problems = list(dict.fromkeys(problems))  # suites may repeat a rule
            shown = "; ".join(f"{f}: {p}" for f, p in problems[:5])
            raise RequestRejected(f"invalid request fields: {shown}", problems)

    def _fetch(
        self, rows: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]] | None, str | None]:
        """Online lookup under a deadline. A lookup that overruns keeps its worker until the
        store answers; when every worker is held by such lookups the store is treated as down
        at once (no queueing behind a hung store)."""
        if not self._lookup_slots.acquire(blocking=False):
            return None, "unavailable"
        entities = [{k: _key(row.get(k)) for k in self._entity_keys} for row in rows]
        try:
            future = self._lookups.submit(self._store.online_records, entities)
        except RuntimeError:  # executor shut down
            self._lookup_slots.release()
            return None, "unavailable"
        future.add_done_callback(lambda _: self._lookup_slots.release())
        try:
            return future.result(timeout=self._timeout), None
        except FutureTimeout:
            return None, "unavailable"
        except Exception as exc:  # noqa: BLE001 - any store failure means fallbacks
            _log.warning("online store lookup failed: %s", exc)
            return None, "unavailable"

    def _assemble(
        self,
        rows: Sequence[dict[str, Any]],
        fetched: list[dict[str, Any]] | None,
        unavailable: str | None,
        champion: LoadedModel,
    ) -> tuple[list[dict[str, Any]], list[list[str]]]:
        values: list[dict[str, Any]] = []
        flags: list[list[str]] = []
        problems: list[tuple[str, str]] = []
        records = fetched if fetched is not None else [{}] * len(rows)
        now = self._clock.now()
        for index, row in enumerate(rows):
            as_of = min(now, pd.Timestamp(row["event_timestamp"]).to_pydatetime())
            row_values: dict[str, Any] = {}
            row_flags: list[str] = []
            for feature in self._features:
                value = records[index].get(feature.name)
                reason = unavailable or self._problem(feature, value, records[index], as_of)
                key = self._entity_of(feature, row)
                if reason is None:
                    row_values[feature.name] = value
                    self._last_good.remember(feature.name, key, value)
                    continue
                if feature.name in self._critical:
                    problems.append((feature.name, f"{reason} and marked critical"))
                    continue
                fallback = champion.fallbacks.get(feature.name)
                if self._fallback_overrides.get(feature.name, self._fallback) == "last_good":
                    remembered = self._last_good.get(feature.name, key)
                    fallback = remembered if remembered is not None else fallback
                row_values[feature.name] = fallback
                row_flags.append(f"{feature.name}:{reason}")
            values.append(row_values)
            flags.append(row_flags)
        if problems:
            shown = "; ".join(f"{f}: {p}" for f, p in problems[:5])
            raise RequestRejected(f"critical features degraded: {shown}", problems)
        return values, flags

    def _problem(
        self, feature: StoreFeature, value: Any, record: dict[str, Any], as_of: datetime
    ) -> str | None:
        stamp = record.get(f"{feature.name}__ts")
        if stamp is None or is_null(stamp) or stamp == 0:
            return "missing"
        age = as_of.timestamp() - float(stamp)
        if age < 0:
            return "future"  # observed after the flight's time: training never saw that
        if feature.ttl_seconds > 0 and age > feature.ttl_seconds:
            return "stale"
        broken = feature.checks.check_value(feature.name, value)
        if broken and not (is_null(value) and feature.checks.nullable(feature.name)):
            return "invalid"
        return None

    @staticmethod
    def _entity_of(feature: StoreFeature, row: dict[str, Any]) -> str:
        return "|".join(str(row.get(k)) for k in feature.join_keys)

    # ---- shadow scoring, off the response path --------------------------------------------

    def _answering(
        self, state: ServingState, rows: Sequence[dict[str, Any]], ids: list[str]
    ) -> list[tuple[LoadedModel, list[int]]]:
        """Which model answers which rows: the champion, or in a canary the rollout version for
        the rows whose sticky key falls in its share."""
        champion, rollout, policy = state.champion, state.rollout, state.policy
        assert champion is not None
        everyone = list(range(len(rows)))
        if rollout is None or policy.mode != "canary":
            return [(champion, everyone)]
        chosen = [in_canary(self._sticky(rows[i], ids[i]), policy.percent) for i in everyone]
        canary = [i for i in everyone if chosen[i]]
        rest = [i for i in everyone if not chosen[i]]
        return [(m, chosen) for m, chosen in ((champion, rest), (rollout, canary)) if chosen]

    def _sticky(self, row: dict[str, Any], request_id: str) -> str:
        if not self._sticky_fields:
            return request_id
        return "|".join(str(row.get(f)) for f in self._sticky_fields)

    def _maybe_shadow(
        self,
        model: LoadedModel | None,
        frame: pd.DataFrame,
        records: list[PredictionRecord],
        share: float,
    ) -> None:
        if model is None or share <= 0:
            return
        chosen = [
            i
            for i, r in enumerate(records)
            if r.version != model.version and _sampled(r.request_id, share)  # never itself
        ]
        if not chosen:
            return
        if not self._shadow_slots.acquire(blocking=False):
            self._metrics.count("shadow_dropped", {}, len(chosen))  # backlog full: shed load
            return
        future = self._shadow.submit(self._score_shadow, model, frame.iloc[chosen], records, chosen)
        future.add_done_callback(lambda _: self._shadow_slots.release())

    def _score_shadow(
        self,
        standby: LoadedModel,
        frame: pd.DataFrame,
        records: list[PredictionRecord],
        chosen: list[int],
    ) -> None:
        try:
            outputs = standby.predict(frame[list(standby.columns)], self._threshold)
            entries = [outputs.entry(j) for j in range(len(chosen))]
            self._log.write(
                [
                    PredictionRecord(
                        request_id=records[i].request_id,
                        time=records[i].time,
                        model=self.model_name,
                        version=standby.version,
                        role="shadow",
                        probability=score,
                        decision=decision,
                        features=records[i].features,
                        flags=records[i].flags,
                        request=records[i].request,
                        prediction=prediction,
                    )
                    for i, (score, decision, prediction) in zip(chosen, entries, strict=True)
                ]
            )
            self._metrics.count(
                "predictions", {"version": str(standby.version), "role": "shadow"}, len(chosen)
            )
        except Exception as exc:  # noqa: BLE001 - shadow failures never reach callers
            _log.warning("shadow scoring failed: %s", exc)

    def drain(self) -> None:
        """Wait for pending shadow work (tests, shutdown)."""
        self._shadow.submit(lambda: None).result(timeout=30)

    def close(self) -> None:
        self._shadow.shutdown(wait=True)
        self._lookups.shutdown(wait=False, cancel_futures=True)


def _prediction(record: PredictionRecord, replayed: bool = False) -> Prediction:
    return Prediction(
        record.request_id,
        record.probability,
        bool(record.decision) if record.prediction is None else False,
        record.model,
        record.version,
        record.flags,
        replayed,
        record.prediction,
    )


def _sampled(request_id: str, share: float) -> bool:
    """Deterministic sampling by request id (the same request is always in or out)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def _key(value: Any) -> Any:
    return "" if value is None else value


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
