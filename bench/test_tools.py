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


def test_mixers_variants_are_the_protocols_mixture_and_proper():
    import numpy as np

    from bench.mixers import cache_nats, gradient_mix
    from decoder.online_ngram import mix_experts

    rng = np.random.default_rng(0)
    experts = [rng.uniform(0.1, 6.0, 300) for _ in range(3)]
    buckets = rng.integers(0, 3, 300)
    # forgetting changes the mixture; either way a mixture's probability of a token lies between its
    # experts' (weights fixed before the token)
    assert not np.allclose(mix_experts(experts, buckets, decay=0.9)[0], mix_experts(experts, buckets)[0])
    for mixed in (mix_experts(experts, buckets, decay=0.99)[0], gradient_mix(experts, buckets, 0.05)):
        stacked = np.stack(experts)
        assert np.all(mixed >= stacked.min(0) - 1e-9) and np.all(mixed <= stacked.max(0) + 1e-9)
    # the cache: after "a b a", b's probability is its decayed share of the tokens before it
    tokens = np.array([0, 1, 0, 1])
    nats = cache_nats(tokens, 4, 0.5)
    seen = 0.5 / (1 + 0.5 + 0.25)  # weights 1 (the last a), 0.5 (the b), 0.25 (the first a)
    assert np.isclose(nats[2], -np.log(0.95 * seen + 0.05 / 4))


def test_budget_side_by_side_times_every_point_each_round(tmp_path, monkeypatch, capsys):
    import argparse

    import yaml

    from bench.budget import side_by_side
    from decoder.experiments.grid import load_experiment

    monkeypatch.setenv("DECODER_CACHE_DIR", str(tmp_path))
    spec = {"name": "speed", "base": {
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "context_length": 16},
        "data": {"corpus": str(EXCERPT), "tokenizer": "gpt2"},
        "training": {"batch_size": 4, "max_tokens": 10_000, "precision": "fp32", "num_threads": 1}},
        "grid": {"model.d_model": [16, 32]}}
    path = tmp_path / "speed.yaml"
    path.write_text(yaml.safe_dump(spec))
    side_by_side(load_experiment(path).points, argparse.Namespace(rounds=3, warmup=1, steps=1))
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("# round") for line in lines) == 3
    rows = [line.split(" | ") for line in lines if line.startswith("| model.d_model=")]
    assert [row[0] for row in rows] == ["| model.d_model=16", "| model.d_model=32"]
    assert rows[0][3] == "1.000 |" and float(rows[1][3].rstrip(" |")) > 0


def test_dynamic_rules_grid_and_the_decay_pulls_back_to_the_trained_weights(tmp_path):
    import numpy as np
    import torch

    from bench.dynamic_rules import settings
    from decoder.evaluate import dynamic_nats, gradient_rms
    from decoder.config import ModelConfig
    from decoder.model import GPT

    grid = settings(["rms", "sgd"], [1e-4, 2e-4], [0.02], [0.1], [0.0, 0.01], [32])
    assert [p["rule"] for p in grid] == ["rms"] * 4 + ["sgd"] and grid[-1] == {"rule": "sgd", "segment": 32, "lr": 0.02}
    torch.manual_seed(0)
    model = GPT(ModelConfig(d_model=32, n_heads=2, n_blocks=1, context_length=16), 50).eval()
    tokens = np.random.default_rng(0).integers(0, 50, 200)
    rms = gradient_rms(model, tokens, 8, torch.device("cpu"), "fp32", n_windows=4)
    run = {d: dynamic_nats(model, tokens, 8, 1e-2, torch.device("cpu"), "fp32", rms=rms, decay=d) for d in (0.0, 1.0)}
    # the decay only acts after a step: the first window (scored before any step) agrees, later ones do not
    np.testing.assert_array_equal(run[0.0][:16], run[1.0][:16])
    assert not np.allclose(run[0.0], run[1.0])


def test_dropout_ab_times_both_dropouts(tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({"name": "tiny", "base": {
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "context_length": 16, "dropout": 0.1},
        "data": {"corpus": str(EXCERPT), "tokenizer": "gpt2"},
        "training": {"batch_size": 4, "max_tokens": 10_000},
    }}))
    env = {**os.environ, "DECODER_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bench.dropout_ab", str(experiment), "--rounds", "2", "--steps", "1",
                           "--precision", "fp32"], capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert "| torch's |" in done.stdout and "| the model's CPU dropout |" in done.stdout
    ratio = float(done.stdout.rsplit(":", 1)[1])
    assert math.isfinite(ratio) and ratio > 0
