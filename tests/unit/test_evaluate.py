"""Evaluation protocols on a tiny model: the window plans, static = the training loop's evaluation,
sliding with stride = context = static, dynamic evaluation's causality and that it learns a repeat."""

import math

import numpy as np
import pytest
import torch
from tinyconf import tiny_config

from decoder.config import DataConfig
from decoder.data import prepare
from decoder.evaluate import dynamic_nats, score, sliding_nats
from decoder.model import GPT
from decoder.protocols import EvalError, count_words, figures, protocol_settings, windows
from decoder.step import evaluate

CPU = torch.device("cpu")
T = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, excerpt_text):
    """(tiny GPT, its tokenizer, the excerpt's validation tokens): weights random but fixed."""
    corpus = tmp_path_factory.mktemp("eval") / "small.txt"
    corpus.write_text(excerpt_text, encoding="utf-8")
    dataset = prepare(DataConfig(corpus=str(corpus), tokenizer="gpt2"))
    torch.manual_seed(0)
    model = GPT(tiny_config(corpus).model, dataset.tokenizer.vocab_size).eval()
    return model, dataset.tokenizer, dataset.val[:400]


@pytest.mark.parametrize("n_tokens", [2, 17, 18, 100])
@pytest.mark.parametrize("stride", [1, 5, 15, 16])
def test_windows_predict_every_token_once_with_at_least_context_minus_stride(n_tokens, stride):
    plan = windows(n_tokens, T, stride)
    scored = [p for w in plan for p in w.scored]
    assert scored == list(range(1, n_tokens))  # each token after the first once, in order
    for w in plan:
        assert 1 <= w.length <= T and w.skip < w.length
        if w.start > 0:  # after the first window every scored token sees >= T - stride + 1 tokens
            assert min(p - w.start for p in w.scored) >= T - stride + 1


def test_stride_equal_to_context_is_static_windows():
    n_pred = 99
    assert [(w.start, w.length, w.skip) for w in windows(n_pred + 1, T, T)] == [
        (s, min(T, n_pred - s), 0) for s in range(0, n_pred, T)]  # decoder.step.evaluate's windows


@pytest.mark.parametrize("protocol, options, message", [
    ("sliding", {"stride": 0}, "--stride=0: must be in [1, 16]"),
    ("sliding", {"stride": 17}, "--stride=17: must be in [1, 16]"),
    ("dynamic", {"segment": 40}, "--segment=40: must be in [1, 16]"),
    ("static", {"stride": 8}, "--stride applies to --protocol sliding"),
    ("sliding", {"lr": 0.1}, "--lr applies to --protocol dynamic"),
    ("dynamic", {"lr": -1.0}, "--lr=-1.0: must be a finite number >= 0"),
    ("dynamic", {"lr": math.nan}, "--lr=nan"),
    ("beam", {}, "protocol='beam': allowed static, sliding, dynamic"),
])
def test_protocol_settings_refuse_options_that_do_not_fit(protocol, options, message):
    with pytest.raises(EvalError, match=message.replace("[", r"\[").replace("]", r"\]")):
        protocol_settings(protocol, T, **options)


def test_protocol_defaults():
    assert protocol_settings("static", T)["stride"] == T
    assert protocol_settings("sliding", T)["stride"] == T // 2
    assert protocol_settings("dynamic", T) == {"protocol": "dynamic", "context_length": T, "segment": T // 2,
                                               "lr": 0.02, "optimizer": "SGD"}


def test_words_and_perplexities_follow_lm_eval(setup):
    _, tokenizer, tokens = setup
    assert count_words("the  island\nwas") == 3
    result = figures(1000.0, tokens, tokenizer)
    assert result["bytes"] == int(tokenizer.byte_lengths()[tokens[1:]].sum())
    assert result["byte_perplexity"] == pytest.approx(2 ** result["bits_per_byte"])
    assert result["word_perplexity"] == pytest.approx(math.exp(1000.0 / result["words"]))
    assert result["nats_per_token"] == pytest.approx(1000.0 / (len(tokens) - 1))


def test_static_is_the_training_loops_evaluation_exactly(setup):
    model, tokenizer, tokens = setup
    result = score(model, tokenizer, tokens, protocol_settings("static", T), CPU, "fp32")
    val = evaluate(model, tokens, tokenizer.byte_lengths(), CPU, "fp32")
    assert result["bits_per_byte"] == val["val_bpb"] and result["nats_per_token"] == val["val_loss"]
    assert result["tokens"] == val["val_tokens"]


def test_sliding_with_stride_equal_to_context_is_static(setup):
    model, tokenizer, tokens = setup
    static = score(model, tokenizer, tokens, protocol_settings("static", T), CPU, "fp32")
    sliding = score(model, tokenizer, tokens, protocol_settings("sliding", T, stride=T), CPU, "fp32")
    assert sliding["bits_per_byte"] == pytest.approx(static["bits_per_byte"], rel=1e-6)


def test_dynamic_with_lr_zero_is_sliding_with_stride_segment_and_leaves_the_model(setup):
    model, _, tokens = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    np.testing.assert_allclose(dynamic_nats(model, tokens, 8, 0.0, CPU, "fp32"),
                               sliding_nats(model, tokens, 8, CPU, "fp32"), rtol=1e-5, atol=1e-5)
    dynamic_nats(model, tokens[:100], 8, 0.5, CPU, "fp32")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("segment", [1, 5, T])
def test_dynamic_never_scores_a_token_with_weights_that_saw_it(setup, segment):
    model, _, tokens = setup
    scored, seen, events = set(), set(), []

    def trace(kind: str, positions: range) -> None:
        events.append(kind)
        if kind == "score":
            assert not seen & set(positions), "scored by weights updated on it"
            scored.update(positions)
        else:
            assert set(positions) - {0} <= scored, "an update saw a token not yet scored"
            seen.update(positions)

    dynamic_nats(model, tokens[:60], segment, 0.1, CPU, "fp32", trace)
    assert scored == set(range(1, 60)) and events[:2] == ["score", "update"]
    assert events.count("update") == len(windows(60, T, segment))


def test_dynamic_evaluation_learns_a_repeated_text(setup):
    model, _, tokens = setup
    half = tokens[:128]
    text = np.concatenate([half, half])
    static = sliding_nats(model, text, T, CPU, "fp32")
    dynamic = dynamic_nats(model, text, T, 0.03, CPU, "fp32")
    repeat = slice(len(half) - 1, None)  # predictions of the second half's tokens
    first = slice(0, len(half) - 1)
    assert dynamic[repeat].mean() < static[repeat].mean() - 0.1
    # more than it gained on the first half: it learnt this text, not just the book's style
    assert static[repeat].mean() - dynamic[repeat].mean() > 2 * (static[first].mean() - dynamic[first].mean())


def test_dynamic_evaluation_that_diverges_stops_with_a_one_line_error_not_nan(setup):
    from decoder.protocols import EvalError

    model, _, tokens = setup
    with pytest.raises(EvalError, match=r"--lr=1000000\.0: dynamic evaluation diverged after \d+ of \d+ tokens"):
        dynamic_nats(model, tokens, 8, 1e6, CPU, "fp32")
