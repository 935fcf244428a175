"""The training step at the default shape with the AdamW `build_training` builds (torch's default
implementation for the device: on CPU the per-parameter loop) against torch's foreach and fused
AdamW, interleaved in one process so every arm sees the same machine state: 12 rounds of 5 steps per
arm, the first 2 rounds discarded, median tokens/s printed.

Run alone on the machine:  python -m bench.adamw_ab [fp32|bf16]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from decoder.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from decoder.data import prepare
from decoder.step import build_training


def main() -> None:
    precision = sys.argv[1] if len(sys.argv) > 1 else "fp32"
    vocab = prepare(DataConfig()).tokenizer.vocab_size
    shape = ModelConfig(d_model=192, n_heads=4, n_blocks=3, context_length=64)
    config = RunConfig(model=shape, training=TrainingConfig(batch_size=32, max_steps=1))
    xy = torch.randint(0, vocab, (32, 65), generator=torch.Generator().manual_seed(0))
    batch = [(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())]
    arms = {}
    for name, options in (("default", {}), ("foreach", {"foreach": True, "fused": None}),
                          ("fused", {"fused": True, "foreach": None})):
        training = build_training(config, vocab, "cpu", precision)
        for group in training.optimizer.param_groups:
            group.update(options)
        arms[name] = (training, [])
    for round_ in range(12):
        for training, rates in arms.values():
            start = time.perf_counter()
            for _ in range(5):
                training.step(batch)
            if round_ >= 2:
                rates.append(5 * 32 * 64 / (time.perf_counter() - start))
    print(f"{torch.get_num_threads()} threads, {precision}")
    for name, (_, rates) in arms.items():
        print(f"{name}: median {statistics.median(rates):,.0f} tokens/s over {len(rates)} rounds")


if __name__ == "__main__":
    main()
