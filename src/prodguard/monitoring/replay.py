"""Replaying a past period through the serving path (staging baselines, drift studies).

The labelled source's rows of ``[start, end)`` become requests (through the project's request
model, as a caller would send them), hour by hour in time order. A clock set to each hour drives
the real ``Predictor`` — request checks, feature lookups with TTL and degradation, model, durable
log — over ``AsOfFeatures``: the online store as it stood at that hour. Known outcomes are fed
back as they become known. A deterministic share of requests is sent one by one, so the log holds
per-request latencies as ``/predict`` would see them; the rest go in hourly batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from prodguard.clock import FixedClock
from prodguard.config import Settings
from prodguard.errors import InputError, NoDataError, TrainingError
from prodguard.ingestion.offline import OfflineStore
from prodguard.project import load_request_model
from prodguard.serving.engine import Predictor
from prodguard.serving.models import ServingState
from prodguard.serving.prediction_log import PredictionLog

SINGLE_SHARE = 0.02


@dataclass(frozen=True)
class ReplayResult:
    start: datetime
    end: datetime
    requests: int
    predicted: int
    rejected: int
    feedback: int
    seconds: float


def request_rows(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """The labelled source's ingested rows in ``[start, end)``, in time order."""
    model = settings.model
    if model is None:
        raise TrainingError("prodguard.yaml has no 'model' section")
    timestamp = settings.sources[model.source].timestamp
    rows = OfflineStore(settings.paths.offline_dir).read(model.source)
    if rows is None:
        raise NoDataError(f"no ingested '{model.source}' rows; run `prodguard ingest` first")
    window = rows[(rows[timestamp] >= start) & (rows[timestamp] < end)]
    if window.empty:
        raise NoDataError(
            f"no '{model.source}' rows in [{start:%Y-%m-%d}, {end:%Y-%m-%d}); ingest that window"
        )
    return window.rename(columns={timestamp: "event_timestamp"}).sort_values("event_timestamp")


def request_id(settings: Settings, row: dict[str, Any], prefix: str) -> str:
    """The labelled row's id from the source's keys; a time key (a row a day per station,
    say) as UTC ``YYYYMMDDTHHMMSS`` so that the id stays a valid request id."""
    model = settings.model
    assert model is not None
    source = settings.sources[model.source]
    parts = [
        pd.Timestamp(row["event_timestamp"]).tz_convert("UTC").strftime("%Y%m%dT%H%M%S")
        if key in ("event_timestamp", source.timestamp)
        else str(row[key])
        for key in source.keys
    ]
    return prefix + "-".join(parts)


def known_outcome(value: Any) -> Any:
    """A labelled row's outcome as feedback sends it (a plain Python value of the label's
    type: a class, a flag or a number), or None when the row has none."""
    if value is None or value != value:
        return None
    return value.item() if isinstance(value, np.generic) else value


def single(request: str, share: float = SINGLE_SHARE) -> bool:
    digest = hashlib.blake2b(request.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def replay(
    settings: Settings,
    state: ServingState | Callable[[], ServingState],
    predictor_for: Callable[[Callable[[], ServingState], FixedClock], Predictor],
    log: PredictionLog,
    start: datetime,
    end: datetime,
    *,
    prefix: str = "replay-",
    keep: Callable[[str], bool] | None = None,
    single_share: float = SINGLE_SHARE,
    after_hour: Callable[[FixedClock], bool] | None = None,
) -> ReplayResult:
    """Serve ``[start, end)`` with ``state`` (fixed, or read at each request: champion and any
    rollout). ``predictor_for(state, clock)`` builds the request path; ``keep`` selects request
    ids (e.g. a held-out part); ``after_hour(clock)`` runs after each hour and stops the replay
    by returning False."""
    began = time.perf_counter()
    assert settings.model is not None and settings.serving is not None

    request_model = load_request_model(settings)
    rows = request_rows(settings, start, end)
    label, outcome_key = settings.model.label, settings.monitoring.kpi.outcome
    clock = FixedClock(start)
    current = state if callable(state) else (lambda: state)
    predictor = predictor_for(current, clock)
    requests = predicted = rejected = feedback = 0
    try:
        hours = rows["event_timestamp"].dt.floor("h")
        for hour, group in rows.groupby(hours, sort=True):
            clock.set(pd.Timestamp(hour).to_pydatetime())
            batch: list[tuple[str, dict[str, Any], Any]] = []
            for row in group.to_dict("records"):
                rid = request_id(settings, row, prefix)
                if keep is not None and not keep(rid):
                    continue
                requests += 1
                try:
                    request = request_model.from_row(row).to_row()
                except ValidationError:
                    rejected += 1  # the HTTP boundary would have answered 400
                    continue
                batch.append((rid, request, row.get(label)))
            for call in _calls(batch, single_share):
                answers = predictor.predict_each([c[1] for c in call], [c[0] for c in call])
                for (rid, _, outcome), answer in zip(call, answers, strict=True):
                    if isinstance(answer, InputError):
                        rejected += 1  # a row the checks refuse (counted in the log)
                        continue
                    predicted += 1
                    if (value := known_outcome(outcome)) is not None:
                        log.record_feedback(rid, {outcome_key: value}, clock.now())
                        feedback += 1
            if after_hour is not None and not after_hour(clock):
                break
    finally:
        predictor.close()
    return ReplayResult(
        start, end, requests, predicted, rejected, feedback, time.perf_counter() - began
    )


def _calls(batch: list[tuple[str, dict[str, Any], Any]], share: float) -> list[list[Any]]:
    """One call per sampled request (timed as a caller sees it), one batch for the rest (each
    row of it answered on its own)."""
    alone: list[list[Any]] = []
    together: list[Any] = []
    for item in batch:
        if single(item[0], share):
            alone.append([item])
        else:
            together.append(item)
    return alone + ([together] if together else [])
