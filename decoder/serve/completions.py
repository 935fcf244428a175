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
own cut (a second later) is only a backstop.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from decoder.sampling import SamplingParams
from decoder.serve.engine import Engine, Job
from decoder.serve.logprobs import Entry, choice_logprobs, prompt_entries
from decoder.serve.protocol import APIError, CompletionRequest, error_body, parse_request, read_body
from decoder.serve.scheduler import Sequence
from decoder.serve.served import Served
from decoder.serve.text import TextStream
from decoder.tokenizer import Tokenizer


def check_capacity(req: CompletionRequest, capacity: int) -> None:
    """Refuse (400) a request of more sequences (prompts x n) than the server could ever hold at once."""
    sequences = len(req.prompts) * req.n
    if sequences > capacity:
        raise APIError(400, f"This request asks for {len(req.prompts)} prompt(s) x n={req.n} = {sequences} sequences; "
                       f"this server takes at most {capacity} in one request (its batch slots plus queue places): "
                       "send fewer prompts or a smaller n", param="n", code="too_many_sequences")


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


def sampling_params(req: CompletionRequest, vocab_size: int) -> SamplingParams:
    """The request's sampler, after refusing (400) a logit_bias token beyond the vocabulary."""
    for token, _ in req.bias_pairs:
        if token >= vocab_size:
            raise APIError(400, f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1} "
                           "(POST /tokenize gives a text's ids)", param="logit_bias", code="invalid_value")
    return SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                          repetition_penalty=req.repetition_penalty, no_repeat_ngram_size=req.no_repeat_ngram_size,
                          presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                          logit_bias=req.bias_pairs)


def build_job(req: CompletionRequest, encoded: list[list[int]], tokenizer: Tokenizer) -> Job:
    """One sequence per prompt and choice (choice j of a prompt is seeded with seed + j)."""
    params = sampling_params(req, tokenizer.vocab_size)
    sequences = [
        Sequence(prompt_ids=ids, params=params, max_tokens=req.max_tokens, text=TextStream(tokenizer, req.stops),
                 rng=np.random.default_rng(None if req.seed is None else req.seed + j), top_logprobs=req.logprobs)
        for ids in encoded for j in range(req.n)
    ]
    return Job(sequences, prompt_tokens=sum(len(ids) for ids in encoded))


def usage(job: Job) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}


def _envelope(completion_id: str, created: int, model_id: str) -> dict:
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model_id}


async def create_completion(request: Request, engine: Engine, served: Served) -> JSONResponse | EventSourceResponse:
    """Answer one POST /v1/completions (see the module docstring)."""
    req = parse_request(await read_body(request, served.config.max_body_bytes))
    served.check_model(req.model)
    check_capacity(req, engine.capacity)
    encoded = encode_prompts(req, served)
    job = build_job(req, encoded, served.tokenizer)
    scored = await _score_prompts(req, encoded, served)
    engine.submit(job)
    head = _envelope(f"cmpl-{uuid.uuid4().hex}", int(time.time()), served.model_id)
    if req.stream:
        return EventSourceResponse(
            _stream(job, head, req.include_usage), sep="\n", shutdown_grace_period=served.config.shutdown_grace + 1,
            client_close_handler_callable=lambda message: _cancelled(job, engine))
    try:
        collected = await _collect(request, job)
    finally:
        _cancel(job, engine)
    if isinstance(collected, JSONResponse):
        return collected
    choices = _choices(req, served.tokenizer, job, *collected, scored)
    return JSONResponse({**head, "choices": choices, "usage": usage(job)})


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
