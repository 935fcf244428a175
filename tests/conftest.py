"""Shared fixtures: the real book and a small real-English corpus; token caches kept in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from decoder.data import load_corpus


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


# --- ONNX export and runtime (tests/test_export.py, tests/test_runtime.py) ---------------------


@pytest.fixture(scope="session")
def onnx_run(tmp_path_factory, book_text) -> Path:
    """A tiny model trained for a few dozen steps on part of the book: a real run folder to export."""
    from tinyconf import tiny_config

    from decoder.train import train

    root = tmp_path_factory.mktemp("onnx")
    corpus = root / "small.txt"
    corpus.write_text(book_text[20_000:60_000], encoding="utf-8")
    config = tiny_config(corpus, training={"max_steps": 80, "eval_interval": 40})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECODER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decoder-cache"))
        train(config, root / "run", quiet=True)
    return root / "run"


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory, onnx_run) -> Path:
    """`onnx_run` exported with its int8 variant (read-only for tests: copy it before damaging it)."""
    from decoder.export import export_bundle

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECODER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decoder-cache"))
        return export_bundle(onnx_run, tmp_path_factory.mktemp("onnx-bundle") / "bundle", quantize="int8")
