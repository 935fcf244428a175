"""The n-gram baseline every results table carries: interpolated Kneser-Ney, orders 1-3.

Counts come from the training split's model ids; the score is over the validation split's model
ids, exactly like `decoder.step.evaluate`: tokens 1..N-1 of the split are predicted (token i from
at most the n-1 tokens before it, all inside the split), and bits per byte divide the total nats
by ln 2 and by the UTF-8 bytes of those tokens. So the row "KN trigram" and a transformer's row
measure the same thing on the same text.

The model (Chen & Goodman's interpolated Kneser-Ney with one absolute discount per order):

    P_k(w | h) = (max(c_k(h w) - D_k, 0) + D_k * N_k(h) * P_{k-1}(w | h')) / c_k(h)

where h' drops the oldest token of h, c_k(h) = sum_w c_k(h w), N_k(h) counts the distinct w with
c_k(h w) > 0, and D_k = n1 / (n1 + 2 n2) from the counts-of-counts. The highest order uses raw
counts, the lower orders continuation counts (how many distinct tokens precede the n-gram). A
history never seen falls through to the next lower order; below the unigram is the uniform
distribution over the model vocabulary, so every token has a non-zero probability.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from decoder.config import DataConfig
from decoder.io import FileFormatError, read_json, write_json
from decoder.metrics import quality

MAX_ORDER = 3


def _keys(tokens: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """One int64 per k-gram of `tokens` (base-`vocab_size` digits, oldest first)."""
    n = len(tokens) - k + 1
    keys = np.zeros(max(n, 0), dtype=np.int64)
    for j in range(k):
        keys = keys * vocab_size + tokens[j : j + n]
    return keys


@dataclass
class _Level:
    """Counts of one order: sorted n-gram keys with their counts, sorted history keys with totals."""

    keys: np.ndarray
    counts: np.ndarray
    hist_keys: np.ndarray
    hist_totals: np.ndarray
    hist_types: np.ndarray
    discount: float


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=values.dtype)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == queries, values[pos], 0)


def training_ids(tokens: np.ndarray, vocab_size: int, order: int, max_order: int = MAX_ORDER) -> np.ndarray:
    """`tokens` as int64, checked to train an n-gram model of `order` over ids 0..vocab_size-1."""
    if not 1 <= order <= max_order:
        raise ValueError(f"order={order}: allowed 1..{max_order}")
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < order:
        raise ValueError(f"{len(tokens)} training tokens are too few for an order-{order} model")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"token ids must lie in 0..{vocab_size - 1}")
    return tokens


class KneserNey:
    """Interpolated Kneser-Ney language model over model ids 0..vocab_size-1."""

    def __init__(self, tokens: np.ndarray, vocab_size: int, order: int = 3) -> None:
        tokens = training_ids(tokens, vocab_size, order)
        self.order, self.vocab_size = order, vocab_size
        self.levels = [self._level(tokens, k) for k in range(1, order + 1)]

    def _level(self, tokens: np.ndarray, k: int) -> _Level:
        if k == self.order:
            keys, counts = np.unique(_keys(tokens, k, self.vocab_size), return_counts=True)
        else:  # continuation count: distinct tokens seen before the k-gram
            longer = np.unique(_keys(tokens, k + 1, self.vocab_size))
            keys, counts = np.unique(longer % self.vocab_size**k, return_counts=True)
        hist_keys, first, hist_types = np.unique(keys // self.vocab_size, return_index=True, return_counts=True)
        hist_totals = np.add.reduceat(counts, first) if len(first) else counts
        n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
        discount = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
        return _Level(keys, counts, hist_keys, hist_totals, hist_types, discount)

    def probabilities(self, histories: np.ndarray, targets: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """P(target | history) for rows of `histories` (N, order-1), oldest token first.

        `known` (N,) says how many of the most recent history tokens exist (the rest are ignored);
        by default all of them."""
        histories = np.asarray(histories, dtype=np.int64).reshape(len(targets), self.order - 1)
        targets = np.asarray(targets, dtype=np.int64)
        known = np.full(len(targets), self.order - 1) if known is None else np.asarray(known)
        p = np.full(len(targets), 1.0 / self.vocab_size)
        hist = np.zeros(len(targets), dtype=np.int64)
        for k, level in enumerate(self.levels, start=1):
            if k > 1:  # extend the history by one older token
                hist = histories[:, self.order - k] * self.vocab_size ** (k - 2) + hist
            total = _lookup(level.hist_keys, level.hist_totals, hist).astype(np.float64)
            types = _lookup(level.hist_keys, level.hist_types, hist)
            count = _lookup(level.keys, level.counts, hist * self.vocab_size + targets)
            D = level.discount
            with np.errstate(invalid="ignore", divide="ignore"):
                mixed = (np.maximum(count - D, 0.0) + D * types * p) / total
            p = np.where((total > 0) & (known >= k - 1), mixed, p)
        return p

    def distribution(self, history: list[int] | np.ndarray) -> np.ndarray:
        """P(w | history) for every w in the vocabulary; `history` has up to order-1 tokens."""
        history = list(history)[-(self.order - 1):] if self.order > 1 else []
        padded = [0] * (self.order - 1 - len(history)) + history
        targets = np.arange(self.vocab_size)
        return self.probabilities(np.tile(padded, (self.vocab_size, 1)), targets,
                                  np.full(self.vocab_size, len(history)))

    def split_nats(self, tokens: np.ndarray) -> np.ndarray:
        """-ln P of tokens 1..N-1 of a split, each from at most order-1 preceding tokens of the split."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n_ctx = self.order - 1
        padded = np.concatenate([np.zeros(n_ctx, dtype=np.int64), tokens])
        positions = np.arange(1, len(tokens))
        histories = np.stack([padded[positions + j] for j in range(n_ctx)], axis=1) if n_ctx else \
            np.zeros((len(positions), 0), dtype=np.int64)
        known = np.minimum(positions, n_ctx)
        return -np.log(self.probabilities(histories, tokens[1:], known))


