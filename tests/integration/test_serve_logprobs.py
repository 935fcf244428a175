"""decoder serve's `logprobs` and `echo` (non-streaming completions): OpenAI's tokens /
token_logprobs / top_logprobs / text_offset, equal to the model's own log-softmax over the whole
sequence, with the echoed prompt scored as well; streamed chunk by chunk; chat's logprobs.content;
and best_of, which ranks candidates by their mean log probability."""

from __future__ import annotations

import json

import numpy as np
import pytest
from servekit import in_process, sse_data

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig
from decoder.serve.logprobs import log_softmax, token_text

PROMPT = "Harding wondered"


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime, ServeConfig(max_batch=8, max_queue=8, sampling_defaults="openai"))


def complete(app, *bodies: dict) -> list[dict]:
    async def call(client):
        return [await client.post("/v1/completions", json={"prompt": PROMPT, **b}) for b in bodies]
    responses = in_process(app, call)
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    return [r.json()["choices"] for r in responses]


def test_echoed_and_generated_logprobs_are_the_models_log_softmax(app, runtime):
    body = {"max_tokens": 5, "temperature": 0.8, "seed": 2, "logprobs": 3, "echo": True}
    ((choice,),) = complete(app, body)
    prompt = runtime.tokenizer.encode(PROMPT)
    new = [int(t[0]) for t in runtime.generate_ids(prompt, max_new_tokens=5, params=SamplingParams(temperature=0.8),
                                                   seed=2)]
    ids = prompt + new  # 15 tokens: one window of the 16-token context
    expected = log_softmax(runtime.run(np.array([ids]))[0][0])  # (T, V): position i predicts token i + 1
    lp = choice["logprobs"]
    assert choice["text"].startswith(PROMPT) and choice["text"] == PROMPT + runtime.tokenizer.decode(new)
    assert lp["tokens"] == [token_text(runtime.tokenizer, i) for i in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    np.testing.assert_allclose(lp["token_logprobs"][1:], [expected[i, ids[i + 1]] for i in range(len(ids) - 1)],
                               rtol=1e-4, atol=1e-5)
    for i, top in enumerate(lp["top_logprobs"][1:]):
        best = np.argsort(-expected[i])[:3]
        wanted = {token_text(runtime.tokenizer, int(t)): expected[i, t] for t in best}
        wanted[lp["tokens"][i + 1]] = expected[i, ids[i + 1]]  # the sampled token is always there
        assert top.keys() == wanted.keys()
        np.testing.assert_allclose([top[k] for k in wanted], list(wanted.values()), rtol=1e-4, atol=1e-5)
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"][:-1]]))


def test_logprobs_without_echo_cover_the_generated_text(app):
    ((greedy,), (none,)) = complete(app, {"max_tokens": 8, "temperature": 0, "logprobs": 0},
                                    {"max_tokens": 8, "temperature": 0})
    lp = greedy["logprobs"]
    assert greedy["text"] == none["text"] and none["logprobs"] is None
    assert "".join(lp["tokens"]) == greedy["text"] and lp["text_offset"][0] == 0 and len(lp["tokens"]) == 8
    assert all(len(top) == 1 and top[tok] == logprob for tok, logprob, top in
               zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]))  # logprobs 0: the sampled token only
    assert all(np.isfinite(x) and x <= 0 for x in lp["token_logprobs"])


def test_a_stop_string_cuts_the_logprobs_with_the_text(app):
    body = {"max_tokens": 20, "temperature": 0.8, "seed": 5, "logprobs": 1}
    ((full,),) = complete(app, body)
    stop = full["text"][6:9]
    ((cut,),) = complete(app, {**body, "stop": stop})
    tokens = cut["logprobs"]["tokens"]
    assert cut["text"] == full["text"][: full["text"].index(stop)] and cut["text"]
    assert "".join(tokens).startswith(cut["text"]) and len("".join(tokens[:-1])) < len(cut["text"])
    assert tokens == full["logprobs"]["tokens"][: len(tokens)]


