"""The numpy sampler: greedy/temperature/top-k/top-p, repetition controls, per-row generators,
the decoding loop, and stop strings."""

import numpy as np
import pytest

from decoder.sampling import (
    SamplingParams,
    banned_by_ngrams,
    decode_loop,
    next_tokens,
    probabilities,
    adjusted_logits,
)
from decoder.stop import StopMatcher, until_stop

LOGITS = np.log(np.array([[0.5, 0.25, 0.15, 0.1]]))


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).normal(size=(3, 50))
    assert (next_tokens(logits, SamplingParams(greedy=True), rng) == logits.argmax(-1)).all()
    assert (next_tokens(logits, SamplingParams(temperature=0.0), rng) == logits.argmax(-1)).all()


def test_top_k_and_top_p_masks():
    p = probabilities(LOGITS, SamplingParams(top_k=2))
    np.testing.assert_allclose(p, [[2 / 3, 1 / 3, 0, 0]])
    # Mass before token 2 is 0.75 < 0.8, so it stays; token 3 (0.9 before it) goes.
    p = probabilities(LOGITS, SamplingParams(top_p=0.8))
    np.testing.assert_allclose(p, [[0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]])
    p = probabilities(LOGITS, SamplingParams(top_p=0.1))
    np.testing.assert_allclose(p, [[1, 0, 0, 0]])


def test_temperature_sharpens():
    cold = probabilities(LOGITS, SamplingParams(temperature=0.5))
    assert cold[0, 0] > 0.5 and np.isclose(cold.sum(), 1)


def test_sampling_follows_distribution_and_is_seeded():
    params = SamplingParams()
    draws = np.concatenate([next_tokens(np.repeat(LOGITS, 1000, 0), params, np.random.default_rng(s)) for s in range(5)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.15, 0.1], atol=0.02)
    a = next_tokens(np.repeat(LOGITS, 20, 0), params, np.random.default_rng(7))
    b = next_tokens(np.repeat(LOGITS, 20, 0), params, np.random.default_rng(7))
    assert (a == b).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.5}, "temperature=-0.5"),
    ({"top_k": -1}, "top_k=-1"),
    ({"top_p": 0.0}, "top_p=0.0"),
    ({"top_p": 1.5}, "top_p=1.5"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"repetition_penalty": 0.0}, "repetition_penalty=0.0: must be a number > 0"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty=nan"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size=-1: must be >= 0"),
])
def test_bad_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def _counting_forward(vocab: int):
    """A fake engine whose next token is (last token + 1) % vocab; records the calls it gets."""
    calls = []

    def forward(ids, past):
        calls.append((ids.shape[1], past))
        logits = np.full((ids.shape[0], vocab), -10.0, dtype=np.float32)
        logits[np.arange(ids.shape[0]), (ids[:, -1] + 1) % vocab] = 10.0
        return logits, (0 if past is None else past) + ids.shape[1]

    return forward, calls


def test_decode_loop_cache_slides_window_and_stops_at_eot():
    forward, calls = _counting_forward(vocab=100)
    out = list(decode_loop(forward, np.array([[1, 2, 3]]), context_length=8, max_new_tokens=10,
                           params=SamplingParams(greedy=True)))
    assert [int(t[0]) for t in out] == list(range(4, 14))
    # Prefill 3, one token at a time until the cache holds 8, then a re-prefill of the last 4.
    assert [c[0] for c in calls][:7] == [3, 1, 1, 1, 1, 1, 4]
    assert calls[6][1] is None
    forward, _ = _counting_forward(vocab=100)
    out = list(decode_loop(forward, np.array([[5]]), context_length=8, max_new_tokens=10,
                           params=SamplingParams(greedy=True), eot_id=8))
    assert [int(t[0]) for t in out] == [6, 7, 8]


def test_decode_loop_without_cache_rereads_window():
    forward, calls = _counting_forward(vocab=100)
    list(decode_loop(forward, np.array([[1, 2, 3]]), context_length=5, max_new_tokens=4,
                     params=SamplingParams(greedy=True), use_cache=False))
    assert [c for c in calls] == [(3, None), (4, None), (5, None), (5, None)]


