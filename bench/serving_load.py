"""Open-loop load for `python -m bench.serving --request-rate ...`, as `vllm bench serve` drives a
server: at each rate, `--num-prompts` greedy streaming requests are sent at seeded Poisson arrival
times (exponential gaps of mean 1 / rate; `inf` sends them all at once), at most
`--max-concurrency` in flight when given (a request waits for a place, and its clock starts when it
is sent), against one `decoder serve` process with `--max-batch`. The report gives the figures of
`bench.serving_stats` per rate.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time

import numpy as np

from bench.serving import GREEDY, PROMPTS, cpu_model, peak_rss_mib, server
from bench.serving_client import Client
from bench.serving_stats import Trace, summarize


def arrival_offsets(rate: float, count: int, seed: int) -> np.ndarray:
    """Seconds from the start at which each request is due: cumulative exponential gaps (Poisson)."""
    if math.isinf(rate):
        return np.zeros(count)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=count)
    gaps[0] = 0.0  # the first request opens the run
    return np.cumsum(gaps)


async def open_loop(url: str, rate: float, args: argparse.Namespace) -> tuple[list[Trace], int]:
    """(the completed requests' traces, how many failed) of one rate."""
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    failed = 0
    client = Client(url)  # kept-alive connections, one per request in flight, reused as requests end

    async def one(i: int) -> Trace | None:
        nonlocal failed
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.new_tokens, **GREEDY,
                "stream": True, "stream_options": {"include_usage": True}}
        try:
            if limit is None:
                return await client.request(body)
            async with limit:
                return await client.request(body)
        except (OSError, RuntimeError, asyncio.IncompleteReadError) as e:
            failed += 1
            print(f"request {i} failed: {e}", file=sys.stderr)
            return None

    start = time.perf_counter()
    tasks = []
    for i, due in enumerate(arrival_offsets(rate, args.num_prompts, args.seed)):
        delay = start + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    async with client:
        done = [t for t in await asyncio.gather(*tasks) if t is not None]
    traces = [t for t in done if t.chunks]  # a stream without a token chunk has no TTFT: a failure
    return traces, failed + len(done) - len(traces)


def _row(rate: float, s: dict, goodput: bool) -> str:
    def three(name: str) -> str:
        return " / ".join(f"{s[f'{k}_{name}_ms']:.1f}" for k in ("mean", "median", "p99"))
    cells = [f"{rate:g}", f"{s['completed']}", f"{s['failed']}", f"{s['request_throughput']:.2f}",
             f"{s['output_throughput']:.0f}", three("ttft"), three("tpot"), three("itl"), three("e2el")]
    return "| " + " | ".join(cells + ([f"{s['goodput']:.2f}"] if goodput else [])) + " |"


def open_loop_report(args: argparse.Namespace, load_before: tuple[float, ...]) -> str:
    """Run every rate against one server (warmed up first) and return the Markdown report."""
    import onnxruntime

    goodput = bool(args.targets)
    head = ("| request rate (req/s) | completed | failed | request throughput (req/s) | output tok/s | "
            "TTFT mean / median / p99 (ms) | TPOT mean / median / p99 (ms) | ITL mean / median / p99 (ms) | "
            "E2E latency mean / median / p99 (ms) |" + (" goodput (req/s) |" if goodput else ""))
    rows = [head, "|" + "---:|" * (head.count("|") - 1)]
    with server(args, args.max_batch) as (url, proc):
        asyncio.run(_warm_up(url))
        for rate in args.request_rate:
            traces, failed = asyncio.run(open_loop(url, rate, args))
            summary = summarize(traces, failed=failed, targets=args.targets)
            print(f"rate {rate:g}: {summary['output_throughput']:.0f} tok/s, "
                  f"median TTFT {summary['median_ttft_ms']:.1f} ms", file=sys.stderr)
            rows.append(_row(rate, summary, goodput))
        rss = peak_rss_mib(proc.pid)
    targets = ", ".join(f"{k} <= {v * 1000:g} ms" for k, v in args.targets.items())
    return "\n".join([
        "# Serving under open-loop load", "",
        f"Command: `python -m bench.serving {' '.join(sys.argv[1:])}`", "",
        f"Model: {args.bundle} ({'model.int8.onnx' if args.quantized else 'model.onnx'}), server --max-batch "
        f"{args.max_batch}. CPU: {cpu_model()}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}; "
        f"Python {platform.python_version()}; load average before the run {load_before[0]:.2f}, after "
        f"{os.getloadavg()[0]:.2f}; server peak RSS {rss:.0f} MiB.", "",
        f"Each rate: {args.num_prompts} greedy streaming requests of {args.new_tokens} new tokens, Poisson "
        f"arrivals (seed {args.seed}), max concurrency {args.max_concurrency or 'unlimited'}"
        + (f"; goodput counts requests with {targets}." if targets else "."), "",
        *rows, ""])


async def _warm_up(url: str) -> None:
    body = {"prompt": PROMPTS[0], "max_tokens": 8, **GREEDY, "stream": True, "stream_options": {"include_usage": True}}
    async with Client(url) as client:
        await asyncio.gather(*(client.request(body) for _ in range(2)))
