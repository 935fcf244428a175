"""How many tokens this CPU trains in a time budget, for every point of an experiment file.

A time budget (`training.max_seconds`) is what users run; a token budget (`training.max_tokens`) is
what a grid can be compared on, on any machine and under any load. This measures each point's
training step (the very `train_step` the trainer runs: forward, backward, clip, AdamW, with the
attention kernel the trainer picks) at the point's precision, gradient accumulation and threads
(its `training.num_threads`, else this process's), median over timed steps after a warm-up, and prints
its tokens/s and the tokens it would see in `--seconds`, scaled by `--efficiency` (the share of a
real run's wall time spent in steps: data sampling, logging and the like take the rest; measure it
as a real run's tokens_seen / (tokens/s x max_seconds)). Paste the budgets into a grid's `zip`.

Run alone on the machine:  python -m bench.budget experiments/recipe-budget.yaml --seconds 600
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from decoder.data import BatchSampler, prepare
from decoder.experiments.grid import load_experiment, settings_label
from decoder.hardware import resolve_precision, training_attention_backend
from decoder.loss import NextTokenLoss
from decoder.model import GPT
from decoder.step import make_optimizer, train_step


def step_tokens_per_s(config, *, warmup: int, steps: int) -> float:
    """Median tokens/s of `train_step` for this config on the CPU."""
    t = config.training
    dataset = prepare(config.data)
    torch.manual_seed(t.seed)
    device, precision = torch.device("cpu"), resolve_precision(t.precision, torch.device("cpu"))
    model = GPT(config.model, dataset.tokenizer.vocab_size)
    model.set_attention_backend(training_attention_backend("cpu", config.model.context_length, precision))  # as train
    optimizer = make_optimizer(model, config)
    loss_model = NextTokenLoss(model)  # what the trainer differentiates (fused output-layer loss)
    sampler = BatchSampler(dataset.train, config.model.context_length, t.batch_size // t.grad_accum_steps,
                           config.data.windows, seed=t.seed)
    threads = torch.get_num_threads()
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    times = []
    try:
        for i in range(warmup + steps):
            batch = [sampler.next_batch() for _ in range(t.grad_accum_steps)]
            start = time.perf_counter()
            train_step(loss_model, optimizer, batch, device=device, precision=precision, grad_clip=t.grad_clip)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    experiment = load_experiment(args.experiment)
    print(f"# {torch.get_num_threads()} threads, {args.seconds:g} s, efficiency {args.efficiency:g}")
    print("| point | precision | tokens/s | max_tokens |")
    print("|---|---|---|---|")
    for point in experiment.points:
        rate = step_tokens_per_s(point.config, warmup=args.warmup, steps=args.steps)
        budget = round(rate * args.seconds * args.efficiency, -4)
        print(f"| {settings_label(point.settings) or 'base'} | {point.config.training.precision} | {rate:,.0f} | "
              f"{budget:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
