"""POST /v1/completions: from the HTTP body to a job in the engine, and back as JSON or SSE.

Non-streaming: the handler waits for every choice and answers one JSON object (with `echo`, the
prompt before each choice's text; with `logprobs`, OpenAI's logprobs object from
`decoder.serve.logprobs`); if the client goes away first, its sequences are cancelled. Streaming
(`"stream": true`): server-sent events, one `data: {chunk}` per piece of text of a choice, a chunk
with the choice's finish_reason when it ends, a usage chunk (empty choices) if
`stream_options.include_usage`, then `data: [DONE]`. A client that disconnects mid-stream has its
sequences cancelled (they leave the batch at the next step). A request of more sequences (prompts
x n) than the engine's slots and queue could ever hold is refused with 400, not 429. On shutdown
the engine ends every response within `shutdown_grace` seconds; sse-starlette's
own cut (a second later) is only a backstop. `respond` answers a submitted job in a `Shape`:
completions' own, or chat's (`decoder.serve.chat`), so both routes share this one path.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from decoder.sampling import SamplingParams
from decoder.serve.engine import Engine, Job
from decoder.serve.logprobs import Entry, choice_logprobs, prompt_entries
from decoder.serve.protocol import APIError, CompletionRequest, SamplingRequest, error_body, parse_request, read_body
from decoder.serve.scheduler import Sequence
from decoder.serve.served import Served
from decoder.serve.text import TextStream
from decoder.tokenizer import Tokenizer


@dataclass(frozen=True)
class Shape:
    """How a route words its answer: completions' text choices, or chat's messages (`decoder.serve.chat`)."""

    id_prefix: str
    object: str
    """The `object` of the JSON answer."""
    chunk_object: str
    """The `object` of each chunk of a stream."""
    piece: Callable[[int, str, str | None], dict]
    """A stream chunk's choice from (index, the next piece of text, finish_reason or None)."""
    opening: Callable[[int], dict] | None = None
    """The choice of a chunk sent for each choice before any text (chat's role), if any."""


def _text_piece(index: int, text: str, finish: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


COMPLETION = Shape("cmpl", "text_completion", "text_completion", _text_piece)


def check_capacity(prompts: int, req: SamplingRequest, capacity: int) -> None:
    """Refuse (400) a request of more sequences (prompts x n) than the server could ever hold at once."""
    sequences = prompts * req.n
    if sequences > capacity:
        raise APIError(400, f"This request asks for {prompts} prompt(s) x n={req.n} = {sequences} sequences; "
                       f"this server takes at most {capacity} in one request (its batch slots plus queue places): "
                       "send fewer prompts or a smaller n", param="n", code="too_many_sequences")


def encode_prompts(prompts: list[str], served: Served, params: list[str]) -> list[list[int]]:
    """Each prompt's token ids, after refusing (400, naming its field in `params`) one longer than the context."""
    encoded = []
    for prompt, param in zip(prompts, params):
        ids = served.tokenizer.encode(prompt)
        if len(ids) > served.context_length:
            raise APIError(400, f"{param} is {len(ids)} tokens; this model's context is {served.context_length} "
                           "tokens", param=param, code="context_length_exceeded")
        encoded.append(ids)
    return encoded


def prompt_params(req: CompletionRequest) -> list[str]:
    return ["prompt"] if isinstance(req.prompt, str) else [f"prompt.{i}" for i in range(len(req.prompts))]


def sampling_params(req: SamplingRequest, vocab_size: int) -> SamplingParams:
    """The request's sampler, after refusing (400) a logit_bias token beyond the vocabulary."""
    for token, _ in req.bias_pairs:
        if token >= vocab_size:
            raise APIError(400, f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1} "
                           "(POST /tokenize gives a text's ids)", param="logit_bias", code="invalid_value")
    return SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                          repetition_penalty=req.repetition_penalty, no_repeat_ngram_size=req.no_repeat_ngram_size,
                          presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                          logit_bias=req.bias_pairs)


def build_job(req: SamplingRequest, encoded: list[list[int]], tokenizer: Tokenizer, *, max_tokens: int,
              stops: list[str], top_logprobs: int | None = None) -> Job:
    """One sequence per prompt and choice (choice j of a prompt is seeded with seed + j)."""
    params = sampling_params(req, tokenizer.vocab_size)
    sequences = [
        Sequence(prompt_ids=ids, params=params, max_tokens=max_tokens, text=TextStream(tokenizer, stops),
                 rng=np.random.default_rng(None if req.seed is None else req.seed + j), top_logprobs=top_logprobs)
        for ids in encoded for j in range(req.n)
    ]
    return Job(sequences, prompt_tokens=sum(len(ids) for ids in encoded))


def usage(job: Job) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}


