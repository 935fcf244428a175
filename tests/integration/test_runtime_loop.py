"""The runtime's cached loop (`decoder.runtime_loop`) gives exactly the ids of the reference loop
(`decoder.sampling.decode_loop` over plain `Runtime.step` calls with freshly built masks and
positions): greedy and seeded sampling, with and without logits adjustments, batch 1 and 3, up
to and past the context (the window slides). Rows of different lengths (the server's padded
prefill/decode path, here driven by the real scheduler) give each prompt's reference ids alone."""

from __future__ import annotations

import numpy as np
import pytest

from decoder.sampling import SamplingParams, decode_loop
from decoder.serve.scheduler import Scheduler, Sequence
from decoder.serve.text import TextStream
from test_runtime import batch_prompts, runtime, sharp  # noqa: F401  (module fixtures of the runtime tests)

PARAMS = [
    SamplingParams(greedy=True),
    SamplingParams(temperature=1.0, top_k=40, top_p=0.95),
    SamplingParams(greedy=True, repetition_penalty=1.4, no_repeat_ngram_size=2),
    SamplingParams(temperature=0.8, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2),
]


def reference(runtime, prompt_ids, n, params, seed, eot_id=None) -> np.ndarray:
    """(steps, B) ids of decode_loop over `Runtime.step` with masks and positions built each call."""

    def forward(ids, past):
        B, T = ids.shape
        P = 0 if past is None else past[0].shape[2]
        positions = np.broadcast_to(np.arange(P, P + T, dtype=np.int64), (B, T))
        return runtime.step(ids, np.ones((B, P + T), dtype=np.int64), positions, past)

    steps = decode_loop(forward, np.asarray(prompt_ids), context_length=runtime.context_length, max_new_tokens=n,
                        params=params, seed=seed, eot_id=eot_id)
    return np.stack(list(steps))


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "sampled", "greedy-adjusted", "sampled-adjusted"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cached_loop_ids_equal_the_reference_loop(runtime, params, batch):
    text = runtime.tokenizer.encode("The sea and the engineer said that Harding wondered")
    prompts = np.array([text[i : i + 5] for i in range(batch)])
    n = 2 * runtime.context_length  # slides the window more than once
    seed = 7 + batch
    ours = np.stack(list(runtime.generate_ids(prompts, max_new_tokens=n, params=params, seed=seed,
                                              stop_at_eot=False)))
    expected = reference(runtime, prompts, n, params, seed)
    assert ours.shape == (n, batch) and ours.dtype == expected.dtype == np.int64
    np.testing.assert_array_equal(ours, expected)
    assert len(set(ours[:, 0].tolist())) > 1  # the text moves: a stuck token would hide a cache mistake


def test_cached_loop_stops_rows_at_their_end_token_like_the_reference(runtime):
    """A row stops at its end token and reports it from then on; the loop ends when all have. The
    end token here is one the text reaches early (the bundle's <|endoftext|> would rarely come)."""
    from decoder.runtime_loop import cached_loop

    text = runtime.tokenizer.encode("The sea and the engineer said that Harding wondered")
    prompts = np.array([text[0:4], text[3:7]])
    free = reference(runtime, prompts, 12, PARAMS[0], 0)
    end = int(free[4, 0])  # row 0 stops at step 4 at the latest
    ours = np.stack(list(cached_loop(runtime._last_logits, runtime._inputs, prompts, max_new_tokens=12,
                                     params=PARAMS[0], seed=0, eot_id=end)))
    expected = reference(runtime, prompts, 12, PARAMS[0], 0, eot_id=end)
    np.testing.assert_array_equal(ours, expected)
    assert (ours[:, 0] == end).any() and (ours[-1] == end).all() == (len(ours) < 12)


@pytest.mark.parametrize("params", PARAMS[:2], ids=["greedy", "sampled"])
def test_rows_of_different_lengths_in_the_scheduler_equal_each_prompt_alone(runtime, params):
    prompts = batch_prompts(runtime)
    assert len({len(p) for p in prompts}) > 1
    n = runtime.context_length  # every row slides once
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    scheduler = Scheduler(runtime, max_batch=len(prompts))
    sequences = [Sequence(prompt_ids=p, params=params, rng=np.random.default_rng(20 + i), max_tokens=n,
                          text=TextStream(runtime.tokenizer, ())) for i, p in enumerate(prompts)]
    admitted = {0: sequences[:2], 3: sequences[2:]}  # two rows join a running batch
    for step in range(10 * n):
        scheduler.step(admitted.get(step, []))
        if step > 3 and not scheduler.busy:
            break
    for i, seq in enumerate(sequences):
        got[i] = seq.tokens[len(seq.prompt_ids):]
        expected = reference(runtime, [prompts[i]], n, params, 20 + i, eot_id=runtime.eot_id)[:, 0].tolist()
        if expected[-1] == runtime.eot_id:
            expected = expected[:-1]  # the scheduler keeps no end-of-text token in the sequence
        assert got[i] == expected, i