def test_echo_alone_puts_each_prompt_before_its_choices_and_end_of_text_is_the_last_token(app, runtime):
    choices = complete(app, {"prompt": ["The sea", PROMPT], "n": 2, "max_tokens": 3, "echo": True, "seed": 4},
                       {"max_tokens": 3, "logprobs": 2, "logit_bias": {str(runtime.eot_id): 100}})
    assert [c["text"][: len(p)] for c, p in zip(choices[0], ["The sea"] * 2 + [PROMPT] * 2)] == \
        ["The sea"] * 2 + [PROMPT] * 2
    (ended,) = choices[1]
    lp = ended["logprobs"]
    assert ended["text"] == "" and lp["tokens"] == ["<|endoftext|>"] and lp["text_offset"] == [0]
    assert lp["token_logprobs"][0] < 0 and lp["top_logprobs"][0]["<|endoftext|>"] == lp["token_logprobs"][0]


@pytest.mark.parametrize("body,param,code", [
    ({"logprobs": 6}, "logprobs", "invalid_value"),
    ({"logprobs": -1}, "logprobs", "invalid_value"),
    ({"logprobs": True}, "logprobs", "invalid_type"),
    ({"logprobs": 1.0}, "logprobs", "invalid_type"),
    ({"echo": "yes"}, "echo", "invalid_type"),
    ({"echo": True, "stream": True}, "echo", "unsupported_parameter"),
])
def test_bad_logprobs_and_echo_are_refused(app, body, param, code):
    r = in_process(app, lambda client: client.post("/v1/completions", json={"prompt": PROMPT, **body}))
    error = r.json()["error"]
    assert r.status_code == 400 and (error["param"], error["code"]) == (param, code), error


def stream(app, path: str, body: dict) -> list[dict]:
    async def call(client):
        return await client.post(path, json={**body, "stream": True})
    r = in_process(app, call)
    assert r.status_code == 200, r.text
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_streamed_logprobs_join_to_the_unstreamed_ones(app):
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.9, "seed": 7, "logprobs": 2, "n": 2}
    ((a, b),) = complete(app, body)
    joined = {0: {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}, 1: None}
    joined[1] = {k: [] for k in joined[0]}
    for chunk in stream(app, "/v1/completions", body):
        (choice,) = chunk["choices"]
        if choice["logprobs"] is not None:
            for key, values in choice["logprobs"].items():
                joined[choice["index"]][key] += values
    assert joined[0] == a["logprobs"] and joined[1] == b["logprobs"] and a["logprobs"]["tokens"]


def test_chat_logprobs_are_openais_content_entries_of_the_reply(app, runtime):
    body = {"messages": [{"role": "user", "content": "Harding"}], "max_tokens": 10, "temperature": 0.9, "seed": 2,
            "logprobs": True, "top_logprobs": 3}

    async def call(client):
        return await client.post("/v1/chat/completions", json=body)
    (choice,) = in_process(app, call).json()["choices"]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content).startswith(choice["message"]["content"]) and content
    for t in content:
        assert bytes(t["bytes"]).decode("utf-8", errors="replace") == t["token"] and t["logprob"] <= 0
        assert len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["logprob"] >= t["logprob"]
        assert [x["logprob"] for x in t["top_logprobs"]] == sorted([x["logprob"] for x in t["top_logprobs"]],
                                                                  reverse=True)
    streamed = [e for chunk in stream(app, "/v1/chat/completions", body) for c in chunk["choices"]
                if c["logprobs"] for e in c["logprobs"]["content"]]
    assert streamed == content
    (plain,) = in_process(app, lambda client: client.post("/v1/chat/completions", json={
        **body, "logprobs": False, "top_logprobs": None})).json()["choices"]
    assert plain["logprobs"] is None and plain["message"] == choice["message"]


def test_best_of_returns_the_candidates_with_the_highest_mean_logprob(app):
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 1.0, "seed": 11, "logprobs": 0}
    (candidates,) = complete(app, {**body, "n": 4})  # candidate j is seeded seed + j, as choice j of n
    ((best, second),) = complete(app, {**body, "n": 2, "best_of": 4})
    means = [np.mean([x for x in c["logprobs"]["token_logprobs"]]) for c in candidates]
    order = np.argsort(means)[::-1]
    assert [best["text"], second["text"]] == [candidates[order[0]]["text"], candidates[order[1]]["text"]]
    assert (best["index"], second["index"]) == (0, 1)
    ((alone,),) = complete(app, {**body, "best_of": 4, "logprobs": None})
    assert alone["text"] == best["text"] and alone["logprobs"] is None
