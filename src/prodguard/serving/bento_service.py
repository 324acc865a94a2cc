"""The BentoML service: ``prodguard serve`` runs ``bentoml serve`` on this module.

This is an entry-point module: at import it reads the settings named by ``PRODGUARD_CONFIG``
to learn the project's request model, because BentoML derives the HTTP schema (and OpenAPI) from
the API signatures. Everything else is built when the service starts.
"""

from __future__ import annotations

import logging
import threading
import warnings
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field, StringConstraints
from starlette.responses import JSONResponse

from prodguard import app
from prodguard.config import load_settings
from prodguard.errors import (
    DuplicateRequest,
    FeedbackConflict,
    InputError,
    ProdguardError,
    RequestRejected,
    ServiceNotReady,
    UnknownRequest,
)
from prodguard.project import import_object
from prodguard.telemetry import disable_telemetry

disable_telemetry()
# BentoML 1.4 reads `model_fields` on instances, which pydantic 2.11+ flags on every request
warnings.filterwarnings("ignore", message=".*model_fields.*", category=DeprecationWarning)
_settings = load_settings()
if _settings.serving is None:
    raise SystemExit("prodguard.yaml has no 'serving' section")
RequestModel: Any = import_object(_settings.serving.request_model, "serving.request_model")
MAX_BATCH = _settings.serving.max_batch
RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
_log = logging.getLogger("prodguard.serving")


class PredictionOut(BaseModel):
    request_id: str
    probability: float
    decision: bool
    model: str
    version: int
    degraded: bool
    flags: list[str]
    replayed: bool = False


class BatchOut(BaseModel):
    predictions: list[PredictionOut]


class FeedbackOut(BaseModel):
    request_id: str
    status: str


Scalar = float | int | bool | str
Outcome = Annotated[dict[str, Scalar], Field(min_length=1, max_length=20)]


class FeedbackItem(BaseModel):
    request_id: RequestId
    outcome: Outcome


class FeedbackBatchOut(BaseModel):
    results: list[FeedbackOut]


def _status(exc: ProdguardError) -> HTTPStatus:
    if isinstance(exc, UnknownRequest):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, (DuplicateRequest, FeedbackConflict)):
        return HTTPStatus.CONFLICT
    if isinstance(exc, RequestRejected):
        return HTTPStatus.UNPROCESSABLE_ENTITY
    if isinstance(exc, InputError):
        return HTTPStatus.BAD_REQUEST
    if not isinstance(exc, ServiceNotReady):
        _log.error("request failed: %s", exc)
    return HTTPStatus.SERVICE_UNAVAILABLE


def error_response(exc: ProdguardError, ctx: bentoml.Context | None = None) -> JSONResponse:
    """``{"error": message, "problems": [{"field", "problem"}]}`` — never the payload. An API
    that takes the context must pass it: BentoML gives its responses the context's status."""
    problems = [{"field": f, "problem": p} for f, p in getattr(exc, "problems", [])]
    status = _status(exc)
    if ctx is not None:
        ctx.response.status_code = status
    return JSONResponse({"error": str(exc), "problems": problems}, status_code=status)


def server_timing(stages: dict[str, float]) -> str:
    """The stages of an answer as a ``Server-Timing`` header (milliseconds)."""
    return ", ".join(f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in stages.items())


def _start_guard(settings: Any) -> threading.Event | None:
    """With rollout.guard_in_service_seconds, the guard runs in a daemon thread of the service;
    returns the event that stops it."""
    every = settings.rollout.guard_in_service_seconds
    if every is None:
        return None
    from prodguard.rollout.jobs import guard_loop

    stop = threading.Event()

    def report(decisions: list[Any]) -> None:
        for decision in decisions:
            if decision.action not in ("none", "hold"):
                _log.warning(
                    "guard: v%s %s: %s", decision.version, decision.action, decision.reason
                )

    def run() -> None:
        try:
            guard_loop(settings, report, every=every, sleep=lambda s: stop.wait(s), stop=stop)
        except Exception:  # noqa: BLE001 - the service keeps serving; the log says why
            _log.exception("the in-service guard stopped")

    threading.Thread(target=run, name="prodguard-guard", daemon=True).start()
    return stop


