"""Compressor baselines: the bytes they score are the model's, the figures are sane, zpaq runs where
installed (and is skipped with a note where not), results are cached, the report lists them."""

import dataclasses
import hashlib
import json
import math
import shutil
from types import SimpleNamespace

import pytest

from decoder import compressors
from decoder.baseline import _cache_path
from decoder.compressors import COMPRESSORS, Compressor, cached_cost, compressor_baselines, scored_bytes
from decoder.config import DataConfig
from decoder.data import cache_dir, load_corpus, prepare
from decoder.metrics import LN2

BY_KEY = {c.key: c for c in COMPRESSORS}


@pytest.fixture
def data(small_corpus) -> DataConfig:
    return DataConfig(corpus=str(small_corpus), tokenizer="gpt2")


def test_scored_bytes_are_the_bytes_the_model_is_scored_on(data, small_corpus):
    dataset = prepare(data)
    context, scored = scored_bytes(dataset.tokenizer, dataset.train, dataset.val)
    # The model's bits per byte divide by the bytes of the predicted tokens, val[1:] ...
    assert len(scored) == dataset.val_bytes == int(dataset.tokenizer.byte_lengths()[dataset.val[1:]].sum())
    assert scored == b"".join(dataset.tokenizer.token_bytes(int(t)) for t in dataset.val[1:])
    # ... and the context is everything before them: together they are the document, byte for byte.
    text = load_corpus(str(small_corpus)).encode("utf-8")
    assert context + scored == text and text.endswith(scored)
    assert len(context) - len(dataset.tokenizer.decode_bytes(dataset.train)) == len(
        dataset.tokenizer.token_bytes(int(dataset.val[0])))


def test_two_documents_score_the_bytes_of_both_tails(tmp_path, excerpt_text):
    paths = []
    for i, part in enumerate((excerpt_text[:20000], excerpt_text[20000:])):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(part, encoding="utf-8")
    dataset = prepare(DataConfig(corpus=[str(p) for p in paths], tokenizer="gpt2"))
    _, scored = scored_bytes(dataset.tokenizer, dataset.train, dataset.val)
    assert len(scored) == dataset.val_bytes  # <|endoftext|> between the documents counts no bytes


@pytest.mark.parametrize("key", ["xz", "bzip2"])
def test_xz_and_bzip2_are_finite_and_positive_on_the_excerpt(data, key):
    (row,) = compressor_baselines(data, (key,))
    assert math.isfinite(row["val_bpb"]) and 0 < row["val_bpb"] < 8
    assert row["size_context_and_scored"] > row["size_context"]
    assert row["tool"].startswith("liblzma" if key == "xz" else "libbz2")
    assert row["val_loss"] * row["val_tokens"] == pytest.approx(row["val_bpb"] * row["scored_bytes"] * LN2)
    assert row["val_tokens"] == len(prepare(data).val) - 1


@pytest.mark.skipif(shutil.which("zpaq") is None, reason="zpaq is not installed (apt-get install zpaq)")
def test_zpaq_runs_where_installed_and_uses_the_training_text(data):
    (row,) = compressor_baselines(data, ("zpaq",))
    assert row["tool"].startswith("zpaq v") and 0 < row["val_bpb"] < 8
    dataset = prepare(data)
    _, scored = scored_bytes(dataset.tokenizer, dataset.train, dataset.val)
    alone = 8 * compressors._zpaq_size(scored) / len(scored)
    assert row["val_bpb"] < alone  # the training text helps: it is a conditional cost


def test_a_missing_zpaq_is_a_note_not_a_failure(data, monkeypatch):
    monkeypatch.setattr(compressors.shutil, "which", lambda name: None)
    rows = compressor_baselines(data)
    assert [r["name"] for r in rows] == ["xz -9e", "bzip2 -9", "zpaq -m5"]
    assert rows[2] == {"name": "zpaq -m5", "error": "zpaq is not installed (Debian/Ubuntu: apt-get install zpaq)"}
    assert all(math.isfinite(r["val_bpb"]) for r in rows[:2])


def test_results_are_cached_by_tool_and_bytes():
    calls = []

    def size(data: bytes) -> int:
        calls.append(len(data))
        return len(data) // 2

    fake = Compressor("half", "half", size, lambda: "half 1.0")
    first = cached_cost(fake, b"a" * 100, b"b" * 50)
    assert first["val_bpb"] == 8 * (75 - 50) / 50 and calls == [100, 150]
    assert cached_cost(fake, b"a" * 100, b"b" * 50) == first and len(calls) == 2  # read back
    cached_cost(dataclasses.replace(fake, version=lambda: "half 2.0"), b"a" * 100, b"b" * 50)
    assert len(calls) == 4  # another tool version compresses again


def test_kn_cache_key_is_unchanged(data, small_corpus):
    """Caches written before the cache-file helper are still found."""
    key = json.dumps({"data": dataclasses.asdict(data), "order": 3, "version": 1,
                      "corpus_sha256": hashlib.sha256(small_corpus.read_bytes()).hexdigest()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    assert _cache_path(data, 3) == cache_dir() / "baselines" / f"kn3-{digest}.json"


def test_report_baselines_list_compressors_once_per_text(data, monkeypatch):
    from decoder.report.table import baselines

    monkeypatch.setattr(compressors.shutil, "which", lambda name: None)  # keep it quick
    records = [SimpleNamespace(config=SimpleNamespace(data=dataclasses.replace(data, min_count=m))) for m in (1, 2)]
    rows = baselines(records)
    assert [(r["kind"], r["name"]) for r in rows] == [("n-gram", "KN bigram"), ("n-gram", "KN trigram")] * 2 + [
        ("compressor", "xz -9e"), ("compressor", "bzip2 -9"), ("compressor", "zpaq -m5")]
    assert "error" in rows[-1] and all(r["val_bpb"] > 0 for r in rows[:-1])
