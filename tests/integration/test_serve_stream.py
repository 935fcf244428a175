"""The server-sent event response at the ASGI level: each payload framed as `data: ...\\n\\n` in
order, a client that goes away while nothing is being sent has `on_disconnect` called and the
payload generator closed, and a failing generator is not mistaken for a disconnect."""

from __future__ import annotations

import asyncio

import pytest

from decoder.serve.answer import EventStream


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


def test_payloads_are_framed_in_order_and_a_finished_stream_is_no_disconnect():
    async def payloads():
        for p in ['{"a": 1}', "[DONE]"]:
            yield p

    left = []
    sent = asyncio.run(call(EventStream(payloads(), on_disconnect=lambda: left.append(1))))
    start, *bodies = sent
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert dict(start["headers"])[b"cache-control"] == b"no-store"
    assert b"".join(m.get("body", b"") for m in bodies) == b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert left == []


def test_a_client_that_leaves_while_waiting_is_reported_and_the_generator_closed():
    closed, left = [], []

    async def payloads():
        try:
            yield "first"
            await asyncio.Event().wait()  # a request still queued: nothing to send
            yield "never"
        finally:
            closed.append(True)

    sent = asyncio.run(call(EventStream(payloads(), on_disconnect=lambda: left.append(1)), disconnect_after=0.05))
    assert left == [1] and closed == [True]
    assert [m.get("body") for m in sent[1:] if m.get("body")] == [b"data: first\n\n"]


def test_a_failing_generator_raises_and_is_no_disconnect():
    left = []

    async def payloads():
        yield "first"
        raise RuntimeError("engine gone")

    with pytest.raises(RuntimeError, match="engine gone"):
        asyncio.run(call(EventStream(payloads(), on_disconnect=lambda: left.append(1))))
    assert left == []
