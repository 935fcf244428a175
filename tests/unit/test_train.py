import json
import math
import os
import signal

import pytest
import torch

from tinyconf import tiny_config, train_losses
from decoder import loss as loss_module
from decoder.checkpoint import CheckpointError, load_checkpoint, load_model
from decoder.train import TrainingError, train


def test_loss_goes_down_and_run_folder_is_complete(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 60, "eval_interval": 20})
    summary = train(config, tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    uniform = math.log(summary["vocab_size"])  # the loss of an untrained model
    assert rows[-1]["val_loss"] < uniform - 0.5
    assert rows[-1]["train_loss"] < uniform - 1.0  # nats per token: with the pieces fallback each token carries more text
    assert summary["status"] == "completed" and summary["step"] == 60
    assert summary["tokens_seen"] == 60 * 8 * 16
    for key in ("val_loss", "val_ppl", "val_bpb", "tokens_per_s", "elapsed_s", "lr", "tokens_seen"):
        assert key in rows[-1]
    assert rows[-1]["val_ppl"] == pytest.approx(math.exp(rows[-1]["val_loss"]))
    for name in ("config.yaml", "tokenizer.json", "summary.json", "samples.json", "checkpoints/latest.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    samples = json.loads((run / "samples.json").read_text())
    assert [s["strategy"] for s in samples] == ["greedy", "sampled"]
    assert all(s["text"] for s in samples)
    model, tokenizer, loaded_config, meta = load_model(run)
    assert loaded_config == config and meta["val"]["val_loss"] == summary["best_val_loss"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_interruption_is_bit_identical(small_corpus, tmp_path, optimizer):
    config = tiny_config(small_corpus, model={"dropout": 0.1},
                         training={"max_steps": 24, "eval_interval": 8, "optimizer": optimizer})
    full = train_losses(config, tmp_path / "full")
    interrupted = train(config, tmp_path / "split", quiet=True, on_step=lambda step, m: step == 13)
    assert interrupted["status"] == "interrupted" and interrupted["step"] == 13
    with pytest.raises(TrainingError, match="pass --resume"):
        train(config, tmp_path / "split", quiet=True)
    resumed = train(config, tmp_path / "split", quiet=True, resume=True)
    assert resumed["status"] == "completed" and resumed["step"] == 24
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert len(full) == 24


def _train_signalled_at(step_of_signal: int, config, run_dir) -> tuple[dict, list[int]]:
    """Train with a caller's SIGTERM handler installed; SIGTERM is sent from on_step at that step
    (after the step's own stop check). Returns the summary and the signals the caller's handler got."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        def at_step(step, metrics):
            if step == step_of_signal:
                os.kill(os.getpid(), signal.SIGTERM)
            return False

        summary = train(config, run_dir, quiet=True, on_step=at_step)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return summary, received


def test_a_signal_after_the_last_step_completes_the_run_then_reaches_the_callers_handler(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 6, "eval_interval": 3})
    summary, received = _train_signalled_at(6, config, tmp_path / "run")  # the budget ends the run first
    assert summary["status"] == "completed" and summary["step"] == 6
    assert received == [signal.SIGTERM]  # not swallowed: a sweep worker stops instead of taking the next trial


def test_a_signal_that_stops_the_run_is_not_delivered_again(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 6, "eval_interval": 3})
    summary, received = _train_signalled_at(3, config, tmp_path / "run")
    assert summary["status"] == "interrupted" and summary["step"] == 4  # honoured after the next step
    assert received == []


def test_resume_refuses_a_different_config(small_corpus, tmp_path):
    config = tiny_config(small_corpus)
    train(config, tmp_path / "run", quiet=True, on_step=lambda step, m: step == 3)
    with pytest.raises(TrainingError, match="saved config differs"):
        train(tiny_config(small_corpus, training={"lr": 1e-2}), tmp_path / "run", quiet=True, resume=True)


def test_corrupt_checkpoint_gives_clear_error(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 10})
    train(config, tmp_path / "run", quiet=True, on_step=lambda step, m: step == 5)
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or unreadable checkpoint"):
        train(config, tmp_path / "run", quiet=True, resume=True)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(latest)
    (tmp_path / "other.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "other.pt")


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(small_corpus, tmp_path, monkeypatch):
    config = tiny_config(small_corpus, training={"max_steps": 30, "eval_interval": 5})
    real = loss_module.linear_cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 12 else loss

    monkeypatch.setattr(loss_module, "linear_cross_entropy", poisoned)
    with pytest.raises(TrainingError, match="training loss became nan at step 13"):
        train(config, tmp_path / "run", quiet=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    kept = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert kept["train_state"]["step"] == 10
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_early_stopping(small_corpus, tmp_path):
    # A learning rate this high makes validation loss stop improving quickly.
    config = tiny_config(small_corpus, training={"max_steps": 400, "eval_interval": 2, "patience": 2,
                                                 "lr": 0.5, "warmup_steps": 0, "grad_clip": 0})
    summary = train(config, tmp_path / "run", quiet=True)
    assert summary["status"] == "early_stopped"
    assert summary["step"] < 400
    assert summary["step"] - summary["best_step"] == 4


def test_token_budget_and_grad_accumulation(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": None, "max_tokens": 8 * 16 * 7,
                                                 "grad_accum_steps": 2})
    summary = train(config, tmp_path / "run", quiet=True)
    assert summary["step"] == 7 and summary["tokens_seen"] == 8 * 16 * 7


def test_resume_falls_back_to_the_previous_checkpoint_when_latest_is_damaged(small_corpus, tmp_path, capsys):
    config = tiny_config(small_corpus, training={"max_steps": 12, "eval_interval": 4})
    train(config, tmp_path / "full", quiet=True)
    train(config, tmp_path / "split", quiet=True, on_step=lambda step, m: step == 6)  # saved at steps 4 and 6
    checkpoints = tmp_path / "split" / "checkpoints"
    assert load_checkpoint(checkpoints / "latest.prev.pt")["train_state"]["step"] == 4
    (checkpoints / "latest.pt").write_bytes((checkpoints / "latest.pt").read_bytes()[:1000])
    capsys.readouterr()
    resumed = train(config, tmp_path / "split", quiet=True, resume=True)
    warning = capsys.readouterr().err
    assert "corrupt or unreadable checkpoint" in warning and "latest.prev.pt (step 4)" in warning
    assert resumed["status"] == "completed" and resumed["step"] == 12
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")["model"]
    b = load_checkpoint(checkpoints / "latest.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resume_keeps_the_saved_precision_when_auto_resolves_differently(small_corpus, tmp_path, monkeypatch, capsys):
    config = tiny_config(small_corpus, training={"max_steps": 6, "precision": "auto"})
    monkeypatch.setattr("decoder.resume.resolve_precision", lambda p, device: "fp32" if p == "auto" else p)
    train(config, tmp_path / "run", quiet=True, on_step=lambda step, m: step == 3)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["precision"] == "fp32"
    monkeypatch.setattr("decoder.resume.resolve_precision", lambda p, device: "bf16" if p == "auto" else p)
    capsys.readouterr()
    summary = train(config, tmp_path / "run", quiet=True, resume=True)
    assert "training.precision 'auto' resolves to bf16 on this machine" in capsys.readouterr().err
    assert summary["precision"] == "fp32" and summary["status"] == "completed"
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["precision"] == "fp32"


def test_checkpoints_of_the_older_key_sets_still_load_and_resume(small_corpus, tmp_path):
    """Before the Checkpointer, best.pt had no optimizer/sampler/rng/world_size and latest.pt no
    train_loss; neither had device, precision or the newer train_state counters."""
    config = tiny_config(small_corpus, training={"max_steps": 10, "eval_interval": 5})
    train(config, tmp_path / "run", quiet=True, on_step=lambda step, m: step == 7)
    checkpoints = tmp_path / "run" / "checkpoints"
    new = torch.load(checkpoints / "latest.pt", weights_only=False)
    counters = {k: v for k, v in new["train_state"].items() if k not in ("best_val_bpb", "train_loss_at_best")}
    old_best = {k: new[k] for k in ("format", "config", "vocab_size", "tokenizer", "model", "run_id", "val",
                                    "train_loss")}
    old_latest = {k: v for k, v in new.items() if k not in ("train_loss", "device", "precision")}
    torch.save({**old_best, "train_state": counters}, checkpoints / "best.pt")
    torch.save({**old_latest, "train_state": counters}, checkpoints / "latest.pt")
    (checkpoints / "latest.prev.pt").unlink()
    _, _, loaded, meta = load_model(tmp_path / "run")
    assert loaded == config and meta["path"].endswith("best.pt") and meta["train_state"]["step"] == 7
    assert load_checkpoint(checkpoints / "best.pt")["optimizer"] is None
    resumed = train(config, tmp_path / "run", quiet=True, resume=True)
    assert resumed["status"] == "completed" and resumed["step"] == 10
    torch.save({**old_best, "train_state": counters}, checkpoints / "latest.pt")
    (checkpoints / "latest.prev.pt").unlink()
    with pytest.raises(CheckpointError, match="has no optimizer, sampler, rng state"):
        train(config, tmp_path / "run", quiet=True, resume=True)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(small_corpus, tmp_path):
    from decoder.model import GPT
    from decoder.muon import Muon
    from decoder.step import make_optimizer

    config = tiny_config(small_corpus, training={"optimizer": "muon", "lr": 1e-2, "weight_decay": 0.0})
    model = GPT(config.model, vocab_size=64)
    optimizer = make_optimizer(model, config)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_muon) == (p.dim() == 2 and ".h." in f".{name}"), name
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:  # what the trainer does each step
        group["lr"] = 1e-2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randint(0, 64, (4, 16))
    logits, _ = model(x)
    logits.float().logsumexp(-1).mean().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name
        if id(p) in in_muon:  # an orthogonalised update scaled to AdamW's RMS, 0.2 * lr at most
            rms = (p - before[name]).pow(2).mean().sqrt().item()
            assert 0.4 * 0.2 * 1e-2 < rms < 1.2 * 0.2 * 1e-2, name


def test_a_muon_run_learns(small_corpus, tmp_path):
    config = tiny_config(small_corpus, training={"max_steps": 40, "eval_interval": 20, "optimizer": "muon"})
    summary = train(config, tmp_path / "run", quiet=True)
    assert summary["status"] == "completed"
    assert summary["best_val_loss"] < math.log(summary["vocab_size"]) - 0.5
