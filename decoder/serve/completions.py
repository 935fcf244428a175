"""POST /v1/completions: from the HTTP body to a job in the engine, and back as JSON or SSE.

Non-streaming: the handler waits for every choice and answers one JSON object; if the client goes
away first, its sequences are cancelled. Streaming (`"stream": true`): server-sent events, one
`data: {chunk}` per piece of text of a choice, a chunk with the choice's finish_reason when it
ends, a usage chunk (empty choices) if `stream_options.include_usage`, then `data: [DONE]`. A
client that disconnects mid-stream has its sequences cancelled (they leave the batch at the next
step). On shutdown the engine ends every response within `shutdown_grace` seconds; sse-starlette's
own cut (a second later) is only a backstop.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from decoder.sampling import SamplingParams
from decoder.serve.config import ServeConfig
from decoder.serve.engine import Engine, Job
from decoder.serve.protocol import APIError, CompletionRequest, error_body, parse_request
from decoder.serve.scheduler import Sequence
from decoder.serve.text import TextStream
from decoder.tokenizer import Tokenizer


@dataclass(frozen=True)
class Served:
    """What the completions route needs to know about the model and the server's limits."""

    model_id: str
    tokenizer: Tokenizer
    context_length: int
    config: ServeConfig


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or APIError 413 as soon as it is known to exceed `limit` bytes."""
    too_large = APIError(413, f"The request body is larger than {limit} bytes", code="request_too_large")
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


def encode_prompts(req: CompletionRequest, served: Served) -> list[list[int]]:
    encoded = []
    for i, prompt in enumerate(req.prompts):
        ids = served.tokenizer.encode(prompt)
        if len(ids) > served.context_length:
            param = "prompt" if isinstance(req.prompt, str) else f"prompt.{i}"
            raise APIError(400, f"{param} is {len(ids)} tokens; this model's context is {served.context_length} "
                           "tokens", param=param, code="context_length_exceeded")
        encoded.append(ids)
    return encoded


def build_job(req: CompletionRequest, encoded: list[list[int]], tokenizer: Tokenizer) -> Job:
    """One sequence per prompt and choice (choice j of a prompt is seeded with seed + j)."""
    params = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                            repetition_penalty=req.repetition_penalty, no_repeat_ngram_size=req.no_repeat_ngram_size)
    sequences = [
        Sequence(prompt_ids=ids, params=params, max_tokens=req.max_tokens, text=TextStream(tokenizer, req.stops),
                 rng=np.random.default_rng(None if req.seed is None else req.seed + j))
        for ids in encoded for j in range(req.n)
    ]
    return Job(sequences, prompt_tokens=sum(len(ids) for ids in encoded))


def usage(job: Job) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}


def _envelope(completion_id: str, created: int, model_id: str) -> dict:
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model_id}


async def create_completion(request: Request, engine: Engine, served: Served):
    req = parse_request(await read_body(request, served.config.max_body_bytes))
    if req.model is not None and req.model != served.model_id:
        raise APIError(404, f"The model {req.model!r} does not exist; this server serves {served.model_id!r}",
                       param="model", code="model_not_found")
    job = build_job(req, encode_prompts(req, served), served.tokenizer)
    engine.submit(job)
    head = _envelope(f"cmpl-{uuid.uuid4().hex}", int(time.time()), served.model_id)
    if req.stream:
        return EventSourceResponse(
            _stream(job, head, req.include_usage), sep="\n", shutdown_grace_period=served.config.shutdown_grace + 1,
            client_close_handler_callable=lambda message: _cancelled(job, engine))
    try:
        return await _collect(request, job, head)
    finally:
        _cancel(job, engine)


def _cancel(job: Job, engine: Engine) -> None:
    job.cancel()
    engine.wake()


async def _cancelled(job: Job, engine: Engine) -> None:
    """sse-starlette's disconnect callback."""
    _cancel(job, engine)


async def _collect(request: Request, job: Job, head: dict) -> JSONResponse:
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
    choices = [{"text": "".join(t), "index": i, "logprobs": None, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finishes))]
    return JSONResponse({**head, "choices": choices, "usage": usage(job)})


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(job: Job, head: dict, include_usage: bool) -> AsyncIterator[dict]:
    try:
        async for index, text, finish in job.events():
            if finish == "error":
                yield {"data": json.dumps(error_body("The engine failed while generating this request",
                                                     type="server_error", code="engine_error"))}
                return
            if text or finish is not None:
                choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
                yield {"data": json.dumps({**head, "choices": [choice], **({"usage": None} if include_usage else {})})}
        if include_usage:
            yield {"data": json.dumps({**head, "choices": [], "usage": usage(job)})}
        yield {"data": "[DONE]"}
    finally:
        job.cancel()
