"""The service's HTTP boundary: admin authentication and the limits that answer 4xx/5xx at once
instead of letting a process collapse (body size, concurrent requests, a deadline per request).

:class:`Boundary` is a plain ASGI middleware (BentoML adds it with ``add_asgi_middleware``); the
decisions are pure functions, tested without a server. Every refusal is a JSON body
``{"error", "problems": []}`` that says what is wrong and how to fix it, never the request's
values, and is counted through :attr:`Boundary.hooks`.

- ``/admin/...``: ``Authorization: Bearer <serving.admin_token>`` (compared in constant time);
  no token configured: 403, a wrong or missing one: 401 with ``WWW-Authenticate``.
- every request with a body: at most ``max_body_bytes`` (413, decided from ``Content-Length``
  before anything is read; a chunked body is read up to the limit and no further).
- every POST outside ``/admin`` (predictions, feedback): at most ``max_in_flight`` at once in
  the process (429 with ``Retry-After``, answered at once, never queued), each answered within
  ``timeout_s`` (504). A request that overran keeps its place among the running ones until its work
  really ends, so hung work cannot pile up behind the answers already given.
- every POST: BentoML's own answer to a body that does not fit the API's input (a 400 listing
  pydantic's errors, each with a link to pydantic's docs) is rewritten as ``{"error",
  "problems": [{"field", "problem"}]}``, one problem per mistake, as a malformed row of
  ``/predict_batch`` is answered (:func:`schema_refusal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

_log = logging.getLogger("prodguard.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_PREFIX = "/admin/"
TOKEN_ENV = "PRODGUARD_SERVING__ADMIN_TOKEN"
REALM = 'Bearer realm="prodguard-admin"'
RETRY_AFTER_S = 1
# a refused body is read (and dropped) up to this much, so that the client, still sending, reads
# the 413 instead of a connection reset; larger bodies are cut off
DRAIN_BYTES = 8 * 1024 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class Refusal:
    """An answer the boundary gives instead of the service: status, metric reason, message."""

    status: int
    reason: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return json.dumps(refusal_document(self.message)).encode()


def refusal_document(message: str, problems: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Every refusal's body: ``{"error": message, "problems": [{"field", "problem"}]}``, never
    the payload."""
    return {"error": message, "problems": [{"field": f, "problem": p} for f, p in problems]}


def validation_problems(errors: Iterable[Mapping[str, Any]], whole: str) -> list[tuple[str, str]]:
    """(field, what is wrong) of each pydantic error: where and what, never the value nor
    pydantic's link; ``whole`` names a mistake in the body as a whole (no field)."""
    return [
        (".".join(str(part) for part in e.get("loc", ())) or whole, str(e.get("msg", "invalid")))
        for e in errors
    ]


def malformed(what: str, problems: list[tuple[str, str]]) -> str:
    """The one-line message of a malformed body: its first five problems."""
    return f"malformed {what}: " + "; ".join(f"{f}: {p}" for f, p in problems[:5])