def test_decode_loop_errors():
    forward, _ = _counting_forward(vocab=10)
    with pytest.raises(ValueError, match="prompt is empty"):
        list(decode_loop(forward, np.zeros((1, 0), dtype=np.int64), context_length=8, max_new_tokens=3,
                         params=SamplingParams()))
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        list(decode_loop(forward, np.array([[1]]), context_length=8, max_new_tokens=0, params=SamplingParams()))


def _hashed_forward(vocab: int = 64):
    """A fake engine whose logits are a fixed random function of (last token, length, cache)."""

    def forward(ids, past):
        rows = [np.random.default_rng(int(r[-1]) * 1000 + len(r) + (past or 0)).normal(0, 2, vocab) for r in ids]
        return np.stack(rows), (past or 0) + ids.shape[1]

    return forward


# Tokens the sampler gave for _hashed_forward before the repetition controls and per-row
# generators existed (decoder.sampling at 8a285c2): with the controls off, nothing may change.
BEFORE_CONTROLS = {
    "sampled": [4, 32, 46, 1, 14, 56, 5, 16, 62, 41, 20, 53, 51, 18, 5, 22, 29, 58, 40, 19],
    "greedy": [55, 48, 22, 61, 50, 48, 44, 54, 21, 36, 25, 50, 36, 4, 3, 22, 28, 22, 61, 50],
}


