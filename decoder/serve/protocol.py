"""The wire format of the completions API: the request schema, its validation, and error bodies.

Requests are parsed strictly: a body that is not a JSON object, a field the API does not know, a
value of the wrong JSON type (a string for a number, a float for an integer, a number for a
boolean) or out of range is refused with an OpenAI-style error object

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "..."}}

and status 400 (413 for an oversized body, 429/503 when the server cannot take more work). Nothing
here knows the model: checks that need the tokenizer (prompt too long) live in the app.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_TOKENS_LIMIT = 4096
"""Largest `max_tokens` a request may ask for (the window slides, so this is not the context)."""
MAX_CHOICES = 8
"""Largest `n`."""
MAX_PROMPTS = 64
"""Most prompts in one request (a list prompt)."""
MAX_STOP = 4
"""Most stop strings (as OpenAI's API)."""
MAX_SEED = 2**63 - 1


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
    model_config = ConfigDict(extra="forbid", strict=True)
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


class CompletionRequest(BaseModel):
    """POST /v1/completions. Sampling follows `decoder generate`: temperature 0 is greedy."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str | list[str]
    """The text to continue, or a list of texts (one choice each, in order)."""
    model: str | None = None
    """If given, must be the served model's id (GET /v1/models)."""
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    """0 keeps every token."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Each sequence draws from its own generator seeded with this (choice j of n: seed + j), so the
    text does not depend on other requests; None draws a fresh seed."""
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    """CTRL's penalty on tokens already in the sequence, prompt included (1 is off; `decoder
    generate` defaults to 1.2)."""
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    """Never complete an n-gram already in the sequence (0 is off; `decoder generate` defaults to 4)."""
    stop: str | list[str] | None = None
    """Up to 4 strings; generation ends before the first one and it is not returned."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        return _strings(value, "prompt", max_items=MAX_PROMPTS)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        return value if value is None else _strings(value, "stop", max_items=MAX_STOP)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(body: bytes) -> CompletionRequest:
    """The request in `body`, or an APIError(400) naming the first problem and its field."""
    try:
        raw = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise APIError(400, f"The request body must be a JSON object, got {_json_type(raw)}", code="invalid_json")
    try:
        request = CompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
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
