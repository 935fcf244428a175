"""The answer to a submitted job, in a route's `Shape`: one JSON object, or server-sent events.

Non-streaming: the handler waits for every choice and answers one JSON object whose choices the
route builds from each choice's text and finish reason; if the client goes away first, its
sequences are cancelled. Streaming (`"stream": true`): server-sent events, one `data: {chunk}` per
piece of text of a choice (with logprobs, the entries of the tokens that piece completes, in the
route's wording), a chunk with the choice's finish_reason when it ends, a usage chunk (empty
choices) if `stream_options.include_usage`, then `data: [DONE]`. A client that disconnects
mid-stream has its sequences cancelled (they leave the batch at the next step). On shutdown the
engine ends every response within `shutdown_grace` seconds; uvicorn's own cut (a moment later) is
only a backstop.

The events go out as a plain `StreamingResponse` of pre-encoded `data: ...\n\n` bytes
(`EventStream`): each chunk's JSON is the response's head, encoded once, around the choice's own
JSON; and the pieces one delivery brings a response (several steps' when the event loop was busy)
go out in one send, each still its own event, with no per-chunk event object or task (the event
loop's per-token work is what limits a 2-core server at 16 streaming clients; no keep-alive
comments are sent, as no client of this API needs them: a token or the end comes every step).
With `stream_interval` N > 1 the reader is woken every N tokens of a choice (`Job`), and the
pieces of one choice in a delivery go out as one event: its text joined, its logprobs one entry
per token.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from decoder.serve.engine import EngineBase
from decoder.serve.job import Job
from decoder.serve.logprobs import Cursor, Scored, eot_entry
from decoder.serve.protocol import SamplingRequest, error_body
from decoder.serve.served import Served
from decoder.tokenizer import Tokenizer

_IDS = random.Random()  # seeded from the OS once


def response_id(prefix: str) -> str:
    """A response's id, "PREFIX-" and 32 random hex digits (as OpenAI's are unique, not secret): no
    system call per request, so the event loop never gives up the GIL for one (uuid4 reads
    os.urandom, and getting the GIL back from a busy engine thread cost tens of microseconds)."""
    return f"{prefix}-{_IDS.getrandbits(128):032x}"


@dataclass(frozen=True)
class Shape:
    """How a route words its answer: completions' text choices, or chat's messages (`decoder.serve.chat`)."""

    id_prefix: str
    object: str
    """The `object` of the JSON answer."""
    chunk_object: str
    """The `object` of each chunk of a stream."""
    piece: Callable[[int, str, str | None, dict | None], dict]
    """A stream chunk's choice from (index, the next piece of text, finish_reason or None, logprobs or None)."""
    logprobs: Callable[[Tokenizer, Scored], dict]
    """The route's logprobs object of some of a choice's entries."""
    opening: Callable[[int], dict] | None = None
    """The choice of a chunk sent for each choice before any text (chat's role), if any."""
    names_eot: bool = False
    """Whether logprobs end with the end of text that ended a choice (completions', as OpenAI's)."""


def usage(job: Job, truncated: int = 0) -> dict:
    """Token counts: prompt_tokens the model saw, prompt_tokens_truncated those it did not."""
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens, "prompt_tokens_truncated": truncated}


async def respond(request: Request, req: SamplingRequest, job: Job, engine: EngineBase, served: Served, shape: Shape,
                  choices: Callable[[list[str], list[str | None]], list[dict]], *, truncated: int = 0,
                  logprobs: bool = False) -> JSONResponse | EventStream:
    """The answer to a submitted job: server-sent events in `shape` with stream (each piece's logprobs
    if `logprobs`), else one JSON object whose choices `choices` makes of each choice's text and finish."""
    head = {"id": response_id(shape.id_prefix), "object": shape.object, "created": int(time.time()),
            "model": served.model_id}
    if req.stream:
        scorer = _StreamLogprobs(job, shape, served.tokenizer) if logprobs else None
        return EventStream(_stream(job, {**head, "object": shape.chunk_object}, shape, req.include_usage, truncated,
                                   scorer), on_disconnect=lambda: cancel(job, engine))
    try:
        collected = await _collect(request, job)
    finally:
        cancel(job, engine)
    if isinstance(collected, JSONResponse):
        return collected
    return JSONResponse({**head, "choices": choices(*collected), "usage": usage(job, truncated)})


