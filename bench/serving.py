"""Serving benchmark: concurrent streaming clients against real `decoder serve` processes on
127.0.0.1, side by side with the same server with batching off and with offline batched decoding.

    python -m bench.serving BUNDLE_DIR [--clients 1,4,16,64] [--new-tokens 128] [--repeats 3]
                                       [--out results/serving.md]

Two servers run for the whole benchmark (`--max-batch` = the largest client count, and
`--max-batch 1`); at each concurrency level, alternating within each repeat, C clients each send
`per_client` greedy streaming requests one after another (prompts from a fixed set, 128 new tokens
each, `stream_options.include_usage` for the exact token count), and the offline bound decodes C
rows in one `Runtime.generate_ids` loop (the same runtime, no HTTP, no scheduler) for as many
tokens, once with the runtime's default options and once with the server's (fewer threads, no
spinning: `decoder.serve.server.session_options`), the better of the two being the bound.
Reported per level: aggregate generated tokens/s (median of the repeats), time to first
token and inter-token latency p50/p99 as the clients see them (pooled over the repeats; one SSE
chunk is one token, up to held-back UTF-8), and the server's peak RSS so far. The load generator
runs on the same machine as the server, so at high concurrency it takes some of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

PROMPTS = [
    "Harding wondered", "The balloon was", "Pencroft and Herbert", "The engineer said that",
    "On the shore of the island", "Neb had", "Captain Nemo", "The colonists",
]


@dataclass
class Level:
    """What one run of C clients measured."""

    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def one_request(url: str, body: dict, level: Level) -> None:
    """One streaming request over a plain asyncio connection (HTTP/1.1, chunked): a few
    microseconds of client CPU per token, where httpx takes ~10x that from the server's cores."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(payload), payload))
    start = time.perf_counter()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{url}: {status!r} {await reader.read()!r}")
    while (await reader.readline()) not in (b"\r\n", b""):  # headers
        pass
    last = None
    while size := int((await reader.readline()).strip() or b"0", 16):
        chunk = await reader.readexactly(size + 2)  # one SSE event per chunk, then CRLF
        now = time.perf_counter()
        if not chunk.startswith(b"data: {"):
            continue  # [DONE], or a ": ping" comment
        if b'"usage": {' in chunk:
            level.tokens += json.loads(chunk[6:])["usage"]["completion_tokens"]
        elif b'"text": ""' not in chunk:
            if last is None:
                level.ttft.append(now - start)
            else:
                level.itl.append(now - last)
            last = now
    writer.close()


async def run_clients(url: str, clients: int, per_client: int, new_tokens: int) -> Level:
    level = Level()

    async def client_loop(k: int) -> None:
        for i in range(per_client):
            body = {"prompt": PROMPTS[(k * per_client + i) % len(PROMPTS)], "max_tokens": new_tokens,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            await one_request(url, body, level)

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(k) for k in range(clients)))
    level.seconds = time.perf_counter() - start
    return level


