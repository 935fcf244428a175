"""decoder serve's answers to hostile or impossible requests: a body nested too deeply to parse, a
bug in a route (500) on a keep-alive connection, temperatures and penalties that would overflow the
sampler, and a request larger than the server could ever admit. Over real HTTP connections
(uvicorn in a thread) where the connection itself is what is tested."""

from __future__ import annotations

import http.client
import json
import logging

import pytest
from servekit import in_process, uvicorn_thread

from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

PROMPT = "Harding wondered"
BOOM = "boom"


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


def nested(depth: int) -> bytes:
    return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    """(status, headers, body) of one request on `conn` (kept open between calls)."""
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@pytest.mark.parametrize("depth", [1200, 100_000])
def test_a_deeply_nested_body_is_a_400_and_the_connection_stays_usable(runtime, caplog, depth):
    app = create_app(runtime, ServeConfig(max_body_bytes=1 << 20))
    with caplog.at_level(logging.WARNING), uvicorn_thread(app) as (host, port):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        status, _, body = exchange(conn, "POST", "/v1/completions", nested(depth))
        again = exchange(conn, "POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 2}).encode())
        conn.close()
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "invalid_json" and "too deeply" in error["message"]
    assert again[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_nested_prompt_the_parser_can_read_is_refused_by_type(runtime):
    r = in_process(create_app(runtime), lambda client: client.post("/v1/completions", content=nested(200)))
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "prompt" and "prompt[0][0] must be a token id" in error["message"]


class ExplodingTokenizer:
    """The runtime's tokenizer, except that encoding BOOM raises: a bug inside a route."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, text: str) -> list[int]:
        if text == BOOM:
            raise RuntimeError("injected bug")
        return self._tokenizer.encode(text)


class WithExplodingTokenizer:
    def __init__(self, runtime: Runtime) -> None:
        self.tokenizer = ExplodingTokenizer(runtime.tokenizer)
        self.context_length, self.eot_id, self.meta = runtime.context_length, runtime.eot_id, runtime.meta
        self.prefill, self.decode = runtime.prefill, runtime.decode


def test_a_500_leaves_the_keep_alive_connection_usable(runtime, caplog):
    app = create_app(WithExplodingTokenizer(runtime))
    with caplog.at_level(logging.ERROR), uvicorn_thread(app) as (host, port):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        failed = exchange(conn, "POST", "/v1/completions", json.dumps({"prompt": BOOM}).encode())
        sock = conn.sock
        after = [exchange(conn, "POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 2}).encode()),
                 exchange(conn, "GET", "/health")]
        same_socket = conn.sock is sock
        conn.close()
    status, headers, body = failed
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
    assert "injected bug" not in body.decode() and "Traceback" not in body.decode()
    # Either the connection stays usable or the response says it will close; here it stays.
    assert headers.get("connection") != "close" and same_socket
    assert [a[0] for a in after] == [200, 200]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "injected bug" in (logged[0].exc_text or "")


def test_an_oversized_body_on_keep_alive_is_refused_and_the_connection_closes_cleanly(runtime):
    """413 before the body is read: the unread bytes cannot be skipped, so the server must say it closes."""
    app = create_app(runtime, ServeConfig(max_body_bytes=4096))
    with uvicorn_thread(app) as (host, port):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        status, headers, _ = exchange(conn, "POST", "/v1/completions", b" " * 100_000)
        again = exchange(conn, "GET", "/health")  # http.client reopens after Connection: close, as clients do
        conn.close()
    assert status == 413 and headers["connection"] == "close" and again[0] == 200


def test_a_tiny_temperature_or_penalty_gives_text_not_nan(runtime):
    """Overflowing logits once made NaN probabilities, and the sampler then picked token 0 (a NUL byte)."""
    app = create_app(runtime, ServeConfig(max_batch=4))
    body = {"prompt": PROMPT, "max_tokens": 24, "seed": 1}

    async def call(client):
        requests = [{**body, "temperature": 5e-324}, {**body, "temperature": 0},
                    {**body, "temperature": 0.8, "repetition_penalty": 5e-324},
                    {**body, "temperature": 5e-324, "repetition_penalty": 5e-324}]
        return [await client.post("/v1/completions", json=r) for r in requests]

    responses = in_process(app, call)
    assert [r.status_code for r in responses] == [200] * 4
    texts = [r.json()["choices"][0]["text"] for r in responses]
    assert texts[0] == texts[1]  # a tiny temperature is greedy
    assert all(text and "\x00" not in text for text in texts)


def test_a_request_larger_than_slots_and_queue_is_a_400_not_a_429(runtime):
    app = create_app(runtime, ServeConfig(max_batch=8, max_queue=4, sampling_defaults="openai"))  # at most 12 sequences

    async def call(client):
        too_many = await client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 7, "max_tokens": 1})
        most = await client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 6, "max_tokens": 1})
        return too_many, most

    too_many, most = in_process(app, call)
    error = too_many.json()["error"]
    assert too_many.status_code == 400 and "retry-after" not in too_many.headers
    assert (error["param"], error["code"]) == ("n", "too_many_sequences")
    assert "2 prompt(s) x n=7 = 14 sequences" in error["message"] and "at most 12" in error["message"]
    assert most.status_code == 200 and len(most.json()["choices"]) == 12
