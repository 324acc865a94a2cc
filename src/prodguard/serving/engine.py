"""The request path: validate, fetch features (with a deadline), degrade gracefully, predict,
log durably, shadow-score — framework-free, so it is tested in-process and served by BentoML.

The ``Predictor`` runs five stages, each a small class tested alone: ``RequestChecks``,
``FeatureLookup``, ``ModelScoring`` (the only caller of a model), ``AnswerLog`` and ``Shadow``.

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
import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pandas.api.types import is_bool, is_float, is_integer

from prodguard.clock import Clock, SystemClock
from prodguard.contracts.row_checks import RowContract, is_null, judged_per_value, value_key
from prodguard.errors import (
    DuplicateRequest,
    InputError,
    ModelFailed,
    ProdguardError,
    RequestRejected,
    ServiceNotReady,
)
from prodguard.features.request_columns import RequestColumns, derive_columns
from prodguard.features.request_frame import request_frame
from prodguard.rollout.policy import in_canary
from prodguard.serving.models import LoadedModel, ServingState
from prodguard.serving.prediction_log import (
    ErrorKind,
    PredictionLog,
    PredictionRecord,
    Role,
    encode_rows,
)
from prodguard.tasks import Outputs, Task

_log = logging.getLogger("prodguard.serving")
LOOKUP_WORKERS = 4
SHADOW_BACKLOG = 64


class RequestIdReused(DuplicateRequest):
    """A request id already answered for a different payload (an idempotency key reused):
    refused (409) and not logged, instead of replaying another request's answer."""

    problems = [("request_id", "already used for a different request; use a new id")]


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

    def remember_many(self, entries: Sequence[tuple[str, str, Any]]) -> None:
        """``remember`` of each (feature, key, value), in order, under one lock."""
        values = self._values
        with self._lock:
            for feature, key, value in entries:
                kind = type(value)
                if kind is float:
                    if value != value:  # NaN
                        continue
                elif kind is not str and kind is not int and is_null(value):
                    continue
                values[(feature, key)] = value
                values.move_to_end((feature, key))
            while len(values) > self._capacity:
                values.popitem(last=False)

    def get(self, feature: str, key: str) -> Any:
        with self._lock:
            return self._values.get((feature, key))