class _Metrics:
    """prodguard's Prometheus metrics, exported on the service's /metrics."""

    def __init__(self) -> None:
        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
        self.stage = bentoml.metrics.Histogram(
            name="prodguard_stage_seconds",
            documentation="Latency of each request stage (checks, features, model, log, total)",
            labelnames=["stage"],
            buckets=buckets,
        )
        self.counters = {
            "predictions": bentoml.metrics.Counter(
                name="prodguard_predictions_total",
                documentation="Predictions by model version and role",
                labelnames=["version", "role"],
            ),
            "degradations": bentoml.metrics.Counter(
                name="prodguard_degradations_total",
                documentation="Degraded features by feature and reason",
                labelnames=["feature", "reason"],
            ),
            "shadow_dropped": bentoml.metrics.Counter(
                name="prodguard_shadow_dropped_total",
                documentation="Shadow scorings shed because the shadow backlog was full",
            ),
        }
        self.swaps = bentoml.metrics.Counter(
            name="prodguard_model_swaps_total", documentation="Hot swaps of served models"
        )

    def observe(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage=stage).observe(seconds)

    def count(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        counter = self.counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def swapped(self, state: Any) -> None:
        self.swaps.inc()


@bentoml.service(name="prodguard", traffic={"timeout": 30}, threads=8)
class PredictionService:
    def __init__(self) -> None:
        self.metrics = _Metrics()
        self.serving = app.build_serving(_settings, metrics=self.metrics)
        follower = self.serving.follower
        follower.start()
        self.serving.predictor.warm_up({})
        self._guard = _start_guard(_settings)

    def __is_ready__(self) -> bool:
        return self.serving.ready()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        if self._guard is not None:
            self._guard.set()
        self.serving.follower.stop()
        self.serving.predictor.close()
        self.serving.log.close()

    def _answer(self, requests: list[Any], ctx: bentoml.Context) -> list[PredictionOut]:
        stages: dict[str, float] = {}
        answers = self.serving.predictor.predict(
            [r.to_row() for r in requests], [r.request_id for r in requests], stages
        )
        if stages:  # not for a replayed answer
            ctx.response.headers["Server-Timing"] = server_timing(stages)
        return [
            PredictionOut(
                request_id=a.request_id,
                probability=a.probability,
                decision=a.decision,
                model=a.model,
                version=a.version,
                degraded=a.degraded,
                flags=a.flags,
                replayed=a.replayed,
            )
            for a in answers
        ]

    @bentoml.api(route="/predict", input_spec=RequestModel)
    def predict(self, ctx: bentoml.Context, **fields: Any) -> PredictionOut:
        """Predict one flight: features from the online store, checked, champion's answer."""
        try:
            return self._answer([RequestModel(**fields)], ctx)[0]
        except ProdguardError as exc:
            return error_response(exc, ctx)  # type: ignore[return-value]

    @bentoml.api(route="/predict_batch")
    def predict_batch(
        self,
        rows: Annotated[list[RequestModel], Field(min_length=1, max_length=MAX_BATCH)],
        ctx: bentoml.Context,
    ) -> BatchOut:
        """Predict many flights in one call (at most serving.max_batch rows)."""
        try:
            return BatchOut(predictions=self._answer(rows, ctx))
        except ProdguardError as exc:
            return error_response(exc, ctx)  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    def feedback(self, request_id: RequestId, outcome: Outcome) -> FeedbackOut:
        """Record the observed outcome of a logged prediction (idempotent; 404 if unknown)."""
        try:
            status = self.serving.log.record_feedback(request_id, outcome, self.serving.clock.now())
        except ProdguardError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return FeedbackOut(request_id=request_id, status=status)

    @bentoml.api(route="/feedback_batch")
    def feedback_batch(
        self, items: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_BATCH)]
    ) -> FeedbackBatchOut:
        """Record many outcomes (a label backfill): each item is recorded on its own, so a retry
        after a failure is safe; per item ``recorded``, ``duplicate``, ``unknown`` (no such
        prediction) or ``conflict`` (a different outcome was recorded)."""
        results = []
        now = self.serving.clock.now()
        try:
            for item in items:
                try:
                    status = self.serving.log.record_feedback(item.request_id, item.outcome, now)
                except UnknownRequest:
                    status = "unknown"
                except FeedbackConflict:
                    status = "conflict"
                results.append(FeedbackOut(request_id=item.request_id, status=status))
        except ProdguardError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return FeedbackBatchOut(results=results)
