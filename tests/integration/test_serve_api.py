"""decoder serve's HTTP API in-process (httpx against the ASGI app, the engine running): every
request field, every error, SSE, metrics, and the same text as `decoder generate --onnx`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading

import pytest
from servekit import in_process, metric, sse_data, stream_texts

from decoder.cli import main as cli_main
from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

PROMPT = "Harding wondered"


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture
def app(runtime):
    return create_app(runtime, ServeConfig(max_batch=8, max_queue=4, max_body_bytes=4096, sampling_defaults="openai"))


def generate_onnx(capsys, bundle, *options: str) -> str:
    """The continuation `decoder generate --onnx` prints (its stdout is prompt + text + newline)."""
    capsys.readouterr()
    assert cli_main(["generate", "--onnx", str(bundle), "--prompt", PROMPT, *options]) == 0
    return capsys.readouterr().out.removeprefix(PROMPT).removesuffix("\n")


def post(app, body, **kwargs):
    """POST a dict as JSON, anything else (bytes, an async iterator of chunks) as the raw body."""
    async def call(client):
        if isinstance(body, dict):
            return await client.post("/v1/completions", json=body, **kwargs)
        return await client.post("/v1/completions", content=body, **kwargs)
    return in_process(app, call)


PLAIN = ("--repetition-penalty", "1", "--no-repeat-ngram-size", "0")  # the API's defaults; generate's are on


def test_greedy_and_seeded_text_equal_generate_onnx_whatever_runs_beside(app, onnx_bundle, capsys):
    sampling = ("--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "7")
    expected = [  # 40 tokens slide the 16-token window
        generate_onnx(capsys, onnx_bundle, "--greedy", "--max-new-tokens", "40", *PLAIN),
        generate_onnx(capsys, onnx_bundle, *sampling, "--max-new-tokens", "40", *PLAIN),
        generate_onnx(capsys, onnx_bundle, "--greedy", "--max-new-tokens", "40"),  # generate's repetition defaults
        generate_onnx(capsys, onnx_bundle, *sampling, "--max-new-tokens", "40", "--repetition-penalty", "1.5",
                      "--no-repeat-ngram-size", "2"),
    ]
    sampled = {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 7}
    bodies = [{"temperature": 0}, sampled, {"temperature": 0, "repetition_penalty": 1.2, "no_repeat_ngram_size": 4},
              {**sampled, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2}]
    others = [{"prompt": p, "max_tokens": m, "temperature": 1.0} for p, m in [("The sea", 5), ("Pencroft", 60),
                                                                                ("A", 23)]]

    async def call(client):
        requests = [{"prompt": PROMPT, "max_tokens": 40, **b} for b in bodies] + others
        return await asyncio.gather(*(client.post("/v1/completions", json=r) for r in requests))

    responses = in_process(app, call)
    assert [r.status_code for r in responses] == [200] * 7
    assert [r.json()["choices"][0]["text"] for r in responses[:4]] == expected


def test_two_engine_workers_split_the_batch_and_give_the_text_each_request_gets_alone(runtime, onnx_bundle, capsys):
    expected = generate_onnx(capsys, onnx_bundle, "--greedy", "--max-new-tokens", "40", *PLAIN)
    app = create_app(runtime, ServeConfig(max_batch=4, engine_workers=2, sampling_defaults="openai"))
    engine = app.state.engine
    assert [s.max_batch for s in engine.schedulers] == [2, 2]
    # No step runs before all four requests are in (they arrive together, whatever the machine's
    # pace): 4 sequences are more than one worker's 2 slots, so both must decode.
    submitted, all_in, submit = [], threading.Event(), engine.submit
    engine.submit = lambda job: (submit(job), submitted.append(job), len(submitted) == 4 and all_in.set())
    rows: list[list[int]] = [[], []]
    for k, scheduler in enumerate(engine.schedulers):
        def step(admitted, scheduler=scheduler, seen=rows[k], step=scheduler.step):
            all_in.wait(60)
            events = step(admitted)
            seen.append(len(scheduler.rows) + len(scheduler.sliding))
            return events
        scheduler.step = step

    async def call(client):
        body = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0}
        return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(4)))

    responses = in_process(app, call)
    assert [r.json()["choices"][0]["text"] for r in responses] == [expected] * 4
    assert all(seen and max(seen) <= 2 for seen in rows)  # both workers decoded, neither beyond its share


def test_response_shape_and_usage(app, runtime):
    r = post(app, {"prompt": PROMPT, "max_tokens": 7, "temperature": 0, "model": None})
    body = r.json()
    assert r.status_code == 200
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice == {"text": choice["text"], "index": 0, "logprobs": None, "finish_reason": "length"}
    prompt_tokens = len(runtime.tokenizer.encode(PROMPT))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7,
                             "prompt_tokens_truncated": 0}


def test_stop_string_is_not_returned(app):
    full = post(app, {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}).json()["choices"][0]["text"]
    stop = full[5:8]
    r = post(app, {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": ["zzzz", stop]})
    (choice,) = r.json()["choices"]
    assert choice["text"] == full[: full.index(stop)] and choice["finish_reason"] == "stop"


def test_prompt_list_and_n_give_choices_in_order(app):
    prompts = ["The sea", PROMPT]
    body = {"prompt": prompts, "n": 2, "max_tokens": 6, "temperature": 0.8, "seed": 3}
    choices = post(app, body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):  # choice j of a prompt is that prompt alone with seed + j
        for j in range(2):
            alone = post(app, {"prompt": prompt, "max_tokens": 6, "temperature": 0.8, "seed": 3 + j}).json()
            assert choices[2 * i + j]["text"] == alone["choices"][0]["text"]


def test_stream_sends_chunks_usage_and_done(app):
    plain = post(app, {"prompt": [PROMPT, "The sea"], "max_tokens": 12, "temperature": 0}).json()
    r = post(app, {"prompt": [PROMPT, "The sea"], "max_tokens": 12, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_data(r.text)
    texts, finishes = stream_texts(payloads)
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert finishes == {0: "length", 1: "length"}
    usage_chunk = json.loads(payloads[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]
    assert all(json.loads(p)["usage"] is None for p in payloads[:-2])


def test_stream_without_usage_has_no_usage_field(app):
    payloads = sse_data(post(app, {"prompt": PROMPT, "max_tokens": 3, "stream": True}).text)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


BAD_REQUESTS = [
    (b"{", 400, None, "invalid_json"),
    (b"", 400, None, "invalid_json"),
    (b"[1, 2]", 400, None, "invalid_json"),
    (b'{"prompt": "x", "temperature": NaN}', 400, None, "invalid_json"),
    (b"\xff\xfe", 400, None, "invalid_json"),
    ({}, 400, "prompt", "missing_field"),
    ({"prompt": "x", "foo": 1}, 400, "foo", "unknown_field"),
    ({"prompt": "x", "best_of": 2, "n": 3}, 400, "best_of", "invalid_value"),
    ({"prompt": 5}, 400, "prompt", "invalid_value"),
    ({"prompt": ""}, 400, "prompt", "invalid_value"),
    ({"prompt": []}, 400, "prompt", "invalid_value"),
    ({"prompt": ["ok", ""]}, 400, "prompt", "invalid_value"),
    ({"prompt": ["ok", 3]}, 400, "prompt", "invalid_value"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "invalid_type"),
    ({"prompt": "x", "max_tokens": 2.0}, 400, "max_tokens", "invalid_type"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens", "invalid_value"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ({"prompt": "x", "temperature": -0.1}, 400, "temperature", "invalid_value"),
    ({"prompt": "x", "temperature": 2.5}, 400, "temperature", "invalid_value"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", "invalid_value"),
    ({"prompt": "x", "top_p": 1.01}, 400, "top_p", "invalid_value"),
    ({"prompt": "x", "top_k": -1}, 400, "top_k", "invalid_value"),
    ({"prompt": "x", "top_k": True}, 400, "top_k", "invalid_type"),
    ({"prompt": "x", "seed": -1}, 400, "seed", "invalid_value"),
    ({"prompt": "x", "seed": 1.5}, 400, "seed", "invalid_type"),
    ({"prompt": "x", "stop": ""}, 400, "stop", "invalid_value"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    ({"prompt": "x", "stop": 3}, 400, "stop", "invalid_value"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream", "invalid_type"),
    ({"prompt": "x", "stream": 1}, 400, "stream", "invalid_type"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", "invalid_value"),
    ({"prompt": "x", "stream": True, "stream_options": {"other": 1}}, 400, "stream_options.other", "unknown_field"),
    ({"prompt": "x", "stream": True, "stream_options": []}, 400, "stream_options", "invalid_type"),
    ({"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty", "invalid_value"),
    ({"prompt": "x", "repetition_penalty": "1.2"}, 400, "repetition_penalty", "invalid_type"),
    ({"prompt": "x", "no_repeat_ngram_size": -1}, 400, "no_repeat_ngram_size", "invalid_value"),
    ({"prompt": "x", "no_repeat_ngram_size": 1.5}, 400, "no_repeat_ngram_size", "invalid_type"),
    ({"prompt": "x", "n": 0}, 400, "n", "invalid_value"),
    ({"prompt": "x", "n": 9}, 400, "n", "invalid_value"),
    ({"prompt": "x", "model": 3}, 400, "model", "invalid_type"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"prompt": [1, 10**9]}, 400, "prompt", "invalid_value"),
    ({"prompt": ["x", [-1]]}, 400, "prompt", "invalid_value"),
    ({"prompt": [[3], [10**9]]}, 400, "prompt.1", "invalid_value"),
    ({"prompt": "x" * 5000}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize("body,status,param,code", BAD_REQUESTS, ids=[str(b)[:60] for b, *_ in BAD_REQUESTS])
def test_bad_request_gets_an_error_object_and_the_server_carries_on(app, caplog, body, status, param, code):
    async def call(client):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        bad = await client.post("/v1/completions", content=content)
        good = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        return bad, good

    with caplog.at_level(logging.WARNING):
        bad, good = in_process(app, call)
    assert bad.status_code == status, bad.text
    error = bad.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]
    assert good.status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_oversized_chunked_body_without_length_is_refused(app):
    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = post(app, chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method_get_error_objects(app):
    async def call(client):
        return await client.get("/v2/nothing"), await client.get("/v1/completions")

    missing, wrong_method = in_process(app, call)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_full_queue_answers_429_with_retry_after(runtime):
    app = create_app(runtime, ServeConfig(max_batch=1, max_queue=1, sampling_defaults="openai"))
    engine = app.state.engine
    # Hold the engine after its first step until the refusal has been seen, so the running request
    # cannot finish (and free its slot) first, however slow or busy the machine is.
    release, step = threading.Event(), engine.scheduler.step
    engine.scheduler.step = lambda admitted: (step(admitted), release.wait(60))[0]

    async def call(client):
        long = {"prompt": PROMPT, "max_tokens": 4000, "temperature": 0}
        running = asyncio.ensure_future(client.post("/v1/completions", json=long))
        while engine.jobs_running < 1:
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}))
        while engine.jobs_waiting < 1:
            await asyncio.sleep(0.01)
        refused = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        gauges = (await client.get("/metrics")).text
        release.set()
        return refused, gauges, await running, await queued

    refused, gauges, running, queued = in_process(app, call)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    assert metric(gauges, "decoder_requests_running") == 1 and metric(gauges, "decoder_requests_waiting") == 1
    assert running.status_code == 200 and queued.status_code == 200


def test_models_health_metrics_and_page(app, onnx_bundle, runtime):
    async def call(client):
        await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5, "stream": True})
        return [await client.get(path) for path in ("/v1/models", "/health", "/metrics", "/")]

    models, health, metrics, page = in_process(app, call)
    (card,) = models.json()["data"]
    assert card["id"] == runtime.meta["run"]["id"] and card["object"] == "model"
    assert card["sha256"] == hashlib.sha256((onnx_bundle / "model.onnx").read_bytes()).hexdigest()
    assert card["validation_bpb"] == runtime.meta["run"]["val"]["val_bpb"]
    assert card["config"]["d_model"] == 32 and card["context_length"] == 16
    assert health.json()["status"] == "ok"
    text = metrics.text
    assert metric(text, "decoder_requests_running") == 0 and metric(text, "decoder_requests_waiting") == 0
    assert metric(text, "decoder_generated_tokens_total") == 5
    assert metric(text, "decoder_prompt_tokens_total") == len(runtime.tokenizer.encode(PROMPT))
    assert metric(text, "decoder_time_to_first_token_seconds_count") == 1
    assert metric(text, "decoder_inter_token_latency_seconds_count") == 4
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page.text and 'id="generate"' in page.text


def test_quantized_model_card_names_the_int8_file(onnx_bundle):
    runtime = Runtime(onnx_bundle, quantized=True, threads=1)
    app = create_app(runtime, model_file="model.int8.onnx")
    card = in_process(app, lambda client: client.get("/v1/models")).json()["data"][0]
    assert card["quantized"] and card["file"] == "model.int8.onnx"
    assert card["sha256"] == hashlib.sha256((onnx_bundle / "model.int8.onnx").read_bytes()).hexdigest()


class FailingOnce:
    """A runtime whose first decode raises: a bug in the engine's step must not take the server down."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime, self.failed = runtime, False
        self.tokenizer, self.context_length, self.eot_id = runtime.tokenizer, runtime.context_length, runtime.eot_id
        self.prefill = runtime.prefill

    def decode(self, cache, tokens):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        return self._runtime.decode(cache, tokens)


