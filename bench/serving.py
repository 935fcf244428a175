"""Serving benchmark: concurrent streaming clients against real `decoder serve` processes on
127.0.0.1, side by side with the same server with batching off and with offline batched decoding.

    python -m bench.serving BUNDLE_DIR [--clients 1,4,16,64] [--new-tokens 128] [--repeats 3]
                                       [--engine thread|process|both] [--out results/serving.md]
    python -m bench.serving BUNDLE_DIR --request-rate 1,2,4,inf [--num-prompts 64] [--max-concurrency N]
                                       [--goodput ttft:MS tpot:MS] [--seed 0] [--out FILE]

The second form is the open-loop load of `vllm bench serve` (`bench.serving_load`): requests
arrive at seeded Poisson times at each rate, whatever the server's pace, and the report gives
its figures (`bench.serving_stats`). The first form, closed-loop, follows.

Two servers run for the whole benchmark (`--max-batch` = the largest client count, and `--max-batch
1`, both with `--engine`'s engine and `--engine-workers`; `--engine both` adds one batched with the
engine in its own process, beside the thread engine's, and `--compare-workers N` one batched with N
engine workers); at each concurrency level, alternating within each repeat, C clients each send
`per_client` greedy streaming requests one after another (prompts from a fixed set, 128 new tokens
each, `stream_options.include_usage` for the exact token count), and the offline bound decodes C
rows in one `Runtime.generate_ids` loop (the same runtime, no HTTP, no scheduler) for as many
tokens, once with the runtime's default options and once with the server's (fewer threads, no
spinning: `decoder.serve.config.session_options`), the better of the two being the bound. Reported
per level: aggregate generated tokens/s (median of the repeats), time to first token and inter-
token latency p50/p99 as the clients see them (pooled over the repeats; one SSE event is one token,
up to held-back UTF-8, and events that arrive in one chunk arrive together), the server's CPU time
(user + system, every thread of the server process and of its children: the engine process, and
multiprocessing's resource tracker, which does next to nothing) per generated token (median of the
repeats: steadier than tokens/s on a shared machine, and the figure the per-token work outside
onnxruntime moves), and the peak RSS so far of the server and its children, summed. In each repeat
the bound is measured right before and right after the batched server's run, and the targets'
ratios are the median over the repeats of the server's tokens/s over the mean of the two (the
better runtime's), with their range: a shared machine's speed can swing by half within seconds,
which a ratio of two medians taken at different moments would carry. The bound's row gives the
median of all its runs, and each runtime's; the targets' table also gives the best run over the
best bound (interference only slows a run down). The load generator runs on the same machine as
the server, so at high concurrency it takes some of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.serving_client import Client
from bench.serving_stats import Trace, parse_goodput

PROMPTS = [
    "Harding wondered", "The balloon was", "Pencroft and Herbert", "The engineer said that",
    "On the shore of the island", "Neb had", "Captain Nemo", "The colonists",
]
GREEDY = {"temperature": 0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
          "presence_penalty": 0.0, "frequency_penalty": 0.0}
"""Plain greedy, whatever the served bundle's sampling defaults: the offline bound's decode (a row
with repetition controls samples alone in Python, and would measure that instead)."""


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

    def add(self, trace: Trace) -> None:
        self.tokens += trace.output_tokens
        if trace.chunks:
            self.ttft.append(trace.ttft)
            self.itl += trace.itl


async def run_clients(url: str, clients: int, per_client: int, new_tokens: int) -> Level:
    """C closed-loop clients, each with its own kept-alive connection (opened before the clock
    starts), each sending `per_client` streaming requests one after another."""
    level = Level()
    async with Client(url) as client:
        await client.connect(clients)

        async def client_loop(k: int) -> None:
            for i in range(per_client):
                body = {"prompt": PROMPTS[(k * per_client + i) % len(PROMPTS)], "max_tokens": new_tokens, **GREEDY,
                        "stream": True, "stream_options": {"include_usage": True}}
                level.add(await client.request(body))

        start = time.perf_counter()
        await asyncio.gather(*(client_loop(k) for k in range(clients)))
        level.seconds = time.perf_counter() - start
    return level


@contextmanager
def server(args: argparse.Namespace, max_batch: int, engine: str | None = None,
           workers: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A `decoder serve --engine ENGINE` process on a free port of 127.0.0.1, stopped with SIGTERM at
    the end (ENGINE by default: process with `--engine process`, else thread)."""
    engine = engine or ("process" if args.engine == "process" else "thread")
    workers = workers if workers is not None else getattr(args, "engine_workers", None)
    workers = None if engine == "process" else workers  # the process engine has one
    options = ["--max-batch", str(max_batch), "--max-queue", "4096",
               *(["--threads", str(args.threads)] if args.threads else []), *(["--quantized"] if args.quantized else []),
               *(["--allow-spinning"] if args.allow_spinning else []),
               "--engine", engine, *(["--engine-workers", str(workers)] if workers else []),
               *(["--stream-interval", str(args.stream_interval)] if getattr(args, "stream_interval", None) else [])]
    with serve_process(args.bundle, options) as running:
        yield running


