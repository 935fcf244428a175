"""The measuring scripts beside the suites run against the trainer's current step (not timed here):
`bench.budget` and `bench.step_ab` time the very `Training.step` the trainer runs (built by
`decoder.step.build_training`), so a change to it must break this test, not the script in a user's
hands."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.budget import step_tokens_per_s
from decoder.config import config_from_dict

EXCERPT = Path(__file__).resolve().parent.parent / "tests" / "assets" / "excerpt.txt"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_budget_times_the_trainers_step(tmp_path, monkeypatch, precision):
    monkeypatch.setenv("DECODER_CACHE_DIR", str(tmp_path))
    config = config_from_dict({
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "context_length": 16, "dropout": 0.1},
        "data": {"corpus": str(EXCERPT), "tokenizer": "gpt2"},
        "training": {"batch_size": 8, "grad_accum_steps": 2, "max_tokens": 10_000, "precision": precision,
                     "num_threads": 1},
    })
    rate = step_tokens_per_s(config, warmup=1, steps=2)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_ab_arms_each_train(precision):
    import torch

    from bench.step_ab import arms
    from decoder.config import ModelConfig

    shape = ModelConfig(d_model=32, n_heads=2, n_blocks=2, context_length=16)
    xy = torch.randint(0, 50, (4, 17), generator=torch.Generator().manual_seed(0))
    steps = arms(shape, 50, precision, [(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())])
    assert set(steps) == {"nanoGPT", "decoder, logits loss", "decoder", "decoder, muon"}
    for name, step in steps.items():
        step()