def test_engine_failure_answers_500_and_the_next_request_works(runtime, caplog):
    app = create_app(FailingOnce(runtime))

    async def call(client):
        first = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5})
        second = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5})
        return first, second

    with caplog.at_level(logging.ERROR):
        first, second = in_process(app, call)
    assert first.status_code == 500 and first.json()["error"]["code"] == "engine_error"
    assert second.status_code == 200 and second.json()["choices"][0]["finish_reason"] == "length"
    assert any("injected failure" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.parametrize("options,message", [
    (["--max-batch", "0"], "--max-batch=0: must be >= 1"),
    (["--max-queue", "-1", "--port", "70000"], "--max-queue=-1: must be >= 0; --port=70000: must be in [0, 65535]"),
    (["--shutdown-grace", "-2"], "--shutdown-grace=-2.0: must be >= 0"),
    (["--engine-workers", "0"], "--engine-workers=0: must be >= 1"),
    (["--engine", "process", "--engine-workers", "2"],
     "--engine-workers=2: the process engine has one worker; use --engine thread for more"),
])
def test_serve_command_refuses_bad_options_in_one_line(capsys, onnx_bundle, options, message):
    assert cli_main(["serve", str(onnx_bundle), *options]) == 2
    assert capsys.readouterr().err == f"decoder serve: error: {message}\n"


def test_serve_command_refuses_a_folder_that_is_no_bundle(capsys, tmp_path):
    assert cli_main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decoder serve: error: ") and "not a bundle" in err and err.count("\n") == 1


def test_a_stream_interval_sends_tokens_several_at_a_time_with_their_logprobs(runtime, app):
    """--stream-interval 4: the same text and logprobs as the JSON answer, in far fewer events than
    tokens (each event's logprobs one entry per token it carries); the default sends every token."""
    body = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "logprobs": 2}
    plain = post(app, body).json()["choices"][0]
    for interval, most in [(4, 15), (1, 30)]:
        served = app if interval == 1 else create_app(
            runtime, ServeConfig(max_batch=8, sampling_defaults="openai", stream_interval=interval))
        payloads = sse_data(post(served, {**body, "stream": True}).text)
        texts, finishes = stream_texts(payloads)
        assert texts == {0: plain["text"]} and finishes == {0: "length"}
        chunks = [c for p in payloads[:-1] for c in json.loads(p)["choices"]]
        assert [t for c in chunks for t in c["logprobs"]["tokens"]] == plain["logprobs"]["tokens"]
        assert all(len(c["logprobs"]["tokens"]) == len(c["logprobs"]["token_logprobs"]) for c in chunks)
        assert len(chunks) <= most and (interval > 1 or len(chunks) == 30)


def test_the_stream_interval_must_be_at_least_one(capsys, onnx_bundle):
    with pytest.raises(ValueError, match="stream_interval=0: must be >= 1"):
        ServeConfig(stream_interval=0)
    assert cli_main(["serve", str(onnx_bundle), "--stream-interval", "0"]) == 2
    assert "--stream-interval=0: must be >= 1" in capsys.readouterr().err
