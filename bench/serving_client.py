"""The serving benchmarks' streaming client: POST /v1/completions with `"stream": true` over
persistent HTTP/1.1 connections, each read by an asyncio protocol.

The load generator runs on the cores of the server it measures, so every microsecond it spends per
token or per request is taken from the server (the offline bound it is compared with has no
client at all). So:

- **Connections are kept alive and reused** (`Client`, a pool: a request takes an idle connection
  or opens one), as the clients a server meets do (the `openai` package, LangChain and lm-eval all
  pool their connections). A connection per request cost the server about 0.4 ms of its event
  loop's CPU per request (accept, protocol setup, TCP handshake and teardown on 127.0.0.1).
- **One callback per socket read**: `data_received` undoes the chunked transfer encoding and finds
  the SSE events in whatever one read brings. httpx parses each chunk in Python layers (~10x this
  client's CPU); asyncio's streams need two awaits and their futures per chunk. Events that arrive
  in one read arrive together (one timestamp, taken when the read is handled).
"""

from __future__ import annotations

import asyncio
import json
import time

from bench.serving_stats import Trace


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one request at a time (`send`)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._buffer = bytearray()
        self._done: asyncio.Future | None = None
        self._trace: Trace | None = None
        self._reset()

    def _reset(self) -> None:
        self._status: bytes | None = None  # the status line, once the head is in
        self._chunked = False
        self._length = 0  # the body's Content-Length, when not chunked
        self._close = False  # the server said Connection: close

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport, self.open = transport, True

    async def send(self, request: bytes) -> Trace:
        """Write one request; its trace once the response has ended (RuntimeError for a status other
        than 200, with its body; ConnectionError if the connection ends first)."""
        if not self.open:
            raise ConnectionError("the connection is closed")
        self._done = asyncio.get_running_loop().create_future()
        self._trace = Trace(sent=time.perf_counter())
        self.transport.write(request)
        return await self._done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self._buffer
        buffer += data
        if self._done is None:
            return
        if self._status is None:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            self._head(bytes(buffer[:head_end]))
            del buffer[: head_end + 4]
        if not self._chunked:
            if len(buffer) >= self._length:
                body = bytes(buffer[: self._length])
                del buffer[: self._length]
                self._end(RuntimeError(f"{self._status!r} {body!r}") if b" 200 " not in self._status else None)
            return
        start = 0
        while (line_end := buffer.find(b"\r\n", start)) >= 0:
            size = int(buffer[start:line_end], 16)
            body_end = line_end + 2 + size
            if len(buffer) < body_end + 2:
                break
            if size == 0:
                del buffer[: body_end + 2]
                self._end(None)
                return
            self._events(bytes(buffer[line_end + 2 : body_end]), now)
            start = body_end + 2
        del buffer[:start]

    def _head(self, head: bytes) -> None:
        status, *lines = head.split(b"\r\n")
        self._status = status
        for line in lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding" and value == b"chunked":
                self._chunked = True
            elif name == b"content-length":
                self._length = int(value)
            elif name == b"connection" and value == b"close":
                self._close = True

    def _events(self, chunk: bytes, now: float) -> None:
        """One chunk of the body: one or more SSE events."""
        for event in chunk.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue  # [DONE], a ": ping" comment, or the empty tail
            if b'"usage": {' in event:
                usage = json.loads(event[6:])["usage"]
                self._trace.output_tokens, self._trace.prompt_tokens = usage["completion_tokens"], usage["prompt_tokens"]
            elif b'"text": ""' not in event:
                self._trace.chunks.append(now)

    def _end(self, error: Exception | None) -> None:
        """The response is over (or the connection is): resolve the request, ready for the next."""
        done, trace, close = self._done, self._trace, self._close
        self._done, self._trace = None, None
        self._reset()
        if close and self.open:
            self.open = False
            self.transport.close()
        if done is not None and not done.done():
            trace.end = time.perf_counter()
            done.set_exception(error) if error else done.set_result(trace)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._done is not None:
            status = f" after {self._status!r}" if self._status else ""
            self._end(exc or ConnectionError(f"the server closed the connection before the end of the response{status}"))


class Client:
    """Streaming completion requests to one server, over a pool of kept-alive connections (as many
    as requests in flight at once). Use as `async with Client(url) as client: await client.request(body)`."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def request(self, body: dict) -> Trace:
        """One streaming POST /v1/completions with this JSON body: what the client saw."""
        payload = json.dumps(body).encode()
        request = (b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (self.host.encode(), len(payload), payload))
        while self._idle and not self._idle[-1].open:
            self._idle.pop()
        connection = self._idle.pop() if self._idle else await self._connect()
        try:
            return await connection.send(request)
        finally:
            if connection.open:
                self._idle.append(connection)

    async def connect(self, count: int) -> None:
        """Open connections until `count` are idle (before a clock starts)."""
        opened = await asyncio.gather(*(self._connect() for _ in range(count - len(self._idle))))
        self._idle.extend(opened)

    async def _connect(self) -> Connection:
        _, connection = await asyncio.get_running_loop().create_connection(Connection, self.host, self.port)
        self._all.append(connection)
        return connection

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        for connection in self._all:
            if connection.open:
                connection.open = False
                connection.transport.close()
        await asyncio.sleep(0)  # let the transports close

