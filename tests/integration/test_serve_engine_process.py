"""`decoder serve --engine process`: the engine in a child process gives the thread engine's text,
logprobs and metrics, streams, frees a cancelled request's slot, ends in-flight requests with
"error" and refuses new ones (503) when the child dies, and leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
from servekit import in_process, metric, server_process, sse_data, stream_texts, uvicorn_thread
from test_serve_api import PLAIN, PROMPT, generate_onnx

from decoder.bundle import MODEL_FILE
from decoder.cli import main as cli_main
from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig, load_runtime

LIMITS = {"max_batch": 4, "max_queue": 4, "sampling_defaults": "openai"}


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


def process_app(runtime, bundle: Path, **limits):
    config = ServeConfig(**{**LIMITS, **limits}, engine="process")
    return create_app(runtime, config, engine_model=partial(load_runtime, bundle, MODEL_FILE, 1))


@pytest.fixture(scope="module")
def url(runtime, onnx_bundle):
    """One process-engine server (uvicorn in a thread) for the module."""
    with uvicorn_thread(process_app(runtime, onnx_bundle)) as (host, port):
        yield f"http://{host}:{port}"


def thread_engine(runtime, *bodies: dict) -> list[dict]:
    """The thread engine's answers to `bodies`, one after another."""
    async def call(client):
        return [(await client.post("/v1/completions", json=body)).json() for body in bodies]
    return in_process(create_app(runtime, ServeConfig(**LIMITS)), call)


