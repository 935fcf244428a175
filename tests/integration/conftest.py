"""Fixtures of the integration tests: the whole book (DECODER_DATA_DIR must be set) and a tiny
trained run with its ONNX bundle, shared by the export, runtime and server tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from decoder.data import load_corpus


@pytest.fixture(scope="session")
def book_text() -> str:
    """The real book (from DECODER_DATA_DIR in CI and on developer machines)."""
    if not os.environ.get("DECODER_DATA_DIR"):
        pytest.fail("DECODER_DATA_DIR is not set: point it at a folder with mysterious-island.txt (see README)")
    return load_corpus("mysterious-island")


# --- ONNX export and runtime (test_export.py, test_runtime.py, test_serve_*.py) -------------------


@pytest.fixture(scope="session")
def onnx_run(tmp_path_factory, excerpt_text) -> Path:
    """A tiny model trained for a few dozen steps on the excerpt: a real run folder to export."""
    from tinyconf import tiny_config

    from decoder.train import train

    root = tmp_path_factory.mktemp("onnx")
    corpus = root / "small.txt"
    corpus.write_text(excerpt_text, encoding="utf-8")
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
