"""A prefill with every position's logits against one with the last position's only (`logits_start`).

    python -m bench.prefill_logits BUNDLE_DIR [--tokens 31,63] [--rows 1,8] [--threads 1] [--rounds 15]

For each (rows, tokens): `Runtime.step` on `rows` random prompts of `tokens` tokens with
`last_only=False` (the graph's every position, what scoring a text needs) and with `last_only=True`
(the graph computes the last position's logits only, what a prompt or a slid window needs when
generating), alternating, each timed as the median of `--rounds` calls; reported in milliseconds
with their ratio. A bundle exported without the `logits_start` input shows the same time twice.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.serving import cpu_model
from decoder.kvcache import left_padded
from decoder.runtime import Runtime


def timed_ms(runtime: Runtime, prompts: list[list[int]], last_only: bool) -> float:
    ids, mask, positions = left_padded(prompts)
    started = time.perf_counter()
    runtime.step(ids, mask, positions, None, last_only=last_only)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--tokens", default="31,63")
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--model-file", default="model.onnx")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    runtime = Runtime(args.bundle, model_file=args.model_file, threads=args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.bundle} ({args.model_file}), {cpu_model()}, {args.threads} onnxruntime thread(s), "
          f"median of {args.rounds} alternating calls\n")
    print("| rows | tokens | ms, every position's logits | ms, the last position's | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        for tokens in (int(t) for t in args.tokens.split(",")):
            if tokens > runtime.context_length:
                continue
            prompts = rng.integers(0, runtime.tokenizer.vocab_size, (rows, tokens)).tolist()
            for last_only in (False, True):  # warm-up
                timed_ms(runtime, prompts, last_only)
            samples = {False: [], True: []}
            for _ in range(args.rounds):
                for last_only in (False, True):
                    samples[last_only].append(timed_ms(runtime, prompts, last_only))
            every, last = float(np.median(samples[False])), float(np.median(samples[True]))
            print(f"| {rows} | {tokens} | {every:.3f} | {last:.3f} | {last / every:.2f} |", flush=True)


if __name__ == "__main__":
    main()
