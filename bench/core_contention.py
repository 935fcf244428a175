"""Does work on the other core slow the engine's onnxruntime steps on this one?

The server's engine runs its steps on one core while the HTTP side and the load generator use the
other (`bench.serving`). This asks what that neighbour costs the steps by itself, without HTTP:
the offline decoding loop (`bench.serving.offline_tokens_per_s`, the server's onnxruntime options:
one intra-op thread, no spinning) pinned to the first CPU this process may use, alone and beside a
neighbour pinned to another CPU, alternating within each of `--rounds` rounds, medians reported:

- **python**: a pure-Python busy loop (the kind of work an event loop and a load generator do:
  interpreter code on small objects, little memory traffic);
- **memory**: a NumPy sum over a 64 MiB array, again and again (streams memory: it competes for
  the caches and the memory bandwidth the two cores share).

A neighbour that slows the steps shows that the two CPUs share more than the scheduler (a physical
core, a cache, the memory bus); one that does not shows they do not, for that kind of work.

Run:  python -m bench.core_contention BUNDLE_DIR [--clients 1,16] [--new-tokens 128] [--rounds 5]
Needs two CPUs this process may use (Linux: `os.sched_setaffinity`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

from bench.serving import cpu_model, offline_tokens_per_s

NEIGHBOURS = {
    "alone": None,
    "python": ("", "pass"),
    "memory": ("import numpy as np\na = np.ones(8 << 20)", "a.sum()"),
}
"""Each neighbour's program as (setup, the body of its endless loop); None: no neighbour."""


def neighbour(program: tuple[str, str], cpu: int) -> subprocess.Popen:
    """A process pinned to `cpu` running `program`'s loop, returned once its setup is done (it says
    so on stdout); killed by the caller."""
    setup, body = program
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n{setup}\nprint('ready', flush=True)\nwhile True: {body}"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the neighbour process exited (code {proc.poll()}) before its loop began")
    return proc


def measure(runtime, rows: int, new_tokens: int, rounds: int, other_cpu: int,
            neighbours: dict[str, tuple[str, str] | None] = NEIGHBOURS) -> dict[str, float]:
    """{neighbour: median generated tokens/s of the offline loop beside it} over `rounds` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in neighbours}
    offline_tokens_per_s(runtime, rows, 8)  # warm-up
    for _ in range(rounds):
        for name, code in neighbours.items():
            proc = neighbour(code, other_cpu) if code else None
            try:
                samples[name].append(offline_tokens_per_s(runtime, rows, new_tokens))
            finally:
                if proc:
                    proc.kill()
                    proc.wait()
    return {name: float(np.median(values)) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--clients", default="1,16", help="rows decoded together (default 1,16)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error(f"needs two CPUs; this process may use {len(cpus)}")
    os.sched_setaffinity(0, {cpus[0]})
    from decoder.runtime import Runtime
    from decoder.serve.config import session_options

    runtime = Runtime(args.bundle, session_options=session_options(1))
    print(f"{args.bundle}, {cpu_model()}, the server's onnxruntime options (1 thread) on CPU {cpus[0]}, "
          f"neighbour on CPU {cpus[1]}, {args.new_tokens} new tokens, median of {args.rounds} rounds\n")
    print("| rows | alone tok/s | beside a Python loop | beside a memory stream |")
    print("|---:|---:|---:|---:|")
    for rows in (int(c) for c in args.clients.split(",")):
        r = measure(runtime, rows, args.new_tokens, args.rounds, cpus[1])
        print(f"| {rows} | {r['alone']:,.0f} | {r['python']:,.0f} ({r['python'] / r['alone']:.2f}x) | "
              f"{r['memory']:,.0f} ({r['memory'] / r['alone']:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()