class RequestChecks:
    """Stage ``checks``: the request suite's row-level expectations, and the categories the
    champion knows. A value the model never saw in training is scored as missing (the model's
    encoder maps unknown categories to missing) and flagged ``column:unseen``; for a column in
    ``critical`` it refuses the row instead."""

    def __init__(self, contract: RowContract, critical: Collection[str] = ()) -> None:
        self._contract = contract
        self._critical = frozenset(critical)

    def inspect(
        self, row: dict[str, Any], champion: LoadedModel
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """(field, what is wrong) pairs that refuse the row, without its values; and its flags."""
        return self.inspect_all([row], champion)[0]

    def inspect_all(
        self, rows: Sequence[dict[str, Any]], champion: LoadedModel
    ) -> list[tuple[list[tuple[str, str]], list[str]]]:
        """``inspect`` of each row; a batch's distinct values of a column are judged once."""
        violations = self._contract.violations_of(rows, nullable_when_tolerant=True)
        problems = [[(v.column, v.expectation) for v in found] for found in violations]
        flags: list[list[str]] = [[] for _ in rows]
        for column, known in champion.categories.items():
            refused = (column, f"not one of the {len(known)} values the model knows")
            flag = f"{column}:unseen"

            def unknown(value: Any, known: frozenset[str] = known) -> bool:
                return not is_null(value) and str(value) not in known

            for index, found in judged_per_value(rows, column, unknown):
                if not found:
                    continue
                if column in self._critical:
                    problems[index].append(refused)
                else:
                    flags[index].append(flag)
        # suites may repeat a rule
        return [(list(dict.fromkeys(p)), f) for p, f in zip(problems, flags, strict=True)]

    def check(self, rows: Sequence[dict[str, Any]], champion: LoadedModel) -> list[list[str]]:
        """Every row's flags; refuses the call when any row breaks a check (rows named
        ``rows[i].`` in a batch)."""
        problems: list[tuple[str, str]] = []
        flags = []
        for index, (found, flagged) in enumerate(self.inspect_all(rows, champion)):
            where = f"rows[{index}]." if len(rows) > 1 else ""
            problems.extend((where + f, p) for f, p in found)
            flags.append(flagged)
        if problems:
            raise _rejected("invalid request fields", problems)
        return flags


class FeatureLookup:
    """Stage ``features``: the online lookup under a deadline, then per store feature and row
    the value or its fallback (training median/mode, or the last good value for the entity) with
    a ``feature:reason`` flag; a degraded critical feature refuses the row."""

    def __init__(
        self,
        store: OnlineFeatures,
        features: Sequence[StoreFeature],
        entity_keys: Sequence[str],
        timeout_s: float,
        *,
        fallback: str = "median",
        fallback_overrides: dict[str, str] | None = None,
        critical: Collection[str] = (),
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._features = tuple(features)
        self._entity_keys = tuple(entity_keys)
        self._timeout = timeout_s
        self._fallback = fallback
        self._fallback_overrides = dict(fallback_overrides or {})
        self._critical = frozenset(critical)
        self._clock = clock or SystemClock()
        self._last_good = LastGood()
        self._lookups = ThreadPoolExecutor(
            max_workers=LOOKUP_WORKERS, thread_name_prefix="prodguard-lookup"
        )
        # lookups still running (a hung store): when all workers are stuck, answer at once
        self._lookup_slots = threading.BoundedSemaphore(LOOKUP_WORKERS)

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

    def fetch(
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

    def assemble(
        self,
        rows: Sequence[dict[str, Any]],
        fetched: list[dict[str, Any]] | None,
        unavailable: str | None,
        champion: LoadedModel,
    ) -> list[Features]:
        """Per row: the store values the model gets, the flags, and the critical problems."""
        found = self.assemble_columns(rows, fetched, unavailable, champion)
        return [
            Features(
                {n: v for n, v in zip(found.names, values, strict=True) if v is not _REFUSED},
                flags,
                problems,
            )
            for values, flags, problems in zip(
                zip(*found.columns, strict=True) if found.names else [()] * len(rows),
                found.flags,
                found.problems,
                strict=True,
            )
        ]

    def assemble_columns(
        self,
        rows: Sequence[dict[str, Any]],
        fetched: list[dict[str, Any]] | None,
        unavailable: str | None,
        champion: LoadedModel,
    ) -> StoreColumns:
        """``assemble`` for a batch, feature by feature: each store feature's column of values
        (or fallbacks), each row's flags and critical problems (in feature order, as
        ``assemble``). The stamps' verdicts (missing, future, stale) are worked out once for
        the features that share their stamps (a view's), a batch's distinct values of a
        feature are checked once, and valid values are remembered only when a feature's
        fallback is its last good value (nothing else reads the memory)."""
        records = fetched if fetched is not None else [{}] * len(rows)
        seconds = self._request_seconds(rows)
        out = StoreColumns(
            tuple(f.name for f in self._features),
            [],
            [[] for _ in rows],
            [[] for _ in rows],
        )
        entities: dict[tuple[str, ...], list[str]] = {}  # join keys -> each row's entity

        def entity_keys(feature: StoreFeature) -> list[str]:
            keys = entities.get(feature.join_keys)
            if keys is None:
                keys = entities[feature.join_keys] = [_entity(row, feature) for row in rows]
            return keys

        stamped: list[tuple[float, list[Any], list[str | None]]] = []  # the stamps' verdicts
        good: list[tuple[str, list[str], list[Any], list[str | None] | None]] = []
        remembers = any(  # a feature reads the memory of last good values (as configured now)
            self._fallback_overrides.get(f.name, self._fallback) == "last_good"
            for f in self._features
        )
        for feature in self._features:
            name = feature.name
            values = [record.get(name) for record in records]
            reasons: list[str | None] = (
                [unavailable] * len(rows)
                if unavailable
                else self._problems(feature, values, records, seconds, stamped)
            )
            if not any(reasons):
                if remembers:
                    good.append((name, entity_keys(feature), values, None))
                out.columns.append(values)
                continue
            if remembers:
                good.append((name, entity_keys(feature), values, reasons))
            critical = name in self._critical
            fallback = champion.fallbacks.get(name)
            last_good = self._fallback_overrides.get(name, self._fallback) == "last_good"
            if not critical:  # a degraded critical feature refuses its row: no flag
                flagged: dict[str, str] = {}  # reason -> its flag
                for index, reason in enumerate(reasons):
                    if reason is not None:
                        flag = flagged.get(reason)
                        if flag is None:
                            flag = flagged[reason] = f"{name}:{reason}"
                        out.flags[index].append(flag)
            if not critical and not last_good:
                out.columns.append(
                    [
                        value if reason is None else fallback
                        for value, reason in zip(values, reasons, strict=True)
                    ]
                )
                continue
            keys = entity_keys(feature)
            earlier: dict[str, Any] = {}  # this batch's valid values, remembered below
            column = []
            for index, (value, reason) in enumerate(zip(values, reasons, strict=True)):
                if reason is None:
                    if last_good and not is_null(value):
                        earlier[keys[index]] = value
                    column.append(value)
                elif critical:
                    out.problems[index].append((name, f"{reason} and marked critical"))
                    column.append(_REFUSED)
                else:
                    entity = keys[index]
                    remembered = (
                        earlier[entity] if entity in earlier else self._last_good.get(name, entity)
                    )
                    column.append(remembered if remembered is not None else fallback)
            out.columns.append(column)
        if good:  # row by row, feature by feature: the memory's order as if each row came alone
            self._last_good.remember_many(
                [
                    (name, keys[index], values[index])
                    for index in range(len(rows))
                    for name, keys, values, reasons in good
                    if reasons is None or reasons[index] is None
                ]
            )
        return out

    def _request_seconds(self, rows: Sequence[dict[str, Any]]) -> list[float]:
        """Each row's request time (its event time, at the latest now), Unix seconds; each
        distinct time converted once."""
        now = self._clock.now()
        as_of: dict[Any, float] = {}  # event time -> the request's time, Unix seconds
        seconds = []
        for row in rows:
            stamp = row["event_timestamp"]
            moment = value_key(stamp) or (stamp if isinstance(stamp, datetime) else None)
            known = as_of.get(moment) if moment is not None else None
            if known is None:
                known = min(now, pd.Timestamp(stamp).to_pydatetime()).timestamp()
                if moment is not None:
                    as_of[moment] = known
            seconds.append(known)
        return seconds

    def _problems(
        self,
        feature: StoreFeature,
        values: list[Any],
        records: Sequence[dict[str, Any]],
        as_of: list[float],
        stamped: list[tuple[float, list[Any], list[str | None]]],
    ) -> list[str | None]:
        """Each row's reason to degrade the feature (missing, future, stale, invalid) or None.
        ``stamped``: the stamps' verdicts worked out so far in the batch, (TTL, stamps,
        verdicts), reused for a feature with the same stamps and TTL (its view's)."""
        stamps: list[Any] = [record.get(f"{feature.name}__ts") for record in records]
        ttl = feature.ttl_seconds
        verdicts = next(
            (v for t, known, v in stamped if t == ttl and _same_stamps(known, stamps)), None
        )
        if verdicts is None:
            verdicts = _stamp_verdicts(stamps, as_of, ttl)
            stamped.append((ttl, stamps, verdicts))
        reasons = list(verdicts)
        nullable = feature.checks.nullable(feature.name)
        judged: dict[tuple[type, Any], bool] = {}
        for index, verdict in enumerate(verdicts):
            if verdict is not None:
                continue
            value = values[index]
            key = value_key(value)
            invalid = judged.get(key) if key is not None else None
            if invalid is None:
                broken = feature.checks.breaks(feature.name, value)
                invalid = broken and not (is_null(value) and nullable)
                if key is not None:
                    judged[key] = invalid
            if invalid:
                reasons[index] = "invalid"
        return reasons

    def close(self) -> None:
        self._lookups.shutdown(wait=False, cancel_futures=True)


@dataclass
class Features:
    """One row's store features as the lookup stage assembled them."""

    values: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # degraded critical features


_REFUSED = object()  # a degraded critical feature's place in its column: the row is refused


@dataclass
class StoreColumns:
    """A batch's store features as the lookup stage assembled them: per feature (``names``)
    its column of values, per row its flags and critical problems."""

    names: tuple[str, ...]
    columns: list[list[Any]]
    flags: list[list[str]]
    problems: list[list[tuple[str, str]]]

    def values(self, index: int) -> dict[str, Any]:
        """Row ``index``'s store values (``Features.values``)."""
        return {
            n: c[index]
            for n, c in zip(self.names, self.columns, strict=True)
            if c[index] is not _REFUSED
        }


@dataclass(frozen=True)
class Scored:
    """What a model answered for one row, as the prediction log keeps it
    (``prodguard.tasks.Outputs.entry``)."""

    probability: float  # the task's score: P(positive), the value, P(predicted class)
    decision: int  # binary: 0/1 at the threshold; multiclass: the class index; regression: 0
    prediction: dict[str, Any] | None = None  # multiclass/regression: ``Outputs.row``


class ModelScoring:
    """Stage ``model``: which model answers which row (the champion, or in a canary the rollout
    version for the rows whose sticky key falls in its share), and the one place a model is
    called (``score``)."""

    def __init__(self, threshold: float, sticky_fields: Sequence[str] = ()) -> None:
        """``sticky_fields``: request fields whose values pick a row's side in a canary (the
        same values always go the same way); none: the request id."""
        self._threshold = threshold
        self._sticky_fields = tuple(sticky_fields)

    def score(self, model: LoadedModel, frame: pd.DataFrame) -> list[Scored]:
        """Each row's answer for the model's task, binary decisions at the threshold in force."""
        return _scored(model.predict(frame, self._threshold))

    def score_columns(
        self, model: LoadedModel, columns: Mapping[str, Sequence[Any]], rows: int
    ) -> list[Scored]:
        """``score`` of ``model.frame_of(columns, rows)``; the fast path reads the columns
        without a DataFrame (``LoadedModel.predict_columns``)."""
        return _scored(model.predict_columns(columns, rows, self._threshold))

    def answer(
        self,
        state: ServingState,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str],
        columns: Mapping[str, Sequence[Any]],
    ) -> list[tuple[LoadedModel, Scored]]:
        """Per row, the model that answered and its answer. ``columns``: the rows' model input
        as columns (``_inputs``)."""
        answers: list[Any] = [None] * len(rows)
        for model, chosen in self.route(state, rows, ids):
            part = (  # every row, in order, unless a canary takes some
                columns
                if len(chosen) == len(rows)
                else {name: [values[i] for i in chosen] for name, values in columns.items()}
            )
            try:
                scored = self.score_columns(model, part, len(chosen))
            except ProdguardError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model's own failure, charged to it
                _log.exception("model v%s failed to score", model.version)
                raise ModelFailed(model.version, exc) from exc
            for i, answer in zip(chosen, scored, strict=True):
                answers[i] = (model, answer)
        return answers

    def route(
        self, state: ServingState, rows: Sequence[dict[str, Any]], ids: Sequence[str]
    ) -> list[tuple[LoadedModel, list[int]]]:
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


def _scored(outputs: Outputs) -> list[Scored]:
    """Each row's ``Scored`` of a model's outputs (Python floats and ints, as ``entry``)."""
    if outputs.task is Task.BINARY:
        scores = outputs.score.tolist()
        decisions = outputs.decision.tolist()
        return [Scored(float(p), int(d)) for p, d in zip(scores, decisions, strict=True)]
    return [Scored(*outputs.entry(j)) for j in range(len(outputs))]


class AnswerLog:
    """Stage ``log``: answers committed to the prediction log before they leave, and the
    logged answer of a request id already answered (a retry)."""

    def __init__(self, log: PredictionLog, model_name: str) -> None:
        self.log = log
        self.model_name = model_name

    def record(
        self,
        request_id: str,
        time: datetime,
        model: LoadedModel,
        role: Role,
        scored: Scored,
        features: dict[str, Any],
        flags: list[str],
        request: dict[str, Any],
        latencies_ms: dict[str, float] | None = None,
        digest: str | None = None,
    ) -> PredictionRecord:
        return PredictionRecord(
            request_id=request_id,
            time=time,
            model=self.model_name,
            version=model.version,
            role=role,
            probability=scored.probability,
            decision=scored.decision,
            features=features,
            flags=flags,
            latencies_ms=latencies_ms or {},
            request=request,
            prediction=scored.prediction,
            digest=digest,
        )

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.log.write(records)

    def replayed(
        self, request_ids: Sequence[str], digests: Sequence[str]
    ) -> list[Prediction | RequestIdReused | None]:
        """Per id, the logged answer when the payload is the same (a retried request gets it,
        not a second prediction), refused when it differs, None when the id is new. An answer
        logged before payloads had digests is replayed."""
        found = self.log.answers(request_ids)
        answers: list[Prediction | RequestIdReused | None] = []
        for request_id, digest in zip(request_ids, digests, strict=True):
            logged = found.get(request_id)
            if logged is None:
                answers.append(None)
            elif logged.digest is not None and logged.digest != digest:
                answers.append(
                    RequestIdReused("request_id was already used for a different request")
                )
            else:
                answers.append(_prediction(logged, replayed=True))
        return answers

    def count_error(self, time: datetime, kind: ErrorKind, version: int | None) -> None:
        try:
            self.log.record_error(time, kind, version)
        except ProdguardError as logged:
            _log.warning("request error not counted: %s", logged)


class Shadow:
    """Stage ``shadow``, off the response path: the rollout version in shadow traffic scores
    every row; otherwise the standby (or in a canary the champion, the guard's paired
    reference) scores a deterministic sample — every row of the first ``burst`` rows it scores
    after the served versions or the traffic policy change (a new canary step), when the
    guard's paired tests need evidence fastest. The burst is counted in rows the reference
    scores (in a 5 % canary: canary rows, not requests), per process. Each shadow row carries
    its scoring time (``model_ms``, ``batch_rows``), so the guard can compare latencies on the
    same requests. A full backlog sheds the work (``shed``; a replay waits for a slot instead:
    its shadow rows are its evidence, and nobody waits for its answers)."""

    def __init__(
        self,
        scoring: ModelScoring,
        answers: AnswerLog,
        sample: float = 0.0,
        metrics: Metrics | None = None,
        burst: int = 0,
        shed: bool = True,
    ) -> None:
        self._shed = shed
        self._scoring = scoring
        self._answers = answers
        self._sample = sample
        self._metrics = metrics or NoMetrics()
        self._burst = burst
        self._since_change: tuple[object, int] = ((), 0)  # (what is served, rows scored since)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodguard-shadow")
        self._slots = threading.BoundedSemaphore(SHADOW_BACKLOG)

    def after(
        self,
        state: ServingState,
        columns: Mapping[str, Sequence[Any]],
        records: list[PredictionRecord],
        places: Sequence[int] | None = None,
    ) -> None:
        """Shadow-score ``records`` (answered by the request path) whose model inputs are in
        ``columns`` (the batch's input columns: record ``n``'s values at ``places[n]``, or at
        ``n``); the frame of the sampled rows is built in the shadow's thread."""
        if state.rollout is not None and state.policy.mode == "shadow":
            self._submit(state, state.rollout, columns, records, places, every_row=True)
        elif state.rollout is not None and state.policy.mode == "canary":
            self._submit(state, state.champion, columns, records, places)
        else:
            self._submit(state, state.standby, columns, records, places)

    def _bursting(self, state: ServingState) -> bool:
        """Whether the reference still scores every row: fewer than ``burst`` rows scored
        since the served versions or the traffic policy last changed (counted per process)."""
        served = (
            tuple(
                m.version if m is not None else None
                for m in (state.champion, state.standby, state.rollout)
            ),
            state.policy,
        )
        with self._lock:
            key, scored = self._since_change
            if key != served:
                self._since_change = (served, 0)
                scored = 0
        return scored < self._burst

    def _scored(self, rows: int) -> None:
        with self._lock:
            key, scored = self._since_change
            self._since_change = (key, scored + rows)

    def _submit(
        self,
        state: ServingState,
        model: LoadedModel | None,
        columns: Mapping[str, Sequence[Any]],
        records: list[PredictionRecord],
        places: Sequence[int] | None,
        every_row: bool = False,
    ) -> None:
        if model is None:
            return
        bursting = not every_row and self._bursting(state)
        share = 1.0 if every_row or bursting else self._sample
        if share <= 0:
            return
        chosen = [
            i
            for i, r in enumerate(records)
            if r.version != model.version and _sampled(r.request_id, share)  # never itself
        ]
        if not chosen:
            return
        if not self._slots.acquire(blocking=not self._shed):
            self._metrics.count("shadow_dropped", {}, len(chosen))  # backlog full: shed load
            return
        if bursting:
            self._scored(len(chosen))
        at = chosen if places is None else [places[i] for i in chosen]
        future = self._pool.submit(self._score, model, columns, at, records, chosen)
        future.add_done_callback(lambda _: self._slots.release())

    def _score(
        self,
        model: LoadedModel,
        columns: Mapping[str, Sequence[Any]],
        at: list[int],
        records: list[PredictionRecord],
        chosen: list[int],
    ) -> None:
        try:
            sampled = {c: [columns[c][i] for i in at] for c in model.columns if c in columns}
            frame = model.frame_of(sampled, len(at))  # the model's own frame of those rows
            started = time.perf_counter()
            scored = self._scoring.score(model, frame)
            timing = {"model_ms": (time.perf_counter() - started) * 1000, "batch_rows": len(chosen)}
            self._answers.write(
                [
                    self._answers.record(
                        records[i].request_id,
                        records[i].time,
                        model,
                        "shadow",
                        answer,
                        records[i].features,
                        records[i].flags,
                        records[i].request,
                        timing,
                    )
                    for i, answer in zip(chosen, scored, strict=True)
                ]
            )
            self._metrics.count(
                "predictions", {"version": str(model.version), "role": "shadow"}, len(chosen)
            )
        except Exception as exc:  # noqa: BLE001 - shadow failures never reach callers
            _log.warning("shadow scoring failed: %s", exc)

    def drain(self) -> None:
        self._pool.submit(lambda: None).result(timeout=30)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Predictor:
    """The request path composed of its stages: checks, features, model, log, shadow (built
    from the settings by ``prodguard.wiring.build_predictor``)."""

    def __init__(
        self,
        *,
        state: Callable[[], ServingState],
        checks: RequestChecks,
        features: FeatureLookup,
        derive: Callable[[pd.DataFrame], pd.DataFrame],
        scoring: ModelScoring,
        answers: AnswerLog,
        shadow: Shadow,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        derive_columns: RequestColumns | None = None,
    ) -> None:
        """``derive``: the request features of a frame of source-shaped request rows;
        ``derive_columns``, when given, the same on columns (checked equal to ``derive``:
        ``features.request_columns``), which the request path then uses instead."""
        self.state = state
        self.checks = checks
        self.features = features
        self.derive = derive
        self.derive_columns = derive_columns
        self.scoring = scoring
        self.answers = answers
        self.shadow = shadow
        self._clock = clock or SystemClock()
        self._metrics = metrics or NoMetrics()

    @property
    def model_name(self) -> str:
        return self.answers.model_name

    def predict(
        self,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str | None],
        stages: dict[str, float] | None = None,
    ) -> list[Prediction]:
        """Answer ``rows`` (source-shaped request rows with ``event_timestamp``) all together or
        not at all: one refused row refuses the call. A call that gets no prediction is counted
        in the log as rejected (caller's fault) or failed. ``stages``, when given, receives the
        seconds of each stage of an answered call (checks, features, model, log, total)."""
        answers = self._run(rows, ids, stages, whole=True)
        return [a for a in answers if isinstance(a, Prediction)]

    def predict_each(
        self,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str | None],
        stages: dict[str, float] | None = None,
    ) -> list[Prediction | InputError]:
        """Answer each row on its own: a row the checks refuse (or whose id is repeated in the
        call) gets its error in its place, counted as rejected; the others are answered and
        logged. Errors of the whole call (no champion, the log down) are raised."""
        return self._run(rows, ids, stages, whole=False)

    def _run(
        self,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str | None],
        stages: dict[str, float] | None,
        whole: bool,
    ) -> list[Prediction | InputError]:
        state = self.state()  # one snapshot: a swap never mixes versions within a request
        version = state.champion.version if state.champion else None
        try:
            answers = self._predict(rows, ids, state, stages, whole)
        except ProdguardError as exc:
            kind: ErrorKind = "rejected" if isinstance(exc, InputError) else "failed"
            charged = exc.version if isinstance(exc, ModelFailed) else version
            self.answers.count_error(self._clock.now(), kind, charged)
            raise
        for answer in answers:
            if not isinstance(answer, Prediction):
                self.answers.count_error(self._clock.now(), "rejected", version)
        return answers

    def _predict(
        self,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[str | None],
        state: ServingState,
        stages: dict[str, float] | None,
        whole: bool,
    ) -> list[Prediction | InputError]:
        began = time.perf_counter()
        champion = state.champion
        if champion is None:
            raise ServiceNotReady("no champion is loaded yet; promote a version or wait")
        request_ids = [i or uuid.uuid4().hex for i in ids]
        requests = [_jsonable(row) for row in rows]
        digests = payload_digests(requests)
        answers: list[Prediction | InputError | None] = [None] * len(rows)
        seen: set[str] = set()
        for i, request_id in enumerate(request_ids):
            if request_id in seen:
                answers[i] = RequestRejected(
                    "request ids must be unique within a batch",
                    [("request_id", "repeated in batch")],
                )
            seen.add(request_id)
        if whole and any(answers):
            raise next(a for a in answers if isinstance(a, InputError))
        self._replay(request_ids, digests, answers, whole)
        if not _open(answers):
            return _done(answers)

        started = time.perf_counter()
        flags: list[list[str]] = [[] for _ in rows]
        if whole:
            flags = self.checks.check(rows, champion)
        else:
            todo = _open(answers)
            inspected = self.checks.inspect_all([rows[i] for i in todo], champion)
            for i, (problems, flagged) in zip(todo, inspected, strict=True):
                flags[i] = flagged
                if problems:
                    answers[i] = _rejected("invalid request fields", problems)
        checks_s = time.perf_counter() - started
        todo = _open(answers)
        if not todo:
            return _done(answers)

        started = time.perf_counter()
        fetched, unavailable = self.features.fetch([rows[i] for i in todo])
        lookup_s = time.perf_counter() - started

        started = time.perf_counter()
        store = self.features.assemble_columns(
            [rows[i] for i in todo], fetched, unavailable, champion
        )
        position = {i: n for n, i in enumerate(todo)}  # row -> its place in the store columns
        critical = {i: store.problems[n] for n, i in enumerate(todo) if store.problems[n]}
        if whole and critical:
            raise _rejected("critical features degraded", [p for c in critical.values() for p in c])
        for i, problems in critical.items():
            answers[i] = _rejected("critical features degraded", problems)
        todo = _open(answers)
        if not todo:
            return _done(answers)
        derived, count = self._request_features([rows[i] for i in todo])
        columns, inputs = _inputs(derived, count, store, [position[i] for i in todo])
        checks_s += time.perf_counter() - started

        started = time.perf_counter()
        answered = self.scoring.answer(
            state, [rows[i] for i in todo], [request_ids[i] for i in todo], columns
        )
        model_s = time.perf_counter() - started

        now = self._clock.now()
        latencies = {
            "checks_ms": checks_s * 1000,
            "features_ms": lookup_s * 1000,
            "model_ms": model_s * 1000,
            "batch_rows": len(rows),  # the stages timed the whole call
        }
        records = [
            self.answers.record(
                request_ids[i],
                now,
                model,
                "champion" if model.version == champion.version else "canary",
                scored,
                inputs[n],
                flags[i] + store.flags[position[i]],
                requests[i],
                latencies,
                digests[i],
            )
            for n, (i, (model, scored)) in enumerate(zip(todo, answered, strict=True))
        ]
        started = time.perf_counter()
        written = self._write(records, todo, request_ids, digests, answers, whole)
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
        for (version, role), count in Counter((r.version, r.role) for r in written).items():
            self._metrics.count("predictions", {"version": str(version), "role": role}, count)
        for flag, count in Counter(chain.from_iterable(r.flags for r in written)).items():
            feature, _, reason = flag.partition(":")
            self._metrics.count("degradations", {"feature": feature, "reason": reason}, count)
        if state.standby is None and state.rollout is None:  # nothing shadow-scores
            return _done(answers)
        if len(written) == len(records):
            self.shadow.after(state, columns, records)
        elif written:  # some ids were answered concurrently: only the rows logged here
            logged = {id(record) for record in written}
            kept = [n for n, record in enumerate(records) if id(record) in logged]
            self.shadow.after(state, columns, written, kept)
        return _done(answers)

    def _request_features(self, rows: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], int]:
        """The request features of ``rows`` as columns, and how many rows they give: by the
        project's columns form when it has one, else by its frame form."""
        if self.derive_columns is not None:
            return derive_columns(self.derive_columns, rows)
        request = self.derive(request_frame(rows))
        return columns_of(request), len(request)

    def _replay(
        self,
        request_ids: list[str],
        digests: list[str],
        answers: list[Prediction | InputError | None],
        whole: bool,
    ) -> None:
        """A retried request (same id, same payload) gets the logged answer, not a second
        prediction; the same id with another payload is refused. A call answered as a whole is
        replayed as a whole (or refused when only partly answered)."""
        todo = _open(answers)
        found = self.answers.replayed([request_ids[i] for i in todo], [digests[i] for i in todo])
        reused = [r for r in found if isinstance(r, RequestIdReused)]
        if whole and reused:
            raise reused[0]
        if whole and any(r is not None for r in found) and any(r is None for r in found):
            raise RequestRejected(
                "some request ids of this batch were already answered and some not; "
                "retry with the same batch or new ids",
                [("request_id", "partially replayed batch")],
            )
        for i, replayed in zip(todo, found, strict=True):
            if replayed is not None:
                answers[i] = replayed

    def _write(
        self,
        records: list[PredictionRecord],
        todo: list[int],
        request_ids: list[str],
        digests: list[str],
        answers: list[Prediction | InputError | None],
        whole: bool,
    ) -> list[PredictionRecord]:
        """Commit the records and put their answers in place; ids answered concurrently (a
        duplicate in the log) get that answer instead. Returns the records written."""
        try:
            self.answers.write(records)
        except DuplicateRequest:
            if whole or len(records) == 1:
                self._replay(request_ids, digests, answers, whole)
                if any(answers[i] is None for i in todo):
                    raise
                return []
            written = []  # one by one: each row is answered on its own
            for i, record in zip(todo, records, strict=True):
                written += self._write([record], [i], request_ids, digests, answers, whole)
            return written
        for i, record in zip(todo, records, strict=True):
            answers[i] = _prediction(record)
        return records

    def warm_up(self, entity: dict[str, Any], timeout_s: float = 30.0) -> bool:
        return self.features.warm_up(entity, timeout_s)

    def refuses(self, row: dict[str, Any]) -> bool:
        """Would the request checks reject this row for the current champion?"""
        champion = self.state().champion
        return champion is not None and bool(self.checks.inspect(row, champion)[0])

    def drain(self) -> None:
        """Wait for pending shadow work (tests, shutdown)."""
        self.shadow.drain()

    def close(self) -> None:
        self.shadow.close()
        self.features.close()


