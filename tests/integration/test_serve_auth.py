"""decoder serve's --api-key (a Bearer key on /v1/* and the tokenizer routes, 401 error objects,
/health and /metrics open) and --cors-origin (Starlette's CORSMiddleware: off by default)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from servekit import REPO, in_process, server_process

from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

KEY = "sk-test-0123"
ORIGIN = "http://localhost:3000"
COMPLETION = {"prompt": "Harding", "max_tokens": 2}


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


def requests(app, *calls: tuple[str, str, dict]) -> list:
    async def run(client):
        return [await client.request(method, path, **kwargs) for method, path, kwargs in calls]
    return in_process(app, run)


def test_the_key_guards_the_model_routes_and_leaves_health_and_metrics_open(runtime):
    app = create_app(runtime, ServeConfig(api_key=KEY))
    good = {"Authorization": f"Bearer {KEY}"}
    missing, wrong, bare, ok, tokenize, tokenize_ok, models, health, metrics, schema = requests(
        app, ("POST", "/v1/completions", {"json": COMPLETION}),
        ("POST", "/v1/completions", {"json": COMPLETION, "headers": {"Authorization": f"Bearer {KEY}x"}}),
        ("POST", "/v1/completions", {"json": COMPLETION, "headers": {"Authorization": KEY}}),
        ("POST", "/v1/completions", {"json": COMPLETION, "headers": good}),
        ("POST", "/tokenize", {"json": {"prompt": "x"}}),
        ("POST", "/tokenize", {"json": {"prompt": "x"}, "headers": good}),
        ("GET", "/v1/models", {}), ("GET", "/health", {}), ("GET", "/metrics", {}), ("GET", "/openapi.json", {}))
    for r in (missing, wrong, bare, tokenize, models):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
    assert ok.status_code == 200 and ok.json()["choices"] and tokenize_ok.status_code == 200
    assert (health.status_code, metrics.status_code, schema.status_code) == (200, 200, 200)


def test_cors_is_off_by_default_and_answers_the_origins_it_is_given(runtime):
    preflight = ("OPTIONS", "/v1/completions", {"headers": {
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"}})
    post = ("POST", "/v1/completions", {"json": COMPLETION, "headers": {"Origin": ORIGIN}})
    (closed_pre, closed_post) = requests(create_app(runtime), preflight, post)
    assert "access-control-allow-origin" not in closed_post.headers and closed_pre.status_code == 405
    app = create_app(runtime, ServeConfig(cors_origins=(ORIGIN,), api_key=KEY))
    other = ("OPTIONS", "/v1/completions", {"headers": {"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"}})
    pre, refused, denied = requests(app, preflight, other, post)
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN  # the browser sees why


def test_the_cli_takes_the_key_from_the_environment_and_the_openai_client_sends_it(onnx_bundle, monkeypatch):
    openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")
    monkeypatch.setenv("DECODER_API_KEY", KEY)
    with server_process(onnx_bundle, "--cors-origin", ORIGIN) as (url, _):
        with openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
            model = client.models.list().data[0].id
            assert client.completions.create(model=model, **COMPLETION).choices[0].finish_reason in ("stop", "length")
        with openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0, timeout=60) as client:
            with pytest.raises(openai.AuthenticationError):
                client.models.list()


def test_an_empty_key_is_refused_before_the_server_starts(onnx_bundle):
    out = subprocess.run([sys.executable, "-m", "decoder", "serve", str(onnx_bundle), "--api-key", ""],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "--api-key is empty" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(ValueError, match="api_key is empty"):
        ServeConfig(api_key="")
