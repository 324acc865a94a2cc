"""The BentoML service: ``prodguard serve`` runs ``bentoml serve`` on this module.

This is an entry-point module: at import it reads the settings named by ``PRODGUARD_CONFIG``
to learn the project's request model, because BentoML derives the HTTP schema (and OpenAPI) from
the API signatures. Everything else is built when the service starts.
"""

from __future__ import annotations

import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Annotated, Any, Literal

import bentoml
from fastapi import FastAPI
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from starlette.responses import JSONResponse, Response

from prodguard import app, wiring
from prodguard.config import Settings, load_settings
from prodguard.errors import (
    ConcurrentUpdateError,
    DuplicateRequest,
    FeedbackConflict,
    InputError,
    ModelFailed,
    ProdguardError,
    PromotionRefused,
    RequestRejected,
    ServiceNotReady,
    UnknownRequest,
)
from prodguard.project import load_request_model
from prodguard.registry.operations import RegistryOperations
from prodguard.rollout.guard import GuardDecision
from prodguard.rollout.jobs import abort_rollout, guard_loop, start_rollout
from prodguard.serving.engine import Prediction
from prodguard.serving.limits import (
    Boundary,
    Limits,
    check_token,
    malformed,
    refusal_document,
    validation_problems,
)
from prodguard.serving.models import ServingState
from prodguard.serving.outcomes import UnusableOutcome, check_outcome
from prodguard.telemetry import disable_telemetry

disable_telemetry()


def _quiet_model_fields() -> None:
    """BentoML 1.4 reads ``model_fields`` on the request's instance, which pydantic 2.11+ flags
    on every request: ignored (in front of the filters: Feast, imported when the service
    starts, puts ``once`` for every DeprecationWarning there, which would print it to the log
    at each request — the registry of warnings shown is reset whenever the filters change)."""
    warnings.filterwarnings("ignore", message=".*model_fields.*", category=DeprecationWarning)


_quiet_model_fields()
_settings = load_settings()
if _settings.serving is None:
    raise SystemExit("prodguard.yaml has no 'serving' section")
RequestModel: Any = load_request_model(_settings)
MAX_BATCH = _settings.serving.max_batch
_token = _settings.serving.admin_token
LIMITS = Limits(
    admin_token=_token.get_secret_value() if _token is not None else None,
    max_body_bytes=_settings.serving.max_body_bytes,
    max_in_flight=_settings.serving.max_in_flight,
    timeout_s=_settings.serving.request_timeout_s,
)
del _token
PREDICT_ROUTES = frozenset({"/predict", "/predict_batch"})
# documented in the OpenAPI, checked by the handlers (a 413 that says so, not a schema error)
_AT_MOST = {"maxItems": MAX_BATCH}
RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
_log = logging.getLogger("prodguard.serving")
JSON = "application/json"


class PredictionOut(BaseModel):
    """Binary models answer ``probability`` (of the positive class) and ``decision``;
    multiclass and regression models answer ``prediction`` (see docs: Tasks) and leave those
    two null."""

    request_id: str
    probability: float | None
    decision: bool | None
    prediction: dict[str, Any] | None = None
    model: str
    version: int
    degraded: bool
    flags: list[str]
    replayed: bool = False


class Problem(BaseModel):
    field: str
    problem: str


class BatchRowOut(BaseModel):
    """One row of a batch, in the order sent: ``status`` 200 with its ``prediction``, or the
    status /predict would have answered (400 malformed, 409 request id reused with another
    payload, 422 refused, ...) with its ``error`` and ``problems`` (never the row's values)."""

    status: int
    request_id: str | None = None
    prediction: PredictionOut | None = None
    error: str | None = None
    problems: list[Problem] = Field(default_factory=list)


class BatchOut(BaseModel):
    results: list[BatchRowOut]


class FeedbackOut(BaseModel):
    request_id: str
    status: str


Scalar = float | int | bool | str
Outcome = Annotated[dict[str, Scalar], Field(min_length=1, max_length=20)]


class FeedbackItem(BaseModel):
    request_id: RequestId
    outcome: Outcome


class FeedbackItemOut(FeedbackOut):
    """One item of a batch: ``status`` as /feedback answers it, or ``invalid`` (an outcome
    the KPI cannot use, nothing recorded) with its ``error``."""

    error: str | None = None


