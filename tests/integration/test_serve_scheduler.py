"""Continuous batching against a numpy stand-in for the model whose logits are a hash of exactly
the real tokens and positions a row can see: any padding that leaks, a wrong position, a row whose
cache was shuffled or a window that slid differently changes the text. Each sequence's text must
equal `decode_loop`'s for it alone (the `decoder generate --onnx` path), whatever joins and leaves
around it. Fast: no ONNX, no training."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from decoder.kvcache import BatchCache, left_padded
from decoder.sampling import SamplingParams, decode_loop
from decoder.serve.scheduler import Scheduler, Sequence
from decoder.serve.text import TextStream
from decoder.tokenizer import Tokenizer, get_encoding, text_pieces

CONTEXT = 12


class HashModel:
    """Cache arrays (B, 1, P, 2) hold each column's (token, position); logits hash what a row sees."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = CONTEXT) -> None:
        self.tokenizer, self.context_length, self.eot_id = tokenizer, context_length, tokenizer.eot_id
        self.calls: list[int] = []

    def _logits(self, past: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = []
        for row, real in zip(past[:, 0], mask.astype(bool)):
            seed = int.from_bytes(hashlib.sha256(row[real].astype(np.int64).tobytes()).digest()[:8], "little")
            logits = np.random.default_rng(seed).normal(size=self.tokenizer.vocab_size).astype(np.float32)
            logits[self.eot_id] -= 3.0  # end now and then, not at once
            out.append(logits)
        return np.stack(out)

    def _run(self, ids, mask, positions, past):
        if positions.max() >= self.context_length:
            raise ValueError("position past the context")
        new = np.stack([ids, positions], axis=-1)[:, None].astype(np.float32)  # (B, 1, T, 2)
        full = new if past is None else np.concatenate([past, new], axis=2)
        self.calls.append(ids.shape[0])
        return self._logits(full, mask), full

    def prefill(self, prompts):
        ids, mask, positions = left_padded(prompts)
        logits, full = self._run(ids, mask, positions, None)
        return logits, BatchCache([full], mask)

    def decode(self, cache, tokens):
        mask, positions = cache.next_inputs(1)
        logits, full = self._run(np.asarray(tokens).reshape(-1, 1), mask, positions, cache.past[0])
        return logits, cache.extended([full], 1)

    def forward(self, ids, past):
        """decode_loop's unpadded forward."""
        if past is None:
            logits, cache = self.prefill([list(r) for r in ids])
        else:
            logits, cache = self.decode(past, ids[:, -1])
        return logits, cache


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    enc = get_encoding("gpt2")
    return Tokenizer.from_encoding(enc, True, np.array(enc.encode_ordinary("the cat sat on a mat, and then")))


def alone(model: HashModel, prompt: list[int], max_tokens: int, params: SamplingParams, seed: int) -> str:
    steps = decode_loop(model.forward, np.array(prompt), context_length=model.context_length,
                        max_new_tokens=max_tokens, params=params, seed=seed, eot_id=model.eot_id)
    return "".join(text_pieces(model.tokenizer, steps))


def make_sequence(tokenizer, prompt, max_tokens, params, seed, texts, finishes, key, stops=()):
    def on_event(text, finish):
        texts[key] = texts.get(key, "") + text
        if finish:
            finishes[key] = finish
    return Sequence(prompt_ids=prompt, params=params, rng=np.random.default_rng(seed), max_tokens=max_tokens,
                    text=TextStream(tokenizer, stops), on_event=on_event)


def drive(scheduler: Scheduler, arrivals: dict[int, list[Sequence]], max_steps: int = 10_000) -> int:
    """Step until everything has finished; arrivals[s] join the queue before step s. Returns steps."""
    waiting: list[Sequence] = []
    for step in range(max_steps):
        waiting += arrivals.get(step, [])
        if not waiting and not scheduler.busy and step > max(arrivals, default=0):
            return step
        admitted, waiting = waiting[: scheduler.free_slots], waiting[scheduler.free_slots:]
        for seq, text, finish in scheduler.step(admitted):
            seq.on_event(text, finish)
    raise AssertionError("did not finish")


@pytest.mark.parametrize("context", [CONTEXT, 3], ids=["slides-in-place", "one-token-window"])
@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_staggered_mixed_requests_match_running_alone(tokenizer, max_batch, context):
    model = HashModel(tokenizer, context)
    rng = np.random.default_rng(0)
    vocab = tokenizer.vocab_size - 1
    texts, finishes, expected, arrivals = {}, {}, {}, {}
    for key in range(24):
        prompt = rng.integers(0, vocab, size=int(rng.integers(1, context + 1))).tolist()
        max_tokens = int(rng.integers(1, 30))  # many slide the 12-token window once or twice
        params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_k=20),
                  SamplingParams(temperature=0.0, repetition_penalty=1.5, no_repeat_ngram_size=2),
                  SamplingParams(temperature=0.8, repetition_penalty=1.3, no_repeat_ngram_size=3)][key % 4]
        expected[key] = alone(model, prompt, max_tokens, params, seed=key)
        seq = make_sequence(tokenizer, prompt, max_tokens, params, key, texts, finishes, key)
        arrivals.setdefault(int(rng.integers(0, 40)), []).append(seq)
    model.calls.clear()
    scheduler = Scheduler(model, max_batch=max_batch)
    drive(scheduler, arrivals)
    assert texts == expected
    assert set(finishes.values()) <= {"stop", "length"}
    assert max(model.calls) <= max_batch
    if max_batch > 1:
        assert max(model.calls) > 1, "sequences never shared a model call"


