"""decoder serve's OpenAI fields beyond sampling basics: the model's names (`served_model_names`,
GET /v1/models/{name}), `user`, `suffix`, presence and frequency penalties and `logit_bias`, each
sampled as the shared sampler samples it for `Runtime.generate`."""

from __future__ import annotations

import pytest
from servekit import in_process

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

PROMPT = "Harding wondered"
NAMES = ["mini", "org/mini-v1"]


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime, ServeConfig(max_batch=8, max_queue=8, sampling_defaults="openai"), served_model_names=NAMES)


def calls(app, *requests: tuple[str, str, dict | None]) -> list:
    async def call(client):
        return [await client.request(method, path, json=body) for method, path, body in requests]
    return in_process(app, call)


def test_the_model_answers_to_its_served_names_and_its_run_id(app, runtime):
    run_id = runtime.meta["run"]["id"]
    requests = [("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "model": name})
                for name in [*NAMES, run_id, "gpt-4"]]
    *ok, missing = calls(app, *requests)
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert {r.json()["model"] for r in ok} == {"mini"}  # responses name the first served name
    error = missing.json()["error"]
    assert missing.status_code == 404 and (error["param"], error["code"]) == ("model", "model_not_found")
    assert all(repr(name) in error["message"] for name in [*NAMES, run_id])


def test_models_list_a_card_per_name_and_each_card_is_served_alone(app, runtime):
    run_id = runtime.meta["run"]["id"]
    listing, alias, by_id, missing = calls(app, ("GET", "/v1/models", None), ("GET", "/v1/models/org/mini-v1", None),
                                           ("GET", f"/v1/models/{run_id}", None), ("GET", "/v1/models/nope", None))
    cards = listing.json()["data"]
    assert [c["id"] for c in cards] == [*NAMES, run_id] and {c["root"] for c in cards} == {run_id}
    assert alias.status_code == 200 and alias.json() == cards[1]
    assert by_id.status_code == 200 and by_id.json() == cards[2]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    tokenizer = runtime.tokenizer
    assert alias.json()["tokenizer"] == {"encoding": tokenizer.encoding_name, "vocab_size": tokenizer.vocab_size,
                                         "eos_token_id": runtime.eot_id, "context_length": 16}
    assert alias.json()["max_model_len"] == 16


def test_user_is_accepted_and_changes_nothing(app):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.8, "seed": 3}
    plain, with_user = calls(app, ("POST", "/v1/completions", body),
                             ("POST", "/v1/completions", {**body, "user": "user-1234"}))
    assert with_user.status_code == 200 and with_user.json()["choices"] == plain.json()["choices"]


@pytest.mark.parametrize("suffix", ["the end", "", 5, ["x"]])
def test_suffix_is_refused_as_unsupported_not_unknown(app, suffix):
    (r,) = calls(app, ("POST", "/v1/completions", {"prompt": PROMPT, "suffix": suffix}))
    error = r.json()["error"]
    assert r.status_code == 400 and (error["param"], error["code"]) == ("suffix", "unsupported_parameter")
    assert "suffix is not supported" in error["message"] and "null" in error["message"]


def test_a_null_suffix_is_no_suffix(app):
    (r,) = calls(app, ("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "suffix": None}))
    assert r.status_code == 200


ADJUSTED = [
    {"temperature": 0, "frequency_penalty": 2.0},
    {"temperature": 0, "presence_penalty": 1.5, "frequency_penalty": -0.5},
    {"temperature": 0.9, "seed": 7, "presence_penalty": 2.0, "repetition_penalty": 1.3},
    {"temperature": 0.9, "seed": 7, "top_k": 20, "logit_bias": {"10": 5.0, "32": -100}},
]


def sampler(body: dict) -> SamplingParams:
    bias = tuple((int(k), v) for k, v in body.get("logit_bias", {}).items())
    fields = ("temperature", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty")
    return SamplingParams(**{k: body[k] for k in fields if k in body}, logit_bias=bias)


def test_penalties_and_logit_bias_sample_as_the_shared_sampler_does(app, runtime):
    requests = [("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, **b}) for b in ADJUSTED]
    requests.append(("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0}))
    *texts, plain = [r.json()["choices"][0]["text"] for r in calls(app, *requests)]
    expected = [runtime.generate(PROMPT, max_new_tokens=40, params=sampler(b), seed=b.get("seed", 0)) for b in ADJUSTED]
    assert texts == expected  # 40 tokens: the 16-token window slides, the counts go on
    assert texts[0] != plain and texts[1] != plain


def test_logit_bias_of_100_forces_a_token_and_on_end_of_text_ends_at_once(app, runtime):
    e = runtime.tokenizer.encode("e")[0]
    eot = str(runtime.eot_id)
    body = {"prompt": PROMPT, "max_tokens": 6}
    forced, ended = calls(app, ("POST", "/v1/completions", {**body, "logit_bias": {str(e): 100}, "temperature": 0}),
                          ("POST", "/v1/completions", {**body, "logit_bias": {eot: 100}, "seed": 1}))
    assert forced.json()["choices"][0]["text"] == "eeeeee"
    choice = ended.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], ended.json()["usage"]["completion_tokens"]) == ("", "stop", 1)


@pytest.mark.parametrize("field,value,param,code", [
    ("presence_penalty", 2.5, "presence_penalty", "invalid_value"),
    ("frequency_penalty", -2.01, "frequency_penalty", "invalid_value"),
    ("frequency_penalty", "1", "frequency_penalty", "invalid_type"),
    ("logit_bias", {"abc": 1}, "logit_bias", "invalid_value"),
    ("logit_bias", {"5": 101}, "logit_bias", "invalid_value"),
    ("logit_bias", {"99999": 1}, "logit_bias", "invalid_value"),
    ("logit_bias", {"1": "x"}, "logit_bias.1", "invalid_type"),
    ("logit_bias", [1], "logit_bias", "invalid_type"),
    ("user", 5, "user", "invalid_type"),
])
def test_bad_adjustments_are_refused_naming_the_field(app, field, value, param, code):
    (r,) = calls(app, ("POST", "/v1/completions", {"prompt": PROMPT, field: value}))
    error = r.json()["error"]
    assert r.status_code == 400 and (error["param"], error["code"]) == (param, code), error
    if value == {"99999": 1}:
        assert "token ids are 0 to" in error["message"] and "/tokenize" in error["message"]
