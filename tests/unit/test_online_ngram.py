"""The mix protocol's online n-gram and mixture (`decoder.online_ngram`, `decoder.evaluate.mix_nats_of`):
proper distributions at every step, causality, the counts it keeps, the mixture weight's regret
bound, and on a tiny model: a repeat is learnt, a weight fixed at 1 is the model alone."""

from collections import Counter

import numpy as np
import pytest
import torch
from tinyconf import tiny_config

from decoder.baseline import KneserNey
from decoder.config import DataConfig
from decoder.data import prepare
from decoder.evaluate import dynamic_nats, gradient_rms, mix_nats_of, score, sliding_nats
from decoder.model import GPT
from decoder.online_ngram import WEIGHT_GRID, OnlineKneserNey, mix_nats
from decoder.protocols import EvalError, protocol_settings

CPU = torch.device("cpu")
T = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, excerpt_text):
    """(tiny GPT with random fixed weights, its tokenizer, the excerpt's training and validation ids)."""
    corpus = tmp_path_factory.mktemp("mix") / "small.txt"
    corpus.write_text(excerpt_text, encoding="utf-8")
    dataset = prepare(DataConfig(corpus=str(corpus), tokenizer="gpt2"))
    torch.manual_seed(0)
    model = GPT(tiny_config(corpus).model, dataset.tokenizer.vocab_size).eval()
    return model, dataset.tokenizer, dataset.train, dataset.val


def _consistent(ngram: OnlineKneserNey) -> None:
    """Every history's total and counts-of-counts are those of its successors' counts."""
    for level in ngram.levels:
        for total, n1, n2, n3, words in level.values():
            counts = list(words.values())
            assert total == sum(counts) and min(counts) >= 1
            assert (n1, n2, n3) == (counts.count(1), counts.count(2), sum(c >= 3 for c in counts))


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_the_ngram_is_a_distribution_over_the_vocabulary_at_every_step(setup, order):
    _, tokenizer, train, val = setup
    ngram = OnlineKneserNey(train, tokenizer.vocab_size, order)
    text = val[:300]
    seen = []

    def check(t, history):
        p = ngram.distribution(history)
        assert p.min() > 0 and p.sum() == pytest.approx(1.0, abs=1e-12)
        assert p[text[t]] == pytest.approx(ngram.probability(history, int(text[t]))[0], rel=1e-12)
        seen.append(t)

    nats, matched = ngram.score(text, check)
    assert seen == list(range(1, len(text))) and np.isfinite(nats).all()
    assert matched.min() >= 1 and matched.max() <= order
    _consistent(ngram)


def test_the_ngram_never_sees_the_token_it_scores_nor_later_ones(setup):
    _, tokenizer, train, val = setup
    text = val[:400].copy()
    base, _ = OnlineKneserNey(train, tokenizer.vocab_size, 4).score(text)
    for t in (1, 57, 200, 399):
        changed = text.copy()
        changed[t:] = (changed[t:] + 1 + np.arange(len(text) - t)) % tokenizer.vocab_size
        nats, _ = OnlineKneserNey(train, tokenizer.vocab_size, 4).score(changed)
        np.testing.assert_array_equal(nats[: t - 1], base[: t - 1])  # predictions of tokens 1..t-1
        assert nats[t - 1] != base[t - 1]


def test_it_counts_each_scored_ngram_and_without_updates_is_modified_kneser_ney(setup):
    _, tokenizer, train, val = setup
    ngram = OnlineKneserNey(train, tokenizer.vocab_size, 3)
    ids = val[:500].tolist()
    baseline = KneserNey(train, tokenizer.vocab_size, 3)
    discounts = ngram.discounts
    ngram.discounts = [(0.0, level.discount, level.discount, level.discount) for level in baseline.levels]
    offline = [ngram.probability(tuple(ids[max(t - 2, 0) : t]), ids[t])[0] for t in range(1, len(ids))]
    # with the baseline's one discount per order, the same counts give the baseline's probabilities
    np.testing.assert_allclose(-np.log(offline), baseline.split_nats(np.asarray(ids)), rtol=1e-10)
    ngram.discounts = discounts
    ngram.score(val[:500])
    top = Counter(zip(train.tolist(), train[1:].tolist(), train[2:].tolist()))
    top.update(zip(ids, ids[1:], ids[2:]))
    assert {(*h, w): c for h, e in ngram.levels[2].items() for w, c in e[4].items()} == top
    _consistent(ngram)


def test_the_ngram_learns_a_repeat_online(setup):
    _, tokenizer, train, val = setup
    text = np.concatenate([val[:150], val[:150]])
    nats, _ = OnlineKneserNey(train, tokenizer.vocab_size, 4).score(text)
    assert nats[150:].mean() < 0.5 * nats[:149].mean()


