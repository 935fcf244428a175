"""The serving benchmarks' streaming client (bench/serving_client.py): chunked SSE bodies split at
any byte, error statuses, and connections that end early."""

import asyncio
import json

import pytest

from bench.serving_client import StreamingRequest


class FakeTransport:
    def __init__(self):
        self.written, self.closed = b"", False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
BODY = chunked(
    event({"choices": [{"text": "Hello"}]}),
    event({"choices": [{"text": " world"}]}) + event({"choices": [{"text": "!"}]}),  # two events in one chunk
    b": ping\n\n",
    event({"choices": [{"text": ""}]}),  # a held-back piece: no text yet
    event({"choices": [], "usage": {"completion_tokens": 4, "prompt_tokens": 3}}) + b"data: [DONE]\n\n",
)


def run(pieces: list[bytes], lose: Exception | None = None):
    loop = asyncio.new_event_loop()
    try:
        done = loop.create_future()
        client = StreamingRequest(b"POST / HTTP/1.1\r\n\r\n", done)
        transport = FakeTransport()
        client.connection_made(transport)
        for piece in pieces:
            client.data_received(piece)
        if not done.done():
            client.connection_lost(lose)
        assert transport.written == b"POST / HTTP/1.1\r\n\r\n" and transport.closed
        return done.result() if done.exception() is None else done.exception()
    finally:
        loop.close()


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_stream_read_in_pieces_of_any_size_gives_the_same_trace(size):
    data = HEAD + BODY
    trace = run([data[i : i + size] for i in range(0, len(data), size)])
    assert (trace.output_tokens, trace.prompt_tokens) == (4, 3)
    assert len(trace.chunks) == 3  # three events with text; the ping, the empty piece, usage and [DONE] are not
    assert trace.sent <= trace.chunks[0] <= trace.chunks[-1] <= trace.end


def test_events_that_arrive_in_one_read_share_their_time():
    trace = run([HEAD + BODY])
    assert len(set(trace.chunks)) == 1


def test_an_error_status_is_raised_with_its_body():
    error = run([b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 9\r\n\r\n", b'{"x": 1}\n'])
    assert isinstance(error, RuntimeError) and b"429" in str(error).encode() and "x" in str(error)


def test_a_connection_that_ends_before_the_last_chunk_is_an_error():
    error = run([HEAD + BODY[:40]])
    assert isinstance(error, ConnectionError)
