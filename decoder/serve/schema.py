"""The API's responses as pydantic models, and the OpenAPI document FastAPI serves at /openapi.json
(and renders at /docs).

The routes read their bodies themselves (strictly, with a size limit: `decoder.serve.protocol`),
so FastAPI does not see the request models; `install_openapi` adds them to the document's
components and each route names its own with `request_body`. The response models document what
the routes answer (the tests validate real answers against them); the routes build plain dicts.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from decoder.serve.protocol import ChatCompletionRequest, CompletionRequest
from decoder.serve.tokens import DetokenizeRequest, TokenizeRequest

DOCUMENTED = ConfigDict(extra="forbid", use_attribute_docstrings=True)
REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest)


class ErrorObject(BaseModel):
    model_config = DOCUMENTED
    message: str
    """What is wrong and what is allowed."""
    type: str
    """invalid_request_error (the client's mistake) or server_error."""
    param: str | None
    """The request field at fault, if one is."""
    code: str | None
    """A short machine-readable reason (invalid_value, unknown_field, model_not_found, queue_full, ...)."""


class ErrorResponse(BaseModel):
    """Every error, whatever the status."""

    model_config = DOCUMENTED
    error: ErrorObject


class Logprobs(BaseModel):
    """OpenAI's log probabilities of a choice's tokens (natural log)."""

    model_config = DOCUMENTED
    tokens: list[str]
    """Each token's text (its bytes as UTF-8; a partial character as U+FFFD; the end of text that
    ended a choice as <|endoftext|>)."""
    token_logprobs: list[float | None]
    """Each token's log probability under the model (null for the first token of an echoed prompt)."""
    top_logprobs: list[dict[str, float] | None]
    """The `logprobs` most likely tokens at each position, text -> log probability (null where
    token_logprobs is)."""
    text_offset: list[int]
    """Each token's offset (in characters) in the choice's text."""


class Choice(BaseModel):
    model_config = DOCUMENTED
    text: str
    """The generated text (the prompt first if echo); in a stream, the next piece of it."""
    index: int
    """Prompt i's choice j has index i * n + j."""
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length", "cancelled"] | None
    """stop: end of text or a stop string; length: max_tokens; cancelled: the server shut down. In a
    stream, null until the choice's last chunk."""


class Usage(BaseModel):
    model_config = DOCUMENTED
    prompt_tokens: int
    """Tokens of the prompts the model saw (each prompt once, whatever n)."""
    completion_tokens: int
    """Tokens generated, over every choice (and every best_of candidate)."""
    total_tokens: int
    prompt_tokens_truncated: int = 0
    """Tokens of the prompts as sent that the model did not see (cut by truncate_prompt_tokens, or
    before the last context-length tokens of a longer prompt)."""


class Completion(BaseModel):
    """A completion, or one chunk of a stream (then `usage` is absent, or null until the last
    chunk when stream_options.include_usage asks for it)."""

    model_config = DOCUMENTED
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    """The first of the served model's names."""
    choices: list[Choice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    model_config = DOCUMENTED
    role: Literal["assistant"]
    content: str
    """The continuation of the transcript (see the model card's chat_template)."""


class Delta(BaseModel):
    """The next piece of a choice's message: the role alone in its first chunk, then content."""

    model_config = DOCUMENTED
    role: Literal["assistant"] | None = None
    content: str | None = None


class TopLogprob(BaseModel):
    model_config = DOCUMENTED
    token: str
    """The token's text (its bytes as UTF-8; a partial character as U+FFFD)."""
    logprob: float
    bytes: list[int] | None
    """The token's bytes."""


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]
    """The top_logprobs most likely tokens at this position, most likely first."""


class ChatLogprobs(BaseModel):
    """OpenAI's chat log probabilities (natural log) of the reply's tokens."""

    model_config = DOCUMENTED
    content: list[TokenLogprob] | None
    """One entry per token of the reply (in a stream, of this chunk's text)."""


class ChatChoice(BaseModel):
    model_config = DOCUMENTED
    index: int
    """Choice j of n has index j."""
    message: AssistantMessage | None = None
    """The reply (absent in a stream's chunks)."""
    delta: Delta | None = None
    """In a stream, the next piece of the reply (absent in the JSON answer)."""
    logprobs: ChatLogprobs | None
    """With logprobs: true."""
    finish_reason: Literal["stop", "length", "cancelled"] | None
    """As completions' (stop includes a new turn of the chat template); null until a stream's last chunk."""


class ChatCompletion(BaseModel):
    """A chat completion (object chat.completion), or one chunk of a stream (chat.completion.chunk;
    `usage` absent, or null until the last chunk when stream_options.include_usage asks for it)."""

    model_config = DOCUMENTED
    id: str
    object: Literal["chat.completion", "chat.completion.chunk"]
    created: int
    model: str
    """The first of the served model's names."""
    choices: list[ChatChoice]
    usage: Usage | None = None


class ChatTemplate(BaseModel):
    """How POST /v1/chat/completions renders messages to a prompt: `message` per message (with
    `roles`' name of its role), then `generation_prompt`; the reply ends before any of `stop`."""

    model_config = DOCUMENTED
    roles: dict[str, str]
    message: str
    generation_prompt: str
    stop: list[str]


class TokenizerInfo(BaseModel):
    model_config = DOCUMENTED
    encoding: str
    """The tiktoken encoding the vocabulary was drawn from."""
    vocab_size: int
    """Token ids run from 0 to vocab_size - 1."""
    eos_token_id: int
    """The id of <|endoftext|>: generating it ends a choice (finish_reason stop)."""
    context_length: int
    """The most tokens the model sees at once (the longest prompt)."""


class SamplingDefaults(BaseModel):
    """What a request's missing sampling fields take: the bundle's sampling config (as `decoder
    generate` decodes), or OpenAI's neutral values with `decoder serve --sampling-defaults openai`."""

    model_config = DOCUMENTED
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    no_repeat_ngram_size: int
    presence_penalty: float
    frequency_penalty: float


class ModelCard(BaseModel):
    """OpenAI's model object plus what the bundle records (the fields after owned_by are absent for a
    model that is not a bundle)."""

    model_config = DOCUMENTED
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    """The run id of the model, whichever name this card is for."""
    max_model_len: int
    """vLLM's name for the context length."""
    tokenizer: TokenizerInfo
    chat_template: ChatTemplate | None = None
    """How chat messages become this model's prompt (it is a base model, not tuned for chat)."""
    sampling_defaults: SamplingDefaults
    file: str | None = None
    """The ONNX file served (model.onnx, or model.int8.onnx)."""
    quantized: bool | None = None
    sha256: str | None = None
    """Of the file served."""
    config: dict | None = None
    """The model's configuration (blocks, widths, ...)."""
    context_length: int | None = None
    validation_bpb: float | None = None
    """Validation bits per byte of the file served (int8's own figure when quantized)."""
    run: dict | None = None
    """The training run's record in the bundle."""


class ModelList(BaseModel):
    model_config = DOCUMENTED
    object: Literal["list"]
    data: list[ModelCard]
    """One card per served name."""


class TokenizeResponse(BaseModel):
    model_config = DOCUMENTED
    count: int
    """How many tokens."""
    max_model_len: int
    """The context length (a longer prompt is refused by completions)."""
    tokens: list[int]
    token_strs: list[str] | None = None
    """Each token's text when return_token_strs asked for it."""


class TokenizerInfoResponse(BaseModel):
    """vLLM's GET /tokenizer_info (read by lm-evaluation-harness's remote tokenizer)."""

    model_config = DOCUMENTED
    tokenizer_class: str
    encoding: str
    vocab_size: int
    eos_token: str
    """The end of text, as completions' logprobs name it."""
    eos_token_id: int
    bos_token: None
    pad_token: None
    model_max_length: int
    """The context length."""
    chat_template: None
    """No Jinja template: chat renders messages with the model card's chat_template."""


class DetokenizeResponse(BaseModel):
    model_config = DOCUMENTED
    prompt: str


class Health(BaseModel):
    model_config = DOCUMENTED
    status: Literal["ok", "draining"]
    running: int | None = None
    """Requests being decoded."""
    waiting: int | None = None
    """Requests queued."""


def _event_stream(description: str) -> dict:
    """A text/event-stream response: its schema describes one event (OpenAPI 3.2's way, which
    fuzzers such as schemathesis validate each event against)."""
    event = {"type": "object", "description": description, "required": ["data"], "properties": {
        "data": {"type": "string", "description": "A JSON chunk, a JSON ErrorResponse, or [DONE]."},
        "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
    return {"text/event-stream": {"schema": event}}


STREAM = _event_stream(
    "With stream: true, server-sent events: `data: {Completion chunk}` per piece of text of a choice (its "
    "finish_reason in its last chunk), `data: {usage chunk}` (empty choices) if stream_options.include_usage, "
    "then `data: [DONE]`. An engine failure mid-stream sends `data: {ErrorResponse}` and ends the stream.")


CHAT_STREAM = _event_stream(
    "With stream: true, server-sent events: `data: {ChatCompletion chunk}` per choice with its delta's role, then "
    "one per piece of text (delta.content; finish_reason in the choice's last chunk), `data: {usage chunk}` (empty "
    "choices) if stream_options.include_usage, then `data: [DONE]`. An engine failure mid-stream sends "
    "`data: {ErrorResponse}` and ends the stream.")


def errors(*statuses: int) -> dict:
    """The `responses` entries of these error statuses, each an ErrorResponse."""
    return {status: {"model": ErrorResponse} for status in statuses}


def request_body(model: type[BaseModel]) -> dict:
    """A route's `openapi_extra` naming its JSON request body (its schema is in the components)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install_openapi(app: FastAPI) -> None:
    """Serve FastAPI's own document with the request models added to its components (and without
    the 422 answers FastAPI lists for path parameters: a string path parameter cannot fail, and
    every client mistake here is a 400)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            _drop_validation_errors(document, components)
            for model in REQUEST_MODELS:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


def _drop_validation_errors(document: dict, components: dict) -> None:
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