def score(model: KneserNey, tokens: np.ndarray, byte_lengths: np.ndarray) -> dict:
    """val_loss (nats/token), val_ppl, val_bpb, val_tokens, as decoder.step.evaluate reports them."""
    nats = model.split_nats(tokens)
    n_bytes = int(byte_lengths[np.asarray(tokens)[1:]].sum())
    return {**quality(float(nats.sum()), len(nats), n_bytes), "val_tokens": len(nats)}


def cache_file(kind: str, key: dict) -> Path:
    """The cache file of one baseline result: baselines/<kind>-<hash of key>.json under the cache
    folder (`decoder.data.cache_dir`); `key` holds everything the result depends on."""
    from decoder.data import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "baselines" / f"{kind}-{digest}.json"


def _cache_path(data: DataConfig, order: int) -> Path:
    from decoder.data import corpus_path

    corpus = [hashlib.sha256(corpus_path(name).read_bytes()).hexdigest() for name in data.corpora]
    if len(corpus) == 1:
        corpus = corpus[0]  # the key of single-document caches written before lists existed
    return cache_file(f"kn{order}", {"data": asdict(data), "order": order, "corpus_sha256": corpus, "version": 1})


def kn_baseline(data: DataConfig, order: int = 3) -> dict:
    """Kneser-Ney of `order` fitted on the training split of `data`, scored on its validation split.

    Cached on disk per (data config, corpus content, order), so reports do not refit it."""
    from decoder.data import prepare

    path = _cache_path(data, order)
    if path.is_file():
        try:
            return read_json(path)
        except FileFormatError:
            pass  # a damaged cache file is recomputed
    dataset = prepare(data)
    model = KneserNey(dataset.train, dataset.tokenizer.vocab_size, order)
    result = {"order": order, **score(model, dataset.val, dataset.tokenizer.byte_lengths())}
    write_json(path, result, indent=None)
    return result
