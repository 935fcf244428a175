"""decoder serve's request histograms in /metrics: end-to-end latency and time in the queue move with
each request, a queued request's wait lands in the queue histogram, and a cancelled one is counted."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from servekit import in_process, metric

from decoder.runtime import Runtime
from decoder.serve.app import create_app
from decoder.serve.config import ServeConfig

PROMPT = "Harding wondered"
HOLD_S = 0.4


@pytest.fixture(scope="module")
def runtime(onnx_bundle) -> Runtime:
    return Runtime(onnx_bundle, threads=1)


def bucket(text: str, name: str, le: str) -> float:
    """The cumulative count of histogram `name` at bucket `le` in Prometheus text."""
    prefix = f'{name}_bucket{{le="{le}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix)).split()[1])


def test_a_request_moves_the_latency_and_queue_time_counts(runtime):
    app = create_app(runtime, ServeConfig(max_batch=2, max_queue=2))

    async def call(client):
        before = (await client.get("/metrics")).text
        await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, "temperature": 0})
        await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "stream": True})
        return before, (await client.get("/metrics")).text

    before, after = in_process(app, call)
    for name in ("decoder_request_latency_seconds", "decoder_request_queue_time_seconds"):
        assert metric(before, name + "_count") == 0
        assert metric(after, name + "_count") == 2
        assert bucket(after, name, "+Inf") == 2
    latency, queued = metric(after, "decoder_request_latency_seconds_sum"), metric(
        after, "decoder_request_queue_time_seconds_sum")
    assert 0 <= queued < latency


def test_queued_request_wait_is_in_the_queue_histogram_and_cancelled_ones_count(runtime):
    app = create_app(runtime, ServeConfig(max_batch=1, max_queue=2))
    engine = app.state.engine
    # Hold the engine after the first request's first step, so the second waits HOLD_S in the queue.
    release, step = threading.Event(), engine.scheduler.step
    engine.scheduler.step = lambda admitted: (step(admitted), release.wait(60))[0]

    async def call(client):
        first = asyncio.ensure_future(client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}))
        while engine.jobs_running < 1:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}))
        while engine.jobs_waiting < 1:
            await asyncio.sleep(0.01)
        held_at = time.perf_counter()
        await asyncio.sleep(HOLD_S)
        release.set()
        await first, await second
        held = time.perf_counter() - held_at
        cancelled = client.build_request("POST", "/v1/completions",
                                         json={"prompt": PROMPT, "max_tokens": 4000, "stream": True})
        response = await client.send(cancelled, stream=True)
        async for _ in response.aiter_lines():
            break  # hang up after the first line: the job is cancelled and ends
        await response.aclose()
        for _ in range(500):
            text = (await client.get("/metrics")).text
            if metric(text, "decoder_request_latency_seconds_count") == 3:
                break
            await asyncio.sleep(0.01)
        return held, text

    held, text = in_process(app, call)
    queue = "decoder_request_queue_time_seconds"
    assert metric(text, queue + "_count") == 3
    assert bucket(text, queue, "0.25") <= 2 < bucket(text, queue, "+Inf")  # the held one waited >= HOLD_S
    assert metric(text, queue + "_sum") >= HOLD_S * 0.9
    assert metric(text, "decoder_request_latency_seconds_count") == 3
    assert metric(text, "decoder_request_latency_seconds_sum") >= held * 0.9
