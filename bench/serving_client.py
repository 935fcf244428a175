"""The serving benchmarks' streaming client: one POST /v1/completions with `"stream": true` over a
plain HTTP/1.1 connection, read by an asyncio protocol.

The load generator runs on the cores of the server it measures, so every microsecond it spends per
token is taken from the server (the offline bound it is compared with has no client at all). httpx
parses each chunk in Python layers (~10x this client's CPU); asyncio's streams need two awaits and
their futures per chunk (`readline` for its size, `readexactly` for its body). This client's
`data_received` takes whatever one socket read brings, undoes the chunked transfer encoding and
finds the SSE events in it, all in one callback: events that arrive in one read arrive together
(one timestamp, taken when the read is handled).
"""

from __future__ import annotations

import asyncio
import json
import time

from bench.serving_stats import Trace


class StreamingRequest(asyncio.Protocol):
    """Sends one request when connected; records a `Trace`; resolves `done` at the end of the body
    (or with an error for a status other than 200 or a connection that ends early)."""

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request, self.done = request, done
        self.trace = Trace(sent=float("nan"))
        self.buffer = bytearray()
        self.status: bytes | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.trace.sent = time.perf_counter()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self.buffer
        buffer += data
        if self.status is None:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            self.status = bytes(buffer[: buffer.find(b"\r\n")])
            if b" 200 " not in self.status:
                return  # the error body is read to the end and reported by connection_lost
            del buffer[: head_end + 4]
        elif b" 200 " not in self.status:
            return
        start = 0
        while (line_end := buffer.find(b"\r\n", start)) >= 0:
            size = int(buffer[start:line_end], 16)
            if size == 0:
                self._finish(None)
                return
            body_end = line_end + 2 + size
            if len(buffer) < body_end + 2:
                break
            self._events(bytes(buffer[line_end + 2 : body_end]), now)
            start = body_end + 2
        del buffer[:start]

    def _events(self, chunk: bytes, now: float) -> None:
        """One chunk of the body: one or more SSE events."""
        for event in chunk.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue  # [DONE], a ": ping" comment, or the empty tail
            if b'"usage": {' in event:
                usage = json.loads(event[6:])["usage"]
                self.trace.output_tokens, self.trace.prompt_tokens = usage["completion_tokens"], usage["prompt_tokens"]
            elif b'"text": ""' not in event:
                self.trace.chunks.append(now)

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            self.trace.end = time.perf_counter()
            self.done.set_exception(error) if error else self.done.set_result(self.trace)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status is not None and b" 200 " not in self.status:
            error = RuntimeError(f"{self.status!r} {bytes(self.buffer)!r}")
        else:
            error = exc or ConnectionError("the server closed the connection before the end of the stream")
        self._finish(error)


async def one_request(url: str, body: dict) -> Trace:
    """One streaming completion request to `url` (http://HOST:PORT): what the client saw."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(payload), payload))
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    await loop.create_connection(lambda: StreamingRequest(request, done), host, int(port))
    return await done
