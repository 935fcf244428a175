"""decoder serve's defaults and prompts: a request's missing sampling fields take the bundle's
sampling config (so a greedy request answers what `decoder generate --onnx` prints), or OpenAI's
neutral values with sampling_defaults "openai"; a prompt longer than the context is seen through
its last context-length tokens (as `decoder generate`), cut by truncate_prompt_tokens, or refused;
and a prompt given as token ids answers exactly as its text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from servekit import REPO, in_process

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig
from decoder.serve.logprobs import log_softmax

PROMPT = "Harding wondered"
LONG = "The engineer and the sailor walked along the shore of the island at night"  # > 16 tokens


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def bundle_search(onnx_bundle) -> dict:
    return json.loads((onnx_bundle / "genai_config.json").read_text())["search"]


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime, ServeConfig(max_batch=8, max_queue=8))


def call(app, *requests: tuple[str, str, dict | None]) -> list:
    async def run(client):
        return [await client.request(method, path, json=body) for method, path, body in requests]
    return in_process(app, run)


def complete(app, *bodies: dict) -> list[dict]:
    responses = call(app, *[("POST", "/v1/completions", body) for body in bodies])
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    return [r.json() for r in responses]


def cli_generate(bundle, prompt: str, max_new_tokens: int) -> str:
    """What `decoder generate --onnx BUNDLE --greedy` prints after the prompt (its own defaults)."""
    out = subprocess.run([sys.executable, "-m", "decoder", "generate", "--onnx", str(bundle), "--greedy",
                          "--prompt", prompt, "--max-new-tokens", str(max_new_tokens)],
                         capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=120, check=True)
    assert out.stdout.startswith(prompt) and out.stdout.endswith("\n"), out.stdout
    return out.stdout[len(prompt):-1]


def test_the_model_card_shows_the_bundles_sampling_config_and_openai_restores_neutral_ones(app, runtime,
                                                                                          bundle_search):
    neutral = create_app(runtime, ServeConfig(sampling_defaults="openai"))
    path = "/v1/models/" + runtime.meta["run"]["id"]
    (card,) = [r.json()["sampling_defaults"] for r in call(app, ("GET", path, None))]
    (plain,) = [r.json()["data"][0]["sampling_defaults"] for r in call(neutral, ("GET", "/v1/models", None))]
    assert {k: card[k] for k in ("repetition_penalty", "no_repeat_ngram_size", "temperature", "top_p", "top_k")} == \
        {k: bundle_search[k] for k in ("repetition_penalty", "no_repeat_ngram_size", "temperature", "top_p", "top_k")}
    assert card["repetition_penalty"] == 1.2 and card["no_repeat_ngram_size"] == 4  # the run's config (defaults)
    assert plain == {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
                     "no_repeat_ngram_size": 0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def test_a_greedy_request_answers_what_decoder_generate_prints_even_past_the_context(app, runtime, onnx_bundle):
    ids = runtime.tokenizer.encode(LONG)
    assert len(ids) > runtime.context_length
    (body,) = complete(app, {"prompt": LONG, "max_tokens": 20, "temperature": 0})
    assert body["choices"][0]["text"] == cli_generate(onnx_bundle, LONG, 20)
    assert body["usage"]["prompt_tokens"] == runtime.context_length
    assert body["usage"]["prompt_tokens_truncated"] == len(ids) - runtime.context_length
    neutral = create_app(runtime, ServeConfig(sampling_defaults="openai"))
    (plain,) = [r.json()["choices"][0]["text"] for r in
                call(neutral, ("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}))]
    assert plain == runtime.generate(PROMPT, max_new_tokens=12, params=SamplingParams(temperature=0.0))
    (own,) = complete(app, {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    assert own["choices"][0]["text"] != plain  # the bundle's repetition controls change the text


def test_a_field_the_request_gives_overrides_the_default(app, runtime):
    (body,) = complete(app, {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "repetition_penalty": 1.0,
                             "no_repeat_ngram_size": 0})
    assert body["choices"][0]["text"] == runtime.generate(PROMPT, max_new_tokens=12,
                                                          params=SamplingParams(temperature=0.0))


def test_truncate_prompt_tokens_keeps_the_last_ones_as_if_the_rest_were_not_sent(app, runtime):
    ids = runtime.tokenizer.encode(LONG)
    (cut,) = complete(app, {"prompt": LONG, "max_tokens": 8, "temperature": 0, "truncate_prompt_tokens": 5,
                            "echo": True})
    kept = runtime.tokenizer.decode(ids[-5:])
    (alone,) = complete(app, {"prompt": ids[-5:], "max_tokens": 8, "temperature": 0})
    assert cut["choices"][0]["text"] == kept + alone["choices"][0]["text"]
    assert cut["usage"]["prompt_tokens"] == 5 and cut["usage"]["prompt_tokens_truncated"] == len(ids) - 5


def test_a_server_may_refuse_long_prompts_instead(runtime):
    strict = create_app(runtime, ServeConfig(long_prompts="refuse"))
    r1, r2, r3 = call(strict, ("POST", "/v1/completions", {"prompt": ["x", LONG]}),
                      ("POST", "/v1/completions", {"prompt": LONG, "truncate_prompt_tokens": 16, "max_tokens": 2}),
                      ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}))
    error = r1.json()["error"]
    assert r1.status_code == 400 and error["param"] == "prompt.1"
    assert error["code"] == "context_length_exceeded" and "truncate_prompt_tokens" in error["message"]
    assert r2.status_code == 200 and r2.json()["usage"]["prompt_tokens"] == 16
    assert r3.status_code == 400 and r3.json()["error"]["param"] == "messages"


def test_echo_logprobs_of_a_long_prompt_score_the_window_the_model_sees(app, runtime):
    ids = runtime.tokenizer.encode(LONG)
    (body,) = complete(app, {"prompt": LONG, "max_tokens": 0, "echo": True, "logprobs": 1})
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    hidden = len(ids) - runtime.context_length
    window = ids[hidden:]
    expected = log_softmax(runtime.run(np.array([window]))[0][0])
    assert choice["text"] == LONG and choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 0
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][: hidden + 1] == [None] * (hidden + 1)
    np.testing.assert_allclose(lp["token_logprobs"][hidden + 1:],
                               [expected[i, window[i + 1]] for i in range(len(window) - 1)], rtol=1e-4, atol=1e-5)


def test_a_token_id_prompt_answers_as_its_text(app, runtime):
    ids = runtime.tokenizer.encode(PROMPT)
    body = {"max_tokens": 10, "temperature": 0.9, "seed": 3, "logprobs": 2, "echo": True, "n": 2}
    as_text, as_ids, as_lists = complete(app, {"prompt": PROMPT, **body}, {"prompt": ids, **body},
                                         {"prompt": [ids, ids], **body})
    for key in ("choices", "usage"):
        assert as_text[key] == as_ids[key]
    assert as_lists["choices"][:2] == as_ids["choices"]
    assert as_lists["choices"][2]["text"] == as_ids["choices"][0]["text"]
    assert as_text["choices"][0]["text"].startswith(PROMPT)
