"""The benchmark's requests: flights of the model's source, asked about at the time the online
store was materialized up to (so their features are fresh, as in production), each with its
own request id; and the bare baseline's bodies: the model features the guarded service used."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from pydantic import ValidationError

from prodguard.config import Settings
from prodguard.errors import NoDataError
from prodguard.monitoring.replay import request_rows
from prodguard.project import import_object
from prodguard.serving.prediction_log import PredictionLog

HISTORY = timedelta(days=28)  # flights sampled from the weeks before the store's time
ASKED_AFTER = timedelta(minutes=1)  # requests ask about a departure just after it
SEED = 10


def guarded_bodies(
    settings: Settings,
    at: datetime,
    count: int,
    categories: dict[str, frozenset[str]],
    prefix: str,
) -> list[dict[str, Any]]:
    """``count`` request bodies (request model JSON with ``request_id`` = prefix + number) for
    flights of the weeks before ``at``, departing at ``at`` + 1 minute. Only flights whose
    categorical fields the model knows (``categories``) are asked: the rest would be 422s."""

    assert settings.serving is not None
    request_model = import_object(settings.serving.request_model, "serving.request_model")
    rows = request_rows(settings, at - HISTORY, at)
    known = pd.Series(True, index=rows.index)
    for column, values in categories.items():
        if column in rows.columns:
            known &= rows[column].isna() | rows[column].astype(str).isin(values)
    rows = rows[known].sample(n=count, replace=True, random_state=SEED)
    departure = pd.Timestamp(at + ASKED_AFTER)
    bodies: list[dict[str, Any]] = []
    for row in rows.assign(event_timestamp=departure).to_dict("records"):
        try:
            body = request_model.from_row(row).model_dump(mode="json")
        except ValidationError:
            continue
        bodies.append({**body, "request_id": f"{prefix}{len(bodies)}"})
    if len(bodies) < count:  # resample the valid ones to the requested count
        if not bodies:
            raise NoDataError("no flight of the source makes a valid request; check the data")
        bodies += [
            {**bodies[i % len(bodies)], "request_id": f"{prefix}{len(bodies) + i}"}
            for i in range(count - len(bodies))
        ]
    return bodies


def bare_bodies(log: PredictionLog, request_ids: list[str]) -> list[dict[str, Any]]:
    """For each request id the guarded service answered, the model features it used (from its
    prediction log) as a bare request body."""
    bodies = []
    for request_id in request_ids:
        record = log.answer(request_id)
        if record is not None:
            bodies.append({"features": {k: _plain(v) for k, v in record.features.items()}})
    return bodies


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value  # NaN: null


def encode(bodies: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(body, allow_nan=False).encode() for body in bodies]
