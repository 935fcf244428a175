"""Shared fixtures: tiny configurations, a small real-English corpus, device parametrisation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from decoder.config import config_from_dict
from decoder.data import load_corpus

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")),
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches go to a per-session temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("DECODER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decoder-cache"))


@pytest.fixture(scope="session")
def book_text() -> str:
    """The real book (from DECODER_DATA_DIR in CI and on developer machines)."""
    if not os.environ.get("DECODER_DATA_DIR"):
        pytest.fail("DECODER_DATA_DIR is not set: point it at a folder with mysterious-island.txt (see README)")
    return load_corpus("mysterious-island")


@pytest.fixture
def small_corpus(tmp_path, book_text) -> Path:
    """About 40 KB of the book in a text file: real English, quick to tokenize and train on."""
    path = tmp_path / "small.txt"
    path.write_text(book_text[20_000:60_000], encoding="utf-8")
    return path


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
