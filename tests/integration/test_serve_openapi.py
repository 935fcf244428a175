"""decoder serve's OpenAPI document (/openapi.json) and Swagger page (/docs): every route with its
request and response schemas, and real answers of every route valid under the documented models."""

from __future__ import annotations

import json

import pytest
from servekit import in_process, sse_data

from decoder.runtime import Runtime
from decoder.serve import schema
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig
from decoder.serve.protocol import CompletionRequest
from decoder.serve.tokens import DetokenizeRequest, TokenizeRequest

PROMPT = "Harding wondered"
ROUTES = {"/v1/completions": "post", "/v1/chat/completions": "post", "/v1/models": "get", "/v1/models/{model}": "get", "/tokenize": "post",
          "/detokenize": "post", "/tokenizer_info": "get", "/health": "get", "/metrics": "get"}


@pytest.fixture(scope="module")
def app(onnx_bundle):
    return create_app(Runtime(onnx_bundle, threads=1), ServeConfig(max_batch=4, max_queue=4),
                      served_model_names=["mini"])


@pytest.fixture(scope="module")
def document(app) -> dict:
    r = in_process(app, lambda client: client.get("/openapi.json"))
    assert r.status_code == 200
    return r.json()


def refs(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    return [r for v in node for r in refs(v)] if isinstance(node, list) else []


def test_the_document_lists_every_route_once_and_every_reference_resolves(document):
    assert {path: list(ops) for path, ops in document["paths"].items()} == {p: [m] for p, m in ROUTES.items()}
    components = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    assert "422" not in json.dumps(document["paths"])  # every client mistake is a 400, never FastAPI's 422
    assert document["info"]["title"] == "decoder"


@pytest.mark.parametrize("path,model", [("/v1/completions", CompletionRequest), ("/tokenize", TokenizeRequest),
                                        ("/detokenize", DetokenizeRequest)])
def test_each_post_route_names_its_request_model_with_every_field_described(document, path, model):
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] and body["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{model.__name__}"}
    properties = document["components"]["schemas"][model.__name__]["properties"]
    assert set(properties) == set(model.model_fields)
    assert all(p.get("description") for p in properties.values()), [k for k, p in properties.items()
                                                                    if not p.get("description")]
    assert document["components"]["schemas"][model.__name__]["additionalProperties"] is False


def test_completions_may_answer_json_or_an_event_stream_and_errors_are_error_objects(document):
    responses = document["paths"]["/v1/completions"]["post"]["responses"]
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Completion"}
    assert "data: [DONE]" in responses["200"]["content"]["text/event-stream"]["schema"]["description"]
    for status in ("400", "404", "413", "429", "500", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    properties = document["components"]["schemas"]["CompletionRequest"]["properties"]
    (number, null) = properties["presence_penalty"]["anyOf"]  # missing or null: the model card's sampling_defaults
    assert number["minimum"] == -2 and number["maximum"] == 2 and null == {"type": "null"}
    assert properties["suffix"]["type"] == "null" and "unsupported_parameter" in properties["suffix"]["description"]


def test_docs_page_is_fastapis_swagger_ui_over_the_document(app):
    r = in_process(app, lambda client: client.get("/docs"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "swagger" in r.text.lower() and "/openapi.json" in r.text


def test_real_answers_are_valid_under_the_documented_models(app):
    async def call(client):
        body = {"prompt": [PROMPT, "The sea"], "max_tokens": 5, "n": 2, "temperature": 0.7, "seed": 1}
        return {
            "completion": await client.post("/v1/completions", json=body),
            "stream": await client.post("/v1/completions", json={**body, "stream": True,
                                                                 "stream_options": {"include_usage": True}}),
            "plain_stream": await client.post("/v1/completions", json={**body, "stream": True}),
            "error": await client.post("/v1/completions", json={"prompt": PROMPT, "top_p": 3}),
            "missing": await client.get("/v1/models/nope"),
            "models": await client.get("/v1/models"),
            "card": await client.get("/v1/models/mini"),
            "tokenize": await client.post("/tokenize", json={"prompt": PROMPT, "return_token_strs": True}),
            "detokenize": await client.post("/detokenize", json={"tokens": [1, 2, 3]}),
            "health": await client.get("/health"),
        }

    r = in_process(app, call)
    schema.Completion.model_validate(r["completion"].json())
    for name in ("stream", "plain_stream"):
        payloads = sse_data(r[name].text)
        assert payloads[-1] == "[DONE]"
        for payload in payloads[:-1]:
            schema.Completion.model_validate_json(payload)
    for name in ("error", "missing"):
        assert r[name].status_code in (400, 404)
        schema.ErrorResponse.model_validate(r[name].json())
    schema.ModelList.model_validate(r["models"].json())
    schema.ModelCard.model_validate(r["card"].json())
    schema.TokenizeResponse.model_validate(r["tokenize"].json())
    schema.DetokenizeResponse.model_validate(r["detokenize"].json())
    schema.Health.model_validate(r["health"].json())
