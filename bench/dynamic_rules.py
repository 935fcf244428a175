"""Dynamic evaluation's update rules and their settings, probed on one run's validation split.

`decoder eval --protocol dynamic` steps after each scored segment with the "rms" rule (Krause et
al. 2018: each parameter's gradient divided by its root mean square over training windows) or
plain SGD (`decoder.evaluate`). This script scores the split under a grid of settings with the
library's own `dynamic_nats` and `gradient_rms`, including the two the command line leaves at
their defaults: the rms rule's epsilon (relative to the mean rms) and Krause et al.'s decay back
to the trained weights (lambda). The statistics are computed once per segment. Prints a Markdown
table of bits per byte and seconds, one row per setting, in the order given.

Run:  python -m bench.dynamic_rules RUN [--rules rms,sgd] [--lrs 5e-5,1e-4,2e-4] [--sgd-lrs 0.02]
          [--epsilons 0.1] [--decays 0] [--segments 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from decoder.evaluate import dynamic_nats, gradient_rms, load_scorer, splits
from decoder.protocols import figures


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def settings(rules: list[str], lrs: list[float], sgd_lrs: list[float], epsilons: list[float], decays: list[float],
             segments: list[int]) -> list[dict]:
    """Every point of the grid: sgd at each of `sgd_lrs`; rms at each lr, epsilon and decay."""
    out = []
    for segment in segments:
        if "rms" in rules:
            out += [{"rule": "rms", "segment": segment, "lr": lr, "epsilon": e, "decay": d}
                    for lr in lrs for e in epsilons for d in decays]
        if "sgd" in rules:
            out += [{"rule": "sgd", "segment": segment, "lr": lr} for lr in sgd_lrs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder or checkpoint")
    parser.add_argument("--rules", default="rms,sgd")
    parser.add_argument("--lrs", type=floats, default=[5e-5, 1e-4, 2e-4], help="the rms rule's learning rates")
    parser.add_argument("--sgd-lrs", type=floats, default=[0.02])
    parser.add_argument("--epsilons", type=floats, default=[0.1], help="the rms rule's epsilon, x the mean rms")
    parser.add_argument("--decays", type=floats, default=[0.0], help="the rms rule's lambda (0: no decay)")
    parser.add_argument("--segments", default="32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, config, device, precision = load_scorer(args.run)
    train, val = splits(config.data, tokenizer)
    segments = [int(s) for s in args.segments.split(",")]
    grid = settings(args.rules.split(","), args.lrs, args.sgd_lrs, args.epsilons, args.decays, segments)
    print(f"{args.run}: {len(val) - 1:,} validation tokens, {precision}, {torch.get_num_threads()} thread(s)\n")
    print("| rule | segment | lr | epsilon | decay | bits per byte | seconds |\n|---|---:|---:|---:|---:|---:|---:|")
    stats: dict[int, tuple[list[torch.Tensor], float]] = {}
    for point in grid:
        options, stats_seconds = {}, 0.0
        if point["rule"] == "rms":
            if point["segment"] not in stats:
                started = time.perf_counter()
                rms = gradient_rms(model, train, point["segment"], device, precision)
                stats[point["segment"]] = (rms, time.perf_counter() - started)
            rms, stats_seconds = stats[point["segment"]]  # every rms row's seconds include the statistics
            options = {"rms": rms, "epsilon": point["epsilon"], "decay": point["decay"]}
        started = time.perf_counter()
        nats = dynamic_nats(model, val, point["segment"], point["lr"], device, precision, **options)
        seconds = time.perf_counter() - started + stats_seconds
        bpb = figures(float(nats.sum()), val, tokenizer)["bits_per_byte"]
        print(f"| {point['rule']} | {point['segment']} | {point['lr']:g} | {point.get('epsilon', '')} | "
              f"{point.get('decay', '')} | {bpb:.4f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
