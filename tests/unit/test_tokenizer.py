import numpy as np
import pytest
import tiktoken

from decoder import tokenizer as tok
from decoder.tokenizer import StreamDecoder, Tokenizer, TokenizerError

ODD_TEXT = "Café naïve — 東京 🚀🌋 Ωμέγα, and \u00e5ngström!\n"
TRAIN_CHARS = 30_000
"""The tokenizers below learn from the excerpt's first 30,000 characters; its end stays unseen text."""


@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base"])
def test_compact_vocab_round_trips_unseen_text(encoding, excerpt_text):
    train_ids = tok.get_encoding(encoding).encode_ordinary(excerpt_text[:TRAIN_CHARS])
    t = Tokenizer.build(encoding, compact=True, training_tiktoken_ids=np.array(train_ids))
    full = tok.get_encoding(encoding)
    assert t.vocab_size < full.n_vocab // 5
    for text in (ODD_TEXT, excerpt_text[:2000], "", "<|endoftext|> is plain text here"):
        ids = t.encode(text)
        assert max(ids, default=0) < t.vocab_size
        assert t.decode(ids) == text
    # The training text itself keeps tiktoken's segmentation: no token of it falls back to bytes.
    assert len(t.encode(excerpt_text[:TRAIN_CHARS])) == len(train_ids)


def test_full_vocab_is_identity():
    t = Tokenizer.build("gpt2", compact=False)
    assert t.vocab_size == 50257
    assert t.encode("hello world") == tiktoken.get_encoding("gpt2").encode_ordinary("hello world")
    assert t.decode(t.encode(ODD_TEXT)) == ODD_TEXT


def test_save_load_and_byte_lengths(tmp_path):
    t = Tokenizer.build("gpt2", compact=True, training_tiktoken_ids=np.array(tok.get_encoding("gpt2").encode("the island")))
    t.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.to_dict() == t.to_dict()
    assert loaded.encode(ODD_TEXT) == t.encode(ODD_TEXT)
    lengths = t.byte_lengths()
    ids = t.encode(ODD_TEXT)
    assert lengths[ids].sum() == len(ODD_TEXT.encode())
    assert lengths[t.eot_id] == 0


