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
from decoder.serve.scheduler import IDLE_STEPS, Scheduler, Sequence
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


def step(scheduler: Scheduler, admitted: list[Sequence] = ()) -> None:
    for seq, text, finish in scheduler.step(list(admitted)):
        seq.on_event(text, finish)


def start_batch(tokenizer, model, max_batch, specs, texts, finishes):
    """A scheduler whose first step admits one sequence per (prompt, max_tokens, params, seed)."""
    seqs = [make_sequence(tokenizer, prompt, m, params, seed, texts, finishes, k)
            for k, (prompt, m, params, seed) in enumerate(specs)]
    scheduler = Scheduler(model, max_batch=max_batch)
    step(scheduler, seqs)
    return scheduler, seqs


def run_to_end(scheduler, arrivals=None):
    drive(scheduler, arrivals or {0: []})


def forbid_whole_batch_copies(monkeypatch):
    def no_copy(*args, **kwargs):
        raise AssertionError("the batch was copied")
    monkeypatch.setattr(BatchCache, "_stacked", staticmethod(no_copy))
    monkeypatch.setattr(BatchCache, "select", no_copy)


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_k=20)],
                         ids=["greedy", "seeded"])
def test_a_sequence_written_into_a_freed_slot_sees_nothing_of_the_row_before(tokenizer, monkeypatch, params):
    model = HashModel(tokenizer, context_length=64)
    greedy = SamplingParams(temperature=0.0)
    texts, finishes = {}, {}
    # The row that leaves is the widest, by too little to trim: its columns lie under the new row's padding.
    specs = [(list(range(3, 23)), 2, greedy, 0)] + [(list(range(k, k + 19)), 40, greedy, k) for k in range(1, 4)]
    scheduler, seqs = start_batch(tokenizer, model, 4, specs, texts, finishes)
    step(scheduler)
    assert finishes == {0: "length"} and scheduler.slots[0] is None and scheduler.cache.batch == 4
    assert scheduler.free_slots == 1 and scheduler.rows == seqs[1:]
    new = make_sequence(tokenizer, [9, 10, 11], 30, params, 5, texts, finishes, "new")
    forbid_whole_batch_copies(monkeypatch)
    model.calls.clear()
    step(scheduler, [new])
    assert model.calls == [4, 1], "one decode over the 4 slots, one prefill of the new row"
    assert scheduler.slots[0] is new and scheduler.cache.lengths[0] == 3 and scheduler.cache.width == 22
    assert (scheduler.cache.past[0][0, :, : scheduler.cache.width - 3] == 0).all(), "the old row's columns are gone"
    monkeypatch.undo()
    run_to_end(scheduler)
    assert texts["new"] == alone(model, [9, 10, 11], 30, params, seed=5)
    assert all(texts[k] == alone(model, *specs[k][:3], seed=specs[k][3]) for k in range(4))


def test_a_prompt_wider_than_the_batch_widens_it_in_a_freed_slot(tokenizer):
    model = HashModel(tokenizer, context_length=64)
    greedy = SamplingParams(temperature=0.0)
    texts, finishes = {}, {}
    specs = [([4, 5], 1, greedy, 0)] + [([k + 1], 20, greedy, k) for k in range(1, 4)]
    scheduler, seqs = start_batch(tokenizer, model, 4, specs, texts, finishes)
    assert finishes == {0: "length"} and scheduler.slots[0] is None
    prompt = list(range(30, 40))
    new = make_sequence(tokenizer, prompt, 25, greedy, 0, texts, finishes, "new")
    step(scheduler, [new])
    assert scheduler.slots[0] is new and scheduler.cache.batch == 4 and scheduler.cache.width == len(prompt)
    run_to_end(scheduler)
    assert texts["new"] == alone(model, prompt, 25, greedy, seed=0)
    assert all(texts[k] == alone(model, *specs[k][:3], seed=specs[k][3]) for k in range(4))


