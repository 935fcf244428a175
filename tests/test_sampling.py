import numpy as np
import pytest

from decoder.sampling import SamplingParams, decode_loop, next_tokens, probabilities

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
