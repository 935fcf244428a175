"""The serving benchmarks' streaming client (bench/serving_client.py): chunked SSE bodies split at
any byte, several responses on one kept-alive connection, error statuses, and connections that end
early."""

import asyncio
import json

import pytest

from bench.serving_client import Connection


class FakeTransport:
    def __init__(self):
        self.written, self.closed = [], False

    def write(self, data):
        self.written.append(data)

    def close(self):
        self.closed = True


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY = chunked(
    event({"choices": [{"text": "Hello"}]}),
    event({"choices": [{"text": " world"}]}) + event({"choices": [{"text": "!"}]}),  # two events in one chunk
    b": ping\n\n",
    event({"choices": [{"text": ""}]}),  # a held-back piece: no text yet
    event({"choices": [], "usage": {"completion_tokens": 4, "prompt_tokens": 3}}) + b"data: [DONE]\n\n",
)
ERROR = b'{"error": {"message": "busy"}}'
ERROR_RESPONSE = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(ERROR), ERROR))


def exchange(responses: list[list[bytes]], lose_after: int | None = None):
    """Send one request per entry of `responses` on one connection, feeding each response's pieces;
    returns (each request's trace or exception, the transport)."""
    loop = asyncio.new_event_loop()
    connection, transport = Connection(), FakeTransport()
    connection.connection_made(transport)

    async def run():
        out = []
        for n, pieces in enumerate(responses):
            sent = asyncio.ensure_future(connection.send(b"REQUEST %d" % n))
            await asyncio.sleep(0)
            for piece in pieces:
                connection.data_received(piece)
            if lose_after == n:
                connection.connection_lost(None)
            try:
                out.append(await sent)
            except Exception as e:  # noqa: BLE001 (what the caller sees)
                out.append(e)
        return out

    try:
        return loop.run_until_complete(run()), transport
    finally:
        loop.close()


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_stream_read_in_pieces_of_any_size_gives_the_same_trace(size):
    data = HEAD + BODY
    [trace], transport = exchange([[data[i : i + size] for i in range(0, len(data), size)]])
    assert (trace.output_tokens, trace.prompt_tokens) == (4, 3)
    assert len(trace.chunks) == 3  # three events with text; the ping, the empty piece, usage and [DONE] are not
    assert trace.sent <= trace.chunks[0] <= trace.chunks[-1] <= trace.end
    assert transport.written == [b"REQUEST 0"] and not transport.closed  # kept alive


def test_events_that_arrive_in_one_read_share_their_time():
    [trace], _ = exchange([[HEAD + BODY]])
    assert len(set(trace.chunks)) == 1


def test_one_connection_carries_responses_one_after_another_even_split_across_reads():
    data = HEAD + BODY + ERROR_RESPONSE + HEAD + BODY
    first_cut, second_cut = len(HEAD + BODY) - 3, len(HEAD + BODY + ERROR_RESPONSE) + 5
    # the second response's error status is raised; the third response still reads whole
    results, transport = exchange([[data[:first_cut], data[first_cut:len(HEAD + BODY)]],
                                   [data[len(HEAD + BODY):second_cut]], [data[second_cut:]]])
    assert results[0].output_tokens == 4 and len(results[0].chunks) == 3
    assert isinstance(results[1], RuntimeError) and "429" in str(results[1]) and "busy" in str(results[1])
    assert results[2].output_tokens == 4 and len(results[2].chunks) == 3
    assert transport.written == [b"REQUEST 0", b"REQUEST 1", b"REQUEST 2"]


def test_connection_close_from_the_server_closes_the_connection_after_its_response():
    head = HEAD.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    [trace], transport = exchange([[head + BODY]])
    assert trace.output_tokens == 4 and transport.closed


def test_a_connection_that_ends_before_the_last_chunk_is_an_error():
    [error], _ = exchange([[HEAD + BODY[:40]]], lose_after=0)
    assert isinstance(error, ConnectionError) and "200" in str(error)
