"""Two versions of `decoder serve` side by side: each from its own source tree (a checkout of another
commit, and this one), under the same closed-loop streaming clients, alternating within each round
with the offline bound.

    python -m bench.serving_ab BUNDLE_DIR --tree base=/path/to/other/checkout --tree new=. \
        [--clients 16] [--rounds 7] [--new-tokens 128] [--max-batch 16] [--server-args "--engine-workers 1"] \
        [--tree-args new="--stream-interval 4"]

Each tree's server is `python -m decoder serve` run with that tree first on PYTHONPATH (its `decoder`
package, whatever is installed), on a free port of 127.0.0.1, with `--server-args` and its own
`--tree-args` (one tree twice, with and without an option, compares the option). A round runs C clients (each
max(2, 8 // C) greedy streaming requests of `--new-tokens`, `bench.serving`'s client) against each
server in turn, then the offline bound (`Runtime.generate_ids` at batch C, the runtime's default
options, from the installed package). Reported per tree, medians over the rounds: generated
tokens/s; its ratio to the bound measured in the same round; the server's CPU time per generated
token (user + system, all threads), of its main thread (the event loop) alone, and of this process
(the load generator). CPU per token moves less than tokens/s on a shared machine whose speed
drifts, so it is the figure to read for a change to the per-token work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shlex
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.serving import SPIN_SETTLE_S, cpu_model, offline_tokens_per_s, run_clients, serve_process


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of a process so far, by thread id, from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


@contextmanager
def tree_server(tree: Path, bundle: Path, max_batch: int, extra: list[str]) -> Iterator[tuple[str, int]]:
    """`decoder serve` from `tree`'s sources (first on PYTHONPATH) on a free port; (its URL, its pid)."""
    path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with serve_process(bundle, ["--max-batch", str(max_batch), "--max-queue", "4096", *extra], cwd=tree,
                       env={**os.environ, "PYTHONPATH": path}) as (url, proc):
        yield url, proc.pid


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from decoder.runtime import Runtime

    runtime = Runtime(args.bundle)
    per_client = max(2, 8 // args.clients)
    with ExitStack() as stack:
        servers = {name: stack.enter_context(tree_server(tree, args.bundle, args.max_batch,
                                                         [*args.server_args, *args.tree_args.get(name, [])]))
                   for name, tree in args.tree}
        for url, _ in servers.values():
            asyncio.run(run_clients(url, 2, 1, 8))  # warm-up
        offline_tokens_per_s(runtime, 2, 8)
        samples: dict[str, dict[str, list[float]]] = {name: {"tok_s": [], "ratio": [], "cpu": [], "main": [],
                                                             "client": []} for name in servers}
        for _ in range(args.rounds):
            round_ = {}
            for name, (url, pid) in servers.items():
                before, mine = thread_cpu(pid), resource.getrusage(resource.RUSAGE_SELF)
                level = asyncio.run(run_clients(url, args.clients, per_client, args.new_tokens))
                after, mine_after = thread_cpu(pid), resource.getrusage(resource.RUSAGE_SELF)
                per_token = 1e6 / level.tokens
                s = samples[name]
                s["tok_s"].append(level.tokens_per_s)
                s["cpu"].append(sum(t - before.get(k, 0.0) for k, t in after.items()) * per_token)
                s["main"].append((after[pid] - before[pid]) * per_token)
                s["client"].append((mine_after.ru_utime + mine_after.ru_stime - mine.ru_utime - mine.ru_stime)
                                   * per_token)
                round_[name] = level.tokens_per_s
                time.sleep(SPIN_SETTLE_S)  # a server whose onnxruntime threads spin keeps a core busy a while
            bound = offline_tokens_per_s(runtime, args.clients, args.new_tokens)
            for name, rate in round_.items():
                samples[name]["ratio"].append(rate / bound)
    return {name: {key: float(np.median(values)) for key, values in s.items()} for name, s in samples.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving_ab", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                   help="a source tree to serve from (repeat: at least two)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--server-args", type=shlex.split, default=[], help="more decoder serve options, for every tree")
    p.add_argument("--tree-args", action="append", default=[], metavar="NAME=OPTIONS",
                   help="more decoder serve options for one tree (e.g. the same tree twice, with and without one)")
    args = p.parse_args(argv)
    trees = []
    for item in args.tree:
        name, sep, directory = item.partition("=")
        if not sep or not name or not (Path(directory) / "decoder" / "__init__.py").is_file():
            p.error(f"--tree {item!r}: give NAME=DIR, DIR holding a decoder package")
        trees.append((name, Path(directory).resolve()))
    if len(trees) < 2 or len({name for name, _ in trees}) != len(trees):
        p.error("give at least two --tree NAME=DIR, with different names")
    if args.clients < 1 or args.rounds < 1:
        p.error("--clients and --rounds must be >= 1")
    args.tree = trees
    items, args.tree_args = args.tree_args, {}
    for item in items:
        name, sep, options = item.partition("=")
        if not sep or name not in dict(trees):
            p.error(f"--tree-args {item!r}: give NAME=OPTIONS for a NAME of --tree")
        args.tree_args[name] = shlex.split(options)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = measure(args)
    print(f"{args.bundle}, {cpu_model()}, {os.cpu_count()} cores; {args.clients} streaming clients, "
          f"{args.new_tokens} new tokens a request, medians of {args.rounds} alternating rounds\n")
    print("| tree | generated tok/s | / offline bound (same round) | server CPU µs/token | event loop thread "
          "µs/token | load generator µs/token |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['tok_s']:,.0f} | {r['ratio']:.3f} | {r['cpu']:.1f} | {r['main']:.1f} | "
              f"{r['client']:.1f} |")


if __name__ == "__main__":
    main()
