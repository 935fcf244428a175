"""Training FLOPs (decoder/flops.py) and the training.max_flops budget."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from decoder.config import ConfigError, ModelConfig, RunConfig, TrainingConfig, config_from_dict
from decoder.flops import attention_flops_per_token, flops_per_token, matmul_params, run_flops
from decoder.model import GPT
from decoder.step import budget_progress
from decoder.train import TrainState, train


def _linear_weights(model: GPT) -> int:
    """Weights of every nn.Linear of the blocks and the output head, counted from the module."""
    blocks = sum(m.weight.numel() for m in model.transformer.h.modules() if isinstance(m, torch.nn.Linear))
    return blocks + model.lm_head.weight.numel()


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("tie", [True, False])
def test_n_is_the_matrix_weights_of_the_blocks_and_the_head(mlp, tie):
    config = ModelConfig(d_model=32, n_heads=2, n_blocks=3, context_length=16, mlp=mlp, tie_embeddings=tie)
    model = GPT(config, vocab_size=101)
    assert matmul_params(config, 101) == _linear_weights(model)
    assert model.flops_per_token() == flops_per_token(config, 101)


def test_flops_per_token_is_six_n_plus_the_causal_attention_term():
    config = ModelConfig(d_model=64, n_heads=4, n_blocks=2, context_length=128)
    n = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 64 * 500
    assert matmul_params(config, 500) == n
    assert attention_flops_per_token(config) == 6 * 2 * 128 * 64
    assert flops_per_token(config, 500) == 6 * n + 6 * 2 * 128 * 64
    assert run_flops(config, 500, 1000) == 1000 * flops_per_token(config, 500)


def test_max_flops_alone_is_a_budget_and_must_be_positive():
    config = config_from_dict({"training": {"max_flops": 1.0e+9}})
    assert config.training.max_flops == 1e9
    with pytest.raises(ConfigError, match="max_flops"):
        config_from_dict({"training": {"max_flops": 0}})
    with pytest.raises(ConfigError, match="max_flops"):
        config_from_dict({"training": {}})  # the no-budget message names max_flops among the choices


def test_budget_progress_counts_flops_and_needs_the_model():
    config = RunConfig(training=TrainingConfig(max_flops=1000.0))
    state = TrainState(tokens_seen=10)
    assert budget_progress(config, state, flops_per_token=50) == 0.5
    assert budget_progress(config, dataclasses.replace(state, tokens_seen=30), flops_per_token=50) == 1.5
    with pytest.raises(ValueError, match="flops_per_token"):
        budget_progress(config, state)


def test_training_stops_at_the_flop_budget_and_logs_flops(tmp_path, small_corpus):
    raw = {"model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "context_length": 16},
           "data": {"corpus": str(small_corpus), "tokenizer": "gpt2"},
           "training": {"batch_size": 4, "eval_fraction": 0.5, "warmup_steps": 1, "device": "cpu",
                        "precision": "fp32", "num_threads": 1, "tensorboard": False},
           "sampling": {"max_new_tokens": 4}}
    probe = config_from_dict({**raw, "training": {**raw["training"], "max_steps": 1}})
    summary = train(probe, tmp_path / "probe", quiet=True)
    per_step = summary["flops_per_token"] * 4 * 16
    raw["training"]["max_flops"] = 7.5 * per_step  # stops after the 8th step, the first at or past the budget
    summary = train(config_from_dict(raw), tmp_path / "run", quiet=True)
    assert summary["step"] == 8
    assert summary["flops"] == 8 * per_step == summary["tokens_seen"] * summary["flops_per_token"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["flops"] for r in rows] == [r["tokens_seen"] * summary["flops_per_token"] for r in rows]
    assert len(rows) == 2  # eval_fraction 0.5 of the FLOP budget: halfway and at the end
