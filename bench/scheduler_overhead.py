"""The server's engine without HTTP: `Scheduler.step` against the offline decoding loop, side by side.

`bench.serving` compares `decoder serve` with the offline bound, so its gap mixes two costs: the
engine's own work per step (the scheduler's bookkeeping of rows joining, leaving and sliding,
sampling, detokenizing) and the HTTP side sharing the cores. This script measures the first alone,
in one process and one thread: C greedy sequences of `--new-tokens` run through a `Scheduler`
until all have finished, alternating (`--rounds` times) with `Runtime.generate_ids` decoding the
same C prompts (cut to a common length) for as many tokens, both on one runtime with the server's
onnxruntime options (`decoder.serve.config.session_options`). It reports, per level, the median
generated tokens/s of each, their ratio, and the microseconds per step spent inside onnxruntime
(`session.run`) and outside it.

Run:  python -m bench.scheduler_overhead BUNDLE_DIR [--clients 1,16] [--new-tokens 128] [--rounds 12]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.serving import PROMPTS, cpu_model
from decoder.sampling import SamplingParams
from decoder.serve.config import load_runtime
from decoder.serve.scheduler import Scheduler, Sequence
from decoder.serve.text import TextStream


class Timed:
    """Wraps a runtime's `session.run`, adding up the seconds and calls spent inside it."""

    def __init__(self, runtime) -> None:
        self.seconds, self.calls, self._run = 0.0, 0, runtime.session.run
        runtime.session.run = self

    def __call__(self, *args):
        started = time.perf_counter()
        try:
            return self._run(*args)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def scheduled(runtime, rows: int, new_tokens: int) -> int:
    """Run `rows` greedy sequences through a Scheduler until all end; returns the steps taken."""
    scheduler = Scheduler(runtime, max_batch=rows)
    prompts = [runtime.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    sequences = [Sequence(prompt_ids=ids, params=SamplingParams(greedy=True), rng=np.random.default_rng(0),
                          max_tokens=new_tokens, text=TextStream(runtime.tokenizer)) for ids in prompts]
    steps, admitted = 0, sequences
    while admitted or scheduler.busy:
        scheduler.step(admitted)
        steps, admitted = steps + 1, []
    return steps


def offline(runtime, rows: int, new_tokens: int) -> int:
    """The offline loop (`bench.serving`'s bound) on the same prompts; returns the steps taken."""
    encoded = [runtime.tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    prompts = np.array([ids[: min(map(len, encoded))] for ids in encoded], dtype=np.int64)
    return sum(1 for _ in runtime.generate_ids(prompts, max_new_tokens=new_tokens, params=SamplingParams(greedy=True),
                                               stop_at_eot=False))


def measure(runtime, timer: Timed, rows: int, new_tokens: int, rounds: int) -> dict:
    """{name: (tokens/s, µs per step in onnxruntime, µs per step outside)} medians over the rounds."""
    samples: dict[str, list[tuple[float, float, float]]] = {"scheduler": [], "offline": []}
    for fn in (scheduled, offline):  # warm-up
        fn(runtime, rows, 8)
    for _ in range(rounds):
        for name, fn in (("scheduler", scheduled), ("offline", offline)):
            timer.seconds, timer.calls = 0.0, 0
            started = time.perf_counter()
            steps = fn(runtime, rows, new_tokens)
            wall = time.perf_counter() - started
            samples[name].append((rows * new_tokens / wall, timer.seconds / steps * 1e6,
                                  (wall - timer.seconds) / steps * 1e6))
    return {name: tuple(float(np.median(column)) for column in zip(*rows_)) for name, rows_ in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: the server's)")
    args = parser.parse_args()
    runtime = load_runtime(args.bundle, "model.onnx", args.threads)
    timer = Timed(runtime)
    print(f"{args.bundle}, {cpu_model()}, the server's onnxruntime options, {args.new_tokens} new tokens, "
          f"median of {args.rounds} alternating rounds\n")
    print("| sequences | loop | tok/s | µs/step in onnxruntime | µs/step outside | scheduler / offline |")
    print("|---:|---|---:|---:|---:|---:|")
    for rows in (int(c) for c in args.clients.split(",")):
        result = measure(runtime, timer, rows, args.new_tokens, args.rounds)
        ratio = result["scheduler"][0] / result["offline"][0]
        for name, (rate, inside, outside) in result.items():
            share = f"{ratio:.2f}" if name == "scheduler" else ""
            print(f"| {rows} | {name} | {rate:,.0f} | {inside:.0f} | {outside:.0f} | {share} |", flush=True)


if __name__ == "__main__":
    main()
