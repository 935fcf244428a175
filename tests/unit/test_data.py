import numpy as np
import pytest

from decoder import data
from decoder.config import DataConfig
from decoder.data import BatchSampler, DataError, corpus_path, prepare, read_text_file, strip_gutenberg

GUTENBERG = """\ufeffThe Project Gutenberg eBook of Something
License blah
*** START OF THE PROJECT GUTENBERG EBOOK SOMETHING ***

Chapter 1. The real text.

        *** END OF THE PROJECT GUTENBERG EBOOK SOMETHING ***
More license.
"""


def test_strip_gutenberg_header_footer_and_bom():
    assert strip_gutenberg(GUTENBERG) == "Chapter 1. The real text.\n"
    assert strip_gutenberg("\ufeffplain text") == "plain text\n"


def test_non_utf8_file_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_text_file(path)


def test_missing_corpus_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DECODER_DATA_DIR", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=f"put the file at {tmp_path}/mysterious-island.txt"):
        corpus_path("mysterious-island")
    with pytest.raises(DataError, match="not a registered name"):
        corpus_path(str(tmp_path / "missing.txt"))


def test_split_is_contiguous_without_overlap_and_vocab_from_train(small_corpus):
    ds = prepare(DataConfig(corpus=str(small_corpus), tokenizer="gpt2", val_fraction=0.2))
    text = small_corpus.read_text()
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val])) == data.strip_gutenberg(text)
    train_text, val_text = ds.tokenizer.decode(ds.train), ds.tokenizer.decode(ds.val)
    assert data.strip_gutenberg(text) == train_text + val_text
    assert 0.15 < len(val_text) / len(text) < 0.25
    raw_train = set(ds.tokenizer.encoding.encode_ordinary(train_text))
    assert ds.tokenizer.vocab_size <= 256 + len(raw_train) + 1


def test_token_cache_hit(small_corpus, monkeypatch):
    config = DataConfig(corpus=str(small_corpus), tokenizer="gpt2")
    first = prepare(config)
    calls = []
    real = data.get_encoding

    def spy(name):
        enc = real(name)
        monkeypatch.setattr(enc, "encode_ordinary", lambda text: calls.append(1) or [])
        return enc

    monkeypatch.setattr(data, "get_encoding", spy)
    second = prepare(config)
    assert calls == []
    assert (second.train == first.train).all()


@pytest.mark.parametrize("mode", ["random", "sliding"])
def test_sampler_windows_and_resumable_state(mode):
    tokens = np.arange(100)
    a = BatchSampler(tokens, context_length=8, batch_size=4, mode=mode, seed=1)
    x, y = a.next_batch()
    assert x.shape == (4, 8) and (y == x + 1).all()
    for _ in range(30):
        a.next_batch()
    b = BatchSampler(tokens, context_length=8, batch_size=4, mode=mode, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        xa, _ = a.next_batch()
        xb, _ = b.next_batch()
        assert (xa == xb).all()


def test_input_noise_replaces_inputs_only_at_its_rate_by_unigram_draws_and_resumes():
    clean = BatchSampler(np.arange(100), context_length=8, batch_size=64, mode="random", seed=3)
    noisy = BatchSampler(np.arange(100), context_length=8, batch_size=64, mode="random", seed=3, input_noise=0.25)
    x0, y0 = clean.next_batch()
    x1, y1 = noisy.next_batch()
    assert (y1 == y0).all()  # the same windows (drawn first), targets never noised
    changed = (x1 != x0).float().mean().item()
    assert 0.18 < changed < 0.32  # 0.25, less the draws that hit the token already there (1%)

    split = np.concatenate([np.zeros(100, dtype=np.int64), np.arange(1, 101)])  # token 0 is half the split
    plain = BatchSampler(split, context_length=8, batch_size=256, mode="random", seed=0)
    noised = BatchSampler(split, context_length=8, batch_size=256, mode="random", seed=0, input_noise=0.5)
    xp, _ = plain.next_batch()
    xn, _ = noised.next_batch()
    replaced = xn[(xn != xp) & (xp != 0)]  # a replaced nonzero token: 0 with probability ~100/199
    assert len(replaced) > 200 and 0.4 < (replaced == 0).float().mean().item() < 0.6

    for _ in range(5):
        noisy.next_batch()
    resumed = BatchSampler(np.arange(100), context_length=8, batch_size=64, mode="random", seed=99, input_noise=0.25)
    resumed.load_state_dict(noisy.state_dict())
    for _ in range(3):
        assert all((a == b).all() for a, b in zip(noisy.next_batch(), resumed.next_batch()))


def test_input_noise_is_a_checked_training_key():
    from decoder.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="input_noise"):
        config_from_dict({"training": {"max_steps": 1, "input_noise": 1.0}})


def test_sliding_mode_visits_every_window_once_per_epoch():
    tokens = np.arange(20)
    s = BatchSampler(tokens, context_length=4, batch_size=4, mode="sliding", seed=0)
    starts = [int(x[0]) for _ in range(4) for x in s.next_batch()[0]]
    assert sorted(starts) == list(range(16))


def test_too_short_corpus(tmp_path):
    with pytest.raises(DataError, match="fewer than context_length"):
        BatchSampler(np.arange(5), context_length=8, batch_size=2, mode="random", seed=0)
    path = tmp_path / "short.txt"
    path.write_text("hi")
    with pytest.raises(DataError, match="too few"):
        prepare(DataConfig(corpus=str(path), tokenizer="gpt2"))


def test_several_documents_split_each_tail_and_join_with_endoftext(tmp_path, excerpt_text):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(excerpt_text[:20_000], encoding="utf-8")
    second.write_text(excerpt_text[20_000:], encoding="utf-8")
    ds = prepare(DataConfig(corpus=[str(first), str(second)], tokenizer="gpt2", val_fraction=0.2))
    eot = ds.tokenizer.eot_id
    for split in (ds.train, ds.val):
        assert (split == eot).sum() == 1  # one boundary: where the two documents meet
    a, b = (ds.tokenizer.decode(part) for part in np.split(ds.train, np.flatnonzero(ds.train == eot)))
    va, vb = (ds.tokenizer.decode(part) for part in np.split(ds.val, np.flatnonzero(ds.val == eot)))
    assert a + va == data.strip_gutenberg(first.read_text())  # each document's tail is its validation
    assert b + vb == data.strip_gutenberg(second.read_text())
    # No training window can hold validation text: the two splits share no 20-byte span.
    train_text = ds.tokenizer.decode(ds.train)
    assert va[5:25] not in train_text and vb[5:25] not in train_text


def test_a_single_document_has_no_endoftext(small_corpus):
    ds = prepare(DataConfig(corpus=[str(small_corpus)], tokenizer="gpt2"))
    assert not (ds.train == ds.tokenizer.eot_id).any() and not (ds.val == ds.tokenizer.eot_id).any()
    assert (ds.train == prepare(DataConfig(corpus=str(small_corpus), tokenizer="gpt2")).train).all()


def test_corpus_list_must_not_be_empty():
    assert any("data.corpus" in p for p in DataConfig(corpus=[]).problems())