@pytest.mark.parametrize("name, params", [
    ("sampled", SamplingParams(temperature=0.9, top_k=20, top_p=0.9)),
    ("greedy", SamplingParams(greedy=True)),
])
def test_controls_off_leave_the_tokens_unchanged(name, params):
    out = decode_loop(_hashed_forward(), np.array([[3, 5, 7]]), context_length=8, max_new_tokens=20,
                      params=params, seed=11)
    assert [int(t[0]) for t in out] == BEFORE_CONTROLS[name]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = np.array([[2.0, -1.0, 0.5, 3.0]])
    z = adjusted_logits(logits, SamplingParams(repetition_penalty=2.0), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(z, [[1.0, -2.0, 0.5, 3.0]])
    rows = adjusted_logits(np.repeat(logits, 2, 0), SamplingParams(repetition_penalty=2.0), [[3], [2, 1]])
    np.testing.assert_array_equal(rows, [[2.0, -1.0, 0.5, 1.5], [2.0, -2.0, 0.25, 3.0]])
    # Greedy follows the penalised logits: token 3 (3.0 -> 1.5) loses to token 0 (2.0).
    assert next_tokens(logits, SamplingParams(greedy=True, repetition_penalty=2.0), None, [[3]])[0] == 0


def test_ngram_ban_names_the_tokens_that_would_repeat_an_ngram():
    assert banned_by_ngrams([1, 2, 3, 1, 2], 3).tolist() == [3]  # "1 2" was followed by 3
    assert banned_by_ngrams([1, 2, 3, 1, 2, 4, 1, 2], 3).tolist() == [3, 4]
    assert banned_by_ngrams([1, 2, 3, 1], 2).tolist() == [2]
    assert banned_by_ngrams([5, 6, 5], 1).tolist() == [5, 6]
    assert banned_by_ngrams([1, 2], 3).tolist() == [] and banned_by_ngrams([1, 2, 1], 0).tolist() == []
    z = adjusted_logits(np.zeros((1, 4)), SamplingParams(no_repeat_ngram_size=1), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(z, np.zeros((1, 4)))  # banning every token would leave none: no ban


def _cycling_forward(vocab: int = 10, period: int = 3):
    """A fake engine that strongly prefers (last + 1) % period: left alone it repeats a cycle."""

    def forward(ids, past):
        logits = np.tile(-np.arange(vocab, dtype=np.float64) * 0.1, (ids.shape[0], 1))
        logits[np.arange(ids.shape[0]), (ids[:, -1] + 1) % period] = 10.0
        return logits, None

    return forward


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("greedy", [True, False])
def test_no_repeat_ngram_size_prevents_any_repeated_ngram(n, greedy):
    params = SamplingParams(greedy=greedy, top_k=5, no_repeat_ngram_size=n)
    prompt = np.array([[0, 1, 2, 0]])
    tokens = [int(t[0]) for t in decode_loop(_cycling_forward(vocab=40), prompt, context_length=8,
                                             max_new_tokens=20, params=params, seed=0, use_cache=False)]
    sequence = prompt[0].tolist() + tokens
    grams = [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1)]
    # The prompt's own n-grams may repeat among themselves; no generated token completes a repeat.
    prompt_grams = len(prompt[0]) - n + 1
    seen = set(grams[:prompt_grams])
    for gram in grams[prompt_grams:]:
        assert gram not in seen, (n, sequence)
        seen.add(gram)
    unbanned = [int(t[0]) for t in decode_loop(_cycling_forward(vocab=40), prompt, context_length=8,
                                               max_new_tokens=6, params=SamplingParams(greedy=True))]
    assert unbanned == [1, 2, 0, 1, 2, 0]  # without the ban the engine cycles


def test_repetition_controls_need_the_history():
    with pytest.raises(ValueError, match="need each row's tokens so far"):
        next_tokens(LOGITS, SamplingParams(repetition_penalty=1.2), np.random.default_rng(0))


def test_one_generator_per_row_makes_each_row_independent_of_the_batch():
    logits = np.random.default_rng(3).normal(size=(4, 50))
    params = SamplingParams(top_k=20)
    batched = next_tokens(logits, params, [np.random.default_rng(s) for s in (10, 11, 12, 13)])
    alone = [next_tokens(logits[i : i + 1], params, np.random.default_rng(10 + i))[0] for i in range(4)]
    assert batched.tolist() == alone
    with pytest.raises(ValueError, match="2 generators for 4 rows"):
        next_tokens(logits, params, [np.random.default_rng(0)] * 2)
    # decode_loop seeds every row alike: a row's sampled tokens are the ones it gets alone.
    prompts = np.array([[3, 5, 7], [9, 9, 2]])
    together = np.stack(list(decode_loop(_hashed_forward(), prompts, context_length=8, max_new_tokens=12,
                                         params=params, seed=4)))
    for i in range(2):
        row = np.stack(list(decode_loop(_hashed_forward(), prompts[i : i + 1], context_length=8,
                                        max_new_tokens=12, params=params, seed=4)))
        np.testing.assert_array_equal(together[:, i], row[:, 0])


def test_stop_matcher_holds_back_a_possible_start_and_drops_the_stop():
    m = StopMatcher(["\n\n", "THE END"])
    assert m.push("It was") == "It was"
    assert m.push(" late.\n") == " late."  # "\n" may start "\n\n": held back
    assert m.push("Then") == "\nThen"  # it did not: released
    assert m.push(" THE") == " "  # " THE" ... may start "THE END"
    assert m.push(" EN") == ""
    assert m.push("D, said") == "" and m.stopped
    assert m.push("more") == "" and m.flush() == ""


def test_stop_matcher_releases_the_tail_at_the_end_and_finds_the_earliest_stop():
    m = StopMatcher(["abc"])
    assert m.push("xxab") == "xx" and m.flush() == "ab" and not m.stopped
    m = StopMatcher(["cd", "b"])
    assert m.push("abcd") == "a" and m.stopped
    assert StopMatcher(["x"]).push("x") == ""


@pytest.mark.parametrize("pieces", [["Hello wor", "ld. The", " end"], ["H", "ello world", ". The end"],
                                    list("Hello world. The end")])
def test_until_stop_cuts_a_stop_split_across_pieces(pieces):
    assert "".join(until_stop(pieces, StopMatcher(["world."]))) == "Hello "
    assert "".join(until_stop(pieces, StopMatcher(["nowhere", "xx"]))) == "Hello world. The end"
    assert "".join(until_stop(pieces, StopMatcher([]))) == "Hello world. The end"


def test_until_stop_stops_consuming_at_the_stop():
    consumed = []

    def pieces():
        for p in ["a", "b", "STOP", "c", "d"]:
            consumed.append(p)
            yield p

    assert "".join(until_stop(pieces(), StopMatcher(["STOP"]))) == "ab" and consumed == ["a", "b", "STOP"]


@pytest.mark.parametrize("stops", [[""], [None], ["ok", ""]])
def test_empty_stop_strings_are_refused(stops):
    with pytest.raises(ValueError, match="each must be non-empty text"):
        StopMatcher(stops)


EXTREMES = [
    {"temperature": 5e-324}, {"temperature": 1e-300}, {"temperature": 1e300},
    {"temperature": 5e-324, "top_k": 2}, {"temperature": 5e-324, "top_p": 0.5},
    {"repetition_penalty": 5e-324}, {"repetition_penalty": 1e308},
    {"temperature": 5e-324, "repetition_penalty": 5e-324},
    {"repetition_penalty": 5e-324, "frequency_penalty": 1e308, "presence_penalty": -1e308},
    {"presence_penalty": 1e308}, {"presence_penalty": -1e308}, {"frequency_penalty": 1e308},
    {"frequency_penalty": -1e308, "temperature": 5e-324}, {"logit_bias": ((0, 1e308), (1, -1e308))},
    {"logit_bias": ((2, 1e308), (3, 1e308)), "repetition_penalty": 5e-324, "no_repeat_ngram_size": 1},
]


@pytest.mark.parametrize("kwargs", EXTREMES, ids=[str(k) for k in EXTREMES])
def test_no_parameter_turns_probabilities_into_nan_or_inf(kwargs):
    logits = np.array([[3.0, -1.0, 0.5, 2.0, -7.0], [1e30, -1e30, 0.0, 5.0, 5.0]])
    params = SamplingParams(**kwargs)
    history, generated = [[0, 3, 3], [1, 2, 4, 4]], [[3, 3], [4, 4]]
    z = adjusted_logits(logits, params, history, generated)
    assert not np.isnan(z).any() and not np.isposinf(z).any()
    p = probabilities(z, params)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    for seed in range(5):
        tokens = next_tokens(logits, params, np.random.default_rng(seed), history, generated)
        assert ((0 <= tokens) & (tokens < 5)).all() and (p[np.arange(2), tokens] > 0).all()


def test_a_tiny_temperature_samples_the_argmax():
    logits = np.random.default_rng(5).normal(size=(6, 40))
    for seed in range(3):
        tokens = next_tokens(logits, SamplingParams(temperature=5e-324), np.random.default_rng(seed))
        assert (tokens == logits.argmax(-1)).all()


def test_presence_and_frequency_penalties_follow_openai_over_generated_tokens_only():
    logits = np.array([[1.0, 2.0, 3.0, 4.0]])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    # token 0 is only in the prompt (no penalty), 3 was generated twice, 1 once.
    z = adjusted_logits(logits, params, [[0, 3, 1, 3]], [[3, 1, 3]])
    np.testing.assert_allclose(z, [[1.0, 2.0 - 0.5 - 0.25, 3.0, 4.0 - 0.5 - 0.5]])
    np.testing.assert_allclose(adjusted_logits(logits, params, [[0, 3]], None), logits)  # nothing generated yet
    # decode_loop counts what it generates, not the prompt: a strong frequency penalty walks the vocabulary.
    forward = lambda ids, past: (np.tile([5.0, 4.0, 3.0, 2.0, 1.0], (ids.shape[0], 1)), None)  # noqa: E731
    out = decode_loop(forward, np.array([[0, 0, 0]]), context_length=8, max_new_tokens=5,
                      params=SamplingParams(greedy=True, frequency_penalty=10.0))
    assert [int(t[0]) for t in out] == [0, 1, 2, 3, 4]


def test_logit_bias_adds_to_the_named_tokens_and_checks_them():
    logits = np.zeros((2, 4))
    params = SamplingParams(greedy=True, logit_bias=((2, 100.0), (0, -100.0)))
    np.testing.assert_array_equal(adjusted_logits(logits, params, [[], []]), [[-100, 0, 100, 0]] * 2)
    assert next_tokens(logits, params, None).tolist() == [2, 2]  # greedy follows the bias, no history needed
    with pytest.raises(ValueError, match="names token 7; the vocabulary has 4 tokens"):
        next_tokens(logits, SamplingParams(logit_bias=((7, 1.0),)), np.random.default_rng(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": float("inf")}, "temperature=inf: must be a finite number >= 0"),
    ({"presence_penalty": float("nan")}, "presence_penalty=nan: must be a finite number"),
    ({"frequency_penalty": float("-inf")}, "frequency_penalty=-inf: must be a finite number"),
    ({"logit_bias": ((-1, 1.0),)}, r"logit_bias \(-1, 1.0\): must pair a token id >= 0"),
    ({"logit_bias": ((1, float("inf")),)}, r"logit_bias \(1, inf\)"),
])
def test_bad_adjustments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
