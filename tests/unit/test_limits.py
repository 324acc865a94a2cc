"""The HTTP boundary's decisions (token, body, in-flight, deadline) on a fake ASGI app, and the
admin token's place in the settings (environment only, never shown)."""

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse

from prodguard.config import load_settings
from prodguard.errors import ConfigError
from prodguard.serving.limits import (
    Boundary,
    InFlight,
    Limits,
    body_refusal,
    check_token,
)

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token-0123456789"
MARKER = "PAYLOADMARKER"


# ---- pure decisions ---------------------------------------------------------------------------


def test_no_token_configured_disables_admin() -> None:
    refusal = check_token(f"Bearer {TOKEN}", None)
    assert refusal is not None and refusal.status == 403
    assert refusal.message == (
        "admin endpoints are disabled: set PRODGUARD_SERVING__ADMIN_TOKEN in the service's "
        "environment"
    )


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic " + TOKEN, TOKEN, "Bearer " + TOKEN[:-1], "Bearer x"],
)
def test_a_missing_or_wrong_token_is_401_with_a_challenge(header) -> None:
    refusal = check_token(header, TOKEN)
    assert refusal is not None and refusal.status == 401
    headers = dict(refusal.headers)
    assert headers["www-authenticate"].startswith('Bearer realm="prodguard-admin"')
    assert TOKEN not in refusal.message and TOKEN not in json.dumps(headers)


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  Bearer  {TOKEN} "])
def test_the_right_token_passes(header) -> None:
    assert check_token(header, TOKEN) is None


@pytest.mark.parametrize(
    ("length", "status"),
    [(None, None), ("0", None), ("1024", None), ("1025", 413), ("-1", 400), ("1e3", 400)],
)
def test_body_refusal_from_the_declared_length(length, status) -> None:
    refusal = body_refusal(length, 1024)
    assert (refusal.status if refusal else None) == status
    if status == 413:
        assert "serving.max_body_bytes (1024 bytes)" in refusal.message


def test_in_flight_counts_up_to_its_limit() -> None:
    slots = InFlight(2)
    assert slots.enter() and slots.enter() and not slots.enter()
    slots.leave()
    assert slots.enter() and not slots.enter()


# ---- the middleware on a fake app ----------------------------------------------------------