@contextmanager
def serve_process(bundle: Path, options: list[str], cwd: Path | None = None,
                  env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m decoder serve BUNDLE OPTIONS` on a free port of 127.0.0.1 (from `cwd` with `env`,
    if given), once its /health answers: (its URL, the process); stopped with SIGTERM at the end."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "decoder", "serve", str(bundle), "--port", str(port), *options]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{' '.join(command)}{f' (in {cwd})' if cwd else ''}: not healthy after 60 s")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def with_children(pid: int) -> list[int]:
    """The process and its children (the engine process of `--engine process`), from /proc."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *map(int, children.read_text().split())] if children.exists() else [pid]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process and its children have used so far, from /proc (all threads)."""
    total = 0
    for p in with_children(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (each process's peak resident set) of the process and its children, summed, in MiB, from /proc."""
    peaks = [int(line.split()[1]) for p in with_children(pid)
             for line in Path(f"/proc/{p}/status").read_text().splitlines() if line.startswith("VmHWM:")]
    return sum(peaks) / 1024 if peaks else float("nan")


def offline_tokens_per_s(runtime, rows: int, new_tokens: int) -> float:
    """Generated tokens/s of one batched greedy decode of `rows` prompts (cut to a common length),
    then SPIN_SETTLE_S of idling."""
    from decoder.sampling import SamplingParams

    encoded = [runtime.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    length = min(len(ids) for ids in encoded)
    prompts = np.array([ids[:length] for ids in encoded], dtype=np.int64)
    start = time.perf_counter()
    steps = sum(1 for _ in runtime.generate_ids(prompts, max_new_tokens=new_tokens, params=SamplingParams(greedy=True),
                                                stop_at_eot=False))
    rate = rows * steps / (time.perf_counter() - start)
    time.sleep(SPIN_SETTLE_S)
    return rate


SPIN_SETTLE_S = 0.15
"""Idle time after each offline run (and each server's level): onnxruntime's default thread pool
keeps spinning after a run (measured: about one core for 40 ms on 2 AMD EPYC cores), which would
take CPU from whatever runs next, a server under test or the bound included."""


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
    from decoder.serve.config import session_options

    runtimes = [Runtime(args.bundle, quantized=args.quantized, threads=args.threads),  # the runtime's defaults
                Runtime(args.bundle, quantized=args.quantized,
                        session_options=session_options(args.threads, spinning=args.allow_spinning))]
    results: dict = {}
    with ExitStack() as stack:
        servers = {"batched": stack.enter_context(server(args, max(args.clients))),
                   "max-batch 1": stack.enter_context(server(args, 1))}
        if args.engine == "both":
            servers["batched, process engine"] = stack.enter_context(server(args, max(args.clients), "process"))
        if args.compare_workers:
            servers["batched, compared workers"] = stack.enter_context(
                server(args, max(args.clients), "thread", args.compare_workers))
        for url, _ in servers.values():  # warm-up outside the timing
            asyncio.run(run_clients(url, 2, 1, 8))
        for runtime in runtimes:
            offline_tokens_per_s(runtime, 2, 8)
        for clients in args.clients:
            per_client = max(2, 8 // clients)
            runs: dict[str, list[Level]] = {mode: [] for mode in servers}
            cpu_us: dict[str, list[float]] = {mode: [] for mode in servers}
            offline: list[list[float]] = [[] for _ in runtimes]
            bracketed: list[float] = []  # per repeat: the bound around the batched server's run

            def bound_now() -> list[float]:
                rates = [offline_tokens_per_s(runtime, clients, args.new_tokens) for runtime in runtimes]
                for times, rate in zip(offline, rates):
                    times.append(rate)
                return rates

            for _ in range(args.repeats):
                for mode, (url, proc) in servers.items():
                    first = bound_now() if mode == "batched" else None
                    before = cpu_seconds(proc.pid)
                    runs[mode].append(asyncio.run(run_clients(url, clients, per_client, args.new_tokens)))
                    cpu_us[mode].append((cpu_seconds(proc.pid) - before) / runs[mode][-1].tokens * 1e6)
                    time.sleep(SPIN_SETTLE_S)  # (a server with --allow-spinning keeps a core busy a while)
                    if first is not None:
                        bracketed.append(max((a + b) / 2 for a, b in zip(first, bound_now())))
            for mode, (_, proc) in servers.items():
                levels = runs[mode]
                ttft = [t for lv in levels for t in lv.ttft]
                itl = [t for lv in levels for t in lv.itl]
                results[clients, mode] = {
                    "tok_s": float(np.median([lv.tokens_per_s for lv in levels])),
                    "ttft50": percentile_ms(ttft, 50), "ttft99": percentile_ms(ttft, 99),
                    "itl50": percentile_ms(itl, 50), "itl99": percentile_ms(itl, 99),
                    "rss": peak_rss_mib(proc.pid), "requests": clients * per_client,
                    "cpu_us": float(np.median(cpu_us[mode])), "runs": [lv.tokens_per_s for lv in levels]}
            results[clients, "offline"] = {"tok_s": max(float(np.median(times)) for times in offline),
                                           "each": [float(np.median(times)) for times in offline],
                                           "runs": bracketed}
            print(f"{clients:>3} clients: " + ", ".join(f"{m} {results[clients, m]['tok_s']:.0f} tok/s"
                                                        for m in (*servers, "offline")), file=sys.stderr)
    return results


def markdown(args: argparse.Namespace, results: dict, load_before: tuple[float, ...]) -> str:
    import onnxruntime

    rows = ["| clients | server | generated tok/s | server CPU (µs/token) | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) "
            "| peak RSS (MiB) |", "|---:|---|---:|---:|---:|---:|---:|"]
    batched = f"continuous batching (max batch {max(args.clients)}" + (
        f", stream interval {args.stream_interval})" if args.stream_interval else ")")
    from decoder.serve.config import default_workers

    workers = args.engine_workers or default_workers()
    labels = {"batched": f"{batched}, engine workers: {workers}", "max-batch 1": "batching off",
              "batched, process engine": batched + ", process engine",
              "batched, compared workers": f"{batched}, engine workers: {args.compare_workers}"}
    for c in args.clients:
        for mode, label in labels.items():
            if (c, mode) not in results:
                continue
            r = results[c, mode]
            rows.append(f"| {c} | {label} | {r['tok_s']:.0f} | {r['cpu_us']:.0f} | "
                        f"{r['ttft50']:.1f} / {r['ttft99']:.1f} | {r['itl50']:.2f} / {r['itl99']:.2f} | {r['rss']:.0f} |")
        defaults, served = results[c, "offline"]["each"]
        rows.append(f"| {c} | offline bound (Runtime.generate_ids, batch {c}; the runtime's defaults {defaults:.0f}, "
                    f"the server's onnxruntime options {served:.0f}) | {results[c, 'offline']['tok_s']:.0f} | | | | |")
    command = "python -m bench.serving " + " ".join(sys.argv[1:])
    rows += ["", *targets(results)] if {1, 16} <= set(args.clients) else []
    return "\n".join([
        "# Serving throughput", "",
        f"Command: `{command}`", "",
        f"Model: {args.bundle} ({'model.int8.onnx' if args.quantized else 'model.onnx'}). "
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__} "
        f"({args.threads or 'default'} intra-op threads{', spinning' if args.allow_spinning else ''}); "
        f"engine {args.engine}; "
        f"Python {platform.python_version()}; "
        f"load average before the run {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.", "",
        f"Each level: C concurrent streaming clients, each sending max(2, 8 // C) greedy requests of "
        f"{args.new_tokens} new tokens in turn; median of {args.repeats} repeats (tok/s), latencies pooled.", "",
        *rows, ""])


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of the ratios a[i] / b[i] of runs measured side by side in repeat i:
    steadier than a ratio of medians where the machine's speed drifts between repeats."""
    ratios = [x / y for x, y in zip(a, b)]
    return float(np.median(ratios)), min(ratios), max(ratios)


def targets(results: dict) -> list[str]:
    """The continuous-batching targets (at 16 clients, and one client against the batch-1 bound),
    each with its measured ratio (the median over repeats of the ratio within a repeat, and its
    range) and whether it is met."""
    one, sixteen = results[1, "batched"], results[16, "batched"]
    itl = sixteen["itl50"] / one["itl50"]
    checks = [
        ("aggregate tok/s at 16 clients / at 1 client (medians)", (sixteen["tok_s"] / one["tok_s"],) * 3, ">= 4",
         4.0, True),
        ("aggregate tok/s at 16 clients / offline bound at batch 16",
         paired(sixteen["runs"], results[16, "offline"]["runs"]), ">= 0.70", 0.70, True),
        ("tok/s at 1 client / offline bound at batch 1", paired(one["runs"], results[1, "offline"]["runs"]),
         ">= 0.85", 0.85, True),
        ("p50 ITL at 16 clients / at 1 client (pooled)", (itl, itl, itl), "<= 3", 3.0, False),
    ]
    best = {name: f"{max(a['runs']) / max(b['runs']):.2f}" for name, a, b in [
        (checks[1][0], sixteen, results[16, "offline"]), (checks[2][0], one, results[1, "offline"])]}
    return ["| target (continuous batching) | measured (median of repeats) | range over repeats | best run / best "
            "bound | wanted | met |", "|---|---:|---:|---:|---:|---|",
            *(f"| {name} | {value:.2f} | {low:.2f} to {high:.2f} | {best.get(name, '')} | {wanted} | "
              f"{'yes' if (value >= bound_ if up else value <= bound_) else 'no'} |"
              for name, (value, low, high), wanted, bound_, up in checks)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of servers and offline bound")
    p.add_argument("--quantized", action="store_true", help="the bundle's int8 model (servers and offline bound)")
    p.add_argument("--allow-spinning", action="store_true",
                   help="decoder serve --allow-spinning (and the bound's server-options runtime with spinning)")
    p.add_argument("--engine", choices=["thread", "process", "both"], default="thread",
                   help="the servers' decoder serve --engine; both: thread, plus a batched process-engine server")
    p.add_argument("--engine-workers", type=int, default=None,
                   help="the batched server's --engine-workers (default: the server's default)")
    p.add_argument("--compare-workers", type=int, default=None, metavar="N",
                   help="add a batched server with --engine-workers N, side by side (thread engine)")
    p.add_argument("--stream-interval", type=int, default=None, metavar="N",
                   help="the servers' --stream-interval (default: the server's, 1: every token its own event)")
    p.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    load = p.add_argument_group("open-loop load (vllm bench serve's figures)")
    load.add_argument("--request-rate", type=rates, default=None,
                      help="requests per second, comma-separated (inf: all at once); turns the open-loop mode on")
    load.add_argument("--num-prompts", type=int, default=64, help="requests per rate")
    load.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most (default: no cap)")
    load.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch in the open-loop mode")
    load.add_argument("--goodput", nargs="+", default=[], metavar="KEY:MS",
                      help="targets for goodput: ttft, tpot and/or e2el in ms, e.g. ttft:200 tpot:50")
    load.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    args = p.parse_args(argv)
    try:
        args.targets = parse_goodput(args.goodput)
    except ValueError as e:
        p.error(str(e))
    if args.max_concurrency is not None and args.max_concurrency < 1:
        p.error(f"--max-concurrency {args.max_concurrency}: must be >= 1")
    if args.num_prompts < 1:
        p.error(f"--num-prompts {args.num_prompts}: must be >= 1")
    return args


def rates(text: str) -> list[float]:
    """`1,2,inf` -> [1.0, 2.0, inf], refusing a rate that is not > 0."""
    values = [float(x) for x in text.split(",")]
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each rate must be > 0 (requests/s) or inf")
    return values


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    if args.request_rate is not None:
        from bench.serving_load import open_loop_report

        text = open_loop_report(args, load_before)
    else:
        text = markdown(args, measure(args), load_before)
    if args.out:
        from decoder.io import atomic_write

        atomic_write(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