def test_in_process_encoding_works_without_downloads():
    """A tiny tiktoken Encoding built in-process (no cache, no network) goes through the same code."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"th"] = 256
    ranks[b"the"] = 257
    enc = tiktoken.Encoding("tiny", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 258})
    t = Tokenizer.from_encoding(enc, compact=True, training_tiktoken_ids=np.array(enc.encode_ordinary("the the")))
    assert t.vocab_size == 258  # 256 bytes + 'the' + eot
    assert t.decode(t.encode("then thé")) == "then thé"


def test_missing_encoding_error_names_cache_dir(monkeypatch):
    def offline(name):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tok.tiktoken, "get_encoding", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nowhere")
    with pytest.raises(TokenizerError, match="TIKTOKEN_CACHE_DIR.*now: /nowhere"):
        tok.get_encoding("cl100k_base")


def test_unknown_encoding_lists_allowed():
    with pytest.raises(TokenizerError, match="unknown tiktoken encoding 'nope'.*gpt2"):
        tok.get_encoding("nope")


def test_compact_vocab_must_hold_bytes():
    with pytest.raises(TokenizerError, match="256 byte tokens"):
        Tokenizer(tok.get_encoding("gpt2"), [1, 2, 3])


def test_stream_decoder_holds_back_partial_utf8():
    t = Tokenizer.build("gpt2", compact=True, training_tiktoken_ids=np.array([]))
    ids = t.encode("🚀 ok")  # the rocket is four byte tokens
    stream = StreamDecoder(t)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "🚀 ok"
    assert pieces[:3] == ["", "", ""]


def test_stream_decoder_does_not_stall_after_an_invalid_byte():
    t = Tokenizer.build("gpt2", compact=True, training_tiktoken_ids=np.array([]))
    bad = int(t._byte_ids[0xFF])
    stream = StreamDecoder(t)
    pieces = [stream.push(i) for i in [bad] + t.encode(" hello world, and more")]
    assert pieces[0] == "\ufffd"
    assert "".join(pieces) + stream.flush() == "\ufffd hello world, and more"
    assert all(pieces[1:])


def test_compact_ids_out_of_range_are_a_clear_error():
    enc = tok.get_encoding("gpt2")
    ids = [enc.encode_single_token(bytes([b])) for b in range(256)] + [enc.eot_token, 10**6]
    with pytest.raises(TokenizerError, match=r"must be in \[0, 50257\)"):
        Tokenizer(enc, ids)


@pytest.mark.parametrize("min_count", [2, 4])
def test_min_count_spells_rare_training_tokens_in_bytes_and_round_trips(excerpt_text, min_count):
    enc = tok.get_encoding("gpt2")
    train_ids = np.array(enc.encode_ordinary(excerpt_text[:TRAIN_CHARS]))
    every = Tokenizer.from_encoding(enc, True, train_ids)
    rare = Tokenizer.from_encoding(enc, True, train_ids, min_count=min_count)
    ids, counts = np.unique(train_ids, return_counts=True)
    once = int(ids[(counts < min_count) & (ids > 255)][0])
    assert rare.vocab_size < every.vocab_size
    assert rare.to_model_ids(np.array([once])).size == len(enc.decode_single_token_bytes(once))  # bytes
    assert every.to_model_ids(np.array([once])).size == 1
    for text in (ODD_TEXT, excerpt_text[:3000], excerpt_text[-2000:]):
        assert rare.decode(rare.encode(text)) == text
    assert len(rare.encode(excerpt_text[:TRAIN_CHARS])) > len(train_ids)  # rare words of the training text too


def test_min_count_is_saved_and_old_files_without_it_load(tmp_path):
    enc = tok.get_encoding("gpt2")
    t = Tokenizer.from_encoding(enc, True, np.array(enc.encode_ordinary("the the island island cave")), min_count=2)
    t.save(tmp_path / "tok.json")
    assert Tokenizer.load(tmp_path / "tok.json").min_count == 2
    old = t.to_dict()
    del old["min_count"]  # a tokenizer.json written before the field existed
    loaded = Tokenizer.from_dict(old)
    assert loaded.min_count == 1 and loaded.encode("the cave") == t.encode("the cave")


def test_min_count_below_one_is_refused():
    enc = tok.get_encoding("gpt2")
    with pytest.raises(TokenizerError, match="min_count=0"):
        Tokenizer.from_encoding(enc, True, np.array([1, 2]), min_count=0)


@pytest.mark.parametrize("min_count", [2, 4])
def test_pieces_fallback_spells_dropped_tokens_in_the_fewest_vocabulary_tokens(excerpt_text, min_count):
    enc = tok.get_encoding("cl100k_base")
    train_ids = np.array(enc.encode_ordinary(excerpt_text[:TRAIN_CHARS]))
    by_bytes = Tokenizer.from_encoding(enc, True, train_ids, min_count=min_count)
    pieces = Tokenizer.from_encoding(enc, True, train_ids, min_count=min_count, fallback="pieces")
    assert pieces.vocab_size == by_bytes.vocab_size  # the same vocabulary, spelled differently
    kept = {pieces.token_bytes(m) for m in range(pieces.vocab_size)}
    for text in (ODD_TEXT, excerpt_text[:3000], excerpt_text[-2000:], ""):
        ids = pieces.encode(text)
        assert pieces.decode(ids) == text
        assert len(ids) <= len(by_bytes.encode(text))
    # A dropped token is spelled in fewer pieces than bytes where longer pieces exist, and no
    # spelling with fewer pieces exists (checked by brute force over every split into kept tokens).
    ids, counts = np.unique(train_ids, return_counts=True)
    dropped = [int(t) for t in ids[(counts < min_count) & (ids > 255)]]
    shorter = 0
    for t in dropped[:40]:
        raw = enc.decode_single_token_bytes(t)
        spelled = pieces.to_model_ids(np.array([t]))
        assert b"".join(pieces.token_bytes(int(m)) for m in spelled) == raw
        assert len(spelled) == _fewest_splits(raw, kept)
        shorter += len(spelled) < len(raw)
    assert shorter > 0


def _fewest_splits(raw: bytes, kept: set[bytes]) -> int:
    """Brute force: the fewest kept tokens that join to `raw` (recursion over the first piece)."""
    if not raw:
        return 0
    return min(1 + _fewest_splits(raw[i:], kept) for i in range(1, len(raw) + 1) if raw[:i] in kept)


def test_fallback_is_saved_old_files_mean_bytes_and_unknown_values_are_refused(tmp_path):
    enc = tok.get_encoding("gpt2")
    train = np.array(enc.encode_ordinary("the island the island the cave cave volcano"))
    t = Tokenizer.from_encoding(enc, True, train, min_count=2, fallback="pieces")
    t.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.fallback == "pieces" and loaded.encode("the volcano") == t.encode("the volcano")
    old = t.to_dict()
    del old["fallback"]  # a tokenizer.json written before the field existed
    assert Tokenizer.from_dict(old).fallback == "bytes"
    with pytest.raises(TokenizerError, match="fallback='words'.*'bytes', 'pieces'"):
        Tokenizer.from_encoding(enc, True, train, fallback="words")
