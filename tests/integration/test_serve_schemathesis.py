"""schemathesis against the served /openapi.json: for every operation, requests generated from the
schema (valid ones and, for the request bodies, broken ones) never get a 5xx, and every answer has
a documented status and content type and conforms to its documented schema. Examples are bounded
(MAX_EXAMPLES per operation) and `max_tokens` is capped at MAX_TOKENS, so the test takes seconds,
not the minutes 4,096-token completions would."""

from __future__ import annotations

import pytest
from servekit import uvicorn_thread

from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 12
MAX_TOKENS = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def served(onnx_bundle):
    app = create_app(Runtime(onnx_bundle, threads=1), ServeConfig(max_batch=4, max_queue=4, max_body_bytes=1 << 16))
    with uvicorn_thread(app) as (host, port):
        yield f"http://{host}:{port}"


def cap(case) -> None:
    """Keep generated completions short (the window slides, so 4,096 tokens would be accepted)."""
    if isinstance(case.body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            if isinstance(case.body.get(name), int) and not isinstance(case.body.get(name), bool):
                case.body[name] = min(case.body[name], MAX_TOKENS)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_error_and_every_answer_conforms(served, mode):
    api = schemathesis.openapi.from_url(served + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # nothing to break in a request without a body (and the path's name is any string)

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        def check(case) -> None:
            cap(case)
            case.call_and_validate(base_url=served, checks=CHECKS)

        check()
