"""Reading a request body into the API's request models (`decoder.serve.protocol`): the body's size
limit, strict JSON (no NaN or Infinity, no deep nesting), the first validation problem as a 400
error object naming its field, and the checks across fields (stream with echo, best_of against n,
stream_options without stream, max_tokens against its newer name)."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from decoder.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, SamplingRequest, json_type


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
        raise APIError(400, f"The request body must be a JSON object, got {json_type(raw)}", code="invalid_json")
    return raw


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
    if request.stream and request.echo:
        raise APIError(400, "echo is supported only without stream: send stream false (or leave echo out)",
                       param="echo", code="unsupported_parameter")
    if request.max_tokens == 0 and not request.echo:
        raise APIError(400, "max_tokens=0 generates nothing: it is allowed only with echo (to score the prompt)",
                       param="max_tokens", code="invalid_value")
    if request.best_of is not None:
        if request.best_of < request.n:
            raise APIError(400, f"best_of={request.best_of} must be >= n={request.n}", param="best_of",
                           code="invalid_value")
        if request.stream and request.best_of > 1:
            raise APIError(400, "best_of > 1 is supported only without stream", param="best_of",
                           code="unsupported_parameter")
    return request


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """The chat completion request in `body`, or an APIError(400) naming the first problem and its field."""
    request = _check_stream_options(_validated(ChatCompletionRequest, parse_object(body)))
    if request.max_completion_tokens is not None and "max_tokens" in request.model_fields_set:
        raise APIError(400, "Give max_completion_tokens or max_tokens (its older name), not both",
                       param="max_completion_tokens", code="invalid_value")
    if request.completion_tokens == 0:
        raise APIError(400, "max_tokens must be >= 1 for a chat completion", param="max_tokens", code="invalid_value")
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
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