def test_the_mixture_weight_is_causal_and_within_log_grid_of_the_best_fixed_weight():
    rng = np.random.default_rng(0)
    model, ngram = rng.exponential(3.0, 2000), rng.exponential(2.0, 2000)
    buckets = rng.integers(0, 3, 2000)
    mixed, lam = mix_nats(model, ngram, buckets)
    later = mix_nats(np.r_[model[:1000], model[1000:] + 5], ngram, buckets)
    np.testing.assert_array_equal(later[0][:1000], mixed[:1000])
    np.testing.assert_array_equal(later[1][:1001], lam[:1001])  # token t's weight saw tokens < t only
    assert lam[0] == pytest.approx(0.5)
    best = sum(min(-np.logaddexp(np.log(w) - model[buckets == b], np.log1p(-w) - ngram[buckets == b]).sum()
                   for w in WEIGHT_GRID) for b in range(3))
    assert best <= mixed.sum() <= best + 3 * np.log(len(WEIGHT_GRID))  # a Bayesian mixture's regret bound
    np.testing.assert_allclose(mix_nats(model, ngram, fixed_weight=1.0)[0], model)


def test_mix_settings_and_refusals():
    assert protocol_settings("mix", T) == {"protocol": "mix", "context_length": T, "segment": T // 2,
                                           "rule": "rms", "dynamic_lr": 1e-4, "order": 4}
    assert protocol_settings("mix", T, rule="sgd")["dynamic_lr"] == 0.02
    for options, message in [({"order": 0}, "--order=0: must be in [1, 8]"), ({"order": 9}, "--order=9"),
                             ({"dynamic_lr": -0.1}, "--dynamic-lr=-0.1: must be a finite number >= 0"),
                             ({"stride": 4}, "--stride applies to --protocol sliding, not mix"),
                             ({"lr": 0.1}, "--lr applies to --protocol dynamic, not mix"),
                             ({"segment": 17}, "--segment=17")]:
        with pytest.raises(EvalError, match=message.replace("[", r"\[").replace("]", r"\]")):
            protocol_settings("mix", T, **options)
    with pytest.raises(EvalError, match="--order applies to --protocol mix or knn-mix, not dynamic"):
        protocol_settings("dynamic", T, order=3)
    with pytest.raises(EvalError, match="--dynamic-lr applies to --protocol mix or knn-mix, not sliding"):
        protocol_settings("sliding", T, dynamic_lr=0.0)


@pytest.mark.parametrize(("dynamic_lr", "rule"), [(0.0, "sgd"), (0.05, "sgd"), (2e-4, "rms")])
def test_a_weight_fixed_at_one_is_the_model_alone(setup, dynamic_lr, rule):
    model, _, train, val = setup
    tokens = val[:200]
    settings = protocol_settings("mix", T, segment=8, dynamic_lr=dynamic_lr, rule=rule)
    mixed = mix_nats_of(model, tokens, train, settings, CPU, "fp32", fixed_weight=1.0)
    rms = gradient_rms(model, train, 8, CPU, "fp32") if rule == "rms" else None
    alone = dynamic_nats(model, tokens, 8, dynamic_lr, CPU, "fp32", rms=rms) if dynamic_lr else \
        sliding_nats(model, tokens, 8, CPU, "fp32")
    np.testing.assert_allclose(mixed["nats"], alone, rtol=1e-12)
    np.testing.assert_array_equal(mixed["model_nats"], alone)


def test_the_mix_is_causal(setup):
    model, _, train, val = setup
    settings = protocol_settings("mix", T, segment=8, dynamic_lr=1e-3)  # the default rule, rms
    text = val[:120].copy()
    base = mix_nats_of(model, text, train, settings, CPU, "fp32")["nats"]
    text[70:] = text[:50]
    changed = mix_nats_of(model, text, train, settings, CPU, "fp32")["nats"]
    np.testing.assert_allclose(changed[:69], base[:69], rtol=1e-6)  # predictions of tokens 1..69
    assert not np.allclose(changed[69:], base[69:])


def test_the_mix_scores_a_repeat_far_below_static(setup):
    model, tokenizer, train, val = setup
    half = val[:128]
    text = np.concatenate([half, half])
    static = sliding_nats(model, text, T, CPU, "fp32")
    mixed = mix_nats_of(model, text, train, protocol_settings("mix", T), CPU, "fp32")
    repeat = slice(len(half) - 1, None)  # predictions of the second half's tokens
    assert mixed["nats"][repeat].mean() < 0.4 * static[repeat].mean()
    assert mixed["nats"][repeat].mean() < mixed["model_nats"][repeat].mean() - 2.0
    result = score(model, tokenizer, text, protocol_settings("mix", T), CPU, "fp32", train=train)
    assert result["bits_per_byte"] < result["model_bits_per_byte"] and result["ngram_seconds"] > 0
    assert result["tokens"] == len(text) - 1
    with pytest.raises(EvalError, match="needs the training split"):
        score(model, tokenizer, text, protocol_settings("mix", T), CPU, "fp32")
