"""Where a streaming server's time goes: py-spy samples of a real `decoder serve` process under C
closed-loop streaming clients, shared out per thread and per component.

    python -m bench.serving_profile BUNDLE_DIR [--clients 16] [--seconds 8] [--rate 500] [--raw FILE]
        [--engine-workers N] [--stream-interval N]

py-spy (the `bench` extra) samples every thread of the server `--rate` times a second for
`--seconds` while the clients run (`bench.serving`'s plain-asyncio client, 128 greedy tokens a
request); idle threads (waiting on a lock, a condition or epoll) are not sampled, so the shares are
of the time a thread was running or in a system call. Each sample is put in the first component
whose pattern matches a frame, from the innermost frame outwards (`COMPONENTS`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.serving import run_clients, server

COMPONENTS = [  # (component, a substring of one frame of the sample), innermost frame first
    ("socket send of SSE chunks (kernel)", "Transport.write"),
    ("waking the event loop (self-pipe write)", "_write_to_self"),
    ("idle in epoll", "select (selectors.py"),
    ("onnxruntime run", "onnxruntime/capi"),
    ("KV cache bookkeeping (numpy copies)", "kvcache.py"),
    ("sampling (argmax, generators)", "choose_tokens"),
    ("detokenize + stop strings", "text.py"),
    ("Prometheus metrics", "prometheus_client"),
    ("engine delivery to the jobs' queues", "_dispatch (decoder/serve/engine.py"),
    ("JSON encoding of chunks", "json/"),
    ("SSE framing (EventStream)", "decoder/serve/answer.py"),
    ("HTTP protocol (uvicorn, h11/httptools)", "uvicorn/protocols"),
    ("HTTP protocol (uvicorn, h11/httptools)", "h11/"),
    ("ASGI stack (anyio, starlette)", "anyio/"),
    ("ASGI stack (anyio, starlette)", "starlette/"),
    ("the stream generator (completions)", "_stream (decoder/serve/completions.py"),
    ("asyncio queues", "asyncio/queues.py"),
    ("scheduler Python", "scheduler.py"),
    ("runtime Python", "runtime.py"),
    ("event loop (asyncio or uvloop)", "asyncio/"),
    ("event loop (asyncio or uvloop)", "uvloop"),
]


def thread_of(stack: str) -> str:
    if "_work (decoder/serve/engine.py" in stack:
        return "engine threads"
    if "_wake_loop (decoder/serve/engine.py" in stack:
        return "waker thread"
    return "event loop (main thread)" if "MainThread" in stack else "other threads"


def component_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in COMPONENTS:
            if pattern in frame:
                return name
    return "other"


def shares(raw: str) -> dict[str, collections.Counter]:
    """{thread: Counter(component -> samples)} of py-spy's raw (collapsed) output."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            out[thread_of(stack)][component_of(stack.split(";"))] += int(count)
    return out


def report(per_thread: dict[str, collections.Counter]) -> str:
    total = sum(sum(c.values()) for c in per_thread.values())
    lines = ["| thread | component | share of the thread's samples | share of all samples |", "|---|---|---:|---:|"]
    for thread, counts in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        lines.append(f"| **{thread}** | (all) | | {100 * n / total:.0f}% |")
        lines += [f"| | {name} | {100 * k / n:.1f}% | {100 * k / total:.1f}% |" for name, k in counts.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.serving_profile", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    p.add_argument("--engine-workers", type=int, default=None, help="the server's --engine-workers")
    p.add_argument("--stream-interval", type=int, default=None, help="the server's --stream-interval")
    args = p.parse_args(argv)
    args.threads, args.quantized, args.engine = None, False, "thread"  # what bench.serving.server reads
    raw = args.raw or Path(tempfile.mkdtemp()) / "samples.txt"
    with server(args, args.clients) as (url, proc):
        asyncio.run(run_clients(url, 2, 1, 8))  # warm-up
        spy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-d", str(args.seconds), "-r",
                                str(args.rate), "-f", "raw", "-o", str(raw), "--threads", "--nonblocking"])
        tokens = seconds = 0.0
        while spy.poll() is None:  # rounds of load until py-spy is done
            level = asyncio.run(run_clients(url, args.clients, 2, 128))
            tokens, seconds = tokens + level.tokens, seconds + level.seconds
        if spy.returncode != 0:
            sys.exit(f"py-spy failed (exit {spy.returncode}): it needs ptrace rights over the server process")
    print(f"{args.clients} clients: {tokens / seconds:.0f} generated tok/s while sampled\n")
    print(report(shares(raw.read_text())))


if __name__ == "__main__":
    main()