def gone(pid: int) -> bool:
    """Whether `pid` is no child of this process any more (exited and reaped: no zombie)."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0) and not Path(f"/proc/{pid}").exists()
    except ChildProcessError:
        return True


def test_greedy_and_seeded_text_equal_the_thread_engine_and_generate_onnx(url, runtime, onnx_bundle, capsys):
    greedy = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0}  # 40 tokens slide the 16-token window
    seeded = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 7}
    answers = [httpx.post(url + "/v1/completions", json=body, timeout=60).json() for body in (greedy, seeded)]
    assert [a["choices"] for a in answers] == [a["choices"] for a in thread_engine(runtime, greedy, seeded)]
    expected = generate_onnx(capsys, onnx_bundle, "--greedy", "--max-new-tokens", "40", *PLAIN)
    assert answers[0]["choices"][0]["text"] == expected and answers[0]["usage"]["completion_tokens"] == 40


def test_stream_joins_to_the_plain_answer_with_its_usage(url):
    body = {"prompt": [PROMPT, "The sea"], "max_tokens": 12, "temperature": 0}
    plain = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
    streamed = httpx.post(url + "/v1/completions", timeout=60,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}})
    payloads = sse_data(streamed.text)
    texts, finishes = stream_texts(payloads)
    assert texts == {c["index"]: c["text"] for c in plain["choices"]} and finishes == {0: "length", 1: "length"}
    assert json.loads(payloads[-2])["usage"] == plain["usage"]


def test_n_best_of_echo_stop_and_logprobs_equal_the_thread_engines(url, runtime):
    bodies = [{"prompt": PROMPT, "n": 2, "max_tokens": 30, "temperature": 0.8, "seed": 3, "logprobs": 2, "echo": True},
              {"prompt": "The sea", "best_of": 3, "max_tokens": 10, "temperature": 1.2, "seed": 5},
              {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": ["e", "\n\n"], "logprobs": 1}]
    answers = [httpx.post(url + "/v1/completions", json=body, timeout=60).json() for body in bodies]
    assert answers[2]["choices"][0]["finish_reason"] == "stop"
    for got, want in zip(answers, thread_engine(runtime, *bodies)):
        assert len(got["choices"]) == len(want["choices"]) and got["usage"] == want["usage"]
        for a, b in zip(got["choices"], want["choices"]):
            assert (a["text"], a["finish_reason"]) == (b["text"], b["finish_reason"])
            if b["logprobs"] is not None:
                assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
                assert a["logprobs"]["text_offset"] == b["logprobs"]["text_offset"]
                assert a["logprobs"]["token_logprobs"] == pytest.approx(b["logprobs"]["token_logprobs"], abs=1e-4)


def test_chat_logprobs_stream_like_the_plain_answer(url):
    body = {"messages": [{"role": "user", "content": "Who is Harding?"}], "max_tokens": 15, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}
    plain = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    chunks = [json.loads(p) for p in sse_data(httpx.post(url + "/v1/chat/completions", json={**body, "stream": True},
                                                         timeout=60).text)[:-1]]
    content = [e for c in chunks for choice in c["choices"] for e in (choice["logprobs"] or {}).get("content", [])]
    assert [e["token"] for e in content] == [e["token"] for e in plain["logprobs"]["content"]]
    assert "".join(e["token"] for e in content) == plain["message"]["content"]


def test_metrics_count_one_request_exactly(url):
    before = httpx.get(url + "/metrics").text
    usage = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 9, "temperature": 0},
                       timeout=60).json()["usage"]
    after = httpx.get(url + "/metrics").text
    delta = {name: metric(after, name) - metric(before, name) for name in (
        "decoder_generated_tokens_total", "decoder_prompt_tokens_total", "decoder_request_latency_seconds_count",
        "decoder_request_queue_time_seconds_count", "decoder_time_to_first_token_seconds_count",
        "decoder_inter_token_latency_seconds_count", 'decoder_sequences_finished_total{finish_reason="length"}')}
    assert delta == {"decoder_generated_tokens_total": 9, "decoder_prompt_tokens_total": usage["prompt_tokens"],
                     "decoder_request_latency_seconds_count": 1, "decoder_request_queue_time_seconds_count": 1,
                     "decoder_time_to_first_token_seconds_count": 1, "decoder_inter_token_latency_seconds_count": 8,
                     'decoder_sequences_finished_total{finish_reason="length"}': 1}
    assert metric(after, "decoder_batch_rows_count") > metric(before, "decoder_batch_rows_count")
    assert metric(after, "decoder_requests_running") == metric(after, "decoder_requests_waiting") == 0


def wait_until_idle(url: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while metric(text := httpx.get(url + "/metrics").text, "decoder_requests_running") != 0:
        assert time.monotonic() < deadline, "the abandoned request still runs"
        time.sleep(0.05)
    return text


def test_a_client_hanging_up_mid_stream_frees_its_slot_in_the_child(url):
    async def hang_up():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                lines = r.aiter_lines()
                seen = 0
                while seen < 5:
                    seen += (await anext(lines)).startswith("data:")
                return metric((await client.get(url + "/metrics")).text, "decoder_requests_running")

    assert asyncio.run(hang_up()) == 1
    idle = wait_until_idle(url)
    assert metric(idle, 'decoder_sequences_finished_total{finish_reason="cancelled"}') >= 1
    time.sleep(0.3)  # the child decodes nothing more for it
    assert metric(httpx.get(url + "/metrics").text, "decoder_generated_tokens_total") == metric(
        idle, "decoder_generated_tokens_total")
    assert httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_a_killed_child_ends_streams_with_an_error_and_new_requests_get_503(runtime, onnx_bundle):
    app = process_app(runtime, onnx_bundle, max_batch=2)
    engine = app.state.engine
    with uvicorn_thread(app) as (host, port):
        base = f"http://{host}:{port}"
        pid = engine.process.pid
        with httpx.stream("POST", base + "/v1/completions", timeout=30,
                          json={"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data:")
            os.kill(pid, signal.SIGKILL)
            payloads = sse_data("\n".join([*lines]))
        assert json.loads(payloads[-1])["error"]["code"] == "engine_error"
        refused = httpx.post(base + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        assert httpx.get(base + "/health").status_code == 503
        text = httpx.get(base + "/metrics").text
        assert metric(text, 'decoder_sequences_finished_total{finish_reason="error"}') == 1
        assert metric(text, "decoder_requests_running") == 0
    assert engine.process is None and gone(pid)


def test_stop_joins_the_child_and_drain_cancels_what_runs(runtime, onnx_bundle):
    app = process_app(runtime, onnx_bundle)
    engine = app.state.engine

    async def call(client):
        pending = asyncio.ensure_future(client.post("/v1/completions", json={  # 8 x 4,000 tokens, 4 at a time
            "prompt": [PROMPT] * 8, "max_tokens": 4000, "temperature": 0}))
        while engine.jobs_running < 1:
            await asyncio.sleep(0.01)
        engine.drain(0)
        await asyncio.sleep(0.05)
        refused = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
        return engine.process.pid, (await pending).json(), refused

    pid, answer, refused = in_process(app, call)
    assert {c["finish_reason"] for c in answer["choices"]} == {"cancelled"} and refused.status_code == 503
    assert engine.process is None and gone(pid)


def test_decoder_serve_engine_process_answers_and_exits_0_on_sigterm_leaving_no_child(onnx_bundle, capsys):
    with server_process(onnx_bundle, "--engine", "process", "--max-batch", "4", "--threads", "1",
                        "--sampling-defaults", "openai") as (url, proc):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no engine process"
        reply = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
        expected = generate_onnx(capsys, onnx_bundle, "--greedy", "--max-new-tokens", "12", *PLAIN)
        assert reply.json()["choices"][0]["text"] == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, f"children {children} outlived the server"
        time.sleep(0.1)


def test_an_unknown_engine_is_refused(onnx_bundle, capsys):
    with pytest.raises(ValueError, match="engine='fork': allowed 'thread', 'process'"):
        ServeConfig(engine="fork")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", str(onnx_bundle), "--engine", "fork"])
    assert exit_.value.code == 2 and "--engine: invalid choice: 'fork'" in capsys.readouterr().err
