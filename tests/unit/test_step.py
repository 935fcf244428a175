"""One trainer: the step the benchmarks time (`build_training(...).step`, as bench/ calls it) is the
step `decoder train` takes, so a benchmark's figure is the trainer's speed (same weights, same loss)."""

from __future__ import annotations

import pytest
import torch
from tinyconf import tiny_config

from decoder.checkpoint import load_checkpoint
from decoder.data import prepare
from decoder.runs import RunDir
from decoder.step import batch_sampler, build_training
from decoder.train import train


@pytest.mark.parametrize(("precision", "optimizer"), [("fp32", "adamw"), ("bf16", "adamw"), ("fp32", "muon")])
def test_the_benchmarks_step_is_the_trainers_step(small_corpus, tmp_path, precision, optimizer):
    # No warm-up and a constant schedule: the trainer's first step runs at the config's lr, the
    # one the benchmarks leave on the optimizer. Dropout on: both draw the same masks.
    config = tiny_config(small_corpus, model={"dropout": 0.1},
                         training={"max_steps": 1, "warmup_steps": 0, "schedule": "constant", "grad_accum_steps": 2,
                                   "precision": precision, "optimizer": optimizer})
    run = RunDir(tmp_path / "run")
    train(config, run.path, quiet=True)
    trained = load_checkpoint(run.latest)["model"]
    (row,) = run.read_metrics()[0]

    dataset = prepare(config.data)
    training = build_training(config, dataset.tokenizer.vocab_size, "cpu", precision)
    sampler = batch_sampler(config, dataset.train)
    loss = training.step([sampler.next_batch() for _ in range(config.training.grad_accum_steps)])

    assert row["step"] == 1
    torch.testing.assert_close(loss.item(), row["train_loss"], rtol=0, atol=0)
    for name, value in training.model.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)


def test_two_builds_of_one_config_step_alike(small_corpus):
    config = tiny_config(small_corpus, model={"dropout": 0.1})
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = [(x[:, :-1].contiguous(), x[:, 1:].contiguous())]
    builds = []
    for _ in range(2):  # each build seeds torch with training.seed: the same weights and dropout masks
        training = build_training(config, 64, "cpu", "fp32")
        builds.append((training.step(batch), training.model))
    (loss_a, model_a), (loss_b, model_b) = builds
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
