"""POST /v1/chat/completions in-process: the template, greedy text equal to `Runtime.generate` of the
rendered prompt, the chunk shapes of a stream, its errors (400 naming the field) and its OpenAPI entry."""

from __future__ import annotations

import json

import pytest
from servekit import in_process, sse_data

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams
from decoder.serve import schema
from decoder.serve.app import create_app
from decoder.serve.chat import CHAT_TEMPLATE, TURN_STOPS, render
from decoder.serve.config import ServeConfig
from decoder.serve.protocol import ChatMessage

MESSAGES = [{"role": "user", "content": "Harding"}]  # 13 tokens of the tiny model's 16-token context


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime, ServeConfig(max_batch=4, max_queue=4, sampling_defaults="openai"))


def chat(app, body):
    return in_process(app, lambda client: client.post("/v1/chat/completions", json=body))


def until_turn(text: str) -> str:
    """`text` before the first line that opens a new turn of the template."""
    cut = min((i for i in (text.find(s) for s in TURN_STOPS) if i >= 0), default=len(text))
    return text[:cut]


def test_template_renders_a_line_per_message_then_an_open_assistant_turn():
    messages = [ChatMessage(role="system", content="The island."), ChatMessage(role="user", content="Harding"),
                ChatMessage(role="assistant", content="Yes.")]
    assert render(messages) == "System: The island.\nUser: Harding\nAssistant: Yes.\nAssistant:"


def test_greedy_reply_equals_runtime_generate_of_the_rendered_prompt(app, runtime):
    prompt = render([ChatMessage(**m) for m in MESSAGES])
    expected = until_turn(runtime.generate(prompt, max_new_tokens=12, params=SamplingParams(temperature=0.0)))
    r = chat(app, {"messages": MESSAGES, "temperature": 0, "max_completion_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    schema.ChatCompletion.model_validate(body)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected}
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(runtime.tokenizer.encode(prompt))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_sends_the_role_first_then_content_that_joins_to_the_reply(app):
    body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 12, "n": 2}
    whole = chat(app, body).json()
    r = chat(app, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_data(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        schema.ChatCompletion.model_validate(chunk)
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == chunks[0]["id"]
    *pieces, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    for index in (0, 1):
        deltas = [c["choices"][0] for c in pieces if c["choices"][0]["index"] == index]
        assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in d["delta"] for d in deltas[1:])
        assert "".join(d["delta"].get("content", "") for d in deltas) == whole["choices"][index]["message"]["content"]
        assert deltas[-1]["finish_reason"] == whole["choices"][index]["finish_reason"]


def test_model_card_carries_the_chat_template(app):
    card = in_process(app, lambda client: client.get("/v1/models")).json()["data"][0]
    assert card["chat_template"] == CHAT_TEMPLATE
    schema.ModelCard.model_validate(card)


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": "hello"}, "messages"),
    ({"messages": MESSAGES, "max_tokens": 4, "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": MESSAGES, "logit_bias": {"999999": 1}}, "logit_bias"),
    ({"messages": MESSAGES, "temperature": 3}, "temperature"),
])
def test_bad_requests_are_400_error_objects_naming_the_field(app, body, param):
    r = chat(app, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_unknown_model_is_404(app):
    assert chat(app, {"messages": MESSAGES, "model": "gpt-4"}).status_code == 404


def test_route_and_request_schema_are_in_openapi(app):
    document = in_process(app, lambda client: client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/chat/completions"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "max_completion_tokens", "temperature", "stop", "n", "user"} <= set(request["properties"])
    assert "text/event-stream" in operation["responses"]["200"]["content"]