async def create_completion(request: Request, engine: Engine, served: Served) -> JSONResponse | EventSourceResponse:
    """Answer one POST /v1/completions (see the module docstring)."""
    req = parse_request(await read_body(request, served.config.max_body_bytes))
    served.check_model(req.model)
    check_capacity(len(req.prompts), req, engine.capacity)
    encoded = encode_prompts(req.prompts, served, prompt_params(req))
    job = build_job(req, encoded, served.tokenizer, max_tokens=req.max_tokens, stops=req.stops,
                    top_logprobs=req.logprobs)
    scored = await _score_prompts(req, encoded, served)
    engine.submit(job)
    return await respond(request, req, job, engine, served, COMPLETION,
                         lambda texts, finishes: _choices(req, served.tokenizer, job, texts, finishes, scored))


async def respond(request: Request, req: SamplingRequest, job: Job, engine: Engine, served: Served, shape: Shape,
                  choices: Callable[[list[str], list[str | None]], list[dict]]) -> JSONResponse | EventSourceResponse:
    """The answer to a submitted job: server-sent events in `shape` with stream, else one JSON object
    whose choices `choices` makes of each choice's text and finish reason."""
    created = int(time.time())
    head = {"id": f"{shape.id_prefix}-{uuid.uuid4().hex}", "object": shape.object, "created": created,
            "model": served.model_id}
    if req.stream:
        return EventSourceResponse(
            _stream(job, {**head, "object": shape.chunk_object}, shape, req.include_usage), sep="\n",
            shutdown_grace_period=served.config.shutdown_grace + 1,
            client_close_handler_callable=lambda message: _cancelled(job, engine))
    try:
        collected = await _collect(request, job)
    finally:
        _cancel(job, engine)
    if isinstance(collected, JSONResponse):
        return collected
    return JSONResponse({**head, "choices": choices(*collected), "usage": usage(job)})


async def _score_prompts(req: CompletionRequest, encoded: list[list[int]], served: Served) -> list[list[Entry]]:
    """With echo and logprobs, each prompt's entries (one forward pass each, in a worker thread)."""
    if not (req.echo and req.logprobs is not None):
        return []
    if served.score is None:
        raise APIError(400, "echo with logprobs needs a model that scores whole prompts; this one does not",
                       param="echo", code="unsupported_parameter")
    return [prompt_entries(await asyncio.to_thread(served.score, ids), ids, req.logprobs) for ids in encoded]


def _choices(req: CompletionRequest, tokenizer: Tokenizer, job: Job, texts: list[str], finishes: list[str | None],
             scored: list[list[Entry]]) -> list[dict]:
    """The response's choices: the prompt first with echo, and the logprobs object when asked for."""
    choices = []
    for i, (seq, text, finish) in enumerate(zip(job.sequences, texts, finishes)):
        prompt = i // req.n
        text = req.prompts[prompt] + text if req.echo else text
        logprobs = None
        if req.logprobs is not None:
            entries = (scored[prompt] if req.echo else []) + seq.logprobs
            logprobs = choice_logprobs(tokenizer, entries, len(text))
        choices.append({"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish})
    return choices


def _cancel(job: Job, engine: Engine) -> None:
    job.cancel()
    engine.wake()


async def _cancelled(job: Job, engine: Engine) -> None:
    """sse-starlette's disconnect callback."""
    _cancel(job, engine)


async def _collect(request: Request, job: Job) -> tuple[list[str], list[str | None]] | JSONResponse:
    """Each choice's text and finish reason, or the error response (the client left, the engine failed)."""
    texts = [[] for _ in job.sequences]
    finishes: list[str | None] = [None] * len(job.sequences)

    async def gather() -> None:
        async for index, text, finish in job.events():
            texts[index].append(text)
            finishes[index] = finish if finish is not None else finishes[index]

    gathering = asyncio.ensure_future(gather())
    watching = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        gathering.cancel()
    if not gathering.done() or gathering.cancelled():
        return JSONResponse(error_body("client disconnected", type="invalid_request_error"), status_code=499)
    if "error" in finishes:
        return JSONResponse(error_body("The engine failed while generating this request", type="server_error",
                                       code="engine_error"), status_code=500)
    return ["".join(t) for t in texts], finishes


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(job: Job, head: dict, shape: Shape, include_usage: bool) -> AsyncIterator[dict]:
    usage_field = {"usage": None} if include_usage else {}
    try:
        if shape.opening is not None:
            for index in range(len(job.sequences)):
                yield {"data": json.dumps({**head, "choices": [shape.opening(index)], **usage_field})}
        async for index, text, finish in job.events():
            if finish == "error":
                yield {"data": json.dumps(error_body("The engine failed while generating this request",
                                                     type="server_error", code="engine_error"))}
                return
            if text or finish is not None:
                yield {"data": json.dumps({**head, "choices": [shape.piece(index, text, finish)], **usage_field})}
        if include_usage:
            yield {"data": json.dumps({**head, "choices": [], "usage": usage(job)})}
        yield {"data": "[DONE]"}
    finally:
        job.cancel()