@contextmanager
def server(args: argparse.Namespace, max_batch: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """A `decoder serve` process on a free port of 127.0.0.1, stopped with SIGTERM at the end."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "decoder", "serve", str(args.bundle), "--port", str(port), "--max-batch",
               str(max_batch), "--max-queue", "4096", *(["--threads", str(args.threads)] if args.threads else []),
               *(["--quantized"] if args.quantized else [])]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{' '.join(command)}: not healthy after 60 s")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (the process's peak resident set) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def offline_tokens_per_s(runtime, rows: int, new_tokens: int) -> float:
    """Generated tokens/s of one batched greedy decode of `rows` prompts (cut to a common length)."""
    from decoder.sampling import SamplingParams

    encoded = [runtime.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    length = min(len(ids) for ids in encoded)
    prompts = np.array([ids[:length] for ids in encoded], dtype=np.int64)
    start = time.perf_counter()
    steps = sum(1 for _ in runtime.generate_ids(prompts, max_new_tokens=new_tokens, params=SamplingParams(greedy=True),
                                                stop_at_eot=False))
    return rows * steps / (time.perf_counter() - start)


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def measure(args: argparse.Namespace) -> dict:
    """{(clients, mode): {tok_s, ttft50, ...}} over every level, mode and repeat."""
    from decoder.runtime import Runtime
    from decoder.serve.server import session_options

    runtimes = [Runtime(args.bundle, quantized=args.quantized, threads=args.threads),  # the runtime's defaults
                Runtime(args.bundle, quantized=args.quantized, session_options=session_options(args.threads))]
    results: dict = {}
    with ExitStack() as stack:
        servers = {"batched": stack.enter_context(server(args, max(args.clients))),
                   "max-batch 1": stack.enter_context(server(args, 1))}
        for url, _ in servers.values():  # warm-up outside the timing
            asyncio.run(run_clients(url, 2, 1, 8))
        for runtime in runtimes:
            offline_tokens_per_s(runtime, 2, 8)
        for clients in args.clients:
            per_client = max(2, 8 // clients)
            runs: dict[str, list[Level]] = {mode: [] for mode in servers}
            offline: list[list[float]] = [[] for _ in runtimes]
            for _ in range(args.repeats):
                for mode, (url, _) in servers.items():
                    runs[mode].append(asyncio.run(run_clients(url, clients, per_client, args.new_tokens)))
                for runtime, times in zip(runtimes, offline):
                    times.append(offline_tokens_per_s(runtime, clients, args.new_tokens))
            for mode, (_, proc) in servers.items():
                levels = runs[mode]
                ttft = [t for lv in levels for t in lv.ttft]
                itl = [t for lv in levels for t in lv.itl]
                results[clients, mode] = {
                    "tok_s": float(np.median([lv.tokens_per_s for lv in levels])),
                    "ttft50": percentile_ms(ttft, 50), "ttft99": percentile_ms(ttft, 99),
                    "itl50": percentile_ms(itl, 50), "itl99": percentile_ms(itl, 99),
                    "rss": peak_rss_mib(proc.pid), "requests": clients * per_client}
            results[clients, "offline"] = {"tok_s": max(float(np.median(times)) for times in offline)}
            print(f"{clients:>3} clients: " + ", ".join(f"{m} {results[clients, m]['tok_s']:.0f} tok/s"
                                                        for m in (*servers, "offline")), file=sys.stderr)
    return results


def markdown(args: argparse.Namespace, results: dict, load_before: tuple[float, ...]) -> str:
    import onnxruntime

    rows = ["| clients | server | generated tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | peak RSS (MiB) |",
            "|---:|---|---:|---:|---:|---:|"]
    for c in args.clients:
        for mode in ("batched", "max-batch 1"):
            r = results[c, mode]
            label = f"continuous batching (max batch {max(args.clients)})" if mode == "batched" else "batching off"
            rows.append(f"| {c} | {label} | {r['tok_s']:.0f} | {r['ttft50']:.1f} / {r['ttft99']:.1f} | "
                        f"{r['itl50']:.2f} / {r['itl99']:.2f} | {r['rss']:.0f} |")
        rows.append(f"| {c} | offline bound (Runtime.generate_ids, batch {c}) | {results[c, 'offline']['tok_s']:.0f} "
                    "| | | |")
    command = "python -m bench.serving " + " ".join(sys.argv[1:])
    rows += ["", *targets(results)] if {1, 16} <= set(args.clients) else []
    return "\n".join([
        "# Serving throughput", "",
        f"Command: `{command}`", "",
        f"Model: {args.bundle} ({'model.int8.onnx' if args.quantized else 'model.onnx'}). "
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__} "
        f"({args.threads or 'default'} intra-op threads); Python {platform.python_version()}; "
        f"load average before the run {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.", "",
        f"Each level: C concurrent streaming clients, each sending max(2, 8 // C) greedy requests of "
        f"{args.new_tokens} new tokens in turn; median of {args.repeats} repeats (tok/s), latencies pooled.", "",
        *rows, ""])


def targets(results: dict) -> list[str]:
    """The continuous-batching targets at 16 clients, each with its measured ratio and whether it is
    met."""
    one, sixteen, bound = results[1, "batched"], results[16, "batched"], results[16, "offline"]
    checks = [
        ("aggregate tok/s at 16 clients / at 1 client", sixteen["tok_s"] / one["tok_s"], ">= 4", 4.0, True),
        ("aggregate tok/s at 16 clients / offline bound at batch 16", sixteen["tok_s"] / bound["tok_s"], ">= 0.70",
         0.70, True),
        ("p50 ITL at 16 clients / at 1 client", sixteen["itl50"] / one["itl50"], "<= 3", 3.0, False),
    ]
    return ["| target (continuous batching) | measured | wanted | met |", "|---|---:|---:|---|",
            *(f"| {name} | {value:.2f} | {wanted} | {'yes' if (value >= bound_ if up else value <= bound_) else 'no'} |"
              for name, value, wanted, bound_, up in checks)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of servers and offline bound")
    p.add_argument("--quantized", action="store_true", help="the bundle's int8 model (servers and offline bound)")
    p.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    text = markdown(args, measure(args), load_before)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
