"""A real `decoder serve` process on 127.0.0.1: 32 concurrent streaming clients, a client that
hangs up mid-stream, SIGTERM, and no torch in the serving process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servekit import metric, server_process, sse_data, stream_texts

from decoder.runtime import Runtime
from decoder.sampling import SamplingParams

PROMPTS = ["Harding wondered", "The sea was", "Pencroft said", "At noon", "The engineer", "Neb ran",
           "Captain Nemo", "On the island"]
CLIENT_DEADLINE_S = 180


@pytest.fixture(scope="module")
def server(onnx_bundle):
    with server_process(onnx_bundle, "--max-batch", "16", "--max-queue", "64", "--sampling-defaults", "openai",
                        "--served-model-name", "verne", "decoder/tiny") as (url, proc):
        yield url, proc


def test_served_model_names_from_the_command_line_are_answered_to(server):
    url, _ = server
    names = [card["id"] for card in httpx.get(url + "/v1/models").json()["data"]]
    assert names[:2] == ["verne", "decoder/tiny"]
    assert httpx.get(url + "/v1/models/decoder/tiny").json()["id"] == "decoder/tiny"
    reply = httpx.post(url + "/v1/completions", json={"model": "decoder/tiny", "prompt": "x", "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["model"] == "verne"
    assert httpx.get(url + "/v1/models/nobody").status_code == 404


def requests_32() -> list[dict]:
    """Half greedy, half seeded samples; lengths from 1 to past the 16-token context (the window slides)."""
    out = []
    for i in range(32):
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 1 + (i * 7) % 45, "stream": True}
        body.update({"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "top_p": 0.9, "seed": i})
        out.append(body)
    return out


async def stream_one(client: httpx.AsyncClient, url: str, body: dict) -> str:
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        return (await r.aread()).decode()


def test_32_concurrent_streaming_clients_get_complete_responses_equal_to_running_alone(server, onnx_bundle):
    url, _ = server
    bodies = requests_32()

    async def clients():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.wait_for(asyncio.gather(*(stream_one(client, url, b) for b in bodies)),
                                          CLIENT_DEADLINE_S)

    bodies_out = asyncio.run(clients())
    runtime = Runtime(onnx_bundle, threads=1)
    for body, raw in zip(bodies, bodies_out):
        texts, finishes = stream_texts(sse_data(raw))
        assert set(finishes) == {0} and finishes[0] in ("length", "stop")
        params = SamplingParams(temperature=body["temperature"], top_p=body.get("top_p", 1.0))
        alone = "".join(runtime.stream(body["prompt"], max_new_tokens=body["max_tokens"], params=params,
                                       seed=body.get("seed", 0)))
        assert texts[0] == alone, body
    batch_rows = httpx.get(url + "/metrics").text
    assert metric(batch_rows, "decoder_batch_rows_count") < sum(b["max_tokens"] for b in bodies), \
        "every step sampled a single row: the requests never shared a model call"


def test_client_hanging_up_mid_stream_frees_its_slot(server):
    url, _ = server

    async def hang_up():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"prompt": "Harding wondered", "max_tokens": 4000, "temperature": 0, "stream": True}
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                chunks = r.aiter_lines()
                seen = 0
                while seen < 5:
                    seen += (await anext(chunks)).startswith("data:")
                running = metric((await client.get(url + "/metrics")).text, "decoder_requests_running")
            return running  # leaving the block closes the connection mid-stream

    assert asyncio.run(hang_up()) == 1
    deadline = time.monotonic() + 10
    while metric(httpx.get(url + "/metrics").text, "decoder_requests_running") != 0:
        assert time.monotonic() < deadline, "the hung-up request still runs"
        time.sleep(0.05)
    cancelled = metric(httpx.get(url + "/metrics").text, 'decoder_sequences_finished_total{finish_reason="cancelled"}')
    assert cancelled >= 1
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_client_giving_up_on_a_plain_request_frees_its_slot(server):
    url, _ = server
    before = httpx.get(url + "/metrics").text
    # 16 prompts of 4,000 tokens each: the tiny model can write one 4,000-token completion within
    # the 0.5-s read timeout on a quiet machine, not 64,000 tokens.
    body = {"prompt": ["Harding wondered"] * 16, "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client closes the connection when it times out
        httpx.post(url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 10
    while metric(httpx.get(url + "/metrics").text, "decoder_requests_running") != 0:
        assert time.monotonic() < deadline, "the abandoned request still runs"
        time.sleep(0.05)
    generated = metric(httpx.get(url + "/metrics").text, "decoder_generated_tokens_total")
    assert generated - metric(before, "decoder_generated_tokens_total") < 16 * 4000


def test_sigterm_refuses_new_work_cancels_streams_after_the_grace_and_exits_0(onnx_bundle):
    grace = 2
    # The stream must outlast the grace on any machine: the tiny test model can write a whole
    # 4,000-token completion within the 2-s grace (CI runs on a 2-core EPYC saw it end "length"),
    # so one request asks for 16 of them and the server runs one sequence at a time (64,000 tokens):
    # the first ones may finish within the grace, the last ones cannot.
    with server_process(onnx_bundle, "--shutdown-grace", str(grace), "--max-batch", "1") as (url, proc):
        async def stream_during_shutdown():
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"prompt": PROMPTS * 2, "max_tokens": 4000, "temperature": 0, "stream": True}
                async with client.stream("POST", url + "/v1/completions", json=body) as r:
                    lines = r.aiter_lines()
                    first = await anext(lines)
                    proc.send_signal(signal.SIGTERM)
                    start = time.monotonic()
                    rest = [line async for line in lines]
                    return time.monotonic() - start, [first, *rest]

        ended_after, lines = asyncio.run(stream_during_shutdown())
        texts, finishes = stream_texts(sse_data("\n".join(lines)))
        assert set(finishes) == set(range(16)) and set(finishes.values()) <= {"length", "cancelled"}
        assert finishes[15] == "cancelled" and texts[0]
        assert grace - 0.5 < ended_after < grace + 3
        assert proc.wait(15) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)


def test_request_in_flight_at_sigterm_completes_within_the_grace(onnx_bundle):
    with server_process(onnx_bundle, "--shutdown-grace", "60") as (url, proc):
        async def request_then_term():
            async with httpx.AsyncClient(timeout=30) as client:
                pending = asyncio.ensure_future(client.post(url + "/v1/completions", json={
                    "prompt": "Harding wondered", "max_tokens": 4000, "temperature": 0}))  # about 2 s here
                while metric((await client.get(url + "/metrics")).text, "decoder_requests_running") < 1:
                    assert not pending.done(), "finished before the signal could be sent"
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                return await pending

        response = asyncio.run(request_then_term())
        assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "length"
        assert proc.wait(15) == 0


def test_serving_path_imports_no_torch(onnx_bundle):
    code = ("import sys; from decoder.cli import build_parser; from decoder.runtime import Runtime; "
            "from decoder.serve.server import create_app; build_parser(); "
            f"create_app(Runtime({str(onnx_bundle)!r})); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serving_ab_serves_each_tree_and_reports_each(onnx_bundle):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "bench.serving_ab", str(onnx_bundle), "--tree", f"one={repo}",
                           "--tree", f"two={repo}", "--tree-args",
                           "two=--stream-interval 2 --threads 2 --engine-workers 1 --allow-spinning", "--clients", "2",
                           "--rounds", "1", "--new-tokens", "4"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| one") or
            line.startswith("| two")]
    assert [r[0].strip() for r in rows] == ["one", "two"]
    for row in rows:
        tok_s, ratio, cpu, main, client = (float(c.replace(",", "")) for c in row[1:])
        assert tok_s > 0 and ratio > 0 and cpu >= main >= 0 and client >= 0


def test_engine_workers_benchmark_reports_each_worker_count_and_the_bound(onnx_bundle):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "bench.engine_workers", str(onnx_bundle), "--clients", "4",
                           "--workers", "1,2", "--rounds", "1", "--new-tokens", "4"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| engine")]
    assert [r[0] for r in rows] == ["1 worker, no HTTP", "2 workers, no HTTP", "offline bound (batch 4)"]
    for name, tok_s, ratio in rows:
        assert float(tok_s.replace(",", "")) > 0 and float(ratio.split()[0]) > 0