def cancel(job: Job, engine: EngineBase) -> None:
    job.cancel()
    engine.wake()


class EventStream(StreamingResponse):
    """Server-sent events from an iterator of framed events (bytes, each one or more `data: ...\\n\\n`),
    while a second task waits for the client to go away and then calls `on_disconnect` and stops."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_disconnect: Callable[[], None]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            gone = not streaming.done()
            if gone:  # the client left (or the server is stopping) first
                streaming.cancel()
                self._on_disconnect()
            await asyncio.gather(streaming, watching, return_exceptions=True)
        if not gone:
            streaming.result()  # a failure of the stream itself is raised


async def _collect(request: Request, job: Job) -> tuple[list[str], list[str | None]] | JSONResponse:
    """Each choice's text and finish reason, or the error response (the client left, the engine failed)."""
    texts = [[] for _ in job.sequences]
    finishes: list[str | None] = [None] * len(job.sequences)

    async def gather() -> None:
        async for index, text, finish in job.events():
            texts[index].append(text)
            finishes[index] = finish if finish is not None else finishes[index]

    gathering = asyncio.ensure_future(gather())
    watching = asyncio.ensure_future(_disconnected(request.receive))
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


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away (the body is already read, so only that can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _StreamLogprobs:
    """Each stream chunk's logprobs: the entries of the tokens its text reaches (`Cursor`)."""

    def __init__(self, job: Job, shape: Shape, tokenizer: Tokenizer) -> None:
        self.job, self.shape, self.tokenizer = job, shape, tokenizer
        self.cursors = [Cursor(tokenizer) for _ in job.sequences]

    def __call__(self, index: int, text: str, finish: str | None) -> dict:
        seq = self.job.sequences[index]
        last = eot_entry(seq, self.tokenizer.eot_id) if finish == "stop" and self.shape.names_eot else None
        return self.shape.logprobs(self.tokenizer, self.cursors[index].take(seq.logprobs, text, last))


def _by_choice(batch: list[tuple[int, str, str | None]]) -> list[tuple[int, str, str | None]]:
    """A delivery's pieces as one piece per choice (its texts joined, its finish reason, if any, last),
    in the order the choices first appear: a stream_interval > 1 sends a choice's tokens in one event."""
    merged: dict[int, tuple[int, str, str | None]] = {}
    for index, text, finish in batch:
        merged[index] = (index, merged[index][1] + text, finish) if index in merged else (index, text, finish)
    return list(merged.values())


def _event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


async def _stream(job: Job, head: dict, shape: Shape, include_usage: bool, truncated: int,
                  scorer: _StreamLogprobs | None) -> AsyncIterator[bytes]:
    """The response's server-sent events, framed: one write for every piece a delivery brings
    (each piece still its own event). A chunk is the JSON of {**head, "choices": [choice]} (and
    "usage": null with include_usage), the head encoded once per response."""
    opening = json.dumps(head)[:-1] + ', "choices": ['
    closing = '], "usage": null}' if include_usage else "]}"
    try:
        if shape.opening is not None:
            yield b"".join(_event(opening + json.dumps(shape.opening(i)) + closing) for i in range(len(job.sequences)))
        async for batch in job.batches():
            events = []
            for index, text, finish in (batch if job.stream_interval == 1 else _by_choice(batch)):
                if finish == "error":
                    events.append(_event(json.dumps(error_body("The engine failed while generating this request",
                                                               type="server_error", code="engine_error"))))
                    yield b"".join(events)
                    return
                if text or finish is not None:
                    logprobs = scorer(index, text, finish) if scorer is not None else None
                    events.append(_event(opening + json.dumps(shape.piece(index, text, finish, logprobs)) + closing))
            if events:
                yield b"".join(events)
        if include_usage:
            yield _event(json.dumps({**head, "choices": [], "usage": usage(job, truncated)}))
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel()