class FeedbackBatchOut(BaseModel):
    results: list[FeedbackItemOut]


# ---- admin (promotion, rollback, traffic policy): the CLI's use cases over HTTP -------------

Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Actor = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
# no exclusive bounds: BentoML publishes OpenAPI 3.0, where pydantic's numeric
# exclusiveMinimum is invalid (schemathesis refuses the schema); 0 is refused by canary_steps
Percent = Annotated[float, Field(ge=0, le=100)]


class AdminOut(BaseModel):
    """The audit record of the move (as ``prodguard audit`` shows it)."""

    audit_id: int
    time: str
    action: str
    actor: str
    from_state: dict[str, int | None]
    to_state: dict[str, int | None]


class BatchTooLarge(RequestRejected):
    """More rows (or feedback items) than serving.max_batch in one call."""


class UnknownVersion(InputError):
    """An admin call named a version the registry does not hold."""


def http_actor(actor: str | None) -> str:
    """Who acted, as the audit log records it: marked as coming over HTTP."""
    return f"http:{actor or 'admin'}"


def _admin_out(record: Any) -> AdminOut:
    return AdminOut(
        audit_id=record.id,
        time=record.time.isoformat(),
        action=record.action,
        actor=record.actor,
        from_state=record.from_state,
        to_state=record.to_state,
    )


def _status(exc: ProdguardError) -> HTTPStatus:
    if isinstance(exc, UnknownRequest):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, (DuplicateRequest, FeedbackConflict)):
        return HTTPStatus.CONFLICT
    if isinstance(exc, (PromotionRefused, ConcurrentUpdateError)):
        return HTTPStatus.CONFLICT
    if isinstance(exc, BatchTooLarge):
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    if isinstance(exc, UnknownVersion):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, RequestRejected):
        return HTTPStatus.UNPROCESSABLE_ENTITY
    if isinstance(exc, ModelFailed):
        return HTTPStatus.INTERNAL_SERVER_ERROR
    if isinstance(exc, InputError):
        return HTTPStatus.BAD_REQUEST
    if not isinstance(exc, ServiceNotReady):
        _log.error("request failed: %s", exc)
    return HTTPStatus.SERVICE_UNAVAILABLE


def _problems(exc: ProdguardError) -> list[tuple[str, str]]:
    if isinstance(exc, FeedbackConflict):  # the idempotency key reused for another outcome
        return [("request_id", "a different outcome was already recorded for it")]
    return list(getattr(exc, "problems", []))


def error_response(exc: ProdguardError, ctx: bentoml.Context | None = None) -> JSONResponse:
    """``{"error": message, "problems": [{"field", "problem"}]}`` — never the payload. An API
    that takes the context must pass it: BentoML gives its responses the context's status."""
    status = _status(exc)
    if ctx is not None:
        ctx.response.status_code = status
    return JSONResponse(refusal_document(str(exc), _problems(exc)), status_code=status)


class MalformedRow(InputError):
    """A batch row that does not match the request model (400, as /predict answers it)."""

    def __init__(self, exc: ValidationError) -> None:
        self.problems = validation_problems(exc.errors(), "row")  # never the value
        super().__init__(malformed("row", self.problems))


def server_timing(stages: dict[str, float]) -> str:
    """The stages of an answer as a ``Server-Timing`` header (milliseconds)."""
    return ", ".join(f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in stages.items())


def _start_guard(settings: Settings) -> threading.Event | None:
    """With rollout.guard_in_service_seconds, the guard runs in a daemon thread of the service;
    returns the event that stops it."""
    every = settings.rollout.guard_in_service_seconds
    if every is None or bentoml.server_context.worker_index not in (None, 1):
        return None  # one guard per service (the first worker's): several would race

    stop = threading.Event()

    def report(decisions: list[GuardDecision]) -> None:
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


def _out(answer: Prediction) -> PredictionOut:
    """Binary: ``probability`` and ``decision``; multiclass and regression: ``prediction``."""
    task = answer.prediction is not None
    return PredictionOut(
        request_id=answer.request_id,
        probability=None if task else answer.probability,
        decision=None if task else answer.decision,
        prediction=answer.prediction,
        model=answer.model,
        version=answer.version,
        degraded=answer.degraded,
        flags=answer.flags,
        replayed=answer.replayed,
    )


