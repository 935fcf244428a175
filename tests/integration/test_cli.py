"""The `decoder` command as a user runs it: train then generate end to end, one-line user errors,
tracebacks for bugs, the command table, missing extras, and option defaults from the config."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from decoder.cli import COMMANDS, build_parser, main
from decoder.config import ConfigError, DataConfig, SamplingConfig

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "decoder", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}, timeout=300)


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
    choice = tmp_path / "choice.yaml"
    choice.write_text("model:\n  positional: rotary\ntraining:\n  max_steps: 5\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for args, expected in [
        (("train", str(bad)), "d_model must be divisible by n_heads"),
        (("train", str(choice)), "model.positional='rotary': allowed 'learned', 'sinusoidal'"),
        (("train", str(empty)), "training: no budget (a budget is required)"),
        (("train", str(tmp_path / "missing.yaml")), "no such file"),
        (("generate", str(tmp_path), "--greedy"), "no checkpoints/best.pt"),
        (("generate", str(tmp_path), "--top-p", "2"), "--top-p=2.0: must be in (0, 1]"),
        (("generate", str(tmp_path), "--max-new-tokens", "0"), "--max-new-tokens=0: must be >= 1"),
        (("generate", str(tmp_path), "--prompt", ""), "--prompt is empty"),
        (("generate",), "give a run folder or checkpoint"),
        (("data", str(tmp_path / "nope.txt")), "not a registered name"),
        (("data", "--min-count", "0"), "data.min_count=0: must be >= 1"),
        (("run", str(empty), "--shard", "2/2"), "--shard '2/2': expected i/n"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"decoder {args[0]}: error: ") and expected in lines[0], (
            args, result.stderr)


def test_decoder_debug_shows_a_user_errors_traceback(tmp_path, monkeypatch):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    monkeypatch.setenv("DECODER_DEBUG", "1")
    with pytest.raises(ConfigError, match="a budget is required"):
        main(["train", str(empty)])


BUG = textwrap.dedent("""
    import sys
    import decoder.cli.data

    def broken(args):
        return {}["a key the code forgot"]

    decoder.cli.data.run = broken
    from decoder.cli import main
    sys.exit(main(["data", "--list"]))
""")


def test_a_bug_shows_its_traceback_and_does_not_exit_2():
    """Only UserError is a user's mistake; anything else (here a KeyError) is a bug to report."""
    result = subprocess.run([sys.executable, "-c", BUG], capture_output=True, text=True, timeout=120)
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "KeyError: 'a key the code forgot'" in result.stderr


def test_every_command_has_a_module_and_a_declared_extra():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, command in COMMANDS.items():
        assert command.module == f"decoder.cli.{name}"
        assert command.extra is None or command.extra in extras, f"{name}: unknown extra {command.extra!r}"


def test_missing_extras_still_list_every_command_and_say_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr("decoder.cli.extras._installed", lambda distribution: False)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in COMMANDS)
    for args, extra in [(["export", "run", "--out", "b"], "export"), (["train", "c.yaml"], "train"),
                        (["generate", "--onnx", "b"], "runtime"), (["generate", "run"], "train")]:
        assert main(args) == 2
        assert capsys.readouterr().err == (f'decoder {args[0]} needs the [{extra}] extra: '
                                           f'pip install "decoder[{extra}]"\n')


WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    from decoder.cli import main

    code = main(sys.argv[1:])
    print("torch modules:", [m for m in sys.modules if m.split(".")[0] == "torch"], file=sys.stderr)
    sys.exit(code)
""")


def test_without_torch_help_lists_every_command_and_train_names_its_extra(tmp_path):
    """An install without the [train] extra (torch absent, although its metadata says otherwise)."""
    script = tmp_path / "no_torch.py"
    script.write_text(WITHOUT_TORCH)
    listing = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and all(name in listing.stdout for name in COMMANDS), listing.stderr
    config = tmp_path / "c.yaml"
    config.write_text("training: {max_steps: 1}\n")
    train = subprocess.run([sys.executable, str(script), "train", str(config)], capture_output=True, text=True,
                           timeout=120)
    assert train.returncode == 2
    assert train.stderr.splitlines()[0] == 'decoder train needs the [train] extra: pip install "decoder[train]"'


def test_option_defaults_come_from_the_config_dataclasses():
    parser = build_parser()
    generate, sampling = parser.parse_args(["generate", "run"]), SamplingConfig()
    for name in ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed"):
        assert getattr(generate, name) == getattr(sampling, name), name
    data, section = parser.parse_args(["data"]), DataConfig()
    for name in ("corpus", "tokenizer", "min_count", "val_fraction"):
        assert getattr(data, name) == getattr(section, name), name


def test_data_command_reports_corpus_statistics():
    result = run_cli("data", "--tokenizer", "gpt2")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["tokens"] == info["train_tokens"] + info["val_tokens"]
    assert 3.0 < info["bytes_per_token"] < 6.0
    assert info["distinct_tokens"] <= info["vocab_size"]


def test_data_min_count_reports_the_vocabulary_training_would_use(small_corpus, capsys):
    from decoder.data import prepare

    reports = {}
    for min_count in (1, 4):
        assert main(["data", str(small_corpus), "--tokenizer", "gpt2", "--min-count", str(min_count),
                     "--fallback", "bytes"]) == 0
        reports[min_count] = json.loads(capsys.readouterr().out)
    dataset = prepare(DataConfig(corpus=str(small_corpus), tokenizer="gpt2", min_count=4, fallback="bytes"))
    assert reports[4]["min_count"] == 4
    assert reports[4]["vocab_size"] == dataset.tokenizer.vocab_size
    assert (reports[4]["train_tokens"], reports[4]["val_tokens"]) == (len(dataset.train), len(dataset.val))
    # rare tokens spelled in bytes: a smaller vocabulary, more tokens, fewer bytes per token
    assert reports[4]["vocab_size"] < reports[1]["vocab_size"]
    assert reports[4]["tokens"] > reports[1]["tokens"]
    assert reports[4]["bytes_per_token"] < reports[1]["bytes_per_token"]
    # the same vocabulary with dropped tokens spelled in vocabulary pieces: fewer tokens than bytes
    assert main(["data", str(small_corpus), "--tokenizer", "gpt2", "--min-count", "4", "--fallback", "pieces"]) == 0
    pieces = json.loads(capsys.readouterr().out)
    assert pieces["fallback"] == "pieces" and reports[4]["fallback"] == "bytes"
    assert pieces["vocab_size"] == reports[4]["vocab_size"]
    assert reports[1]["tokens"] <= pieces["tokens"] < reports[4]["tokens"]
