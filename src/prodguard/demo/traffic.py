"""Historical traffic replayed through the real HTTP service on simulated time.

Hour by hour: the shared clock moves to the hour; the rows each time-based source observed since
the previous hour are pushed to the online store (as a streaming feature pipeline would); the
labelled rows of the hour are sent to ``/predict_batch`` (a deterministic share one by one to
``/predict``, so per-request latency is measured as callers see it); outcomes that have become
known are sent to ``/feedback_batch``. A hook runs after each hour (guard, monitors).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from prodguard.clock import FileClock
from prodguard.config import Settings
from prodguard.demo.service import ServiceProcess
from prodguard.errors import ServiceNotReady
from prodguard.features.ports import FeatureStore
from prodguard.ingestion.offline import OfflineStore
from prodguard.monitoring.replay import known_outcome, request_id, request_rows, single
from prodguard.project import load_request_model


@dataclass
class TrafficResult:
    start: datetime
    end: datetime
    requests: int = 0
    answered: int = 0
    degraded: int = 0
    rejected: int = 0  # refused: 4xx (bad request or a check failed)
    failed: int = 0  # 5xx
    feedback: int = 0
    by_version: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        document = dict(self.__dict__)
        document.update(
            start=self.start.isoformat(),
            end=self.end.isoformat(),
            by_version={str(k): v for k, v in sorted(self.by_version.items())},
        )
        return document


class OnlineFeed:
    """Pushes the offline rows of every time-based feature view to the online store once the
    clock has passed them. ``reload()`` after an ingestion makes newly written rows visible."""

    def __init__(self, settings: Settings, store: FeatureStore, since: datetime) -> None:
        self._settings = settings
        self._store = store
        self._offline = OfflineStore(settings.paths.offline_dir)
        self._views = [v for v in store.versions() if not settings.sources[v.source].static]
        self._frames: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
        self._pushed_until = pd.Timestamp(since)

    def reload(self) -> None:
        self._frames.clear()

    def advance(self, now: datetime) -> int:
        """Push the rows observed in (last push, now]; returns how many."""
        until = pd.Timestamp(now)
        pushed = 0
        for view in self._views:
            frame, stamps = self._frame(view.source)
            lo = np.searchsorted(stamps, self._pushed_until.value, side="right")
            hi = np.searchsorted(stamps, until.value, side="right")
            if hi > lo:
                columns = [*view.join_keys, "event_timestamp", *(n for n, _ in view.features)]
                latest = frame.iloc[lo:hi].drop_duplicates(list(view.join_keys), keep="last")
                self._store.push(view.name, latest[columns])
                pushed += hi - lo
        self._pushed_until = max(self._pushed_until, until)
        return pushed

    def _frame(self, source: str) -> tuple[pd.DataFrame, np.ndarray]:
        if source not in self._frames:
            timestamp = self._settings.sources[source].timestamp
            frame = self._offline.read(source)
            if frame is None:
                frame = pd.DataFrame(columns=[timestamp])
            frame = frame.rename(columns={timestamp: "event_timestamp"})
            frame = frame.sort_values("event_timestamp").reset_index(drop=True)
            stamps = pd.to_datetime(frame["event_timestamp"], utc=True).array.asi8
            self._frames[source] = (frame, np.asarray(stamps))
        return self._frames[source]


class HttpTraffic:
    """Replays the labelled source's rows through ``service``; outcomes are sent
    ``outcome_after`` past each row's time."""

    def __init__(
        self,
        settings: Settings,
        service: ServiceProcess,
        clock: FileClock,
        feed: OnlineFeed,
        *,
        outcome_after: timedelta,
        single_share: float,
    ) -> None:
        assert settings.model is not None and settings.serving is not None
        self._settings = settings
        self._service = service
        self._clock = clock
        self._feed = feed
        self._outcome_after = outcome_after
        self._single_share = single_share
        self._request_model = load_request_model(settings)
        self._max_batch = settings.serving.max_batch
        self._pending: list[tuple[datetime, str, dict[str, Any]]] = []

    def play(
        self,
        start: datetime,
        end: datetime,
        after_hour: Callable[[datetime], None] | None = None,
        on_hour: Callable[[int], None] | None = None,
    ) -> TrafficResult:
        """Serve every hour of ``[start, end)``; ``after_hour(end of hour)`` runs after each,
        ``on_hour(requests)`` reports progress."""
        began = time.perf_counter()
        result = TrafficResult(start, end)
        rows = request_rows(self._settings, start, end)
        by_hour = dict(iter(rows.groupby(rows["event_timestamp"].dt.floor("h"), sort=True)))
        hour = pd.Timestamp(start).floor("h").to_pydatetime()
        while hour < end:
            self._clock.set(hour)
            self._feed.advance(hour)
            self._send_outcomes(hour, result)
            group = by_hour.get(pd.Timestamp(hour))
            sent = 0 if group is None else self._serve(group, result)
            if after_hour is not None:
                after_hour(hour + timedelta(hours=1))
            if on_hour is not None:
                on_hour(sent)
            hour += timedelta(hours=1)
        self._clock.set(end)
        result.seconds = time.perf_counter() - began
        return result

    def _serve(self, group: pd.DataFrame, result: TrafficResult) -> int:
        label = self._settings.model.label  # type: ignore[union-attr]
        outcome_key = self._settings.monitoring.kpi.outcome
        alone: list[dict[str, Any]] = []
        together: list[dict[str, Any]] = []
        known: dict[str, tuple[datetime, Any]] = {}
        for row in group.to_dict("records"):
            result.requests += 1
            rid = request_id(self._settings, row, "http-")
            try:
                body = self._request_model.from_row(row).model_dump(mode="json")
            except ValidationError:
                result.rejected += 1  # the HTTP boundary would answer 400
                continue
            body["request_id"] = rid
            known[rid] = (pd.Timestamp(row["event_timestamp"]).to_pydatetime(), row.get(label))
            (alone if single(rid, self._single_share) else together).append(body)
        answers: list[dict[str, Any]] = []
        for chunk in _chunks(together, self._max_batch):
            status, body = self._service.post("/predict_batch", {"rows": chunk})
            if status != 200:
                self._answered(status, body, len(chunk), result)
                continue
            for row in body["results"]:  # each row answered on its own
                answers.extend(self._answered(row["status"], row, 1, result))
        for request in alone:
            status, body = self._service.post("/predict", request)
            answers.extend(self._answered(status, {"prediction": body}, 1, result))
        for answer in answers:
            result.answered += 1
            result.degraded += bool(answer["degraded"])
            result.by_version[int(answer["version"])] += 1
            when, outcome = known[answer["request_id"]]
            if (value := known_outcome(outcome)) is not None:
                due = when + self._outcome_after
                self._pending.append((due, answer["request_id"], {outcome_key: value}))
        return len(known)

    @staticmethod
    def _answered(status: int, body: Any, rows: int, result: TrafficResult) -> list[dict[str, Any]]:
        if status == 200:
            return [body["prediction"]]
        if status >= 500:
            if status == 503 and "not ready" in str(body.get("error", "")):
                raise ServiceNotReady(f"the service stopped answering: {body.get('error')}")
            result.failed += rows
        else:
            result.rejected += rows
        return []

    def _send_outcomes(self, now: datetime, result: TrafficResult) -> None:
        due = [p for p in self._pending if p[0] <= now]
        if not due:
            return
        self._pending = [p for p in self._pending if p[0] > now]
        items = [{"request_id": rid, "outcome": outcome} for _, rid, outcome in due]
        for chunk in _chunks(items, self._max_batch):
            status, body = self._service.post("/feedback_batch", {"items": chunk})
            if status != 200:
                raise ServiceNotReady(f"/feedback_batch answered {status}: {body.get('error')}")
            taken = ("recorded", "duplicate")
            result.feedback += sum(r["status"] in taken for r in body["results"])


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]
