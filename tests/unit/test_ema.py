"""training.ema: the moving average of the weights is what a run evaluates and saves as its model,
the raw weights still train, and a resumed run is bit-identical to an uninterrupted one."""

import pytest
import torch

from tinyconf import tiny_config, train_losses
from decoder.checkpoint import load_checkpoint, load_model, read_weights
from decoder.config import ConfigError
from decoder.data import prepare
from decoder.ema import WeightAverage, decay_after
from decoder.step import evaluate
from decoder.train import train


def test_the_average_follows_the_warmed_up_recurrence():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightAverage(model, 0.9)
    expected = None
    for n in range(6):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update(model)
        w = model.weight.detach().clone()
        expected = w if expected is None else expected + (1 - decay_after(n, 0.9)) * (w - expected)
    torch.testing.assert_close(ema.evaluated(model).weight, expected, rtol=0, atol=1e-6)
    assert ema.updates == 6 and not torch.equal(ema.evaluated(model).weight, model.weight)
    assert decay_after(0, 0.999) == pytest.approx(0.1) and decay_after(10**6, 0.999) == 0.999


def test_a_smaller_warm_up_constant_reaches_the_decay_sooner():
    assert decay_after(198, 0.995, warmup=2) == pytest.approx(0.995)
    assert decay_after(197, 0.995, warmup=2) < 0.995
    assert decay_after(199, 0.995) < 0.96  # the default constant 10: still warming up
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    fast, slow = WeightAverage(model, 0.99, warmup=1.0), WeightAverage(model, 0.99)
    start = model.weight.detach().clone()
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        fast.update(model), slow.update(model)
    # warm-up 1: decay 0.99 from the second update, so the average stays near the first weights
    torch.testing.assert_close(fast.evaluated(model).weight, start + 1 + 0.01 * 1 + 0.0199 * 1, rtol=0, atol=1e-5)
    assert (slow.evaluated(model).weight - start).min() > 1.5


def test_the_warm_up_constant_is_validated(small_corpus):
    with pytest.raises(ConfigError, match="ema_warmup"):
        tiny_config(small_corpus, training={"ema": 0.9, "ema_warmup": 0.5})


def test_off_is_the_raw_model_and_the_checkpoint_format_of_before(small_corpus, tmp_path):
    model = torch.nn.Linear(3, 2)
    off = WeightAverage(model, 0.0)
    off.update(model)
    assert off.evaluated(model) is model and list(off.checkpoint_entries(model)) == ["model"]
    train(tiny_config(small_corpus, training={"max_steps": 4, "eval_interval": 4}), tmp_path / "run", quiet=True)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert "raw_model" not in saved and "ema_updates" not in saved


def test_the_average_is_evaluated_and_saved_as_the_model(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 12, "eval_interval": 6, "ema": 0.9})
    summary = train(config, tmp_path / "run", quiet=True)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert saved["ema_updates"] == saved["train_state"]["step"]
    averaged, raw = saved["model"], saved["raw_model"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    tensors, _ = read_weights(tmp_path / "run" / "checkpoints" / "model.safetensors")
    assert torch.equal(tensors["transformer.wte.weight"], averaged["transformer.wte.weight"])
    model, tokenizer, _, meta = load_model(tmp_path / "run")
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight, averaged["transformer.h.0.attn.c_attn.weight"])
    # The recorded validation loss is the average's, recomputed from the saved model.
    val = evaluate(model, prepare(config.data).val, tokenizer.byte_lengths(), torch.device("cpu"), "fp32")
    assert val["val_loss"] == pytest.approx(meta["val"]["val_loss"], abs=1e-6)
    assert summary["best_val_loss"] == pytest.approx(meta["val"]["val_loss"], abs=1e-6)


def test_resume_with_the_average_is_bit_identical(small_corpus, tmp_path):
    config = tiny_config(small_corpus, model={"dropout": 0.1},
                         training={"max_steps": 24, "eval_interval": 8, "ema": 0.95})
    full = train_losses(config, tmp_path / "full")
    interrupted = train(config, tmp_path / "split", quiet=True, on_step=lambda step, m: step == 13)
    assert interrupted["status"] == "interrupted" and interrupted["step"] == 13
    resumed = train(config, tmp_path / "split", quiet=True, resume=True)
    assert resumed["status"] == "completed" and resumed["step"] == 24
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    assert a["ema_updates"] == b["ema_updates"] == 24
    for entry in ("model", "raw_model"):
        for name in a[entry]:
            assert torch.equal(a[entry][name], b[entry][name]), (entry, name)
    assert resumed["best_val_loss"] == pytest.approx(load_checkpoint(
        tmp_path / "full" / "checkpoints" / "best.pt")["val"]["val_loss"], abs=0) and len(full) == 24


def test_a_decay_outside_0_1_is_refused(small_corpus):
    with pytest.raises(ConfigError, match=r"training.ema=1.0: must be in \[0, 1\) \(0 is off\)"):
        tiny_config(small_corpus, training={"ema": 1.0})