def _row_error(exc: ProdguardError, request_id: str | None) -> BatchRowOut:
    return BatchRowOut(
        status=_status(exc),
        request_id=request_id,
        error=str(exc),
        problems=[Problem(field=f, problem=p) for f, p in _problems(exc)],
    )


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
        self.refused = bentoml.metrics.Counter(
            name="prodguard_refused_total",
            documentation="Requests refused at the HTTP boundary by reason (body_size, "
            "batch_size, concurrency, timeout, unauthorized, admin_disabled, bad_length)",
            labelnames=["reason"],
        )

        # the labelled series, looked up once (``labels`` validates and locks at every call)
        self._stages: dict[str, Any] = {}
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def observe(self, stage: str, seconds: float) -> None:
        series = self._stages.get(stage)
        if series is None:
            series = self._stages[stage] = self.stage.labels(stage=stage)
        series.observe(seconds)

    def count(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        key = (name, tuple(labels.items()))
        series = self._series.get(key)
        if series is None:
            counter = self.counters[name]
            series = self._series[key] = counter.labels(**labels) if labels else counter
        series.inc(amount)

    def swapped(self, state: ServingState) -> None:
        self.swaps.inc()


def _status_app() -> FastAPI:
    """``GET /admin/status``: what `prodguard status --json` prints (BentoML APIs are POST only,
    so this one route is a FastAPI app; the boundary checks its token like every admin route)."""
    status_app = FastAPI(title="prodguard admin", openapi_url=None, docs_url=None, redoc_url=None)

    @status_app.get("/status", response_model=None)
    def status() -> Any:
        """Aliases with lineage, traffic policy, standby age, triggers, stores (no secrets)."""
        try:
            return app.status(_settings)
        except ProdguardError as exc:
            return error_response(exc)

    return status_app


# BentoML's own deadline stays as a backstop behind the boundary's
@bentoml.service(
    name="prodguard",
    traffic={"timeout": max(30.0, _settings.serving.request_timeout_s + 30)},
    threads=8,
    workers=_settings.serving.workers,
)
@bentoml.asgi_app(_status_app(), path="/admin")
class PredictionService:
    def __init__(self) -> None:
        self.metrics = _Metrics()
        self.serving = wiring.build_serving(_settings, metrics=self.metrics)
        _quiet_model_fields()  # again: building the serving imported Feast
        follower = self.serving.follower
        follower.start()
        self.serving.predictor.warm_up({})
        self._guard = _start_guard(_settings)
        self._errors = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodguard-errors")
        LIMITS.hooks.refused = self._refused
        LIMITS.hooks.timed_out = self._timed_out

    def _refused(self, reason: str) -> None:
        self.metrics.refused.labels(reason=reason).inc()

    def _timed_out(self, path: str) -> None:
        """A prediction that overran its deadline got a 5xx: counted as failed (off the event
        loop: the log may be what is slow)."""
        if path in PREDICT_ROUTES:
            self._errors.submit(self._record_error, "failed")

    def _record_error(self, kind: Literal["rejected", "failed"]) -> None:
        champion = self.serving.follower.state.champion
        try:
            self.serving.log.record_error(
                self.serving.clock.now(), kind, champion.version if champion else None
            )
        except ProdguardError as exc:
            _log.warning("request error not counted: %s", exc)

    def _too_many(self, count: int, what: str, field: str) -> BatchTooLarge:
        self._refused("batch_size")
        return BatchTooLarge(
            f"a call holds at most serving.max_batch ({MAX_BATCH}) {what}, this one {count}; "
            "split it into several calls",
            [(field, f"more than {MAX_BATCH} {what}")],
        )

    def _check_outcome(self, outcome: dict[str, Any]) -> None:
        """UnusableOutcome unless a served version's KPI can use the outcome."""
        state = self.serving.follower.state
        loaded = (state.champion, state.standby, state.rollout)
        check_outcome(outcome, _settings.monitoring.kpi, [m.spec for m in loaded if m is not None])

    def __is_ready__(self) -> bool:
        return self.serving.ready()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        if self._guard is not None:
            self._guard.set()
        self.serving.follower.stop()
        self.serving.predictor.close()
        self._errors.shutdown(wait=True)
        self.serving.log.close()

    def _answer(self, request: Any) -> Response:
        """The answer as the response itself: its JSON is what BentoML would write for the
        ``PredictionOut``, sent in one piece with its length (BentoML streams a returned model
        in chunks, one more message through every middleware), ``Server-Timing`` among its
        headers (none for a replayed answer)."""
        stages: dict[str, float] = {}
        (answer,) = self.serving.predictor.predict([request.to_row()], [request.request_id], stages)
        return Response(
            _out(answer).model_dump_json(),
            media_type=JSON,
            headers={"Server-Timing": server_timing(stages)} if stages else None,
        )

    # no context: the response carries its own status and headers
    @bentoml.api(route="/predict", input_spec=RequestModel)
    def predict(self, **fields: Any) -> PredictionOut:
        """Predict one request: features from the online store, checked, champion's answer."""
        try:
            return self._answer(RequestModel(**fields))  # type: ignore[return-value]
        except ProdguardError as exc:
            return error_response(exc)  # type: ignore[return-value]

    @bentoml.api(route="/predict_batch")
    def predict_batch(
        self,
        rows: Annotated[
            list[dict[str, Any]],
            Field(
                min_length=1,
                json_schema_extra=_AT_MOST,
                description="Each row is a body of /predict; a row that does not match it gets "
                "its own 400 entry in the results.",
            ),
        ],
        ctx: bentoml.Context,
    ) -> BatchOut:
        """Predict many rows in one call (at most serving.max_batch; more: 413). Each row is
        answered on its own, in order: its prediction, or its own error (a malformed or refused
        row does not fail the others). 200 whenever the batch itself is well-formed."""
        try:
            if len(rows) > MAX_BATCH:
                self._record_error("rejected")
                raise self._too_many(len(rows), "rows", "rows")
            results: list[BatchRowOut | None] = [None] * len(rows)
            parsed: list[tuple[int, Any]] = []
            for index, row in enumerate(rows):
                try:
                    parsed.append((index, RequestModel.model_validate(row)))
                except ValidationError as exc:
                    results[index] = _row_error(MalformedRow(exc), None)
                    self._record_error("rejected")
            stages: dict[str, float] = {}
            answers = (
                self.serving.predictor.predict_each(
                    [r.to_row() for _, r in parsed], [r.request_id for _, r in parsed], stages
                )
                if parsed
                else []
            )
            if stages:
                ctx.response.headers["Server-Timing"] = server_timing(stages)
            for (index, request), answer in zip(parsed, answers, strict=True):
                results[index] = (
                    _row_error(answer, request.request_id)
                    if isinstance(answer, ProdguardError)
                    else BatchRowOut(
                        status=HTTPStatus.OK, request_id=answer.request_id, prediction=_out(answer)
                    )
                )
            return BatchOut(results=[r for r in results if r is not None])
        except ProdguardError as exc:
            return error_response(exc, ctx)  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    def feedback(self, request_id: RequestId, outcome: Outcome) -> FeedbackOut:
        """Record the observed outcome of a logged prediction (idempotent; 404 if unknown; 422
        if the KPI cannot use it: no monitoring.kpi.outcome key, not a number for a regression,
        not one of a classifier's classes)."""
        try:
            self._check_outcome(outcome)
            status = self.serving.log.record_feedback(request_id, outcome, self.serving.clock.now())
        except ProdguardError as exc:
            return error_response(exc)  # type: ignore[return-value]
        return FeedbackOut(request_id=request_id, status=status)

    @bentoml.api(route="/feedback_batch")
    def feedback_batch(
        self,
        items: Annotated[list[FeedbackItem], Field(min_length=1, json_schema_extra=_AT_MOST)],
        ctx: bentoml.Context,
    ) -> FeedbackBatchOut:
        """Record many outcomes (a label backfill): each item is recorded on its own, so a retry
        after a failure is safe; per item ``recorded``, ``duplicate``, ``unknown`` (no such
        prediction), ``conflict`` (a different outcome was recorded) or ``invalid`` (the KPI
        cannot use the outcome, as /feedback's 422; ``error`` says why)."""
        if len(items) > MAX_BATCH:
            return error_response(self._too_many(len(items), "items", "items"), ctx)  # type: ignore[return-value]
        results = []
        now = self.serving.clock.now()
        try:
            for item in items:
                status: str
                error: str | None = None
                try:
                    self._check_outcome(item.outcome)
                    status = self.serving.log.record_feedback(item.request_id, item.outcome, now)
                except UnusableOutcome as exc:
                    status, error = "invalid", str(exc)
                except UnknownRequest:
                    status = "unknown"
                except FeedbackConflict:
                    status = "conflict"
                results.append(
                    FeedbackItemOut(request_id=item.request_id, status=status, error=error)
                )
        except ProdguardError as exc:
            return error_response(exc, ctx)  # type: ignore[return-value]
        return FeedbackBatchOut(results=results)

    # ---- admin: the use cases of `prodguard promote | rollback | rollout | status` --------------

    def _admin(self, ctx: bentoml.Context, move: Any) -> AdminOut:
        """Run an alias/traffic move; the boundary has checked the token already, this checks
        it again so that no route is open if the middleware were ever left out."""
        refusal = check_token(ctx.request.headers.get("authorization"), LIMITS.admin_token)
        if refusal is not None:
            ctx.response.status_code = refusal.status
            return JSONResponse(  # type: ignore[return-value]
                {"error": refusal.message, "problems": []},
                status_code=refusal.status,
                headers=dict(refusal.headers),
            )
        try:
            return _admin_out(move())
        except ProdguardError as exc:
            return error_response(exc, ctx)  # type: ignore[return-value]

    @staticmethod
    def _operations(version: int | None, with_checks: bool = False) -> RegistryOperations:
        """The registry operations the CLI uses; a ``version`` the registry does not hold is a
        404 here (the registry reports it as a failure of its own)."""
        operations = wiring.registry_operations(_settings, with_checks=with_checks)
        if version is not None and version not in {
            v.version for v in operations.registry.versions()
        }:
            raise UnknownVersion(
                "the model has no such version; GET /admin/status lists the versions there are"
            )
        return operations

    @bentoml.api(route="/admin/promote")
    def admin_promote(
        self,
        ctx: bentoml.Context,
        reason: Reason,
        version: Version | None = None,
        actor: Actor | None = None,
        override_standby_retention: Reason | None = None,
        override_demoted: Reason | None = None,
    ) -> AdminOut:
        """`prodguard promote` over HTTP (bearer token): champion becomes standby, the candidate
        (or ``version``) becomes champion; refused (409) on a contract mismatch, an unloadable
        model, a standby younger than rollout.standby_hours or a version that was rolled back
        (unless overridden, audited) or a concurrent move."""
        return self._admin(
            ctx,
            lambda: self._operations(version, with_checks=True).promote(
                http_actor(actor),
                reason,
                version=version,
                override_retention=override_standby_retention,
                override_demoted=override_demoted,
            ),
        )

    @bentoml.api(route="/admin/rollback")
    def admin_rollback(
        self, ctx: bentoml.Context, reason: Reason, actor: Actor | None = None
    ) -> AdminOut:
        """`prodguard rollback` over HTTP (bearer token): the standby becomes champion again."""
        return self._admin(ctx, lambda: self._operations(None).rollback(http_actor(actor), reason))

    @bentoml.api(route="/admin/rollout/start")
    def admin_rollout_start(
        self,
        ctx: bentoml.Context,
        mode: Literal["canary", "shadow"],
        steps: Annotated[list[Percent], Field(min_length=1, max_length=20)] | None = None,
        version: Version | None = None,
        actor: Actor | None = None,
    ) -> AdminOut:
        """`prodguard rollout start` over HTTP (bearer token): the candidate (or ``version``)
        into canary (``steps`` in percent, default rollout.canary_steps) or shadow traffic."""

        def move() -> Any:
            if version is not None:
                self._operations(version)
            return start_rollout(_settings, mode, http_actor(actor), steps, version)  # type: ignore[arg-type]

        return self._admin(ctx, move)

    @bentoml.api(route="/admin/rollout/abort")
    def admin_rollout_abort(
        self, ctx: bentoml.Context, reason: Reason, actor: Actor | None = None
    ) -> AdminOut:
        """`prodguard rollout abort` over HTTP (bearer token): all traffic to the champion."""

        return self._admin(ctx, lambda: abort_rollout(_settings, http_actor(actor), reason))


# added by @bentoml.service (bentoml is not type-checked: pyproject [tool.mypy])
PredictionService.add_asgi_middleware(Boundary, limits=LIMITS)  # type: ignore[attr-defined]
