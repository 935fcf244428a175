"""Fixtures of every test: token caches kept in a temp folder, and ~40 KB of the book checked in
(tests/assets/excerpt.txt) so that unit tests have real English without DECODER_DATA_DIR.
Fixtures that need the whole book or a trained model live in tests/integration/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
EXCERPT = TESTS / "assets" / "excerpt.txt"
"""Characters 20,000-60,000 of decoder.data.load_corpus("mysterious-island") (Gutenberg header
and footer stripped), byte for byte: the text of the golden losses and of the ONNX test run."""

if str(TESTS) not in sys.path:  # tinyconf.py, imported by tests in tests/unit and tests/integration
    sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches go to a per-session temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("DECODER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decoder-cache"))


@pytest.fixture(scope="session")
def excerpt_text() -> str:
    """About 40 KB of the public-domain book: real English, quick to tokenize and train on."""
    return EXCERPT.read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path, excerpt_text) -> Path:
    """The excerpt in a text file of the test's own: a corpus for data.corpus."""
    path = tmp_path / "small.txt"
    path.write_text(excerpt_text, encoding="utf-8")
    return path
