"""The server-sent event response at the ASGI level: the events in order, the pieces one delivery
brings a response in one send (each its own `data: ...\\n\\n` event), a client that goes away
while nothing is being sent has `on_disconnect` called and the generator closed, and a failing
generator is not mistaken for a disconnect."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from decoder.serve.answer import EventStream, _stream
from decoder.serve.completions import COMPLETION
from decoder.serve.job import Job


async def call(response: EventStream, disconnect_after: float | None = None) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        if disconnect_after is None:
            await asyncio.Event().wait()  # the client stays
        await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "POST", "path": "/"}
    await asyncio.wait_for(response(scope, receive, send), timeout=5)
    return sent


def test_events_go_out_in_order_and_a_finished_stream_is_no_disconnect():
    async def events():
        for e in [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]:
            yield e

    left = []
    sent = asyncio.run(call(EventStream(events(), on_disconnect=lambda: left.append(1))))
    start, *bodies = sent
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert dict(start["headers"])[b"cache-control"] == b"no-store"
    assert b"".join(m.get("body", b"") for m in bodies) == b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert left == []


def test_the_pieces_of_one_delivery_go_out_in_one_send_each_its_own_event():
    job = Job([SimpleNamespace(arrived=0.0, cancelled=False, generated=3)], prompt_tokens=2)
    head = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}

    async def run():
        job.put(0, "Hello", None)
        job.put(0, " world", None)  # a busy loop delivered two steps at once
        stream = _stream(job, head, COMPLETION, True, 0, None)
        first = await stream.__anext__()
        job.put(0, "!", "length")
        return first, [chunk async for chunk in stream]

    first, rest = asyncio.run(run())

    def event(choice: dict, usage=None) -> bytes:
        return b"data: " + json.dumps({**head, "choices": [choice], "usage": usage}).encode() + b"\n\n"

    def piece(text, finish=None):
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    assert first == event(piece("Hello")) + event(piece(" world"))
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "prompt_tokens_truncated": 0}
    assert rest == [event(piece("!", "length")),
                    b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n",
                    b"data: [DONE]\n\n"]
    assert job.sequences[0].cancelled  # the stream's end cancels what is left of the job


def test_a_client_that_leaves_while_waiting_is_reported_and_the_generator_closed():
    closed, left = [], []

    async def payloads():
        try:
            yield b"data: first\n\n"
            await asyncio.Event().wait()  # a request still queued: nothing to send
            yield b"data: never\n\n"
        finally:
            closed.append(True)

    sent = asyncio.run(call(EventStream(payloads(), on_disconnect=lambda: left.append(1)), disconnect_after=0.05))
    assert left == [1] and closed == [True]
    assert [m.get("body") for m in sent[1:] if m.get("body")] == [b"data: first\n\n"]


def test_a_failing_generator_raises_and_is_no_disconnect():
    left = []

    async def payloads():
        yield b"data: first\n\n"
        raise RuntimeError("engine gone")

    with pytest.raises(RuntimeError, match="engine gone"):
        asyncio.run(call(EventStream(payloads(), on_disconnect=lambda: left.append(1))))
    assert left == []


def test_a_stream_interval_wakes_the_reader_at_the_first_piece_every_nth_and_the_last():
    job = Job([SimpleNamespace(arrived=0.0, cancelled=False, generated=0)] * 2, prompt_tokens=2, stream_interval=3)

    async def run():
        got = []
        reader = job.batches()

        async def next_batch():
            return await asyncio.wait_for(reader.__anext__(), timeout=5)

        waiting = asyncio.ensure_future(next_batch())
        await asyncio.sleep(0.01)  # the reader waits
        job.put(0, "a", None)  # choice 0's first piece: at once
        got.append(await waiting)
        waiting = asyncio.ensure_future(next_batch())
        await asyncio.sleep(0.01)  # the reader waits
        job.put(0, "b", None)
        job.put(0, "c", None)
        job.put(1, "x", None)  # choice 1's first piece: at once, with what choice 0 has so far
        got.append(await waiting)
        waiting = asyncio.ensure_future(next_batch())
        await asyncio.sleep(0.01)  # the reader waits
        for piece in "def":
            job.put(0, piece, None)
            await asyncio.sleep(0.01)
            assert waiting.done() == (piece == "f")  # the third since the last wake
        got.append(await waiting)
        waiting = asyncio.ensure_future(next_batch())
        await asyncio.sleep(0.01)  # the reader waits
        job.put(1, "y", "length")  # a last piece: at once
        got.append(await waiting)
        job.put(0, "g", "stop")
        got.append(await next_batch())
        return got

    assert asyncio.run(run()) == [[(0, "a", None)], [(0, "b", None), (0, "c", None), (1, "x", None)],
                                  [(0, "d", None), (0, "e", None), (0, "f", None)], [(1, "y", "length")],
                                  [(0, "g", "stop")]]


def test_with_a_stream_interval_a_deliverys_pieces_of_a_choice_go_out_as_one_event():
    job = Job([SimpleNamespace(arrived=0.0, cancelled=False, generated=3)] * 2, prompt_tokens=2, stream_interval=4)
    head = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}

    async def run():
        for index, text, finish in [(0, "Hel", None), (1, "A", None), (0, "lo", None), (1, "B", "length"),
                                    (0, " world", "stop")]:
            job.put(index, text, finish)
        return [chunk async for chunk in _stream(job, head, COMPLETION, False, 0, None)]

    body = b"".join(asyncio.run(run()))
    events = [json.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    assert [(c["index"], c["text"], c["finish_reason"]) for e in events for c in e["choices"]] == [
        (0, "Hello world", "stop"), (1, "AB", "length")]
    assert body.endswith(b"data: [DONE]\n\n")
