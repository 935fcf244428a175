"""The training step at the default shape, side by side in one process: nanoGPT's model and step
(bench/nanogpt.py), ours before the fused loss (full logits, then F.cross_entropy) and ours as
`decoder train` runs it (decoder.loss's fused, chunked output-layer loss), with AdamW and with Muon
(`training.optimizer: muon`; its Newton-Schulz iterations in the run's precision). The arms are
interleaved, their order rotated each round (by default 12 rounds of 5 steps each, the first 2
rounds discarded), so every arm sees the same machine state; prints each arm's median tokens/s and
the medians of the per-round ratios.

Run alone on the machine:  python -m bench.step_ab [fp32|bf16] [--threads N] [--rounds R --steps S]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import sdpa_kernel

from bench.common import SIZES
from bench.nanogpt import NanoGPT, nanogpt_optimizer, nanogpt_step
from decoder.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from decoder.data import prepare
from decoder.hardware import cpu_name, training_attention_backend
from decoder.step import build_training


def arms(shape: ModelConfig, vocab: int, precision: str, batch) -> dict:
    """name -> a function running one training step."""
    backend = training_attention_backend("cpu", shape.context_length, precision)
    out = {}
    torch.manual_seed(0)
    nano = NanoGPT(shape, vocab)
    nano_opt = nanogpt_optimizer(nano, "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else None

    def nano_step():
        with sdpa_kernel(backend) if backend is not None else nullcontext():
            nanogpt_step(nano, nano_opt, *batch[0], dtype)

    out["nanoGPT"] = nano_step
    for name, fused, opt_name in (("decoder, logits loss", False, "adamw"), ("decoder", True, "adamw"),
                                  ("decoder, muon", True, "muon")):
        config = RunConfig(model=shape, training=TrainingConfig(max_steps=1, batch_size=batch[0][0].shape[0],
                                                                optimizer=opt_name))
        training = build_training(config, vocab, "cpu", precision, fused=fused)
        out[name] = lambda training=training: training.step(batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precision", nargs="?", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (default 12)")
    parser.add_argument("--steps", type=int, default=5, help="steps per arm and round (default 5)")
    parser.add_argument("--discard", type=int, default=2, help="first rounds left out (default 2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES["small"]
    vocab = prepare(DataConfig()).tokenizer.vocab_size
    xy = torch.randint(0, vocab, (size.batch, size.model.context_length + 1), generator=torch.Generator().manual_seed(0))
    batch = [(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())]
    steps = arms(size.model, vocab, args.precision, batch)
    names = list(steps)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)  # rotate the order so no arm always follows the same one
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            if round_ >= args.discard:
                rates[name].append(args.steps * xy[:, 1:].numel() / (time.perf_counter() - start))
    m = size.model
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}; "
          f"d_model {m.d_model}, {m.n_heads} heads, {m.n_blocks} blocks, context {m.context_length}, "
          f"batch {size.batch}, vocabulary {vocab}; {args.rounds - args.discard} rounds of {args.steps} steps")

    def paired(a: str, b: str) -> float:
        """Median over rounds of a's tokens/s over b's in the same round."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    for name in names:
        print(f"{name}: median {statistics.median(rates[name]):,.0f} tokens/s "
              f"(x{paired(name, 'nanoGPT'):.2f} nanoGPT, median of per-round ratios)")
    print(f"fused loss / logits loss: x{paired('decoder', 'decoder, logits loss'):.2f} (median of per-round ratios)")
    print(f"muon / adamw: x{paired('decoder, muon', 'decoder'):.2f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