def schema_refusal(body: bytes) -> bytes | None:
    """BentoML's 400 body for an input that does not fit the API (``{"error": "N validation
    errors for Input", "detail": [pydantic errors]}``) as prodguard's ``{"error", "problems"}``;
    None for any other body (an answer of prodguard's own is left as it is)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    detail = answer.get("detail") if isinstance(answer, dict) else None
    if not isinstance(detail, list) or not detail or not all(isinstance(e, dict) for e in detail):
        return None  # nothing to list: BentoML's own words stay
    problems = validation_problems(detail, "body")
    return json.dumps(refusal_document(malformed("request", problems), problems)).encode()


def check_token(authorization: str | None, token: str | None) -> Refusal | None:
    """None when ``authorization`` carries the configured admin token, else the refusal."""
    if not token:
        return Refusal(
            403,
            "admin_disabled",
            f"admin endpoints are disabled: set {TOKEN_ENV} in the service's environment",
        )
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Refusal(
            401,
            "unauthorized",
            "admin endpoints need the header 'Authorization: Bearer <token>' with the token of "
            f"{TOKEN_ENV}",
            (("www-authenticate", REALM),),
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return Refusal(
            401,
            "unauthorized",
            f"the bearer token is not the service's admin token; use the value of {TOKEN_ENV}",
            (("www-authenticate", f'{REALM}, error="invalid_token"'),),
        )
    return None


def too_large(max_bytes: int) -> Refusal:
    return Refusal(
        413,
        "body_size",
        f"the request body is larger than serving.max_body_bytes ({max_bytes} bytes); send "
        "fewer rows per call",
    )


def body_refusal(content_length: str | None, max_bytes: int) -> Refusal | None:
    """The refusal a declared ``Content-Length`` earns before anything is read."""
    if content_length is None:
        return None
    if not content_length.strip().isdigit():
        return Refusal(
            400, "bad_length", "the Content-Length header must be a number of bytes; fix it"
        )
    return too_large(max_bytes) if int(content_length) > max_bytes else None


def overloaded(max_in_flight: int) -> Refusal:
    return Refusal(
        429,
        "concurrency",
        f"this service process already has serving.max_in_flight ({max_in_flight}) requests "
        f"running; retry after {RETRY_AFTER_S} s or spread the load over replicas",
        (("retry-after", str(RETRY_AFTER_S)),),
    )


def timed_out(timeout_s: float) -> Refusal:
    return Refusal(
        504,
        "timeout",
        f"the request was not answered within serving.request_timeout_s ({timeout_s:g} s); "
        "retry with the same request_id (a prediction made meanwhile is replayed, not repeated)",
        (("retry-after", str(RETRY_AFTER_S)),),
    )


class InFlight:
    """Requests running in this process, up to a limit (used on the event loop's thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count = max(0, self.count - 1)


@dataclass
class Hooks:
    """What the service plugs in once it is built: ``refused(reason)`` counts a refusal,
    ``timed_out(path)`` records a request that overran its deadline."""

    refused: Callable[[str], None] = lambda reason: None
    timed_out: Callable[[str], None] = lambda path: None


@dataclass
class Limits:
    admin_token: str | None
    max_body_bytes: int
    max_in_flight: int
    timeout_s: float
    hooks: Hooks = field(default_factory=Hooks)


class _Headers(NamedTuple):
    """The request headers the boundary decides on, read in one pass over the scope's list."""

    content_length: str | None = None
    authorization: str | None = None
    expect: str | None = None


_WANTED = {b"content-length": 0, b"authorization": 1, b"expect": 2}  # -> field of _Headers


def _headers(scope: Scope) -> _Headers:
    found: list[str | None] = [None, None, None]
    for key, value in scope.get("headers", ()):
        index = _WANTED.get(key)
        if index is None:
            index = _WANTED.get(key.lower())
        if index is not None and found[index] is None:  # the first one, as before
            found[index] = value.decode("latin-1")
    return _Headers(*found)


class Boundary:
    """The ASGI middleware; ``limits`` is shared with the service (module-level in the
    service module), so its hooks can be filled after the app is built."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.in_flight = InFlight(limits.max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = _headers(scope)
        admin = path.startswith(ADMIN_PREFIX) or path == ADMIN_PREFIX.rstrip("/")
        if admin:
            refusal = check_token(headers.authorization, self.limits.admin_token)
            if refusal is not None:
                await self._refuse(refusal, scope, receive, send, headers)
                return
        refusal = body_refusal(headers.content_length, self.limits.max_body_bytes)
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send, headers)
            return
        if admin or scope.get("method") != "POST":
            await self._run(scope, receive, send, headers)
            return
        if not self.in_flight.enter():
            await self._refuse(overloaded(self.limits.max_in_flight), scope, receive, send, headers)
            return
        await self._deadline(scope, receive, send, headers)

    # ---- the deadline ----------------------------------------------------------------------

    async def _deadline(
        self, scope: Scope, receive: Receive, send: Send, headers: _Headers
    ) -> None:
        answered = False  # by the boundary: the service's late answer is dropped
        started = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # the request runs as a task of its own, so that the boundary can answer at the deadline
        # while the work goes on; one future wakes this coroutine at whichever comes first (a
        # timer and a done callback: what asyncio.wait does, without its per-call sets)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(scope, receive, guarded, headers))
        task.add_done_callback(self._finished)
        woken = loop.create_future()
        timer = loop.call_later(self.limits.timeout_s, _wake, woken)
        task.add_done_callback(lambda _: _wake(woken))
        try:
            await woken
        finally:
            timer.cancel()
        if task.done() or started:
            await task  # finished, or its answer is already on the way
            return
        answered = True
        refusal = timed_out(self.limits.timeout_s)
        _log.warning("%s %s: %s", scope.get("method"), scope.get("path"), refusal.message)
        self._call(self.limits.hooks.timed_out, scope.get("path", ""))
        await self._answer(refusal, send)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self.in_flight.leave()
        if not task.cancelled() and task.exception() is not None:
            _log.debug("request failed after its deadline: %s", task.exception())

    # ---- the body ----------------------------------------------------------------------------

    async def _run(self, scope: Scope, receive: Receive, send: Send, headers: _Headers) -> None:
        """The service, given a body without ``Content-Length`` (chunked) only once it has been
        read whole within the limit; past the limit the request gets a 413 and nothing more is
        read. A declared length was checked already, and the server holds the body to it."""
        if headers.content_length is None and scope.get("method") in BODY_METHODS:
            limit = self.limits.max_body_bytes
            chunks: list[bytes] = []
            seen = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > limit:
                    if message.get("more_body"):
                        await self._refuse(too_large(limit), scope, receive, send, headers)
                    else:
                        await self._answer(too_large(limit), send)
                    return
                if not message.get("more_body"):
                    break
            receive = _replay(b"".join(chunks), receive)
        if scope.get("method") in BODY_METHODS:
            send = _schema_refusals(send)
        await self.app(scope, receive, send)

    # ---- answers -----------------------------------------------------------------------------

    async def _refuse(
        self, refusal: Refusal, scope: Scope, receive: Receive, send: Send, headers: _Headers
    ) -> None:
        if scope.get("method") in BODY_METHODS and (headers.expect or "").lower() != "100-continue":
            await _drain(receive)
        await self._answer(refusal, send)

    async def _answer(self, refusal: Refusal, send: Send) -> None:
        self._call(self.limits.hooks.refused, refusal.reason)
        body = refusal.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.encode(), v.encode()) for k, v in refusal.headers),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _call(hook: Callable[[str], None], value: str) -> None:
        try:
            hook(value)
        except Exception:  # noqa: BLE001 - counting must never break an answer
            _log.exception("boundary hook failed")


def _replay(body: bytes, receive: Receive) -> Receive:
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _schema_refusals(send: Send) -> Send:
    """``send`` with a 400 held until its body is whole, then rewritten by
    :func:`schema_refusal` (every other answer passes straight through)."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def clean(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message.get("status") == 400:
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        body = schema_refusal(body) or body
        headers = [(k, v) for k, v in held.get("headers", ()) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return clean


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _drain(receive: Receive) -> None:
    """Read and drop what the client is still sending (bounded), so it reads our answer."""
    seen = 0
    with contextlib.suppress(Exception):
        while seen < DRAIN_BYTES:
            message = await asyncio.wait_for(receive(), timeout=5)
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return
