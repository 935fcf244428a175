"""The Kneser-Ney baseline: a proper distribution, hand-computed values, scored like evaluate()."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoder.baseline import KneserNey, score


@pytest.mark.parametrize("order", [1, 2, 3])
def test_distribution_sums_to_one_and_is_positive(order):
    rng = np.random.default_rng(order)
    tokens = rng.integers(0, 9, size=300)  # ids 9..11 never occur: the uniform floor must cover them
    model = KneserNey(tokens, vocab_size=12, order=order)
    for history in ([], [3], [11], [1, 2], [11, 11], [4, 4], tokens[:2].tolist()):
        p = model.distribution(history)
        assert p.shape == (12,)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert (p > 0).all()


def test_known_values_of_a_small_bigram_model():
    # Bigram counts: (0,1) x3, (1,0) x2, (0,2) x1, (2,0) x1 -> n1=2, n2=1 -> D2 = 2 / (2 + 2) = 0.5.
    # Continuation counts: 0 follows {1, 2} -> 2; 1 follows {0} -> 1; 2 follows {0} -> 1
    # -> n1=2, n2=1 -> D1 = 0.5; total 4, 3 types; uniform 1/4 over the vocabulary of 4.
    model = KneserNey(np.array([0, 1, 0, 1, 0, 2, 0, 1]), vocab_size=4, order=2)
    unigram = model.distribution([])
    expected = [(1.5 + 0.375) / 4, (0.5 + 0.375) / 4, (0.5 + 0.375) / 4, 0.375 / 4]
    np.testing.assert_allclose(unigram, expected, rtol=1e-12)
    after_0 = model.distribution([0])  # history 0: (0,1) x3, (0,2) x1 -> total 4, 2 types
    assert after_0[1] == pytest.approx((2.5 + 0.5 * 2 * expected[1]) / 4, rel=1e-12)
    assert after_0[3] == pytest.approx(0.5 * 2 * expected[3] / 4, rel=1e-12)
    np.testing.assert_allclose(model.distribution([3]), unigram, rtol=1e-12)  # unseen history backs off


def test_trigram_known_value_interpolates_through_all_orders():
    tokens = np.array([0, 1, 2, 0, 1, 2, 0, 1, 1])
    model = KneserNey(tokens, vocab_size=3, order=3)
    # Trigrams: (0,1,2) x2, (1,2,0) x2, (2,0,1) x2, (0,1,1) x1 -> n1=1, n2=3 -> D3 = 1/7.
    # History (0,1): (0,1,2) x2, (0,1,1) x1 -> total 3, 2 types.
    d3 = 1 / 7
    # The trigram model's lower orders use continuation counts, so its bigram level differs from
    # the bigram model's; rebuild it by hand: (a,b) continuation = distinct tokens before (a,b).
    # Trigram types (0,1,2), (1,2,0), (2,0,1), (0,1,1): continuation bigrams (1,2), (2,0), (0,1), (1,1)
    # each once -> n1=4, n2=0 -> D2 = 1; history 1: (1,2), (1,1) -> total 2, 2 types.
    # Unigram continuation over bigram types (0,1), (1,2), (2,0), (1,1): 1 <- {0, 1}, 2 <- {1}, 0 <- {2}
    # -> counts 0:1, 1:2, 2:1 -> n1=2, n2=1 -> D1=0.5; total 4, 3 types, uniform 1/3.
    p1 = {0: (0.5 + 0.5 * 3 / 3) / 4, 1: (1.5 + 0.5 * 3 / 3) / 4, 2: (0.5 + 0.5 * 3 / 3) / 4}
    p2_given_1 = {w: (max((w in (1, 2)) - 1.0, 0.0) + 1.0 * 2 * p1[w]) / 2 for w in range(3)}
    p3 = (2 - d3 + d3 * 2 * p2_given_1[2]) / 3
    assert model.distribution([0, 1])[2] == pytest.approx(p3, rel=1e-12)


def naive_kneser_ney(tokens: list[int], vocab_size: int, order: int):
    """The textbook recursion with Python dicts, as an independent check of the vectorised model."""
    from collections import Counter

    grams = {k: Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, order + 1)}
    counts = {order: grams[order]}
    for k in range(1, order):  # continuation counts: distinct left neighbours
        counts[k] = Counter(g[1:] for g in grams[k + 1])
    discount = {}
    for k, c in counts.items():
        n1, n2 = sum(v == 1 for v in c.values()), sum(v == 2 for v in c.values())
        discount[k] = n1 / (n1 + 2 * n2)

    def prob(history: tuple, w: int) -> float:
        k = len(history) + 1
        lower = 1 / vocab_size if k == 1 else prob(history[1:], w)
        following = {g[-1]: v for g, v in counts[k].items() if g[:-1] == history}
        total = sum(following.values())
        if total == 0:
            return lower
        d = discount[k]
        return (max(following.get(w, 0) - d, 0) + d * len(following) * lower) / total

    return prob


def test_matches_a_naive_implementation_on_random_text():
    rng = np.random.default_rng(3)
    tokens = np.minimum(rng.zipf(1.5, size=300), 30).tolist()  # skewed, as text is; ids 0 and 31..33 unseen
    model = KneserNey(np.array(tokens), vocab_size=34, order=3)
    naive = naive_kneser_ney(tokens, 34, 3)
    for history in (tokens[10:12], tokens[50:52], [1, 1], [2, 1], [33, 1], [1], [30], []):
        expected = [naive(tuple(history), w) for w in range(34)]
        np.testing.assert_allclose(model.distribution(history), expected, rtol=1e-12)


def test_split_nats_agree_with_the_distribution_and_use_only_the_split():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 20, size=500)
    val = rng.integers(0, 20, size=40)
    model = KneserNey(train, vocab_size=20, order=3)
    nats = model.split_nats(val)
    assert len(nats) == len(val) - 1
    # Token 1 is predicted from token 0 only (evaluate's first window starts at the split).
    assert nats[0] == pytest.approx(-math.log(model.distribution([val[0]])[val[1]]), rel=1e-12)
    for i in (2, 7, 39):
        expected = -math.log(model.distribution(val[i - 2 : i].tolist())[val[i]])
        assert nats[i - 1] == pytest.approx(expected, rel=1e-12)


def test_score_reports_bits_per_byte_over_predicted_tokens():
    rng = np.random.default_rng(1)
    train, val = rng.integers(0, 6, size=200), rng.integers(0, 6, size=30)
    byte_lengths = np.array([1, 2, 3, 4, 0, 5])
    model = KneserNey(train, vocab_size=6, order=2)
    result = score(model, val, byte_lengths)
    total = model.split_nats(val).sum()
    assert result["val_tokens"] == 29
    assert result["val_loss"] == pytest.approx(total / 29)
    assert result["val_bpb"] == pytest.approx(total / math.log(2) / byte_lengths[val[1:]].sum())
    assert result["val_ppl"] == pytest.approx(math.exp(total / 29))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="order=4"):
        KneserNey(np.arange(10), vocab_size=10, order=4)
    with pytest.raises(ValueError, match="0..4"):
        KneserNey(np.array([0, 1, 5]), vocab_size=5, order=2)
