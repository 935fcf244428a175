"""`decoder train` then `decoder generate`, end to end, as a user runs them."""

import json
import os
import subprocess
import sys

import yaml


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "decoder", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)


def test_train_then_generate_greedy_and_sampled(small_corpus, tmp_path):
    config = {
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "context_length": 16},
        "data": {"corpus": str(small_corpus), "tokenizer": "gpt2"},
        "training": {"batch_size": 8, "max_steps": 20, "eval_interval": 10, "device": "cpu"},
        "sampling": {"max_new_tokens": 5},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = run_cli("train", str(path), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    assert "completed: 20 steps" in result.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"

    greedy = [run_cli("generate", str(run), "--prompt", "The engineer", "--greedy", "--max-new-tokens", "12")
              for _ in range(2)]
    assert greedy[0].returncode == 0, greedy[0].stderr
    assert greedy[0].stdout.startswith("The engineer") and len(greedy[0].stdout) > len("The engineer\n")
    assert greedy[0].stdout == greedy[1].stdout
    sampled = [run_cli("generate", str(run), "--prompt", "The engineer", "--seed", str(s), "--top-k", "50",
                       "--max-new-tokens", "12") for s in (1, 1, 2)]
    assert sampled[0].returncode == 0, sampled[0].stderr
    assert sampled[0].stdout == sampled[1].stdout != sampled[2].stdout


def test_user_errors_are_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 100\n  n_heads: 8\ntraining:\n  max_steps: 5\n")
    for args, expected in [
        (("train", str(bad)), "d_model must be divisible by n_heads"),
        (("train", str(tmp_path / "missing.yaml")), "no such file"),
        (("generate", str(tmp_path), "--greedy"), "no checkpoints/best.pt"),
        (("generate", str(tmp_path), "--top-p", "2"), "top_p=2.0: must be in (0, 1]"),
        (("generate", str(tmp_path), "--max-new-tokens", "0"), "--max-new-tokens=0"),
        (("generate", str(tmp_path), "--prompt", ""), "prompt is empty"),
        (("data", str(tmp_path / "nope.txt")), "not a registered name"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)


def test_data_command_reports_corpus_statistics():
    result = run_cli("data", "--tokenizer", "gpt2")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["tokens"] == info["train_tokens"] + info["val_tokens"]
    assert 3.0 < info["bytes_per_token"] < 6.0
    assert info["distinct_tokens"] <= info["vocab_size"]
