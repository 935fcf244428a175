"""Helpers of the `decoder serve` tests (a uniquely named module, like tests/tinyconf.py): the app
in-process behind httpx, the app under uvicorn in a thread (real HTTP connections), a real server
process on a free port, and server-sent event parsing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import httpx
import uvicorn

REPO = Path(__file__).resolve().parents[2]


def in_process(app, test: Callable[[httpx.AsyncClient], Awaitable]) -> object:
    """Run `test(client)` against `app` (its lifespan, so its engine, running) and return its result."""
    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
                return await test(client)
    return asyncio.run(main())


def sse_data(body: str) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order (comments and blank lines dropped)."""
    events, data = [], []
    for line in body.splitlines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            events.append("\n".join(data))
            data = []
    if data:
        events.append("\n".join(data))
    return events


def stream_texts(payloads: list[str]) -> tuple[dict[int, str], dict[int, str]]:
    """(text, finish_reason) of each choice from a stream's payloads (which must end with [DONE])."""
    assert payloads and payloads[-1] == "[DONE]", f"stream did not end with [DONE]: {payloads[-3:]}"
    texts, finishes = {}, {}
    for payload in payloads[:-1]:
        for choice in json.loads(payload)["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"] is not None:
                finishes[choice["index"]] = choice["finish_reason"]
    return texts, finishes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample `name` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


@contextmanager
def uvicorn_thread(app, startup_s: float = 30.0) -> Iterator[tuple[str, int]]:
    """`app` served by uvicorn (its default HTTP implementation) in a thread on a free port; yields
    (host, port) once it listens, and stops it at the end."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def server_process(bundle: Path, *args: str, startup_s: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `decoder serve BUNDLE` on 127.0.0.1 and a free port, once /health answers; killed at the end
    if still running. Yields (base url, process); its output goes to a log file next to the bundle."""
    port = free_port()
    log = open(bundle.parent / f"serve-{port}.log", "wb")
    command = [sys.executable, "-m", "decoder", "serve", str(bundle), "--port", str(port), *args]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after {startup_s} s")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        log.close()
