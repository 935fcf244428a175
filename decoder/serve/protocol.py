"""The wire format of the API: the request schemas, their validation, and error bodies.

Requests are parsed strictly: a body that is not a JSON object, a field the API does not know, a
value of the wrong JSON type (a string for a number, a float for an integer, a number for a
boolean) or out of range is refused with an OpenAI-style error object

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "..."}}

and status 400 (413 for an oversized body, 429/503 when the server cannot take more work). Nothing
here knows the model: checks that need the tokenizer (prompt too long, a token id beyond the
vocabulary) live with the routes. The models' field docstrings are the API reference at /docs; `decoder.serve.parsing`
reads a body into them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
MAX_TOP_LOGPROBS = 20
"""Largest chat `top_logprobs` (as OpenAI's API)."""
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
            raise ValueError(f"{where} must be a string, got {json_type(item)}")
        if not item:
            raise ValueError(f"{where} is empty: give at least one character")
    return value


def json_type(value: Any) -> str:
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
    max_tokens: int = Field(16, ge=0, le=MAX_TOKENS_LIMIT)
    """Tokens to generate at most (the context window slides, so this may exceed it); 0 only with
    echo (score the prompt, generate nothing)."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """Softmax temperature; 0 is greedy (argmax). Missing or null: the model card's sampling_defaults."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus sampling: keep the most likely tokens whose mass reaches top_p. Missing or null: the
    model card's sampling_defaults."""
    top_k: int | None = Field(None, ge=0)
    """Keep the k most likely tokens; 0 keeps every token. Missing or null: the model card's sampling_defaults."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Each sequence draws from its own generator seeded with this (choice j of n: seed + j), so the
    text does not depend on other requests; None draws a fresh seed."""
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    """CTRL's penalty on tokens already in the sequence, prompt included (1 is off). Missing or null:
    the model card's sampling_defaults (the bundle's sampling config, as `decoder generate`)."""
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=64)
    """Never complete an n-gram already in the sequence (0 is off). Missing or null: the model card's
    sampling_defaults (the bundle's sampling config, as `decoder generate`)."""
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from the logit of every token generated so far (the prompt does not count)."""
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from a token's logit once per time it was generated so far."""
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    """vLLM's: keep only the last k tokens of each prompt (the rest is as if not sent). Without it, a
    prompt longer than the context is seen through its last context-length tokens (or refused, if
    the server runs with --long-prompts refuse); usage.prompt_tokens_truncated counts what the model
    did not see."""
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


Prompt = str | list[int]
"""One prompt: a text, or token ids of this model's vocabulary."""


def _prompts(value: Any) -> Any:
    """A text, a list of texts, token ids, or a list of token-id lists, with a clear message."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        if len(value) > MAX_PROMPTS:
            raise ValueError(f"prompt must list 1 to {MAX_PROMPTS} prompts (got {len(value)})")
        for i, ids in enumerate(value):
            _token_ids(ids, f"prompt[{i}]")
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    if isinstance(value, list) and not value:
        raise ValueError("prompt is an empty list: give a text, texts, token ids or lists of token ids")
    return _strings(value, "prompt", max_items=MAX_PROMPTS)


def _token_ids(ids: Any, where: str) -> None:
    if not ids:
        raise ValueError(f"{where} is an empty list of token ids: give at least one")
    for j, token in enumerate(ids):
        if not isinstance(token, int) or isinstance(token, bool):
            raise ValueError(f"{where}[{j}] must be a token id (an integer), got {json_type(token)}")


class CompletionRequest(SamplingRequest):
    """POST /v1/completions. Sampling follows `decoder generate`: temperature 0 is greedy."""

    prompt: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
             | Annotated[list[int], Field(min_length=1)]
             | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)])
    """The text to continue, a list of texts (one choice each, in order), token ids (this model's, see
    POST /tokenize), or a list of token-id lists; token ids give the same answer as their text."""
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    """Return each token's log probability and the k most likely at its position (the model's own
    distribution, before temperature, penalties and top-k/top-p); streamed chunks carry their tokens'."""
    echo: bool = False
    """Return the prompt before the generated text (with logprobs: the prompt's tokens too, the
    first with null log probability). Not with stream."""
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    """Generate best_of choices per prompt and return the n with the highest mean log probability per
    token (at least n; not with stream; usage counts every token generated)."""
    suffix: None = None
    """Not supported (this model only continues text): any value but null is refused with 400
    `unsupported_parameter`."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        return _prompts(value)

    @property
    def prompts(self) -> list[Prompt]:
        """One entry per prompt: a text or its token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    @property
    def candidates(self) -> int:
        """Sequences generated per prompt (best_of, else n)."""
        return self.n if self.best_of is None else self.best_of


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
    logprobs: bool = False
    """Return each token of the reply with its log probability (choices[].logprobs.content)."""
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """With logprobs: the k most likely tokens at each position, too."""

    @property
    def completion_tokens(self) -> int:
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens
