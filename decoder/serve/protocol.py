"""The wire format of the API: the request schemas, their validation, and error bodies.

Requests are parsed strictly: a body that is not a JSON object, a field the API does not know, a
value of the wrong JSON type (a string for a number, a float for an integer, a number for a
boolean) or out of range is refused with an OpenAI-style error object

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "..."}}

and status 400 (413 for an oversized body, 429/503 when the server cannot take more work). Nothing
here knows the model: checks that need the tokenizer (prompt too long, a token id beyond the
vocabulary) live with the routes. The models' field docstrings are the API reference at /docs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_TOKENS_LIMIT = 4096
"""Largest `max_tokens` a request may ask for (the window slides, so this is not the context)."""
MAX_CHOICES = 8
"""Largest `n`."""
MAX_PROMPTS = 64
"""Most prompts in one request (a list prompt)."""
MAX_STOP = 4
"""Most stop strings (as OpenAI's API)."""
MAX_MESSAGES = 256
"""Most messages in one chat request."""
MAX_SEED = 2**63 - 1
MAX_LOGPROBS = 5
"""Largest `logprobs` (as OpenAI's API)."""
MAX_BIAS = 100.0
"""`logit_bias` values lie in [-MAX_BIAS, MAX_BIAS] (as OpenAI's API)."""
STRICT = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


class APIError(Exception):
    """An error answered to the client as an OpenAI error object; never logged as a crash."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False
    """Send a last chunk with the token counts (and empty choices) before `data: [DONE]`."""


def _strings(value: Any, field: str, *, max_items: int) -> Any:
    """A string or a non-empty list of at most `max_items` non-empty strings, with a clear message."""
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not 1 <= len(value) <= max_items:
        raise ValueError(f"{field} must be a string or a list of 1 to {max_items} strings (got {len(value)} items)")
    for i, item in enumerate(items):
        where = field if not isinstance(value, list) else f"{field}[{i}]"
        if not isinstance(item, str):
            raise ValueError(f"{where} must be a string, got {_json_type(item)}")
        if not item:
            raise ValueError(f"{where} is empty: give at least one character")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


Text = Annotated[str, Field(min_length=1)]


class SamplingRequest(BaseModel):
    """The fields POST /v1/completions and POST /v1/chat/completions share. Sampling follows
    `decoder generate`: temperature 0 is greedy."""

    model_config = STRICT
    model: str | None = None
    """If given, one of the served model's names (GET /v1/models)."""
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    """Tokens to generate at most (the context window slides, so this may exceed it)."""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Softmax temperature; 0 is greedy (argmax)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the most likely tokens whose mass reaches top_p."""
    top_k: int = Field(0, ge=0)
    """Keep the k most likely tokens; 0 keeps every token."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Each sequence draws from its own generator seeded with this (choice j of n: seed + j), so the
    text does not depend on other requests; None draws a fresh seed."""
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    """CTRL's penalty on tokens already in the sequence, prompt included (1 is off; `decoder
    generate` defaults to 1.2)."""
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    """Never complete an n-gram already in the sequence (0 is off; `decoder generate` defaults to 4)."""
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from the logit of every token generated so far (the prompt does not count)."""
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from a token's logit once per time it was generated so far."""
    logit_bias: dict[str, float] | None = None
    """Token id (as a string: ids of this model's vocabulary, see POST /tokenize) -> a bias in
    [-100, 100] added to its logit before sampling; -100 all but bans the token, 100 all but forces it."""
    stop: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_STOP)] | None = None
    """Up to 4 strings; generation ends before the first one and it is not returned."""
    stream: bool = False
    """Answer with server-sent events (text/event-stream), one chunk per piece of text."""
    stream_options: StreamOptions | None = None
    """Only with stream: true."""
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    """Choices per prompt."""
    user: str | None = None
    """An id of the end user (OpenAI's field): accepted and ignored."""

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        return value if value is None else _strings(value, "stop", max_items=MAX_STOP)

    @field_validator("logit_bias", mode="after")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids (decimal integers as strings), got {key!r}")
            if not -MAX_BIAS <= bias <= MAX_BIAS:
                raise ValueError(f"logit_bias[{key!r}]={bias}: must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
        return value

    @property
    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs, as `decoder.sampling.SamplingParams` takes it."""
        return tuple((int(key), bias) for key, bias in (self.logit_bias or {}).items())

    @property
    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    """POST /v1/completions. Sampling follows `decoder generate`: temperature 0 is greedy."""

    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
    """The text to continue, or a list of texts (one choice each, in order)."""
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    """Return each token's log probability and the k most likely at its position (the model's own
    distribution, before temperature, penalties and top-k/top-p). Not with stream."""
    echo: bool = False
    """Return the prompt before the generated text (with logprobs: the prompt's tokens too, the
    first with null log probability). Not with stream."""
    suffix: None = None
    """Not supported (this model only continues text): any value but null is refused with 400
    `unsupported_parameter`."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        return _strings(value, "prompt", max_items=MAX_PROMPTS)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"]
    """Who speaks: each message is rendered as a line of the prompt (`decoder.serve.chat`)."""
    content: str
    """The message's text (a plain string: this model reads text only)."""


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions: the messages rendered to one prompt by a plain-text template (the
    model card's `chat_template`), then continued as by POST /v1/completions. The model is a base
    model, not one tuned to follow instructions: it continues the transcript."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    """The conversation so far, oldest first."""
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    """OpenAI's newer name for max_tokens (give one of them)."""

    @property
    def completion_tokens(self) -> int:
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or APIError 413 as soon as it is known to exceed `limit` bytes (with
    `Connection: close`: the rest of the body is not read, so the connection cannot be reused)."""
    too_large = APIError(413, f"The request body is larger than {limit} bytes", code="request_too_large",
                         headers={"Connection": "close"})
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_object(body: bytes) -> dict:
    """The JSON object in `body`, or an APIError(400) saying why it is not one."""
    try:
        raw = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # arrays or objects nested ~1000 deep exhaust the parser's stack
        raise APIError(400, "The request body nests arrays or objects too deeply to parse; no field of this API "
                       "takes more than two levels", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise APIError(400, f"The request body must be a JSON object, got {_json_type(raw)}", code="invalid_json")
    return raw


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's names): the token ids of a text, as completions would encode it."""

    model_config = STRICT
    prompt: str
    """The text to encode (it may be longer than the context: the answer says how long it is)."""
    model: str | None = None
    """If given, one of the served model's names."""
    add_special_tokens: bool = True
    """vLLM's switch for a tokenizer's BOS token; this model adds no special tokens either way."""
    return_token_strs: bool = False
    """Also return each token's text (its bytes as UTF-8, a partial character as U+FFFD)."""


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's names): the text of token ids."""

    model_config = STRICT
    tokens: list[int]
    """Token ids of this model's vocabulary (0 to vocab_size - 1, GET /v1/models); the end-of-text
    token decodes to nothing, as in completions."""
    model: str | None = None
    """If given, one of the served model's names."""


RequestModel = TypeVar("RequestModel", bound=BaseModel)
SamplingRequestModel = TypeVar("SamplingRequestModel", bound=SamplingRequest)


def parse_as(model: type[RequestModel], body: bytes) -> RequestModel:
    """`body` as a `model`, or an APIError(400) naming the first problem and its field."""
    return _validated(model, parse_object(body))


def _validated(model: type[RequestModel], raw: dict) -> RequestModel:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_request(body: bytes) -> CompletionRequest:
    """The completion request in `body`, or an APIError(400) naming the first problem and its field."""
    raw = parse_object(body)
    if raw.get("suffix") is not None:
        raise APIError(400, "suffix is not supported: this model only continues a prompt (inserting text needs a "
                       "model trained for it); leave suffix out or null", param="suffix", code="unsupported_parameter")
    request = _check_stream_options(_validated(CompletionRequest, raw))
    for name in ("logprobs", "echo"):
        if request.stream and getattr(request, name) not in (None, False):
            raise APIError(400, f"{name} is supported only without stream: send stream false (or leave {name} out)",
                           param=name, code="unsupported_parameter")
    return request


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """The chat completion request in `body`, or an APIError(400) naming the first problem and its field."""
    request = _check_stream_options(_validated(ChatCompletionRequest, parse_object(body)))
    if request.max_completion_tokens is not None and "max_tokens" in request.model_fields_set:
        raise APIError(400, "Give max_completion_tokens or max_tokens (its older name), not both",
                       param="max_completion_tokens", code="invalid_value")
    return request


def _check_stream_options(request: SamplingRequestModel) -> SamplingRequestModel:
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options",
                       code="invalid_value")
    return request


_TYPE_ERRORS = {"string_type", "int_type", "float_type", "bool_type", "list_type", "model_type", "dict_type",
                "int_from_float", "model_attributes_type"}


def validation_error(exc: ValidationError) -> APIError:
    """The first problem of a pydantic error as a 400 APIError with `param` and a short `code`."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_field")
    if kind == "missing":
        return APIError(400, f"Missing required argument: {param}", param=param, code="missing_field")
    code = "invalid_type" if kind in _TYPE_ERRORS else "invalid_value"
    if kind == "value_error":  # our own validators' messages name the field already
        return APIError(400, first["msg"].removeprefix("Value error, "), param=param, code=code)
    return APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code=code)
