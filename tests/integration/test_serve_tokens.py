"""decoder serve's POST /tokenize and POST /detokenize (vLLM's field names): the ids completions
encode a prompt into, the text of ids, and their errors."""

from __future__ import annotations

import pytest
from servekit import in_process

from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

PROMPT = "Harding wondered"


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime, ServeConfig(max_body_bytes=4096), served_model_names=["mini"])


def post(app, path: str, body) -> object:
    async def call(client):
        if isinstance(body, bytes):
            return await client.post(path, content=body)
        return await client.post(path, json=body)
    return in_process(app, call)


def test_tokenize_gives_the_ids_completions_use_and_detokenize_inverts_it(app, runtime):
    ids = runtime.tokenizer.encode(PROMPT)
    r = post(app, "/tokenize", {"prompt": PROMPT, "model": "mini"})
    assert r.status_code == 200
    assert r.json() == {"count": len(ids), "max_model_len": 16, "tokens": ids, "token_strs": None}
    back = post(app, "/detokenize", {"tokens": ids, "model": "mini"})
    assert back.status_code == 200 and back.json() == {"prompt": PROMPT}


def test_tokenize_returns_token_strings_on_request_and_counts_beyond_the_context(app, runtime):
    text = "word " * 40
    r = post(app, "/tokenize", {"prompt": text, "return_token_strs": True, "add_special_tokens": False}).json()
    assert r["count"] == len(runtime.tokenizer.encode(text)) > r["max_model_len"]  # completions would refuse it
    assert "".join(r["token_strs"]) == text and len(r["token_strs"]) == r["count"]
    assert post(app, "/tokenize", {"prompt": ""}).json()["tokens"] == []


def test_detokenize_drops_end_of_text_as_completions_do(app, runtime):
    ids = runtime.tokenizer.encode(PROMPT)
    assert post(app, "/detokenize", {"tokens": [*ids, runtime.eot_id]}).json() == {"prompt": PROMPT}
    assert post(app, "/detokenize", {"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize("path,body,status,param,code", [
    ("/tokenize", {}, 400, "prompt", "missing_field"),
    ("/tokenize", {"prompt": 5}, 400, "prompt", "invalid_type"),
    ("/tokenize", {"prompt": "x", "messages": []}, 400, "messages", "unknown_field"),
    ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, 400, "add_special_tokens", "invalid_type"),
    ("/tokenize", {"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/tokenize", b"[1]", 400, None, "invalid_json"),
    ("/tokenize", b'{"prompt": ' + b"[" * 1500 + b"]" * 1500 + b"}", 400, None, "invalid_json"),
    ("/tokenize", {"prompt": "x" * 5000}, 413, None, "request_too_large"),
    ("/detokenize", {}, 400, "tokens", "missing_field"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens", "invalid_type"),
    ("/detokenize", {"tokens": [1.0]}, 400, "tokens.0", "invalid_type"),
    ("/detokenize", {"tokens": [1, -1]}, 400, "tokens", "invalid_value"),
    ("/detokenize", {"tokens": [10**6]}, 400, "tokens", "invalid_value"),
    ("/detokenize", {"tokens": [1], "model": "gpt-4"}, 404, "model", "model_not_found"),
])
def test_bad_requests_get_error_objects(app, path, body, status, param, code):
    r = post(app, path, body)
    error = r.json()["error"]
    assert r.status_code == status and (error["param"], error["code"]) == (param, code), error
    if code == "invalid_value":
        assert "token ids of this model are 0 to" in error["message"]