def _open(answers: list[Any]) -> list[int]:
    return [i for i, answer in enumerate(answers) if answer is None]


def _done(answers: list[Prediction | InputError | None]) -> list[Prediction | InputError]:
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def _rejected(what: str, problems: list[tuple[str, str]]) -> RequestRejected:
    shown = "; ".join(f"{f}: {p}" for f, p in problems[:5])
    return RequestRejected(f"{what}: {shown}", problems)


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


# json.dumps(sort_keys=True, default=str, allow_nan=True), without an encoder per call
_DIGEST_JSON = json.JSONEncoder(sort_keys=True, default=str, allow_nan=True)


def payload_digests(requests: Sequence[dict[str, Any]]) -> list[str]:
    """The digest of each request's payload (its source-shaped row, JSON with sorted keys):
    what makes a reused request id the same request or another one. The JSON of a batch's
    rows is written column by column (``prediction_log.encode_rows``: the same text)."""
    return [
        hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        for text in encode_rows(requests, _DIGEST_JSON)
    ]


def _sampled(request_id: str, share: float) -> bool:
    """Deterministic sampling by request id (the same request is always in or out)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def _stamp_verdicts(stamps: list[Any], as_of: list[float], ttl: float) -> list[str | None]:
    """Each row's verdict on its stamp (Unix seconds of the value's event time) at its request
    time ``as_of``: missing (no stamp, 0 or NaN), future (observed after the request), stale
    (older than a positive ``ttl``) or None."""
    verdicts: list[str | None] = []
    for stamp, now in zip(stamps, as_of, strict=True):
        kind = type(stamp)
        if kind is int or kind is float:
            if stamp == 0 or stamp != stamp:
                verdicts.append("missing")
                continue
        elif stamp is None or is_null(stamp) or stamp == 0:
            verdicts.append("missing")
            continue
        age = now - float(stamp)
        if age < 0:
            verdicts.append("future")  # observed after the request's time
        elif ttl > 0 and age > ttl:
            verdicts.append("stale")
        else:
            verdicts.append(None)
    return verdicts


def _same_stamps(known: list[Any], stamps: list[Any]) -> bool:
    """Whether two columns of stamps are the same stamps: plain numbers (or None) equal one by
    one (what ``_stamp_verdicts`` reads of them is then the same)."""
    if known is stamps:
        return True
    if len(known) != len(stamps) or not set(map(type, stamps)) <= _STAMP_KINDS:
        return False
    return set(map(type, known)) <= _STAMP_KINDS and known == stamps


_STAMP_KINDS = frozenset({int, float, type(None)})


def _entity(row: dict[str, Any], feature: StoreFeature) -> str:
    """The row's entity key of a feature's view (``LastGood``'s key)."""
    return "|".join(str(row.get(k)) for k in feature.join_keys)


def columns_of(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Each column's values as ``frame.iloc[n].to_dict()`` gives them for each row ``n``,
    without a Series per row: one interleaved array (``to_numpy``, the dtype ``iloc`` gives a
    row), boxed as ``to_dict`` boxes."""
    values = frame.to_numpy()
    if values.dtype.kind in "biuf":  # tolist() gives Python bools, ints and floats
        lists = values.T.tolist()
    else:
        lists = [list(map(_native, values[:, j])) for j in range(values.shape[1])]
    return dict(zip(frame.columns, lists, strict=True))


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``[frame.iloc[n].to_dict() for n in range(len(frame))]`` (``columns_of`` by row)."""
    columns = columns_of(frame)
    if not columns:
        return [{} for _ in range(len(frame))]
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def _inputs(
    derived: dict[str, list[Any]], rows: int, store: StoreColumns, places: list[int]
) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """The batch's model input as columns and as each row's dict: the request features (the
    first ``len(places)`` of their ``rows``), then the store features (which win a clash of
    names, as ``{**request, **store}``) of the rows at ``places``."""
    if rows < len(places):
        raise IndexError(f"the request features gave {rows} rows for {len(places)}")
    columns = {name: values[: len(places)] for name, values in derived.items()}
    every = len(places) == len(store.flags)  # places rise: every row of the store, in order
    for name, values in zip(store.names, store.columns, strict=True):
        columns[name] = values if every else [values[place] for place in places]
    if not columns:
        return columns, [{} for _ in places]
    return columns, [
        dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)
    ]


def _native(value: Any) -> Any:
    """A value of an object array as ``Series.to_dict`` gives it (pandas' boxing of scalars)."""
    if is_float(value):
        return float(value)
    if is_integer(value):
        return int(value)
    if is_bool(value):
        return bool(value)
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value)
    if isinstance(value, np.timedelta64):
        return pd.Timedelta(value)
    return None if value is pd.NA else value


def _key(value: Any) -> Any:
    return "" if value is None else value


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if type(v) in _PLAIN or not hasattr(v, "isoformat") else v.isoformat())
        for k, v in row.items()
    }
