"""The server's engine workers without HTTP, against the offline bound `bench.serving` uses.

    python -m bench.engine_workers BUNDLE_DIR [--clients 16] [--workers 1,2] [--threads N] [--new-tokens 128] [--rounds 9]

`bench.serving`'s gap between `decoder serve` and the offline bound mixes the engine's own costs
with the HTTP side's. `bench.scheduler_overhead` isolates one worker on one thread; this script
runs the engine as the server does, without HTTP: N threads (`--workers`), each stepping its own
`Scheduler` over one shared runtime with the server's onnxruntime options for N workers
(`decoder.serve.config.load_runtime`), the C greedy sequences split evenly among them. Each
round times every worker count once and the bound (`Runtime.generate_ids` at batch C with the
runtime's default options: every core, spinning threads), alternating; reported are the median
generated tokens/s and the median of each round's ratio to that round's bound, with its range.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from bench.scheduler_overhead import scheduled
from bench.serving import cpu_model, offline_tokens_per_s
from decoder.runtime import Runtime
from decoder.serve.config import load_runtime


def workers_tokens_per_s(runtime: Runtime, workers: int, rows: int, new_tokens: int) -> float:
    """Generated tokens/s of `workers` threads decoding rows // workers sequences each, side by side."""
    share = rows // workers
    threads = [threading.Thread(target=scheduled, args=(runtime, share, new_tokens)) for _ in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return share * workers * new_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: the server's for N workers)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    engines = {n: load_runtime(args.bundle, "model.onnx", args.threads, n) for n in counts}
    bound = Runtime(args.bundle)
    for n, runtime in engines.items():  # warm-up
        workers_tokens_per_s(runtime, n, args.clients, 8)
    offline_tokens_per_s(bound, args.clients, 8)
    rates: dict[int, list[float]] = {n: [] for n in counts}
    bounds: list[float] = []
    for _ in range(args.rounds):
        bounds.append(offline_tokens_per_s(bound, args.clients, args.new_tokens))
        for n, runtime in engines.items():
            rates[n].append(workers_tokens_per_s(runtime, n, args.clients, args.new_tokens))
    print(f"{args.bundle}, {cpu_model()}, {args.clients} sequences of {args.new_tokens} greedy tokens, "
          f"median of {args.rounds} alternating rounds\n")
    print("| engine | tok/s | / offline bound, same round (range) |")
    print("|---|---:|---:|")
    for n in counts:
        ratios = np.array(rates[n]) / np.array(bounds)
        print(f"| {n} worker{'s' if n > 1 else ''}, no HTTP | {np.median(rates[n]):,.0f} | "
              f"{np.median(ratios):.2f} ({ratios.min():.2f}-{ratios.max():.2f}) |")
    print(f"| offline bound (batch {args.clients}) | {np.median(bounds):,.0f} | 1 |")


if __name__ == "__main__":
    main()
