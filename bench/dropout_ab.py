"""The training step with the model's CPU dropout (`decoder.dropout.CPU_DROPOUT`, the default) against
torch's own dropout (the attention's inside SDPA, as before), interleaved in one process so both arms
see the same machine state: `--rounds` rounds of `--steps` steps per arm, the arms' order swapped
each round, the first round discarded; prints each arm's median tokens/s and the median of the
per-round ratios.

The config is an experiment file's base (default: the main job, `experiments/default.yaml`), at its
precision unless `--precision` says otherwise, on random token ids of its vocabulary.

Run alone on the machine:  python -m bench.dropout_ab [--precision fp32] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import decoder.dropout
from decoder.data import prepare
from decoder.experiments.grid import load_experiment
from decoder.hardware import resolve_precision
from decoder.step import build_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="experiments/default.yaml")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_experiment(args.experiment).points[0].config
    precision = args.precision or resolve_precision(config.training.precision, torch.device("cpu"))
    vocab = prepare(config.data).tokenizer.vocab_size
    B, T = config.training.batch_size, config.model.context_length
    xy = torch.randint(0, vocab, (B, T + 1), generator=torch.Generator().manual_seed(0))
    batch = [(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())]
    arms = {name: (build_training(config, vocab, "cpu", precision), []) for name in ("torch", "cpu")}
    print(f"# {args.experiment}: dropout {config.model.dropout}, batch {B} x {T}, {precision}, "
          f"{torch.get_num_threads()} threads")
    for round_ in range(args.rounds + 1):
        for name in list(arms) if round_ % 2 == 0 else list(arms)[::-1]:
            training, rates = arms[name]
            decoder.dropout.CPU_DROPOUT = name == "cpu"
            try:
                start = time.perf_counter()
                for _ in range(args.steps):
                    training.step(batch)
                elapsed = time.perf_counter() - start
            finally:
                decoder.dropout.CPU_DROPOUT = True
            if round_ > 0:
                rates.append(args.steps * B * T / elapsed)
    torch_rates, cpu_rates = arms["torch"][1], arms["cpu"][1]
    ratio = statistics.median(c / t for c, t in zip(cpu_rates, torch_rates))
    print("| dropout | median tokens/s |")
    print("|---|---:|")
    print(f"| torch's | {statistics.median(torch_rates):,.0f} |")
    print(f"| the model's CPU dropout | {statistics.median(cpu_rates):,.0f} |")
    print(f"ratio (CPU dropout / torch's), median of {args.rounds} rounds: {ratio:.3f}")


if __name__ == "__main__":
    main()
