"""Evaluation protocols on a tiny model: the window plans, static = the training loop's evaluation,
sliding with stride = context = static, dynamic evaluation's causality and that it learns a repeat
under both update rules, and the rms rule's gradient statistics."""

import math

import numpy as np
import pytest
import torch
from tinyconf import tiny_config

from decoder.config import DataConfig
from decoder.data import prepare
from decoder.evaluate import dynamic_nats, gradient_rms, score, sliding_nats
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
    ("dynamic", {"rule": "adam"}, "--rule='adam': allowed rms, sgd"),
    ("sliding", {"rule": "sgd"}, "--rule applies to --protocol dynamic or mix or knn-mix"),
    ("beam", {}, "protocol='beam': allowed static, sliding, dynamic"),
])
def test_protocol_settings_refuse_options_that_do_not_fit(protocol, options, message):
    with pytest.raises(EvalError, match=message.replace("[", r"\[").replace("]", r"\]")):
        protocol_settings(protocol, T, **options)


def test_protocol_defaults():
    assert protocol_settings("static", T)["stride"] == T
    assert protocol_settings("sliding", T)["stride"] == T // 2
    assert protocol_settings("dynamic", T) == {"protocol": "dynamic", "context_length": T, "segment": T // 2,
                                               "rule": "rms", "lr": 1e-4}
    assert protocol_settings("dynamic", T, rule="sgd")["lr"] == 0.02


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


@pytest.fixture(scope="module")
def rms(setup):
    """The rms rule's statistics of the tiny model, from its validation tokens' far end."""
    model, _, tokens = setup
    return gradient_rms(model, tokens[200:], 5, CPU, "fp32", n_windows=8)


def rule_options(rule: str, rms: list[torch.Tensor], lr: float) -> dict:
    """(lr, rms) for `dynamic_nats` under `rule`, at an lr of the same effect for both."""
    return {"lr": lr, "rms": None} if rule == "sgd" else {"lr": lr / 200, "rms": rms}


def test_gradient_rms_is_each_parameters_root_mean_square_gradient_and_leaves_the_model(setup):
    model, _, tokens = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rms = gradient_rms(model, tokens, 5, CPU, "fp32", n_windows=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    squares = [torch.zeros_like(p) for p in model.parameters()]
    for start in (0, len(tokens) - T - 1):  # the two windows: the split's first and last
        model.zero_grad()
        x = torch.from_numpy(tokens[start : start + T].astype(np.int64))[None]
        y = torch.from_numpy(tokens[start + 1 : start + 1 + T].astype(np.int64))[None]
        torch.nn.functional.cross_entropy(model.lm_head(model.hidden(x)[0])[0, -5:], y[0, -5:]).backward()
        squares = [s + p.grad**2 for s, p in zip(squares, model.parameters())]
    model.zero_grad(set_to_none=True)
    for got, square in zip(rms, squares):
        torch.testing.assert_close(got, torch.sqrt(square / 2), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule", ["sgd", "rms"])
@pytest.mark.parametrize("segment", [1, 5, T])
def test_dynamic_never_scores_a_token_with_weights_that_saw_it(setup, rms, segment, rule):
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

    dynamic_nats(model, tokens[:60], segment, device=CPU, precision="fp32", trace=trace,
                 **rule_options(rule, rms, 0.1))
    assert scored == set(range(1, 60)) and events[:2] == ["score", "update"]
    assert events.count("update") == len(windows(60, T, segment))


@pytest.mark.parametrize("rule", ["sgd", "rms"])
def test_dynamic_evaluation_learns_a_repeated_text(setup, rms, rule):
    model, _, tokens = setup
    half = tokens[:128]
    text = np.concatenate([half, half])
    static = sliding_nats(model, text, T, CPU, "fp32")
    dynamic = dynamic_nats(model, text, T, device=CPU, precision="fp32", **rule_options(rule, rms, 0.03))
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


def test_the_rms_rule_without_a_training_split_is_a_one_line_error(setup):
    model, tokenizer, tokens = setup
    with pytest.raises(EvalError, match="--rule rms takes its gradient statistics from the training split"):
        score(model, tokenizer, tokens, protocol_settings("dynamic", T), CPU, "fp32")
    sgd = score(model, tokenizer, tokens[:80], protocol_settings("dynamic", T, rule="sgd"), CPU, "fp32")
    assert sgd["rule"] == "sgd" and np.isfinite(sgd["bits_per_byte"])


def test_splits_of_another_corpus_are_refused_naming_what_still_works(setup, tmp_path):
    from decoder.evaluate import splits

    _, tokenizer, _ = setup
    other = tmp_path / "other.txt"
    other.write_text("An entirely different little text, " * 40, encoding="utf-8")
    with pytest.raises(EvalError, match=r"differs from the model's.*dynamic --rule sgd: the mixes and the rms rule"):
        splits(DataConfig(corpus=str(other), tokenizer="gpt2"), tokenizer)
