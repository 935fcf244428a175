"""How many tokens this CPU trains in a time budget, for every point of an experiment file.

A time budget (`training.max_seconds`) is what users run; a token budget (`training.max_tokens`) is
what a grid can be compared on, on any machine and under any load. This measures each point's
training step (the very `Training.step` the trainer runs, built by `decoder.step.build_training`:
forward, backward, clip, AdamW, with the attention kernel the trainer picks) at the point's
precision, gradient accumulation and threads (its `training.num_threads`, else this process's),
median over timed steps after a warm-up, and prints its tokens/s and the tokens it would see in
`--seconds`, scaled by `--efficiency` (the share of a real run's wall time spent in steps: data
sampling, logging and the like take the rest; measure it as a real run's tokens_seen / (tokens/s x
max_seconds)). Paste the budgets into a grid's `zip`.

With `--rounds N` the points are timed side by side instead: N rounds, each timing every point once
(the order rotated from round to round), then each point's median tokens/s and the median over the
rounds of its ratio to the first point's, which is what a comparison of two configs' speeds should
quote on a machine whose speed drifts.

Run alone on the machine:  python -m bench.budget research/recipe/recipe-budget.yaml --seconds 600
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from decoder.data import prepare
from decoder.experiments.grid import load_experiment, settings_label
from decoder.hardware import resolve_precision
from decoder.step import batch_sampler, build_training


def step_tokens_per_s(config, *, warmup: int, steps: int) -> float:
    """Median tokens/s of the trainer's step (`Training.step`) for this config on the CPU."""
    t = config.training
    dataset = prepare(config.data)
    device = torch.device("cpu")
    training = build_training(config, dataset.tokenizer.vocab_size, device, resolve_precision(t.precision, device))
    sampler = batch_sampler(config, dataset.train)
    threads = torch.get_num_threads()
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    times = []
    try:
        for i in range(warmup + steps):
            batch = [sampler.next_batch() for _ in range(t.grad_accum_steps)]
            start = time.perf_counter()
            training.step(batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return t.batch_size * config.model.context_length / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--efficiency", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time the points side by side in this many rounds (see above)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    experiment = load_experiment(args.experiment)
    print(f"# {torch.get_num_threads()} threads, {args.seconds:g} s, efficiency {args.efficiency:g}")
    if args.rounds > 1:
        side_by_side(experiment.points, args)
        return
    print("| point | precision | tokens/s | max_tokens |")
    print("|---|---|---|---|")
    for point in experiment.points:
        rate = step_tokens_per_s(point.config, warmup=args.warmup, steps=args.steps)
        budget = round(rate * args.seconds * args.efficiency, -4)
        print(f"| {settings_label(point.settings) or 'base'} | {point.config.training.precision} | {rate:,.0f} | "
              f"{budget:,.0f} |", flush=True)


def side_by_side(points, args) -> None:
    """Every point timed once a round for args.rounds rounds, the order rotated each round; prints
    the medians and each point's median per-round ratio to the first point."""
    rates: list[list[float]] = [[] for _ in points]
    for r in range(args.rounds):
        for i in [(r + j) % len(points) for j in range(len(points))]:
            rates[i].append(step_tokens_per_s(points[i].config, warmup=args.warmup, steps=args.steps))
        print(f"# round {r + 1}: " + ", ".join(f"{rate[-1]:,.0f}" for rate in rates), flush=True)
    print(f"| point | precision | median tokens/s | ratio to the first point (median of {args.rounds} rounds) |")
    print("|---|---|---|---|")
    for point, rate in zip(points, rates):
        ratio = statistics.median(a / b for a, b in zip(rate, rates[0]))
        print(f"| {settings_label(point.settings) or 'base'} | {point.config.training.precision} | "
              f"{statistics.median(rate):,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