class _App:
    """Echoes the body length; ``hold`` blocks every call until set."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.calls = 0
        self.finished = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await self.hold.wait()
        self.finished += 1
        answer = json.dumps({"length": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})


async def _request(boundary, path="/predict", body=b"{}", headers=(), method="POST", chunks=None):
    pending = list(chunks) if chunks is not None else [body]
    sent: list[dict] = []

    async def receive():
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    declared = [] if chunks is not None else [(b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [*declared, *((k.encode(), v.encode()) for k, v in headers)],
    }
    await boundary(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(payload)


def _boundary(app, token=TOKEN, max_body=1024, in_flight=2, timeout=0.2):
    limits = Limits(
        admin_token=token, max_body_bytes=max_body, max_in_flight=in_flight, timeout_s=timeout
    )
    refused: list[str] = []
    paths: list[str] = []
    limits.hooks.refused = refused.append
    limits.hooks.timed_out = paths.append
    return Boundary(app, limits), refused, paths


def test_admin_routes_are_checked_before_anything_is_read() -> None:
    app = _App()
    boundary, refused, _ = _boundary(app)
    status, headers, body = asyncio.run(_request(boundary, "/admin/promote"))
    assert status == 401 and b"www-authenticate" in headers and app.calls == 0
    assert body == {"error": body["error"], "problems": []}
    status, _, _ = asyncio.run(
        _request(boundary, "/admin/promote", headers=[("authorization", f"Bearer {TOKEN}")])
    )
    assert status == 200 and app.calls == 1
    boundary, refused, _ = _boundary(_App(), token=None)
    assert asyncio.run(_request(boundary, "/admin/status", method="GET", body=b""))[0] == 403
    assert refused == ["admin_disabled"]


def test_headers_are_read_case_blind_and_the_first_of_a_repeated_one_counts() -> None:
    app = _App()
    boundary, refused, _ = _boundary(app)
    repeated = [("Authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")]
    assert asyncio.run(_request(boundary, "/admin/promote", headers=repeated))[0] == 200
    swapped = list(reversed(repeated))
    assert asyncio.run(_request(boundary, "/admin/promote", headers=swapped))[0] == 401
    # a declared length over the limit is refused even when another follows it
    status, _, _ = asyncio.run(
        _request(boundary, body=b"x" * 2000, headers=[("Content-Length", "10")])
    )
    assert status == 413 and app.calls == 1 and refused == ["unauthorized", "body_size"]


def test_bodies_over_the_limit_are_413_declared_or_chunked() -> None:
    app = _App()
    boundary, refused, _ = _boundary(app)
    assert asyncio.run(_request(boundary, body=b"x" * 2000))[0] == 413
    status, _, body = asyncio.run(_request(boundary, chunks=[b"x" * 600, b"x" * 600]))
    assert status == 413 and "max_body_bytes" in body["error"]
    assert app.calls == 0 and refused == ["body_size", "body_size"]
    status, _, body = asyncio.run(_request(boundary, chunks=[b"x" * 500, b"x" * 500]))
    assert status == 200 and body == {"length": 1000}  # a chunked body within the limit


def test_a_burst_is_refused_at_once_and_overruns_keep_their_place() -> None:
    async def scenario():
        app = _App()
        app.hold.clear()
        boundary, refused, timed_out = _boundary(app, in_flight=2, timeout=0.2)
        first = [asyncio.create_task(_request(boundary)) for _ in range(2)]
        await asyncio.sleep(0.05)
        burst = await asyncio.gather(*(_request(boundary) for _ in range(5)))
        assert [s for s, _, _ in burst] == [429] * 5
        assert all(h[b"retry-after"] == b"1" for _, h, _ in burst)
        overrun = await asyncio.gather(*first)
        assert [s for s, _, _ in overrun] == [504, 504] and timed_out == ["/predict"] * 2
        # the held work still counts: still refused, not queued
        assert (await _request(boundary))[0] == 429
        app.hold.set()
        for _ in range(100):
            if app.finished == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        assert (await _request(boundary))[0] == 200  # late answers dropped, places given back
        assert refused.count("concurrency") == 6 and refused.count("timeout") == 2
        # GETs (metrics, health, docs) are never limited
        app.hold.clear()
        held = [asyncio.create_task(_request(boundary)) for _ in range(2)]
        await asyncio.sleep(0.05)
        app.hold.set()
        assert (await _request(boundary, "/metrics", method="GET", body=b""))[0] == 200
        await asyncio.gather(*held)

    asyncio.run(scenario())


class _Request(BaseModel):
    request_id: str
    distance: float
    carrier: str


class _Bento:
    """Answers a body that does not fit ``_Request`` as BentoML 1.4 does (its
    ``api_endpoint_wrapper``), any other with ``answer``."""

    def __init__(self, answer: JSONResponse | None = None) -> None:
        self.answer = answer

    async def __call__(self, scope, receive, send) -> None:
        body = (await receive())["body"]
        try:
            _Request.model_validate_json(body)
            response = self.answer or JSONResponse({"ok": True})
        except ValidationError as exc:
            detail = exc.errors(include_context=False, include_input=False)
            response = JSONResponse(
                {"error": f"{exc.error_count()} validation error for Input", "detail": detail},
                status_code=400,
            )
        await response(scope, receive, send)


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        (
            {"request_id": "r1", "distance": MARKER, "carrier": "UA"},
            [("distance", "Input should be a valid number, unable to parse string as a number")],
        ),
        (
            {"request_id": "r1", "distance": MARKER},
            [
                ("distance", "Input should be a valid number, unable to parse string as a number"),
                ("carrier", "Field required"),
            ],
        ),
        ([MARKER], [("body", "Input should be an object")]),
        (
            '{"not json ' + MARKER,
            [("body", "Invalid JSON: EOF while parsing a string at line 1 column 24")],
        ),
    ],
)
def test_a_body_that_does_not_fit_is_one_problem_per_mistake_without_links(body, problems) -> None:
    boundary, _, _ = _boundary(_Bento(), max_body=4096)
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    status, headers, answer = asyncio.run(_request(boundary, body=data))
    assert status == 400 and int(headers[b"content-length"]) == len(json.dumps(answer))
    assert answer == {
        "error": "malformed request: " + "; ".join(f"{f}: {p}" for f, p in problems),
        "problems": [{"field": f, "problem": p} for f, p in problems],
    }
    assert MARKER not in json.dumps(answer) and "pydantic" not in json.dumps(answer)


def test_answers_of_prodguard_pass_unchanged() -> None:
    own = {"error": "malformed row: x: y", "problems": [{"field": "x", "problem": "y"}]}
    boundary, _, _ = _boundary(_Bento(JSONResponse(own, status_code=400)), max_body=4096)
    valid = json.dumps({"request_id": "r1", "distance": 1.0, "carrier": "UA"}).encode()
    assert asyncio.run(_request(boundary, body=valid))[::2] == (400, own)
    boundary, _, _ = _boundary(_Bento(), max_body=4096)
    assert asyncio.run(_request(boundary, body=valid))[::2] == (200, {"ok": True})


class _InPieces:
    """A 400 sent as a start and its body in two messages, as a streaming framework may."""

    def __init__(self, answer: dict) -> None:
        self.text = json.dumps(answer).encode()

    async def __call__(self, scope, receive, send) -> None:
        await receive()
        length = str(len(self.text)).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", length)
        ]})  # fmt: skip
        half = len(self.text) // 2
        await send({"type": "http.response.body", "body": self.text[:half], "more_body": True})
        await send({"type": "http.response.body", "body": self.text[half:]})


def test_a_400_in_pieces_is_rewritten_whole_and_an_empty_detail_is_left_as_it_is() -> None:
    detail = [{"type": "missing", "loc": ["carrier"], "msg": "Field required"}]
    boundary, _, _ = _boundary(_InPieces({"error": "1 validation error", "detail": detail}))
    status, headers, answer = asyncio.run(_request(boundary))
    assert status == 400 and int(headers[b"content-length"]) == len(json.dumps(answer))
    assert answer == {
        "error": "malformed request: carrier: Field required",
        "problems": [{"field": "carrier", "problem": "Field required"}],
    }
    bare = {"error": "something BentoML said", "detail": []}  # nothing to list: kept
    boundary, _, _ = _boundary(_InPieces(bare))
    assert asyncio.run(_request(boundary))[::2] == (400, bare)


# ---- the token in the settings ------------------------------------------------------------


def test_the_token_comes_from_the_environment_as_given_and_is_never_shown(
    project: Path,
) -> None:
    settings = load_settings(
        project / "prodguard.yaml", environ={"PRODGUARD_SERVING__ADMIN_TOKEN": "0012345678901234"}
    )
    assert settings.serving.admin_token.get_secret_value() == "0012345678901234"  # not YAML 12
    assert "0012345678901234" not in repr(settings) + str(settings.model_dump())
    with pytest.raises(ConfigError, match="at least 16") as short:
        load_settings(project / "prodguard.yaml", environ={"PRODGUARD_SERVING__ADMIN_TOKEN": "abc"})
    assert "abc" not in str(short.value)


def test_a_token_written_in_the_file_is_refused(project: Path) -> None:
    config = project / "prodguard.yaml"
    text = config.read_text()
    config.write_text(
        text.replace("  max_batch: 1000", f"  admin_token: {TOKEN}\n  max_batch: 1000")
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config, environ={})
    assert "serving.admin_token holds a secret" in str(refused.value)
    assert "PRODGUARD_SERVING__ADMIN_TOKEN" in str(refused.value) and TOKEN not in str(
        refused.value
    )

    production = text.replace(
        "    rollout:\n      require_drill: true",
        "    serving:\n      admin_token: ${PRODGUARD_ADMIN_TOKEN}\n"
        "    rollout:\n      require_drill: true",
    )
    config.write_text(production)
    environ = {
        "PRODGUARD_ENV": "production",
        "PRODGUARD_ADMIN_TOKEN": TOKEN,
        "PRODGUARD_DATABASE_URL": "postgresql+psycopg://u@db:5432/p",
    }
    settings = load_settings(config, environ=environ)
    assert settings.serving.admin_token.get_secret_value() == TOKEN  # a ${VARIABLE} is fine
    config.write_text(production.replace("${PRODGUARD_ADMIN_TOKEN}", TOKEN))
    with pytest.raises(ConfigError, match="environments.production.serving.admin_token"):
        load_settings(config, environ=environ)