def test_free_slots_stay_until_more_than_a_quarter_of_the_batch_is_free(tokenizer):
    model = HashModel(tokenizer, context_length=64)
    greedy = SamplingParams(temperature=0.0)
    texts, finishes = {}, {}
    specs = [([k + 1, k + 2, k + 3], 40, greedy, k) for k in range(8)]
    scheduler, seqs = start_batch(tokenizer, model, 8, specs, texts, finishes)
    seqs[0].cancelled = seqs[5].cancelled = True
    step(scheduler)
    assert scheduler.cache.batch == 8 and scheduler.slots[0] is None and scheduler.slots[5] is None
    model.calls.clear()
    step(scheduler)
    assert model.calls == [8], "two free slots of eight still decode"
    seqs[3].cancelled = True
    model.calls.clear()
    step(scheduler)
    assert scheduler.cache.batch == 5 and scheduler.slots == [seqs[k] for k in (1, 2, 4, 6, 7)]
    assert model.calls == [5], "compacted before the decode"
    assert scheduler.free_slots == 3
    run_to_end(scheduler)
    assert all(texts[k] == alone(model, *specs[k][:3], seed=k) for k in (1, 2, 4, 6, 7))
    assert scheduler.cache is None and scheduler.slots == []


def test_a_slot_free_for_longer_than_the_context_decodes_at_position_zero(tokenizer):
    context = IDLE_STEPS - 3  # the model refuses a position at or past it; windows of 2 slide in place
    model = HashModel(tokenizer, context)
    greedy = SamplingParams(temperature=0.0)
    texts, finishes = {}, {}
    specs = [([1], 1, greedy, 0)] + [(list(range(1, k % context + 2)), 30, greedy, k) for k in range(1, 8)]
    scheduler, seqs = start_batch(tokenizer, model, 8, specs, texts, finishes)
    free_steps = 0
    while None in scheduler.slots:
        assert scheduler.cache.lengths[0] <= 1
        free_steps += 1
        step(scheduler)
    assert free_steps == IDLE_STEPS > context, "compacted once the free slot had waited IDLE_STEPS steps"
    run_to_end(scheduler)
    assert all(texts[k] == alone(model, *specs[k][:3], seed=k) for k in range(8))


def test_a_free_slot_no_sequence_takes_is_compacted_after_idle_steps(tokenizer):
    model = HashModel(tokenizer, context_length=64)
    greedy = SamplingParams(temperature=0.0)
    texts, finishes = {}, {}
    specs = [([k + 1, k + 2], 40, greedy, k) for k in range(4)]
    scheduler, seqs = start_batch(tokenizer, model, 4, specs, texts, finishes)
    seqs[2].cancelled = True
    for _ in range(IDLE_STEPS - 1):
        step(scheduler)
        assert scheduler.cache.batch == 4 and scheduler.slots[2] is None, "one free slot of four stays"
    admitted = make_sequence(tokenizer, [7], 10, greedy, 0, texts, finishes, "new")
    step(scheduler, [admitted])  # an admission resets the count
    assert scheduler.slots[2] is admitted
    admitted.cancelled = True
    for _ in range(IDLE_STEPS):
        assert scheduler.cache.batch == 4
        step(scheduler)
    assert scheduler.cache.batch == 3 and scheduler.slots == [seqs[0], seqs[1], seqs[3]]
    run_to_end(scheduler)
    assert all(texts[k] == alone(model, *specs[k][:3], seed=k) for k in (0, 1, 3))


def test_real_model_greedy_ids_in_a_reused_slot_equal_the_request_alone(onnx_bundle):
    from decoder.runtime import Runtime

    runtime = Runtime(onnx_bundle, threads=1)
    tokenizer, greedy = runtime.tokenizer, SamplingParams(temperature=0.0)
    encode = tokenizer.encode
    prompts = [encode(t) for t in ("Harding wondered whether the island", "The sea", "Pencroft", "A")]
    texts, finishes = {}, {}
    specs = [(prompts[0], 2, greedy, 0)] + [(p, 40, greedy, 0) for p in prompts[1:]]  # 40 tokens slide
    scheduler, seqs = start_batch(tokenizer, runtime, 4, specs, texts, finishes)
    step(scheduler)
    assert scheduler.slots[0] is None
    new = make_sequence(tokenizer, encode("Harding wondered"), 40, greedy, 0, texts, finishes, "new")
    step(scheduler, [new])
    assert scheduler.slots[0] is new
    run_to_end(scheduler)
    for seq in [new, *seqs[1:]]:
        alone_ids = [int(t[0]) for t in runtime.generate_ids(seq.prompt_ids, max_new_tokens=40, params=greedy)]
        assert seq.tokens[len(seq.prompt_ids):] == [t for t in alone_ids if t != runtime.eot_id]