def test_a_sliding_row_keeps_its_slot_and_copies_no_other_row(tokenizer, monkeypatch):
    model = HashModel(tokenizer)
    params = SamplingParams(temperature=0.0)
    texts, finishes = {}, {}
    rows = [make_sequence(tokenizer, prompt, 40, params, 0, texts, finishes, k)
            for k, prompt in enumerate([[7] * (CONTEXT - 1), [8]])]
    scheduler = Scheduler(model, max_batch=2)
    scheduler.step(rows)
    scheduler.step([])
    assert list(scheduler.cache.lengths) == [CONTEXT, 2] and not finishes, "row 0 is full, both run on"
    other = scheduler.cache.past[0][1].copy()

    def no_copy(*args, **kwargs):
        raise AssertionError("a slide copied the batch")
    monkeypatch.setattr(BatchCache, "concat", staticmethod(no_copy))
    monkeypatch.setattr(BatchCache, "select", no_copy)
    model.calls.clear()
    scheduler.step([])
    assert model.calls == [1, 2], "one prefill of the slid row, then one decode of both"
    assert scheduler.rows == rows and list(scheduler.cache.lengths) == [CONTEXT // 2, 3]
    width = scheduler.cache.width
    np.testing.assert_array_equal(scheduler.cache.past[0][1, :, width - 3:width - 1], other[:, -2:])


def test_cancelled_row_leaves_at_the_next_step(tokenizer):
    model = HashModel(tokenizer, context_length=64)
    texts, finishes = {}, {}
    params = SamplingParams(temperature=0.0)
    long = [make_sequence(tokenizer, [1, 2, 3], 50, params, 0, texts, finishes, k) for k in range(3)]
    scheduler = Scheduler(model, max_batch=3)
    scheduler.step(long)
    scheduler.step([])
    assert scheduler.free_slots == 0
    long[1].cancelled = True
    events = scheduler.step([])
    assert (long[1], "", "cancelled") in events
    assert scheduler.free_slots == 1 and long[1] not in scheduler.rows
    assert scheduler.cache.batch == 2


def test_stop_string_ends_the_sequence_without_returning_it(tokenizer):
    model = HashModel(tokenizer, context_length=64)
    params = SamplingParams(temperature=0.0)
    full = alone(model, [5, 6], 40, params, seed=0)
    stop = full[10:13]
    texts, finishes = {}, {}
    seq = make_sequence(tokenizer, [5, 6], 40, params, 0, texts, finishes, "s", stops=[stop])
    drive(Scheduler(model, max_batch=2), {0: [seq]})
    assert texts["s"] == full[: full.index(stop)]
    assert finishes["s"] == "stop"


def test_admitting_more_than_the_free_slots_is_refused(tokenizer):
    scheduler = Scheduler(HashModel(tokenizer), max_batch=1)
    params = SamplingParams(temperature=0.0)
    seqs = [make_sequence(tokenizer, [1], 5, params, 0, {}, {}, k) for k in range(2)]
    with pytest.raises(ValueError, match="free slots"):
        scheduler.step(seqs)
