"""schemathesis against a real `prodguard serve`: thousands of generated requests on every
operation of the service's OpenAPI (``/docs.json``), admin routes with and without the token.

Each operation gets schema-valid (positive) and schema-violating (negative) cases from a fixed
seed (``derandomize``), no shrinking, so the run is repeatable and bounded. Checks:

- ``not_a_server_error``: no 5xx, ever.
- ``success_schema_conformance``: a 2xx answer matches its documented schema (BentoML derives
  it from the API's return type). Error answers are not checked against the schema: BentoML
  documents its 400 body as ``{"error": str, "detail": str}`` while it sends ``detail`` as a
  list of pydantic errors — its schema is wrong there, not the answer.
- ``content_type_conformance``: the answer's media type is the documented one.
- ``negative_data_rejection``: a request that breaks the schema is a 4xx, never a 2xx (413 for a
  batch over ``serving.max_batch``, the schema's ``maxItems``, included).
- ``no_payload_echo`` (ours): no error body contains a string value that was sent.
- without the token every admin route answers 401, whatever the body.

Left out, on purpose: ``status_code_conformance`` (BentoML documents only 200/400/404/500 for
every API; prodguard's 401/403/409/413/422/429/503/504 are by design and cannot be declared),
``positive_data_acceptance`` (a schema-valid flight can still fail the expectation suites, 422;
feedback for an unknown request id is a 404), and the stateful checks (no links in the schema).
"""

import contextlib
import json
import shutil
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from tests.conftest import make_project
from tests.e2e.cli import serving

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-admin-token-0123456789abcdef"
# generated cases per operation and mode: data routes get the most, admin routes are sent
# twice per case (without and with the token); routes with no input vary little
CASES = {"data": 170, "admin": 45, "fixed": 5}
MIN_ECHO = 8  # shorter sent strings ("UA", "x") occur in messages by chance


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _without_links(value: Any) -> Any:
    """The body without the ``url`` of each pydantic error (a link to pydantic's docs, which the
    generator also feeds back as a sent value)."""
    if isinstance(value, dict):
        return {k: _without_links(v) for k, v in value.items() if k != "url"}
    if isinstance(value, list):
        return [_without_links(v) for v in value]
    return value


@schemathesis.check
def no_payload_echo(ctx, response, case) -> bool | None:
    """An error body never contains a (long enough) string value of the request."""
    if response.status_code < 400:
        return None  # an answer may carry the caller's own request_id back
    sent = [s for s in _strings(case.body) if len(s) >= MIN_ECHO and s.strip()]
    text = response.text
    with contextlib.suppress(ValueError):  # decoded (escapes), without pydantic's doc links
        text = json.dumps(_without_links(json.loads(text)), ensure_ascii=False)
    echoed = [s for s in sent if s in text]
    if echoed:
        raise AssertionError(f"error body echoes a sent value: {echoed[0]!r}")
    return None


@schemathesis.check
def success_schema_conformance(ctx, response, case) -> bool | None:
    """BentoML's documented schema, for the answers where it is right (2xx)."""
    if response.status_code >= 300:
        return None
    return response_schema_conformance(ctx, response, case)


@schemathesis.check
def negative_data_refused(ctx, response, case) -> bool | None:
    """``negative_data_rejection``, with 413 counted as a refusal too: a batch over
    serving.max_batch (the schema's maxItems) is refused as too large, not as malformed."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    success_schema_conformance,
    content_type_conformance,
    negative_data_refused,
    no_payload_echo,
]


@pytest.fixture(scope="module")
def service(served_project, tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("fuzz") / "project")
    shutil.copytree(served_project / ".prodguard", root / ".prodguard")
    env = {"PRODGUARD_SERVING__ADMIN_TOKEN": TOKEN, "PRODGUARD_SERVING__POLL_SECONDS": "1"}
    with serving(root, env, log_name="serve-fuzz.log") as base:
        yield base, root
    assert TOKEN not in (root / "serve-fuzz.log").read_text()


def _kind(path: str, operation) -> str:
    if path.startswith("/admin/"):
        return "admin" if operation.method.upper() == "POST" else "fixed"
    return "data" if operation.method.upper() == "POST" else "fixed"


def test_generated_requests_on_every_operation(service) -> None:
    base, _ = service
    schema = schemathesis.openapi.from_url(f"{base}/docs.json")
    session = requests.Session()
    sent: dict[str, int] = {}
    statuses: dict[int, int] = {}
    began = time.monotonic()

    def exercise(case, label: str, admin: bool) -> None:
        calls = [None, {"Authorization": f"Bearer {TOKEN}"}] if admin else [None]
        for headers in calls:
            response = case.call(base_url=base, session=session, headers=headers, timeout=30)
            sent[label] = sent.get(label, 0) + 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if admin and headers is None:
                assert response.status_code == 401, (label, response.status_code, response.text)
                no_payload_echo(None, response, case)
                continue
            case.validate_response(response, checks=CHECKS, headers=headers)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/predict",
        "/predict_batch",
        "/feedback",
        "/feedback_batch",
        "/admin/promote",
        "/admin/rollback",
        "/admin/rollout/start",
        "/admin/rollout/abort",
        "/admin/status",
    }
    for operation in operations:
        kind = _kind(operation.path, operation)
        modes = [GenerationMode.POSITIVE]
        if operation.body:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            label = f"{operation.method.upper()} {operation.path}"

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=CASES[kind],
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
            def run(case) -> None:
                exercise(case, run.label, run.admin)

            run.label, run.admin = label, kind == "admin"
            run()

    seconds = time.monotonic() - began
    total = sum(sent.values())
    print(
        f"\nschemathesis: {total} requests in {seconds:.1f} s; statuses {sorted(statuses.items())}"
    )
    for label, count in sorted(sent.items()):
        print(f"  {label}: {count}")
    assert total >= 2000
    assert not [code for code in statuses if code >= 500]
