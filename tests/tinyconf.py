"""Tiny configurations, device parameters and the shipped experiment files, shared by the tests in
tests/unit and tests/integration (a uniquely named module, so it cannot clash with bench/'s modules
on sys.path; tests/conftest.py puts tests/ there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from decoder.config import config_from_dict

ROOT = Path(__file__).resolve().parent.parent

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")),
]


def tiny_config(corpus: Path | str, **sections):
    """d_model 32, 2 blocks, context 16, fp32 on CPU: a run of a few dozen steps takes seconds."""
    raw = {
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "context_length": 16, "dropout": 0.0},
        "data": {"corpus": str(corpus), "tokenizer": "gpt2"},
        "training": {"batch_size": 8, "max_steps": 30, "eval_interval": 10, "warmup_steps": 5,
                     "log_interval": 1, "device": "cpu", "precision": "fp32", "lr": 3e-3},
        "sampling": {"max_new_tokens": 8},
    }
    for section, values in sections.items():
        raw[section].update(values)
    return config_from_dict(raw)


def train_losses(config, run_dir: Path, **kwargs) -> list[float]:
    """Train `config` into `run_dir` and return the training loss of every step."""
    from decoder.train import train

    losses: list[float] = []
    train(config, run_dir, quiet=True, on_step=lambda step, m: losses.append(m["train_loss"]) and False, **kwargs)
    return losses


def shipped_experiments() -> list[Path]:
    """experiments/*.yaml except the searches (those: tests/integration/test_sweep.py), by name."""
    from decoder.sweep.search import is_search_file

    return sorted(p for p in (ROOT / "experiments").glob("*.yaml") if not is_search_file(p))
